"""IQs between occupants through the room (XEP-0045 §7.5, as for private
messages; XEP-0410 §3 for pings).

A request to an occupant JID (``room@service/Nick``) from another occupant
goes to the real JID behind that nick: to its most recent session, or, for
``vcard-temp`` (avatars, XEP-0153), to its bare JID, which its server
answers; it leaves the room from the requester's occupant JID, so nobody
learns a real JID in a semi-anonymous room. This is what Prosody and
ejabberd do, and what clients that fetch an occupant's vCard, version or
disco#info (an occupant on another server as much as a local one) rely on.

The forwarded request's id carries the requester's id and an HMAC over
(requester's full JID, id, target): the answer, addressed to the
requester's occupant JID, is matched to one of that occupant's sessions by
recomputing it, so the room keeps no table of pending requests (nothing a
sender could grow) and a forged answer reaches nobody.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import TYPE_CHECKING, Any, Optional

from chatbx_server.muc.occupants import NickError, Occupant, prepare_nick
from chatbx_server.muc.room import copy_to
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.stanzas import StanzaError, error_reply

if TYPE_CHECKING:
    from chatbx_server.events import StanzaEvent
    from chatbx_server.muc.room import Room

VCARD = "vcard-temp"
#: ids longer than this are refused (they go into the forwarded id)
MAX_ID = 256


def _tag(secret: bytes, requester: str, iq_id: str, target: str) -> str:
    mac = hmac.new(secret, f"muc-iq\0{requester}\0{iq_id}\0{target}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()[:12]).decode()


def _encode_id(iq_id: str, tag: str) -> str:
    return base64.urlsafe_b64encode(iq_id.encode()).decode().rstrip("=") + "." + tag


def _decode_id(value: str) -> Optional[tuple[str, str]]:
    head, dot, tag = value.partition(".")
    if not dot:
        return None
    try:
        iq_id = base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return iq_id, tag


def forward_request(room: "Room", event: "StanzaEvent", occ: Optional[Occupant]) -> bool:
    """An IQ get/set from occupant ``occ`` to another occupant's JID.

    Raises:
        StanzaError: the sender is not in the room (not-acceptable), the nick
            is nobody's (item-not-found), or the sender is too fast.
    """
    stanza = event.stanza
    if occ is None:
        raise StanzaError("not-acceptable", text="you are not in this room")
    iq_id = stanza.getAttribute("id") or ""
    if len(iq_id) > MAX_ID:
        raise StanzaError("bad-request", text="id too long")
    try:
        key = prepare_nick(event.to.resource or "", room.service.options.max_nick_length)[1]
    except NickError:
        raise StanzaError("item-not-found") from None
    target = room.occupants.get(key)
    if target is None or not target.sessions:
        raise StanzaError("item-not-found", text="no such occupant")
    opts = room.service.options
    if not occ.allow(room.now(), opts.stanza_rate, opts.stanza_burst):
        raise StanzaError("resource-constraint", "wait", "you are sending too fast")
    payload = stanza.firstChildElement()
    to = target.bare if payload is not None and payload.uri == VCARD else \
        next(reversed(target.sessions))
    fwd = copy_to(stanza, to)
    fwd["from"] = f"{room.jid}/{occ.nick}"
    fwd["id"] = _encode_id(iq_id, _tag(room.service.secret, event.sender.full, iq_id, to))
    room.send(fwd)
    return True


def forward_answer(room: "Room", event: "StanzaEvent") -> bool:
    """A result/error to an occupant JID: the answer to a forwarded request,
    sent on to the session that asked (anything else is dropped)."""
    stanza = event.stanza
    sender = event.sender
    decoded = _decode_id(stanza.getAttribute("id") or "")
    if decoded is None:
        return True
    iq_id, tag = decoded
    try:
        key = prepare_nick(event.to.resource or "", room.service.options.max_nick_length)[1]
    except NickError:
        return True
    asker = room.occupants.get(key)
    answering = room.by_jid.get(sender.full)
    if answering is None and sender.resource is None:
        # A vCard answered by the occupant's server, from its bare JID.
        answering = next((o for o in room.occupants.values() if o.bare == sender.bare), None)
    if asker is None or answering is None:
        return True
    secret = room.service.secret
    for full in asker.sessions:
        if hmac.compare_digest(_tag(secret, full, iq_id, sender.full), tag):
            answer = copy_to(stanza, full)
            answer["from"] = f"{room.jid}/{answering.nick}"
            answer["id"] = iq_id
            room.send(answer)
            break
    return True


def occupant_iq(room: "Room", event: "StanzaEvent") -> Any:
    """An IQ to an occupant JID: self-ping (XEP-0410) or one to forward."""
    stanza = event.stanza
    itype = stanza.getAttribute("type")
    if itype in ("result", "error"):
        return forward_answer(room, event)
    payload = stanza.firstChildElement()
    occ = room.by_jid.get(event.sender.full)
    try:
        if itype == "get" and payload.uri == ns.PING and payload.name == "ping":
            # XEP-0410 §3: the room answers pings to occupant JIDs itself
            # (a ghost learns it is one: not-acceptable).
            from chatbx_server.muc.admin import self_ping

            return self_ping(room, event)
        return forward_request(room, event, occ)
    except StanzaError as err:
        room.send(error_reply(stanza, err))
        return True
