"""Requests to a room: muc#admin (§8-§9), muc#owner (§10), invitations (§7.8),
disco (§6.4), self-ping (XEP-0410) and the room's vCard (avatar, XEP-0486).

An muc#admin ``set`` is all or nothing (§9.x "the service MUST ... apply
either all or none"): every item is checked before any is applied. Each
change is announced as the XEP says: role changes as the occupant's new
presence (kick: unavailable with 307), affiliation changes as presence for
occupants (ban: 301, membership lost in a members-only room: 321) and, for
people not in the room, as a message with the item (§9.3) — to everyone
in non-anonymous rooms, to moderators otherwise — which is what keeps
OMEMO group chats' member lists current.
"""

from __future__ import annotations

import hashlib
import base64
from typing import TYPE_CHECKING, Any, Optional

from twisted.words.xish import domish

from chatbx_server.muc.config import MUC, apply_form, config_form, parse_form
from chatbx_server.muc.occupants import AFFILIATIONS, ROLES, NickError, Occupant, \
    can_set_affiliation, can_set_role, default_role, prepare_nick
from chatbx_server.muc.room import MUC_USER, VCARD_UPDATE, Room
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.jid import InvalidJID, JID
from chatbx_server.xmpp.stanzas import StanzaError, error_reply, result_reply

if TYPE_CHECKING:
    from chatbx_server.events import StanzaEvent

MUC_ADMIN = MUC + "#admin"
MUC_OWNER = MUC + "#owner"
VCARD = "vcard-temp"
MAM = "urn:xmpp:mam:2"
MODERATE = "urn:xmpp:message-moderate:1"


def _reply(room: Room, event: "StanzaEvent", child: Optional[domish.Element] = None) -> bool:
    reply = result_reply(event.stanza)
    if child is not None:
        reply.addChild(child)
    room.send(reply)
    return True


def _fail(room: Room, event: "StanzaEvent", error: StanzaError) -> bool:
    room.send(error_reply(event.stanza, error))
    return True


def room_iq(room: Room, event: "StanzaEvent") -> Any:
    """Dispatch an IQ to the room or to an occupant JID."""
    stanza = event.stanza
    itype = stanza.getAttribute("type")
    if event.kind == "full":
        from chatbx_server.muc.forward import occupant_iq

        return occupant_iq(room, event)
    if itype not in ("get", "set"):
        return True
    payload = stanza.firstChildElement()
    key = (itype, payload.uri, payload.name)
    try:
        if key == ("get", ns.DISCO_INFO, "query"):
            if payload.getAttribute("node"):
                raise StanzaError("item-not-found")
            if not _may_see(room, event):
                raise StanzaError("item-not-found")
            return _reply(room, event, room.service.room_info(room))
        if key == ("get", ns.DISCO_ITEMS, "query"):
            # §6.5: occupants are not listed (nicks could be harvested).
            return _reply(room, event, domish.Element((ns.DISCO_ITEMS, "query")))
        if key == ("get", ns.PING, "ping"):
            return _reply(room, event)
        if payload.uri == MUC_ADMIN and payload.name == "query":
            return admin_get(room, event, payload) if itype == "get" else \
                admin_set(room, event, payload)
        if payload.uri == MUC_OWNER and payload.name == "query":
            return owner_get(room, event) if itype == "get" else owner_set(room, event, payload)
        if payload.uri == VCARD and payload.name == "vCard":
            return vcard(room, event, payload, itype)
        if payload.uri == MAM or payload.uri == MODERATE:
            from chatbx_server.muc import archive

            if payload.uri == MODERATE and key == ("set", MODERATE, "moderate"):
                return archive.moderate(room, event, payload)
            if payload.uri == MAM and payload.name == "query":
                return archive.query(room, event, payload, itype)
        raise StanzaError("service-unavailable")
    except StanzaError as err:
        return _fail(room, event, err)


def _may_see(room: Room, event: "StanzaEvent") -> bool:
    """Locked rooms are invisible to all but their owners (§10.1.1)."""
    return not room.locked or room.affiliation(event.sender.bare) == "owner"


def self_ping(room: Room, event: "StanzaEvent") -> bool:
    """XEP-0410 §3: the room answers for an occupant pinging itself."""
    occ = room.by_jid.get(event.sender.full)
    if occ is None:
        raise StanzaError("not-acceptable", text="you are not in this room")
    try:
        key = prepare_nick(event.to.resource or "")[1]
    except NickError:
        raise StanzaError("not-acceptable") from None
    if key != occ.key and key not in room.occupants:
        raise StanzaError("item-not-found")
    return _reply(room, event)


# -- muc#admin -------------------------------------------------------------------

def _actor(room: Room, event: "StanzaEvent") -> tuple[Optional[Occupant], str]:
    return room.by_jid.get(event.sender.full), room.affiliation(event.sender.bare)


def admin_get(room: Room, event: "StanzaEvent", query: domish.Element) -> bool:
    """§9.5, §9.8, §9.10, §8.5 and §10.5: lists by affiliation or role."""
    item = next(query.elements(MUC_ADMIN, "item"), None)
    if item is None:
        raise StanzaError("bad-request")
    occ, aff = _actor(room, event)
    out = domish.Element((MUC_ADMIN, "query"))
    wanted_aff = item.getAttribute("affiliation")
    wanted_role = item.getAttribute("role")
    if wanted_aff is not None:
        if wanted_aff not in AFFILIATIONS or wanted_aff == "none":
            raise StanzaError("bad-request")
        # Admins and owners see every list; in non-anonymous rooms members
        # may read member/admin/owner lists (OMEMO in closed group chats).
        allowed = aff in ("admin", "owner") or (
            wanted_aff != "outcast" and aff == "member" and room.config.non_anonymous) or (
            wanted_aff != "outcast" and room.config.non_anonymous and occ is not None
            and not room.config.members_only)
        if not allowed:
            raise StanzaError("forbidden")
        for who, (a, nick, reason) in sorted(room.affiliations.items()):
            if a != wanted_aff:
                continue
            el = out.addElement("item")
            el["affiliation"] = a
            el["jid"] = who
            if nick:
                el["nick"] = nick
            if reason:
                el.addElement("reason", content=reason)
    elif wanted_role is not None:
        if wanted_role not in ("moderator", "participant", "visitor"):
            raise StanzaError("bad-request")
        if occ is None or occ.role != "moderator":
            raise StanzaError("forbidden")
        for other in room.occupants.values():
            if other.role != wanted_role:
                continue
            el = out.addElement("item")
            el["role"] = other.role
            el["affiliation"] = room.affiliation(other.bare)
            el["nick"] = other.nick
            if room.can_see_jids(occ):
                el["jid"] = next(reversed(other.sessions), other.bare)
    else:
        raise StanzaError("bad-request")
    return _reply(room, event, out)


def admin_set(room: Room, event: "StanzaEvent", query: domish.Element) -> bool:
    occ, aff = _actor(room, event)
    actor_role = occ.role if occ is not None else "none"
    changes: list[tuple[str, Any, str, Optional[str], Optional[str]]] = []
    pending_affs = dict((k, v[0]) for k, v in room.affiliations.items())
    for item in query.elements(MUC_ADMIN, "item"):
        reason_el = next(item.elements(MUC_ADMIN, "reason"), None)
        reason = str(reason_el) if reason_el is not None else None
        if item.getAttribute("role") is not None and item.getAttribute("nick") is not None:
            new_role = item["role"]
            if new_role not in ROLES:
                raise StanzaError("bad-request")
            try:
                target = room.occupants.get(prepare_nick(item["nick"])[1])
            except NickError:
                target = None
            if target is None:
                raise StanzaError("item-not-found")
            refusal = can_set_role(actor_role, aff, target.role, room.affiliation(target.bare),
                                   new_role)
            if refusal:
                raise StanzaError(refusal)
            changes.append(("role", target, new_role, reason, None))
        elif item.getAttribute("affiliation") is not None and (
                item.getAttribute("jid") or item.getAttribute("nick")):
            new_aff = item["affiliation"]
            if new_aff not in AFFILIATIONS:
                raise StanzaError("bad-request")
            if item.getAttribute("jid"):
                try:
                    who = JID.parse(item["jid"]).bare
                except InvalidJID:
                    raise StanzaError("jid-malformed") from None
            else:
                # Some clients name an occupant by nick (§9: by JID, but the
                # room knows whose nick it is).
                try:
                    by_nick = room.occupants.get(prepare_nick(item["nick"])[1])
                except NickError:
                    by_nick = None
                if by_nick is None:
                    raise StanzaError("item-not-found")
                who = by_nick.bare
            refusal = can_set_affiliation(aff, pending_affs.get(who, "none"), new_aff)
            if refusal:
                raise StanzaError(refusal)
            if new_aff == "none":
                pending_affs.pop(who, None)
            else:
                pending_affs[who] = new_aff
            changes.append(("affiliation", who, new_aff, reason,
                            item.getAttribute("nick") if item.getAttribute("jid") else None))
        else:
            raise StanzaError("bad-request")
    if not changes:
        raise StanzaError("bad-request")
    if "owner" not in pending_affs.values():
        # §10.7: a room never loses its last owner.
        raise StanzaError("conflict", text="a room needs an owner")
    actor_nick = occ.nick if occ is not None else None
    for kind, target, value, reason, nick in changes:
        if kind == "role":
            set_role(room, target, value, actor_nick, reason)
        else:
            set_affiliation(room, target, value, actor_nick, reason, nick)
    return _reply(room, event)


def set_role(room: Room, target: Occupant, role: str, actor: Optional[str],
             reason: Optional[str]) -> None:
    if target.key not in room.occupants:
        return
    if role == "none":
        room.remove_occupant(target, (307,), role="none", actor=actor, reason=reason)
        return
    target.role = role
    room.broadcast_presence(target, actor=actor, reason=reason)


def set_affiliation(room: Room, who: str, affiliation: str, actor: Optional[str],
                    reason: Optional[str], nick: Optional[str] = None) -> None:
    """Store the change and tell the room (§9.1-§9.4, §10.3-§10.8)."""
    if affiliation == "none":
        room.affiliations.pop(who, None)
    else:
        room.affiliations[who] = (affiliation, nick, reason)
    if room.stored:
        room.service.store_call("set_affiliation", room.jid, who,
                                None if affiliation == "none" else affiliation, nick, reason)
    present = [o for o in room.occupants.values() if o.bare == who]
    for occ in present:
        if affiliation == "outcast":
            room.remove_occupant(occ, (301,), role="none", actor=actor, reason=reason)
        elif affiliation == "none" and room.config.members_only:
            room.remove_occupant(occ, (321,), role="none", actor=actor, reason=reason)
        else:
            new_role = default_role(affiliation, room.config.moderated)
            if occ.role == "moderator" and affiliation not in ("admin", "owner"):
                occ.role = new_role
            elif new_role == "moderator" or occ.role == "visitor" and affiliation != "none":
                occ.role = new_role
            room.broadcast_presence(occ, actor=actor, reason=reason)
    if not present:
        item = domish.Element((MUC_USER, "item"))
        item["affiliation"] = affiliation
        item["jid"] = who
        item["role"] = "none"
        room.system_message((), moderators_only=not room.config.non_anonymous, item=item)


# -- muc#owner ---------------------------------------------------------------------

def owner_get(room: Room, event: "StanzaEvent") -> bool:
    if room.affiliation(event.sender.bare) != "owner":
        raise StanzaError("forbidden")
    query = domish.Element((MUC_OWNER, "query"))
    query.addChild(config_form(room.config, f"Configuration of {room.jid}"))
    return _reply(room, event, query)


def owner_set(room: Room, event: "StanzaEvent", query: domish.Element) -> bool:
    """§10.1.2 (instant), §10.1.3 (reserved), §10.2 (change), §10.9 (destroy)."""
    if room.affiliation(event.sender.bare) != "owner":
        raise StanzaError("forbidden")
    destroy = next(query.elements(MUC_OWNER, "destroy"), None)
    if destroy is not None:
        reason = next(destroy.elements(MUC_OWNER, "reason"), None)
        password = next(destroy.elements(MUC_OWNER, "password"), None)
        _reply(room, event)
        room.destroy(destroy.getAttribute("jid"), str(reason) if reason is not None else None,
                     str(password) if password is not None else None)
        return True
    form = next(query.elements(ns.DATA_FORMS, "x"), None)
    if form is None:
        raise StanzaError("bad-request")
    if form.getAttribute("type") == "cancel":
        _reply(room, event)
        if room.locked:
            room.destroy()  # §10.1.3: a canceled initial configuration destroys the room
        return True
    if form.getAttribute("type") != "submit":
        raise StanzaError("bad-request")
    old = room.config
    new = apply_form(old, parse_form(form), room.service.options.max_occupants)
    room.config = new
    was_locked, room.locked = room.locked, False
    _reply(room, event)
    room.service.persist(room)
    if not was_locked:
        codes = [104]
        if new.non_anonymous != old.non_anonymous:
            codes.append(172 if new.non_anonymous else 173)
        if room.archiving != (old.persistent and old.archive and room.service.options.archive):
            codes.append(170 if room.archiving else 171)
        room.system_message(codes)
    if new.members_only and not old.members_only:
        for occ in list(room.occupants.values()):
            if room.affiliation(occ.bare) == "none":
                room.remove_occupant(occ, (322,), role="none")
    if not room.occupants:
        room.maybe_vanish()
    return True


# -- invitations (§7.8.2) --------------------------------------------------------------

def invite(room: Room, event: "StanzaEvent", occ: Optional[Occupant], x: domish.Element) -> bool:
    sender = event.sender
    aff = room.affiliation(sender.bare)
    for inv in x.elements(MUC_USER, "invite"):
        if occ is None:
            return room.error(event, "not-acceptable", "you are not in this room")
        if room.config.members_only and not room.config.allow_invites and \
                aff not in ("admin", "owner"):
            return room.error(event, "forbidden", "only admins may invite to this room")
        try:
            to = JID.parse(inv.getAttribute("to") or "")
        except InvalidJID:
            return room.error(event, "jid-malformed")
        reason = next(inv.elements(MUC_USER, "reason"), None)
        msg = domish.Element((ns.CLIENT, "message"))
        msg["from"] = room.jid
        msg["to"] = to.full
        ux = msg.addElement((MUC_USER, "x"))
        el = ux.addElement("invite")
        el["from"] = sender.full if room.config.non_anonymous else f"{room.jid}/{occ.nick}"
        if reason is not None:
            el.addElement("reason", content=str(reason))
        if room.config.password:
            ux.addElement("password", content=room.config.password)
        conference = msg.addElement(("jabber:x:conference", "x"))
        conference["jid"] = room.jid
        msg.addElement("body", content=f"{occ.nick} invites you to the room {room.jid}"
                       + (f": {reason}" if reason is not None else ""))
        if room.config.members_only and room.affiliation(to.bare) == "none":
            # §7.8.2: an invitation to a members-only room makes a member.
            set_affiliation(room, to.bare, "member", occ.nick, None)
        room.send(msg)
    for dec in x.elements(MUC_USER, "decline"):
        try:
            to = JID.parse(dec.getAttribute("to") or "")
        except InvalidJID:
            return room.error(event, "jid-malformed")
        reason = next(dec.elements(MUC_USER, "reason"), None)
        msg = domish.Element((ns.CLIENT, "message"))
        msg["from"] = room.jid
        msg["to"] = to.full
        el = msg.addElement((MUC_USER, "x")).addElement("decline")
        el["from"] = sender.bare
        if reason is not None:
            el.addElement("reason", content=str(reason))
        room.send(msg)
    return True


# -- the room's vCard (avatar) ---------------------------------------------------------

def vcard(room: Room, event: "StanzaEvent", card: domish.Element, itype: str) -> bool:
    """vcard-temp on the room JID; owners set it; the photo hash is announced."""
    if itype == "get":
        if room.vcard:
            from chatbx_server.xmpp.stanzas import parse_stanza

            wrapper = parse_stanza(f"<iq>{room.vcard}</iq>")
            return _reply(room, event, wrapper.firstChildElement())
        return _reply(room, event, domish.Element((VCARD, "vCard")))
    if room.affiliation(event.sender.bare) != "owner":
        raise StanzaError("forbidden")
    photo_hash = None
    for photo in card.elements(VCARD, "PHOTO"):
        binval = next(photo.elements(VCARD, "BINVAL"), None)
        if binval is not None:
            try:
                data = base64.b64decode("".join(str(binval).split()), validate=True)
            except ValueError:
                raise StanzaError("bad-request", text="BINVAL is not base64") from None
            photo_hash = hashlib.sha1(data).hexdigest()
    xml = card.toXml() if card.firstChildElement() is not None else None
    if xml is not None and len(xml) > room.service.options.max_vcard_size:
        raise StanzaError("not-acceptable", text="vCard too large")
    room.vcard, room.avatar_hash = xml, photo_hash
    if room.stored:
        room.service.store_call("update_room", room.jid, vcard=xml, avatar_hash=photo_hash)
    _reply(room, event)
    update = domish.Element((VCARD_UPDATE, "x"))
    update.addElement("photo", content=photo_hash or "")
    room.room_presence(update)
    room.system_message((104,))
    return True
