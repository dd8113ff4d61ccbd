"""The room archive: XEP-0313 on the room JID, retraction and moderation.

Messages are archived as the room broadcast them (no 'to', the room's
stanza-id and occupant-id), so a page shows what occupants saw; in a
semi-anonymous room no real JID is in it. Paging is XEP-0059 RSM by the
room's stanza ids.

Retraction by the author (XEP-0424 0.4, ``urn:xmpp:message-retract:1``)
and by a moderator (XEP-0425 0.3, ``urn:xmpp:message-moderate:1``) are
broadcast to the room and replace the message in the archive and the
history with a tombstone (XEP-0424 §5.1): late joiners see that something
was removed, never the text.

Who may read: anyone who may enter (not an outcast; a member or more in a
members-only room). Only persistent rooms with archiving on keep one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.xish import domish

from chatbx_server.logs import log_observer
from chatbx_server.muc.config import add_field, new_form, parse_form
from chatbx_server.muc.history import delayed, parse_stamp, stamp_text
from chatbx_server.muc.occupants import Occupant
from chatbx_server.muc.room import OCCUPANT_ID, RETRACT, SID, Room, copy_to
from chatbx_server.storage.muc import ArchiveRow
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.stanzas import StanzaError, error_reply, parse_stanza, result_reply

if TYPE_CHECKING:
    from chatbx_server.events import StanzaEvent

log = Logger(observer=log_observer)

MAM = "urn:xmpp:mam:2"
RSM = "http://jabber.org/protocol/rsm"
FORWARD = "urn:xmpp:forward:0"
MODERATE = "urn:xmpp:message-moderate:1"


def load_history(room: Room, rows: Iterable[ArchiveRow]) -> None:
    """Refill a loaded room's history from its archive."""
    for row in rows:
        try:
            stanza = parse_stanza(row.stanza)
        except Exception:
            continue
        room.history.add(stanza, row.created_at, row.stanza_id, row.sender)


def _may_read(room: Room, bare: str) -> bool:
    aff = room.affiliation(bare)
    if aff == "outcast":
        return False
    return not room.config.members_only or aff != "none"


def query(room: Room, event: "StanzaEvent", query_el: domish.Element, itype: str) -> Any:
    """XEP-0313 §4: a query (set) or the form of its fields (get)."""
    if itype == "get":
        reply = domish.Element((MAM, "query"))
        form = new_form(MAM)
        for var in ("start", "end", "before-id", "after-id"):
            add_field(form, var, [], "text-single")
        reply.addChild(form)
        room.send(_with(result_reply(event.stanza), reply))
        return True
    if not room.archiving:
        raise StanzaError("service-unavailable", text="this room keeps no archive")
    if not _may_read(room, event.sender.bare):
        raise StanzaError("forbidden")
    kwargs: dict[str, Any] = {}
    submitted = next(query_el.elements(ns.DATA_FORMS, "x"), None)
    if submitted is not None:
        fields = parse_form(submitted)
        try:
            for var, key in (("start", "start"), ("end", "end")):
                if fields.get(var):
                    kwargs[key] = parse_stamp(fields[var][0])
        except ValueError:
            raise StanzaError("bad-request", text="bad timestamp") from None
        if fields.get("after-id"):
            kwargs["after"] = fields["after-id"][0]
        if fields.get("before-id"):
            kwargs["before"] = fields["before-id"][0]
        if fields.get("with"):
            raise StanzaError("feature-not-implemented", text="'with' is not supported on rooms")
    limit = room.service.options.max_archive_page
    rsm = next(query_el.elements(RSM, "set"), None)
    if rsm is not None:
        for child in rsm.elements():
            text = str(child).strip()
            if child.name == "max" and text:
                try:
                    limit = max(0, min(limit, int(text)))
                except ValueError:
                    raise StanzaError("bad-request") from None
            elif child.name == "after" and text:
                kwargs["after"] = text
            elif child.name == "before":
                if text:
                    kwargs["before"] = text
                else:
                    kwargs["last"] = True
    queryid = query_el.getAttribute("queryid")
    to = event.sender.full
    d = room.service.store.query(room.jid, limit=max(limit, 1), **kwargs)

    def answer(result: tuple[list[ArchiveRow], bool, int]) -> None:
        rows, complete, count = result
        if limit == 0:
            rows = []
        for row in rows:
            msg = domish.Element((ns.CLIENT, "message"))
            msg["from"] = room.jid
            msg["to"] = to
            res = msg.addElement((MAM, "result"))
            res["id"] = row.stanza_id
            if queryid:
                res["queryid"] = queryid
            fwd = res.addElement((FORWARD, "forwarded"))
            fwd.addElement((ns.DELAY, "delay"))["stamp"] = stamp_text(row.created_at)
            fwd.addChild(parse_stanza(row.stanza))
            room.send(msg)
        reply = result_reply(event.stanza)
        fin = reply.addElement((MAM, "fin"))
        if complete:
            fin["complete"] = "true"
        rset = fin.addElement((RSM, "set"))
        if rows:
            rset.addElement("first", content=rows[0].stanza_id)
            rset.addElement("last", content=rows[-1].stanza_id)
        rset.addElement("count", content=str(count))
        room.send(reply)

    def failed(failure: Any) -> None:
        if failure.check(KeyError):
            room.send(error_reply(event.stanza, StanzaError("item-not-found")))
            return
        log.failure("muc: archive query failed", failure)
        room.send(error_reply(event.stanza, StanzaError("internal-server-error")))

    d.addCallbacks(answer, failed)
    return d


def _with(reply: domish.Element, child: domish.Element) -> domish.Element:
    reply.addChild(child)
    return reply


def tombstone(original: domish.Element, stamp: float,
              moderated: Optional[domish.Element] = None,
              reason: Optional[str] = None) -> domish.Element:
    """The archived form of a retracted message (XEP-0424 §5.1, XEP-0425 §5)."""
    msg = domish.Element((ns.CLIENT, "message"))
    for attr in ("from", "type", "id"):
        if original.getAttribute(attr):
            msg[attr] = original[attr]
    retracted = msg.addElement((RETRACT, "retracted"))
    retracted["stamp"] = stamp_text(stamp)
    if moderated is not None:
        retracted.addChild(moderated)
    if reason:
        retracted.addElement("reason", content=reason)
    for child in original.elements():
        if (child.uri, child.name) in ((SID, "stanza-id"), (OCCUPANT_ID, "occupant-id")):
            msg.addChild(child)
    return msg


def _original(room: Room, stanza_id: str) -> defer.Deferred[Optional[tuple[domish.Element,
                                                                          Optional[str]]]]:
    """The message (and its sender's bare JID) the room gave ``stanza_id``."""
    entry = room.history.find(stanza_id)
    if entry is not None:
        return defer.succeed((entry.stanza, entry.sender))
    if not (room.archiving and room.stored):
        return defer.succeed(None)
    d: defer.Deferred[Any] = room.service.store.get(room.jid, stanza_id)
    d.addCallback(lambda row: None if row is None or row.retracted
                  else (parse_stanza(row.stanza), row.sender))
    return d


def _remove(room: Room, stanza_id: str, stone: domish.Element) -> None:
    room.history.replace(stanza_id, stone)
    if room.archiving and room.stored:
        room.service.store_call("retract", room.jid, stanza_id, stone.toXml())


def retract_own(room: Room, event: "StanzaEvent", occ: Occupant, retract: domish.Element) -> Any:
    """XEP-0424: the author retracts; the retraction is reflected and archived."""
    stanza_id = retract.getAttribute("id")
    if not stanza_id:
        return room.error(event, "bad-request", "retract needs an id")
    d = _original(room, stanza_id)

    def found(original: Optional[tuple[domish.Element, Optional[str]]]) -> None:
        if original is None:
            room.error(event, "item-not-found", "no such message")
            return
        message, sender = original
        if sender != occ.bare:
            room.error(event, "forbidden", "only the author may retract a message")
            return
        if occ.key not in room.occupants:
            return
        room.broadcast_message(occ, event.stanza, archive=False)
        _remove(room, stanza_id, tombstone(message, room.now()))

    d.addCallback(found)
    d.addErrback(lambda f: log.failure("muc: retraction failed", f))
    return d


def moderate(room: Room, event: "StanzaEvent", request: domish.Element) -> Any:
    """XEP-0425 §4: a moderator retracts someone's message."""
    occ = room.by_jid.get(event.sender.full)
    if occ is None or occ.role != "moderator":
        raise StanzaError("forbidden")
    stanza_id = request.getAttribute("id")
    if not stanza_id or next(request.elements(RETRACT, "retract"), None) is None:
        raise StanzaError("bad-request")
    reason_el = next(request.elements(MODERATE, "reason"), None)
    reason = str(reason_el) if reason_el is not None else None
    d = _original(room, stanza_id)

    def found(original: Optional[tuple[domish.Element, Optional[str]]]) -> None:
        if original is None:
            room.send(error_reply(event.stanza, StanzaError("item-not-found")))
            return
        message, _ = original
        moderated = domish.Element((MODERATE, "moderated"))
        moderated["by"] = f"{room.jid}/{occ.nick}"
        moderated.addElement((OCCUPANT_ID, "occupant-id"))["id"] = occ.oid
        announce = domish.Element((ns.CLIENT, "message"))
        announce["type"] = "groupchat"
        announce["from"] = room.jid
        retract = announce.addElement((RETRACT, "retract"))
        retract["id"] = stanza_id
        retract.addChild(moderated)
        if reason:
            retract.addElement("reason", content=reason)
        announce.addElement("body", content="This message has been retracted by a moderator.")
        for full, _ in room.sessions():
            room.send(copy_to(announce, full))
        _remove(room, stanza_id, tombstone(message, room.now(), moderated, reason))
        room.send(result_reply(event.stanza))

    d.addCallback(found)
    d.addErrback(lambda f: log.failure("muc: moderation failed", f))
    return d


__all__ = ["delayed", "load_history", "moderate", "query", "retract_own", "tombstone"]
