"""One room: occupants' presence and the messages they send (XEP-0045 §7).

Entering (§7.2): the checks run in the order of §7.2 (lock, ban, nick
conflict and reservation, members-only, capacity, password); the new
occupant then gets every other occupant's presence, its own with status
110 last, the history (§7.2.15) and the subject, which is always sent,
empty when there is none. Presence, nick changes (§7.6), exits (§7.14),
groupchat messages (§7.4), subject changes (§8.1), private messages
(§7.5), mediated invitations (§7.8.2) and voice requests (§7.13) follow.

Everything an occupant sends is rebuilt by the room: its presence and
messages reach the others from ``room@service/nick`` with the MUC payloads
the room adds (muc#user items, status codes, XEP-0421 occupant-id, XEP-0359
stanza-id) and with any such payload the occupant put in removed, so nobody
can inject an item, a status code, an occupant id or a stanza id.

Stanzas go out through ``router.route``, one element per recipient (the
children shared, never changed afterwards): an occupant may be on another
node or server. A broadcast is serialized once for client streams
(``serializer.Addressed``): each copy carries its bytes, the shared text
with its own 'to'.
"""

from __future__ import annotations

import os
import base64
from typing import TYPE_CHECKING, Any, Iterable, Optional

from twisted.words.xish import domish

from chatbx_server.muc.config import MUC, REQUEST, RoomConfig, add_field, find_form, new_form, \
    parse_form
from chatbx_server.muc.history import History, delayed
from chatbx_server.muc.occupants import NickError, Occupant, default_role, occupant_id, prepare_nick
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.serializer import Addressed
from chatbx_server.xmpp.stanzas import StanzaError, error_reply

if TYPE_CHECKING:
    from chatbx_server.events import StanzaEvent
    from chatbx_server.muc.service import MucFeature

MUC_USER = MUC + "#user"
SID = "urn:xmpp:sid:0"
OCCUPANT_ID = "urn:xmpp:occupant-id:0"
RETRACT = "urn:xmpp:message-retract:1"
VCARD_UPDATE = "vcard-temp:x:update"
#: payloads only the room may add (stripped from what occupants send)
ROOM_ONLY = frozenset((MUC_USER, OCCUPANT_ID, MUC))


def new_stanza_id() -> str:
    return base64.urlsafe_b64encode(os.urandom(12)).decode()


def copy_to(stanza: domish.Element, to: str) -> domish.Element:
    """A copy addressed to ``to``; the children are shared, not copied."""
    el = domish.Element((stanza.uri, stanza.name))
    el.attributes = dict(stanza.attributes)
    el["to"] = to
    el.children = list(stanza.children)
    return el


def _clean_children(stanza: domish.Element, room: str) -> list[Any]:
    """What an occupant's stanza may carry on: no room-only payload, no
    stanza-id claiming to be the room's (XEP-0359 §3.1)."""
    out = []
    for child in stanza.children:
        if isinstance(child, domish.Element):
            if child.uri in ROOM_ONLY:
                continue
            if child.uri == SID and child.name == "stanza-id" and child.getAttribute("by") == room:
                continue
            if child.name == "error":
                continue
        out.append(child)
    return out


class Room:
    """A room's state: configuration, affiliations, occupants, subject, history."""

    def __init__(self, service: "MucFeature", jid: str, config: RoomConfig,
                 creator: Optional[str] = None) -> None:
        self.service = service
        self.jid = jid
        self.config = config
        self.creator = creator
        #: bare JID -> (affiliation, reserved nick, reason); "none" is never stored
        self.affiliations: dict[str, tuple[str, Optional[str], Optional[str]]] = {}
        #: nick comparison key -> occupant
        self.occupants: dict[str, Occupant] = {}
        #: full JID of a joined session -> its occupant
        self.by_jid: dict[str, Occupant] = {}
        self.subject: Optional[str] = None
        self.subject_nick: Optional[str] = None
        #: new rooms are locked until configured (§10.1.1)
        self.locked = False
        #: in the database (persistent and saved)
        self.stored = False
        self.history = History(service.options.history_size)
        self.vcard: Optional[str] = None
        self.avatar_hash: Optional[str] = None
        self.destroyed = False

    # -- helpers -------------------------------------------------------------
    def affiliation(self, bare: str) -> str:
        entry = self.affiliations.get(bare)
        return entry[0] if entry is not None else "none"

    def send(self, stanza: domish.Element) -> None:
        self.service.router.route(stanza)

    def error(self, event: "StanzaEvent", condition: str, text: Optional[str] = None,
              type: Optional[str] = None) -> bool:
        if type is None:
            self.service.router.bounce(event.stanza, condition, text)
        else:
            self.send(error_reply(event.stanza, StanzaError(condition, type, text)))
        return True

    def can_see_jids(self, viewer: Optional[Occupant]) -> bool:
        return self.config.non_anonymous or (viewer is not None and viewer.role == "moderator")

    def sessions(self) -> Iterable[tuple[str, Occupant]]:
        return list(self.by_jid.items())

    def now(self) -> float:
        return float(self.service.server.clock.seconds())

    # -- presence building ---------------------------------------------------
    def _presence_x(self, occ: Occupant, jid: Optional[str], codes: Iterable[int] = (),
                    role: Optional[str] = None, nick: Optional[str] = None,
                    actor: Optional[str] = None, reason: Optional[str] = None,
                    extra: Optional[domish.Element] = None) -> domish.Element:
        x = domish.Element((MUC_USER, "x"))
        item = x.addElement("item")
        item["affiliation"] = self.affiliation(occ.bare)
        item["role"] = role or occ.role
        if jid is not None:
            item["jid"] = jid
        if nick is not None:
            item["nick"] = nick
        if actor is not None:
            item.addElement("actor")["nick"] = actor
        if reason:
            item.addElement("reason", content=reason)
        if extra is not None:
            x.addChild(extra)
        for code in codes:
            x.addElement("status")["code"] = str(code)
        return x

    def occupant_presence(self, occ: Occupant, ptype: Optional[str] = None,
                          source: Optional[domish.Element] = None) -> domish.Element:
        """The presence of ``occ`` as the room shows it, without muc#user payload."""
        pres = domish.Element((ns.CLIENT, "presence"))
        pres["from"] = f"{self.jid}/{occ.nick}"
        if ptype is not None:
            pres["type"] = ptype
        source = source if source is not None else occ.presence
        if source is not None:
            pres.children = [c for c in _clean_children(source, self.jid)
                             if ptype is None or (isinstance(c, domish.Element)
                                                  and c.name == "status")]
        oid = pres.addElement((OCCUPANT_ID, "occupant-id"))
        oid["id"] = occ.oid
        return pres

    def broadcast_presence(self, occ: Occupant, ptype: Optional[str] = None,
                           source: Optional[domish.Element] = None, codes: Iterable[int] = (),
                           self_codes: Iterable[int] = (), only: Optional[str] = None,
                           **item: Any) -> None:
        """Send ``occ``'s presence to every session (or only to ``only``).

        Three variants at most are built: without the real JID, with it,
        and the occupant's own (status 110 and ``self_codes``).
        """
        base = self.occupant_presence(occ, ptype, source)
        codes = tuple(codes)
        primary = next(reversed(occ.sessions), None) if occ.sessions else None
        variants: dict[bool, Addressed] = {}
        targets = [(only, self.by_jid.get(only))] if only is not None else self.sessions()
        for full, viewer in targets:
            if viewer is occ or (only is not None and full in occ.sessions):
                pres = copy_to(base, full)
                pres.addChild(self._presence_x(occ, full, (110,) + tuple(self_codes) + codes,
                                               **item))
                self.send(pres)
                continue
            see = self.can_see_jids(viewer)
            variant = variants.get(see)
            if variant is None:
                shown = copy_to(base, "")
                shown.addChild(self._presence_x(occ, primary if see else None, codes, **item))
                variant = variants[see] = Addressed(shown)
            self.send(variant.copy(full))

    def _send_to_gone(self, occ: Occupant, full: str, ptype: str, codes: Iterable[int],
                      **item: Any) -> None:
        """Own unavailable presence for a session no longer in ``by_jid``."""
        pres = self.occupant_presence(occ, ptype)
        pres["to"] = full
        pres.addChild(self._presence_x(occ, full, (110,) + tuple(codes), **item))
        self.send(pres)

    # -- presence from occupants -----------------------------------------------
    def on_presence(self, event: "StanzaEvent") -> Any:
        stanza = event.stanza
        sender = event.sender
        ptype = stanza.getAttribute("type")
        occ = self.by_jid.get(sender.full)
        if ptype == "error":
            if occ is not None:
                self.remove_session(occ, sender.full, codes=(333,))
            return True
        if ptype == "unavailable":
            if occ is not None:
                self.remove_session(occ, sender.full, source=stanza)
            return True
        if ptype is not None:
            return True  # subscriptions and probes mean nothing to a room
        if event.to.resource is None:
            # §7.2.1: a nickname is required.
            return self.error(event, "jid-malformed", "a nickname is required")
        try:
            nick, key = prepare_nick(event.to.resource, self.service.options.max_nick_length)
        except NickError:
            return self.error(event, "jid-malformed", "not a valid nickname")
        if occ is None:
            return self.join(event, nick, key)
        if key != occ.key:
            return self.change_nick(event, occ, nick, key)
        occ.sessions[sender.full] = stanza
        occ.presence = stanza
        if stanza.firstChildElement() is not None and any(
                c.uri == MUC for c in stanza.elements()):
            # A client that thinks it left rejoins: give it the room again.
            self._enter(occ, sender.full, stanza, (), broadcast=False)
            return True
        self.broadcast_presence(occ)
        return True

    def join(self, event: "StanzaEvent", nick: str, key: str, created: bool = False) -> Any:
        stanza = event.stanza
        sender = event.sender
        bare = sender.bare
        aff = self.affiliation(bare)
        if self.locked and aff != "owner":
            return self.error(event, "item-not-found", "this room is locked")
        if aff == "outcast":
            return self.error(event, "forbidden", "you are banned from this room")
        existing = self.occupants.get(key)
        if existing is not None and existing.bare != bare:
            return self.error(event, "conflict", "that nickname is in use")
        for who, (_, reserved, _) in self.affiliations.items():
            if reserved and who != bare and prepare_nick_key(reserved) == key:
                return self.error(event, "conflict", "that nickname is reserved")
        if self.config.members_only and aff == "none":
            return self.error(event, "registration-required", "this room is members-only")
        if existing is None and aff not in ("owner", "admin"):
            limit = self.service.options.max_occupants
            if self.config.max_users:
                limit = min(limit, self.config.max_users)
            if len(self.occupants) >= limit:
                return self.error(event, "service-unavailable", "this room is full", "wait")
        muc_x = next(stanza.elements(MUC, "x"), None)
        if self.config.password and aff not in ("owner", "admin"):
            given = next(muc_x.elements(MUC, "password"), None) if muc_x is not None else None
            if given is None or str(given) != self.config.password:
                return self.error(event, "not-authorized", "a password is required")
        codes: list[int] = []
        if created:
            codes.append(201)
        if nick != event.to.resource:
            codes.append(210)  # §7.2.12: the service modified the nick
        if existing is None:
            role = default_role(aff, self.config.moderated)
            occ = Occupant(nick, key, bare, role,
                           occupant_id(self.service.secret, self.jid, bare))
            occ.tokens = self.service.options.stanza_burst
            occ.stamp = self.now()
            self.occupants[key] = occ
        else:
            occ = existing
        occ.sessions[sender.full] = stanza
        occ.presence = stanza
        self.by_jid[sender.full] = occ
        history = next(muc_x.elements(MUC, "history"), None) if muc_x is not None else None
        self._enter(occ, sender.full, history, codes, broadcast=True)
        return True

    def _enter(self, occ: Occupant, full: str, history: Optional[domish.Element],
               codes: Iterable[int], broadcast: bool) -> None:
        """§7.2.3-§7.2.16: others' presence, own presence, history, subject."""
        see = self.can_see_jids(occ)
        for other in list(self.occupants.values()):
            if other is occ:
                continue
            pres = self.occupant_presence(other)
            pres["to"] = full
            primary = next(reversed(other.sessions), None)
            pres.addChild(self._presence_x(other, primary if see else None))
            self.send(pres)
        own = [100] if self.config.non_anonymous else []
        if self.archiving:
            own.append(170)
        own.extend(codes)
        if broadcast:
            others = [(f, o) for f, o in self.sessions() if o is not occ]
            base = self.occupant_presence(occ)
            variants: dict[bool, Addressed] = {}
            for f, viewer in others:
                v = self.can_see_jids(viewer)
                if v not in variants:
                    shown = copy_to(base, "")
                    shown.addChild(self._presence_x(occ, full if v else None))
                    variants[v] = Addressed(shown)
                self.send(variants[v].copy(f))
            for f in occ.sessions:
                if f != full:  # the occupant's other sessions see the new one
                    pres = copy_to(base, f)
                    pres.addChild(self._presence_x(occ, f, (110,)))
                    self.send(pres)
        pres = self.occupant_presence(occ)
        pres["to"] = full
        pres.addChild(self._presence_x(occ, full, [110] + own))
        self.send(pres)
        for entry in self.history.select(history, self.config.history_length, self.now()):
            self.send(delayed(entry, full, self.jid))
        subject = domish.Element((ns.CLIENT, "message"))
        subject["type"] = "groupchat"
        subject["from"] = f"{self.jid}/{self.subject_nick}" if self.subject_nick else self.jid
        subject["to"] = full
        subject.addElement("subject", content=self.subject or "")
        self.send(subject)

    def change_nick(self, event: "StanzaEvent", occ: Occupant, nick: str, key: str) -> Any:
        """§7.6: unavailable with 303 and the new nick, then available."""
        other = self.occupants.get(key)
        if other is not None and other is not occ:
            return self.error(event, "conflict", "that nickname is in use")
        for who, (_, reserved, _) in self.affiliations.items():
            if reserved and who != occ.bare and prepare_nick_key(reserved) == key:
                return self.error(event, "conflict", "that nickname is reserved")
        if len(occ.sessions) > 1:
            return self.error(event, "not-acceptable", "leave with your other sessions first")
        self.broadcast_presence(occ, "unavailable", codes=(303,), nick=nick)
        del self.occupants[occ.key]
        occ.nick, occ.key = nick, key
        self.occupants[key] = occ
        occ.presence = event.stanza
        occ.sessions[event.sender.full] = event.stanza
        self.broadcast_presence(occ, self_codes=(210,) if nick != event.to.resource else ())
        return True

    def remove_session(self, occ: Occupant, full: str, source: Optional[domish.Element] = None,
                       codes: Iterable[int] = (), **item: Any) -> None:
        """One session leaves (§7.14); the occupant goes with its last session."""
        occ.sessions.pop(full, None)
        self.by_jid.pop(full, None)
        if occ.sessions:
            self._send_to_gone(occ, full, "unavailable", codes, **item)
            return
        self.occupants.pop(occ.key, None)
        self.broadcast_presence(occ, "unavailable", source=source, codes=codes, **item)
        self._send_to_gone(occ, full, "unavailable", codes, **item)
        self.maybe_vanish()

    def remove_occupant(self, occ: Occupant, codes: Iterable[int], **item: Any) -> None:
        """Kick, ban, membership lost (§8.2, §9.1, §9.4): every session goes."""
        self.occupants.pop(occ.key, None)
        gone = list(occ.sessions)
        for full in gone:
            self.by_jid.pop(full, None)
        self.broadcast_presence(occ, "unavailable", codes=codes, **item)
        for full in gone:
            self._send_to_gone(occ, full, "unavailable", codes, **item)
        occ.sessions.clear()
        self.maybe_vanish()

    def maybe_vanish(self) -> None:
        """A temporary room goes with its last occupant (§10.1.3)."""
        if not self.occupants and not self.config.persistent and not self.destroyed:
            self.service.forget(self)

    # -- messages ----------------------------------------------------------------
    @property
    def archiving(self) -> bool:
        return self.config.persistent and self.config.archive and self.service.options.archive

    def on_message(self, event: "StanzaEvent") -> Any:
        stanza = event.stanza
        sender = event.sender
        mtype = stanza.getAttribute("type", "normal")
        occ = self.by_jid.get(sender.full)
        if mtype == "error":
            if occ is not None and event.kind == "bare":
                # An occupant that bounces the room's messages is gone (333).
                self.remove_session(occ, sender.full, codes=(333,))
            return True
        if occ is not None and not occ.allow(self.now(), self.service.options.stanza_rate,
                                             self.service.options.stanza_burst):
            return self.error(event, "resource-constraint", "you are sending too fast", "wait")
        if event.kind == "full":
            return self.private_message(event, occ)
        if mtype == "groupchat":
            return self.groupchat(event, occ)
        x = next(stanza.elements(MUC_USER, "x"), None)
        if x is not None:
            from chatbx_server.muc.admin import invite

            return invite(self, event, occ, x)
        form = find_form(stanza, REQUEST)
        if form is not None:
            return self.voice_request(event, occ, parse_form(form))
        return True

    def groupchat(self, event: "StanzaEvent", occ: Optional[Occupant]) -> Any:
        stanza = event.stanza
        if occ is None:
            return self.error(event, "not-acceptable", "you are not in this room")
        if occ.role not in ("participant", "moderator"):
            return self.error(event, "forbidden", "you have no voice in this room")
        subject = next(stanza.elements(stanza.uri, "subject"), None)
        has_body = next(stanza.elements(stanza.uri, "body"), None) is not None
        if subject is not None and not has_body:
            if not (occ.role == "moderator" or self.config.change_subject):
                return self.error(event, "forbidden", "you may not change the subject")
            self.subject = str(subject)
            self.subject_nick = occ.nick
            if self.stored:
                self.service.store_call("update_room", self.jid, subject=self.subject,
                                        subject_nick=self.subject_nick)
        retract = next(stanza.elements(RETRACT, "retract"), None)
        if retract is not None:
            from chatbx_server.muc.archive import retract_own

            return retract_own(self, event, occ, retract)
        self.broadcast_message(occ, stanza, archive=subject is None or has_body)
        return True

    def broadcast_message(self, occ: Optional[Occupant], stanza: domish.Element,
                          archive: bool = True) -> domish.Element:
        """Reflect a groupchat message to every session, with the room's ids."""
        msg = domish.Element((ns.CLIENT, "message"))
        msg["type"] = "groupchat"
        msg["from"] = f"{self.jid}/{occ.nick}" if occ is not None else self.jid
        if stanza.getAttribute("id"):
            msg["id"] = stanza["id"]
        if stanza.getAttribute(("http://www.w3.org/XML/1998/namespace", "lang")):
            msg[("http://www.w3.org/XML/1998/namespace", "lang")] = stanza[
                ("http://www.w3.org/XML/1998/namespace", "lang")]
        msg.children = _clean_children(stanza, self.jid)
        stanza_id = new_stanza_id()
        sid = msg.addElement((SID, "stanza-id"))
        sid["id"] = stanza_id
        sid["by"] = self.jid
        if occ is not None:
            msg.addElement((OCCUPANT_ID, "occupant-id"))["id"] = occ.oid
        now = self.now()
        if archive:
            self.history.add(msg, now, stanza_id, occ.bare if occ else None)
            if self.archiving and self.stored:
                self.service.store.archive(self.jid, stanza_id, occ.nick if occ else "",
                                           occ.oid if occ else None, occ.bare if occ else None,
                                           msg.toXml(), now)
        copies = Addressed(msg)
        for full in list(self.by_jid):
            self.send(copies.copy(full))
        return msg

    def private_message(self, event: "StanzaEvent", occ: Optional[Occupant]) -> Any:
        """§7.5: through the room, from the sender's occupant JID."""
        stanza = event.stanza
        if occ is None:
            return self.error(event, "not-acceptable", "you are not in this room")
        if stanza.getAttribute("type") == "groupchat":
            return self.error(event, "bad-request", "groupchat messages go to the room")
        try:
            _, key = prepare_nick(event.to.resource or "", self.service.options.max_nick_length)
        except NickError:
            return self.error(event, "jid-malformed")
        target = self.occupants.get(key)
        if target is None:
            return self.error(event, "item-not-found", "no such occupant")
        allow = self.config.allow_pm
        if allow == "none" or (allow == "moderators" and occ.role != "moderator") or (
                allow == "participants" and occ.role not in ("participant", "moderator")):
            if occ.role != "moderator" or allow == "none":
                return self.error(event, "forbidden", "private messages are not allowed here")
        msg = domish.Element((ns.CLIENT, "message"))
        msg.attributes = {k: v for k, v in stanza.attributes.items() if k not in ("to", "from")}
        msg["from"] = f"{self.jid}/{occ.nick}"
        msg.children = _clean_children(stanza, self.jid)
        msg.addElement((MUC_USER, "x"))
        msg.addElement((OCCUPANT_ID, "occupant-id"))["id"] = occ.oid
        for full in list(target.sessions):
            self.send(copy_to(msg, full))
        return True

    def voice_request(self, event: "StanzaEvent", occ: Optional[Occupant],
                      fields: dict[str, list[str]]) -> Any:
        """§7.13 (request by a visitor) and §8.6 (approval by a moderator)."""
        if occ is None:
            return self.error(event, "not-acceptable", "you are not in this room")
        if occ.role == "moderator" and fields.get("muc#request_allow", ["0"])[0] in ("1", "true"):
            nick = (fields.get("muc#roomnick") or [""])[0]
            try:
                target = self.occupants.get(prepare_nick(nick)[1])
            except NickError:
                target = None
            if target is not None and target.role == "visitor":
                target.role = "participant"
                self.broadcast_presence(target, actor=occ.nick)
            return True
        if occ.role != "visitor" or not self.config.voice_requests:
            return True
        for full, viewer in self.sessions():
            if viewer.role != "moderator":
                continue
            msg = domish.Element((ns.CLIENT, "message"))
            msg["from"] = self.jid
            msg["to"] = full
            form = new_form(REQUEST, title="Voice request")
            form.addElement("instructions", content=f"{occ.nick} asks for voice.")
            add_field(form, "muc#role", "participant", "list-single", "Requested role")
            add_field(form, "muc#jid", event.sender.full, "jid-single", "User ID")
            add_field(form, "muc#roomnick", occ.nick, "text-single", "Room nickname")
            add_field(form, "muc#request_allow", False, "boolean", "Grant voice?")
            msg.addChild(form)
            self.send(msg)
        return True

    def system_message(self, codes: Iterable[int], moderators_only: bool = False,
                       item: Optional[domish.Element] = None) -> None:
        """A message from the room with status codes (§10.2.1) or an item (§9.3)."""
        msg = domish.Element((ns.CLIENT, "message"))
        msg["from"] = self.jid
        msg["type"] = "groupchat"
        x = msg.addElement((MUC_USER, "x"))
        if item is not None:
            x.addChild(item)
        for code in codes:
            x.addElement("status")["code"] = str(code)
        copies = Addressed(msg)
        for full, viewer in self.sessions():
            if not moderators_only or viewer.role == "moderator":
                self.send(copies.copy(full))

    def room_presence(self, extra: domish.Element) -> None:
        """Presence from the room itself (avatar hash, XEP-0486)."""
        pres = domish.Element((ns.CLIENT, "presence"))
        pres["from"] = self.jid
        pres.addChild(extra)
        copies = Addressed(pres)
        for full in list(self.by_jid):
            self.send(copies.copy(full))

    def destroy(self, alternate: Optional[str] = None, reason: Optional[str] = None,
                password: Optional[str] = None, codes: Iterable[int] = ()) -> None:
        """§10.9: every occupant gets unavailable with <destroy/>; the room goes."""
        self.destroyed = True
        el = domish.Element((MUC_USER, "destroy"))
        if alternate:
            el["jid"] = alternate
        if reason:
            el.addElement("reason", content=reason)
        if password:
            el.addElement("password", content=password)
        for occ in list(self.occupants.values()):
            for full in list(occ.sessions):
                pres = self.occupant_presence(occ, "unavailable")
                pres["to"] = full
                pres.addChild(self._presence_x(occ, full, (110,) + tuple(codes), role="none",
                                               extra=el))
                self.send(pres)
        self.occupants.clear()
        self.by_jid.clear()
        self.service.forget(self, delete=True)


def prepare_nick_key(nick: str) -> Optional[str]:
    try:
        return prepare_nick(nick)[1]
    except NickError:
        return None
