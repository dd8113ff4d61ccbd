"""The Multi-User Chat service (XEP-0045 1.35) on ``conference.<domain>``.

One service domain per hosted domain by default (``[modules.muc]``
``subdomain``, ``domains`` to restrict, ``names`` to rename one). Its
stanzas reach it as a router service: ``router.services[domain](event)``
gets the same StanzaEvent as local delivery (sender, origin session), after
the sender's ``pre-*`` hooks have run. DESIGN.md imagined service domains
as wokkel InternalComponents; a room needs the sender and must fan out
through ``router.route`` (occupants may be remote or on another node), and
wokkel's MUC support is a client, so a plain router service fits better
and keeps the hot path free of XPath observers.

Rooms are created on first entry (§10.1) by users the ``create`` policy
allows, locked (201) until configured or accepted as an instant room.
Persistent rooms (configuration, affiliations, subject, avatar) and their
archive are in the database and loaded when the module starts; stanzas
arriving before that wait for it. Temporary rooms live in memory and go
with their last occupant. Each room lives in one process: on a cluster a
room's stanzas go to the node that owns it (cluster/rooms.py), and a node
that takes a room over re-reads the stored rooms (``reload_stored``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.xish import domish

from chatbx_server.events import StanzaEvent
from chatbx_server.logs import log_observer
from chatbx_server.modules import Feature
from chatbx_server.muc.config import MUC, RoomConfig, disco_features, roominfo_form
from chatbx_server.muc.occupants import NickError, prepare_nick
from chatbx_server.muc.room import Room
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.stanzas import StanzaError, error_reply, result_reply

log = Logger(observer=log_observer)

CREATE_POLICIES = ("local", "anyone", "listed")
SECRET_NAME = "muc-occupant-id"


@dataclass(frozen=True)
class Options:
    """``[modules.muc]``."""

    #: the service is ``<subdomain>.<domain>`` for each hosted domain
    subdomain: str = "conference"
    #: hosted domains that get a service (empty: all of them)
    domains: tuple[str, ...] = ()
    #: hosted domain -> service domain, to rename one
    names: dict[str, str] = field(default_factory=dict)
    #: who may create rooms: "local" (users of the hosted domains), "anyone",
    #: or "listed" (only ``creators``); ``creators`` may always
    create: str = "local"
    creators: tuple[str, ...] = ()
    #: rooms one bare JID may have created (persistent and temporary)
    max_rooms_per_user: int = 50
    #: rooms on the whole service
    max_rooms: int = 100000
    #: occupants per room (room configurations may set fewer)
    max_occupants: int = 1000
    #: groupchat/private messages per second per occupant, and the burst
    stanza_rate: float = 5.0
    stanza_burst: float = 20.0
    #: messages each room keeps in memory for history on join
    history_size: int = 50
    #: history sent on join when the room's configuration does not say
    history_default: int = 20
    #: room localparts must match this (a Python regex, whole name), and be
    #: at most this long
    room_name_pattern: str = ""
    room_name_max_length: int = 256
    max_nick_length: int = 64
    #: persistent rooms may archive (XEP-0313); false disables the archive
    archive: bool = True
    #: new rooms' defaults
    default_persistent: bool = False
    default_public: bool = True
    #: rooms listed in the service's disco#items at most
    max_listed: int = 500
    #: archive results per MAM page at most
    max_archive_page: int = 100
    #: bytes of a room's vCard (avatar) at most
    max_vcard_size: int = 131072

    def __post_init__(self) -> None:
        if self.create not in CREATE_POLICIES:
            raise ValueError(f"create must be one of {', '.join(CREATE_POLICIES)}")
        for name in ("max_rooms_per_user", "max_rooms", "max_occupants", "max_listed",
                     "max_archive_page", "room_name_max_length", "max_nick_length",
                     "max_vcard_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.stanza_rate <= 0 or self.stanza_burst < 1:
            raise ValueError("stanza_rate must be positive and stanza_burst at least 1")
        if self.history_size < 0 or self.history_default < 0:
            raise ValueError("history sizes must not be negative")
        try:
            re.compile(self.room_name_pattern)
        except re.error as exc:
            raise ValueError(f"room_name_pattern: {exc}") from None


class MucFeature(Feature):
    name = "muc"
    spec = ("XEP-0045 1.35 (Multi-User Chat), XEP-0249 1.2 (Direct invitations, client side), "
            "XEP-0313 (on rooms), XEP-0359, XEP-0410, XEP-0421, XEP-0424, XEP-0425, XEP-0486")
    Options = Options

    def setup(self) -> None:
        self.options: Options
        self.router = self.server.router
        self.store = self.server.stores.muc
        self.rooms: dict[str, Room] = {}
        #: service domain -> hosted domain
        self.services: dict[str, str] = {}
        for host in sorted(self.server.hosts):
            if self.options.domains and host not in self.options.domains:
                continue
            service = self.options.names.get(host) or f"{self.options.subdomain}.{host}"
            self.services[service] = host
            self.router.services[service] = self.route
        self.secret = b""
        self._pending: Optional[list[StanzaEvent]] = []
        self.ready = self._load()

    def teardown(self) -> None:
        for service in self.services:
            if self.router.services.get(service) == self.route:
                del self.router.services[service]
        super().teardown()

    @defer.inlineCallbacks
    def _load(self) -> Any:
        try:
            self.secret = yield self.server.secrets.get(SECRET_NAME)
            records = yield self.reload_stored()
            log.info("muc: {rooms} stored rooms on {services}", rooms=len(records),
                     services=",".join(sorted(self.services)))
        except Exception:
            log.failure("muc: loading the stored rooms failed")
        pending, self._pending = self._pending or [], None
        for event in pending:
            self.route(event)

    @defer.inlineCallbacks
    def reload_stored(self) -> Any:
        """(Re)load the stored rooms; a room with occupants here is kept as
        it is (on a cluster, rooms another node owned until it died are
        taken over from the database: cluster/rooms.py)."""
        from chatbx_server.muc.archive import load_history

        records = yield self.store.load_rooms(list(self.services))
        for rec in records:
            config = RoomConfig.from_dict(rec.config)
            rows: Any = ()
            if config.history_length and self.options.history_size:
                rows = yield self.store.recent(rec.jid, self.options.history_size)
            # Checked after the last wait: a room someone joined meanwhile is
            # live state and stays; an empty one is replaced whole, history
            # included, in this one reactor turn.
            current = self.rooms.get(rec.jid)
            if current is not None and (current.occupants or current.by_jid):
                continue
            room = Room(self, rec.jid, config, rec.creator)
            room.affiliations = dict(rec.affiliations)
            room.subject, room.subject_nick = rec.subject, rec.subject_nick
            room.vcard, room.avatar_hash = rec.vcard, rec.avatar_hash
            room.stored = True
            load_history(room, rows)
            self.rooms[rec.jid] = room
        return records

    # -- plumbing used by rooms ----------------------------------------------------
    def store_call(self, method: str, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        d = defer.maybeDeferred(getattr(self.store, method), *args, **kwargs)
        d.addErrback(lambda f: log.failure("muc: {method} failed", f, method=method))
        return d

    def persist(self, room: Room) -> defer.Deferred[Any]:
        """Save a persistent room as it is now; forget a room no longer persistent."""
        if room.config.persistent:
            room.stored = True
            return self.store_call("save_room", room.jid, room.config.to_dict(), room.subject,
                                   room.subject_nick, room.creator, room.affiliations)
        if room.stored:
            room.stored = False
            return self.store_call("delete_room", room.jid)
        return defer.succeed(None)

    def forget(self, room: Room, delete: bool = False) -> None:
        if self.rooms.get(room.jid) is room:
            del self.rooms[room.jid]
        if delete and room.stored:
            room.stored = False
            self.store_call("delete_room", room.jid)

    # -- routing -----------------------------------------------------------------
    def route(self, event: StanzaEvent) -> Any:
        if self._pending is not None:
            self._pending.append(event)
            return True
        if event.sender is None:
            return True
        # Filters of other modules (rtbl: listed senders) may drop it.
        if self.server.events.fire("muc/stanza", event) is not None:
            return True
        name = event.stanza.name
        if event.to.user is None:
            if name == "iq":
                return self.service_iq(event)
            return True
        room = self.rooms.get(event.to.bare)
        if room is None:
            if name == "presence" and event.stanza.getAttribute("type") is None \
                    and event.to.resource is not None:
                return self.create(event)
            if name == "iq" and event.stanza.getAttribute("type") in ("result", "error"):
                return True
            if event.stanza.getAttribute("type") in ("error", "unavailable"):
                return True
            return self.router.bounce(event.stanza, "item-not-found")
        if name == "presence":
            return room.on_presence(event)
        if name == "message":
            return room.on_message(event)
        from chatbx_server.muc.admin import room_iq

        return room_iq(room, event)

    def may_create(self, sender: Any) -> Optional[str]:
        """None when ``sender`` may create a room, else why not."""
        opts = self.options
        if sender.bare in opts.creators:
            return None
        if opts.create == "listed" or (opts.create == "local" and
                                       sender.host not in self.server.hosts):
            return "room creation is restricted"
        return None

    def create(self, event: StanzaEvent) -> Any:
        """§10.1.1: a new room, locked for its owner until configured."""
        sender, to = event.sender, event.to
        refusal = self.may_create(sender)
        if refusal is not None:
            return self.router.bounce(event.stanza, "not-allowed", refusal)
        opts = self.options
        name = to.user or ""
        if len(name) > opts.room_name_max_length or (
                opts.room_name_pattern and not re.fullmatch(opts.room_name_pattern, name)):
            return self.router.bounce(event.stanza, "not-acceptable", "room name not allowed")
        if len(self.rooms) >= opts.max_rooms:
            return self.router.bounce(event.stanza, "resource-constraint", "too many rooms")
        if sum(1 for r in self.rooms.values() if r.creator == sender.bare) >= \
                opts.max_rooms_per_user and sender.bare not in opts.creators:
            return self.router.bounce(event.stanza, "not-allowed", "you have too many rooms")
        try:
            nick, key = prepare_nick(to.resource or "", opts.max_nick_length)
        except NickError:
            return self.router.bounce(event.stanza, "jid-malformed", "not a valid nickname")
        # Other modules may refuse (antispam: new accounts' room limit).
        veto = self.server.events.fire("muc/create-room", event)
        if veto is not None:
            return self.router.bounce(event.stanza, "policy-violation", str(veto))
        config = RoomConfig(persistent=opts.default_persistent, public=opts.default_public,
                            history_length=opts.history_default)
        room = Room(self, to.bare, config, sender.bare)
        room.affiliations[sender.bare] = ("owner", None, None)
        # §10.1.1 / §7.2.1: a client that speaks MUC gets a locked room it
        # must configure; an old groupchat 1.0 client gets an instant room.
        room.locked = next(event.stanza.elements(MUC, "x"), None) is not None
        self.rooms[room.jid] = room
        log.info("muc: {room} created", room=room.jid)
        room.join(event, nick, key, created=True)
        if not room.occupants:
            self.forget(room)
        elif not room.locked and config.persistent:
            self.persist(room)
        return True

    # -- the service's own IQs -----------------------------------------------------
    def service_iq(self, event: StanzaEvent) -> Any:
        stanza = event.stanza
        itype = stanza.getAttribute("type")
        if itype not in ("get", "set"):
            return True
        payload = stanza.firstChildElement()
        reply = result_reply(stanza)
        if itype == "get" and payload.uri == ns.DISCO_INFO and payload.name == "query":
            if payload.getAttribute("node"):
                return self._error(stanza, "item-not-found")
            query = reply.addElement((ns.DISCO_INFO, "query"))
            identity = query.addElement("identity")
            identity.attributes.update(category="conference", type="text", name="Chatrooms")
            for var in (MUC, ns.DISCO_INFO, ns.DISCO_ITEMS, ns.PING, "urn:xmpp:occupant-id:0",
                        "vcard-temp"):
                query.addElement("feature")["var"] = var
        elif itype == "get" and payload.uri == ns.DISCO_ITEMS and payload.name == "query":
            query = reply.addElement((ns.DISCO_ITEMS, "query"))
            listed = 0
            for jid in sorted(self.rooms):
                room = self.rooms[jid]
                if jid.partition("@")[2] != event.to.host or room.locked or not room.config.public:
                    continue
                if listed >= self.options.max_listed:
                    break
                item = query.addElement("item")
                item["jid"] = jid
                item["name"] = room.config.name or jid.partition("@")[0]
                listed += 1
        elif itype == "get" and payload.uri == ns.PING:
            pass
        else:
            return self._error(stanza, "service-unavailable")
        self.router.route(reply)
        return True

    def _error(self, stanza: domish.Element, condition: str) -> bool:
        self.router.route(error_reply(stanza, StanzaError(condition)))
        return True

    def room_info(self, room: Room) -> domish.Element:
        """disco#info of a room (§6.4): identity, features, muc#roominfo."""
        query = domish.Element((ns.DISCO_INFO, "query"))
        identity = query.addElement("identity")
        identity.attributes.update(category="conference", type="text",
                                   name=room.config.name or room.jid.partition("@")[0])
        for var in disco_features(room.config, room.archiving):
            query.addElement("feature")["var"] = var
        query.addChild(roominfo_form(room.config, len(room.occupants), room.subject,
                                     room.avatar_hash))
        return query
