"""Offline message storage (XEP-0160 1.0.1) with delay stamps (XEP-0203 2.0).

Messages that no available resource took (``message/bare`` at priority
OFFLINE, below delivery; resources with a negative priority take none,
RFC 6121 §8.5.2.1.1) are stored when they are worth keeping, stamped with
``<delay from='DOMAIN' stamp='...'/>`` at receipt, and delivered when a
resource of the account becomes available with a non-negative priority
(XEP-0160 §2 step 5), by its initial presence or by a later one raising a
negative priority, then deleted.

What is kept (like ejabberd's and Prosody's rules): chat and normal
messages (or no type) that carry a body, a subject or another payload
(receipts, encrypted payloads, ...). Not kept: error, groupchat and
headline messages (RFC 6121 §8.5.2.2.1), messages carrying a XEP-0334
``<no-store/>`` or ``<no-permanent-store/>`` hint (these fall through to
the message module, which bounces chat/normal with service-unavailable),
and pure XEP-0085 chat-state notifications, which are dropped silently:
a "typing..." for someone offline is worth neither storage nor an error.

The store is bounded per account in messages (``max_per_user``) and in
bytes (``max_bytes``), both checked in the storing transaction. A full
store or a JID without an account answers service-unavailable (XEP-0160
§2 step 3 names that error for a full queue; Prosody answers the same,
ejabberd uses resource-constraint). The handler returns the store's
Deferred, so what acknowledges the stanza (XEP-0198) waits for the commit.

Delivery goes page by page (at most ``PAGE_MESSAGES`` and about
``PAGE_BYTES`` per query), each page deleted only after it was handed to
the session, so memory and the work of one reactor turn do not grow with
the backlog, and a session that goes away mid-delivery leaves the rest
stored (or to another available resource of the account, if there is one).
One delivery per account runs at a time; on a cluster a Redis lock per
account (cluster/locks.py) extends that to every node, so two sessions
logging in at once on two nodes do not both get the stored messages.

Most logins find nothing stored, and asking costs a database transaction
per login. So a server that is not part of a cluster remembers (for the
last ``empty_memory`` accounts) which accounts it found empty: only this
feature stores offline messages, and it forgets an account the moment it
starts storing one for it, so the next login of a remembered account
skips the query. A delivery that saw a message being stored while it ran
remembers nothing. On a cluster (workers included) other nodes store too:
every login asks.

Presence is seen on ``pre-presence/bare`` above DELIVER (the presence
module has no ``presence/available`` event), while the session still shows
its previous state: the handler returns None, so the presence module still
handles the stanza.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.xish import domish

from chatbx_server.events import DELIVER, OFFLINE, StanzaEvent
from chatbx_server.features.time import xep0082_datetime
from chatbx_server.features.presence import parse_priority
from chatbx_server.modules import Feature
from chatbx_server.storage.errors import UnknownUser
from chatbx_server.storage.offline import PAGE_BYTES, PAGE_MESSAGES, StoredMessage
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.stanzas import parse_stanza
from chatbx_server.logs import log_observer

log = Logger(observer=log_observer)

HINTS = "urn:xmpp:hints"
CHATSTATES = "http://jabber.org/protocol/chatstates"
#: payloads that alone do not make a message worth storing
_EPHEMERAL_NS = frozenset((CHATSTATES, HINTS, ns.DELAY, "urn:xmpp:sid:0"))
_STORED_TYPES = frozenset(("chat", "normal"))

#: runs before the presence module handles a broadcast presence
PRESENCE_PRIORITY = DELIVER + 50
#: seconds Redis keeps a cluster's offline delivery lock (a node that died
#: delivering); a delivery of max_per_user messages takes a few seconds
OFFLINE_LOCK_TTL = 30.0
#: seconds a delivery waits for one in progress on another node before it
#: goes on regardless (logged); the TTL: a dead holder's lock has expired by then
OFFLINE_LOCK_WAIT = 30.0


def storage_decision(stanza: domish.Element) -> Optional[bool]:
    """True: store. False: drop silently. None: not ours (let others answer)."""
    if stanza.getAttribute("type", "normal") not in _STORED_TYPES:
        return None
    payload = False
    store_hint = False
    for child in stanza.elements():
        if child.uri == HINTS:
            if child.name in ("no-store", "no-permanent-store"):
                return None
            if child.name == "store":
                store_hint = True
            continue
        if child.uri in _EPHEMERAL_NS:
            continue
        if child.name == "thread" and child.uri in (ns.CLIENT, ns.SERVER):
            continue
        payload = True
    if payload or store_hint:
        return True
    return False


class _Delivery:
    """One account's delivery in progress, and the session it goes to."""

    __slots__ = ("target",)

    def __init__(self, target: Any) -> None:
        #: None once the target stopped taking bare-JID messages
        self.target: Optional[Any] = target


class OfflineFeature(Feature):
    name = "offline"
    spec = "XEP-0160 1.0.1 (Offline Messages), XEP-0203 2.0 (Delayed Delivery)"
    disco_features = (ns.OFFLINE,)
    depends = ("message",)

    @dataclass(frozen=True)
    class Options:
        #: messages kept per account; further ones bounce with service-unavailable
        max_per_user: int = 1000
        #: bytes of stored XML per account; a message that would pass it bounces too
        max_bytes: int = 10 * 1024 * 1024
        #: accounts remembered as having nothing stored (their logins skip
        #: the query; the least recently seen are forgotten first); 0: none
        empty_memory: int = 10000

        def __post_init__(self) -> None:
            if self.max_per_user < 1:
                raise ValueError("max_per_user must be at least 1")
            if self.max_bytes < 1:
                raise ValueError("max_bytes must be at least 1")
            if self.empty_memory < 0:
                raise ValueError("empty_memory must not be negative")

    def setup(self) -> None:
        #: accounts whose stored messages are being fetched and sent
        self._deliveries: dict[str, _Delivery] = {}
        #: bounds of one delivery page; a page is written in one go, so it stays
        #: well inside the c2s output buffer a client is dropped past
        self.page_messages = PAGE_MESSAGES
        self.page_bytes = max(1, min(PAGE_BYTES, self.server.config.limits.max_output_buffer // 4))
        #: accounts found with nothing stored, least recently seen first
        self._empty: OrderedDict[str, None] = OrderedDict()
        #: accounts being delivered for which no message was stored since
        #: their delivery began (one entry per delivery at most)
        self._untouched: set[str] = set()
        self.hook("message/bare", self.on_offline_message, OFFLINE)
        self.hook("pre-presence/bare", self.on_presence, PRESENCE_PRIORITY)
        self.hook("user/deleted", self.on_user_deleted)

    def teardown(self) -> None:
        super().teardown()
        self._empty.clear()

    def on_user_deleted(self, jid: str) -> None:
        self._forget_empty(jid)

    def _forget_empty(self, user: str) -> None:
        """Something is (or may be) stored for ``user`` now."""
        self._empty.pop(user, None)
        self._untouched.discard(user)

    # -- storing -------------------------------------------------------------
    def on_offline_message(self, event: StanzaEvent) -> Any:
        stanza = event.stanza
        decision = storage_decision(stanza)
        if decision is None:
            return None
        if decision is False:
            return True
        user = event.to.bare
        self._forget_empty(user)  # before the store starts: a login now must look
        d = self.server.stores.offline.store(user, self._serialize(event),
                                             self.options.max_per_user, self.options.max_bytes)
        d.addCallbacks(lambda stored: self._stored(stanza, user, stored),
                       lambda failure: self._store_failed(stanza, user, failure))
        return d

    def _serialize(self, event: StanzaEvent) -> str:
        """The stanza with our delay stamp, without changing the original."""
        stanza = event.stanza
        delay = domish.Element((ns.DELAY, "delay"))
        delay["from"] = event.to.host
        delay["stamp"] = xep0082_datetime(self.server.clock.seconds())
        stanza.addChild(delay)
        try:
            return stanza.toXml()
        finally:
            stanza.children.remove(delay)
            delay.parent = None

    def _stored(self, stanza: domish.Element, user: str, stored: bool) -> bool:
        if not stored:
            log.info("offline storage full for {user}", user=user)
            # XEP-0160 §2 step 3: a full queue answers service-unavailable.
            self.server.router.bounce(stanza, "service-unavailable", "offline storage full")
        return True

    def _store_failed(self, stanza: domish.Element, user: str, failure: Failure) -> bool:
        if not failure.check(UnknownUser):
            log.failure("storing an offline message for {user} failed", failure, user=user)
        self.server.router.bounce(stanza, "service-unavailable")
        return True

    # -- delivering ----------------------------------------------------------
    def on_presence(self, event: StanzaEvent) -> None:
        """Start delivery when a resource starts taking bare-JID messages;
        stop it when the resource it goes to stops (unavailable, or a
        negative priority: RFC 6121 §8.5.2.1.1)."""
        stanza = event.stanza
        session = event.origin
        if session is None or stanza.getAttribute("to") is not None:
            return None
        ptype = stanza.getAttribute("type")
        if ptype == "unavailable":
            self._stop(session)
            return None
        if ptype is not None:
            return None
        try:
            priority = parse_priority(stanza)
        except ValueError:
            return None  # the presence module refuses it: the session's state stays
        if priority < 0:
            self._stop(session)
            return None
        if session.presence is None or session.priority < 0:
            # XEP-0160 §2 step 5: "next sends non-negative available presence".
            self.deliver_to(session)
        return None

    def _stop(self, session: Any) -> None:
        delivery = self._deliveries.get(session.bare)
        if delivery is not None and delivery.target is session:
            delivery.target = None

    def deliver_to(self, session: Any) -> defer.Deferred[int]:
        """Send the account's stored messages to ``session``, deleting them
        page by page once sent; fires with how many were handed over.

        One delivery per account at a time: a second resource coming online
        while the first one's fetch is in flight would otherwise get the same
        rows (XEP-0160 delivers to one resource). What arrives meanwhile goes
        to the available resources directly. If the delivery's resource has
        stopped, ``session`` takes over the rest.
        """
        user = session.bare
        delivery = self._deliveries.get(user)
        if delivery is not None:
            if delivery.target is None:
                delivery.target = session
            return defer.succeed(0)
        cluster = self.server.cluster
        if cluster is None and user in self._empty:
            self._empty.move_to_end(user)
            return defer.succeed(0)  # nothing was stored since we found it empty
        delivery = self._deliveries[user] = _Delivery(session)
        if cluster is None:
            if self.options.empty_memory:
                self._untouched.add(user)
            d = defer.ensureDeferred(self._deliver(user, delivery))
        else:
            # Another node may be delivering to a session of this account
            # bound there: after it, the store holds only what is left.
            d = cluster.locks.run("offline:" + user,
                                  lambda: defer.ensureDeferred(self._deliver(user, delivery)),
                                  OFFLINE_LOCK_TTL, OFFLINE_LOCK_WAIT)
        d.addErrback(self._delivery_failed, user)
        return d

    async def _deliver(self, user: str, delivery: _Delivery) -> int:
        store = self.server.stores.offline
        after = 0
        handed_over = 0
        try:
            while self._target(user, delivery) is not None:
                page = await store.fetch(user, after=after, max_messages=self.page_messages,
                                         max_bytes=self.page_bytes)
                if not page:
                    self._found_empty(user)
                    break
                target = self._target(user, delivery)
                if target is None:
                    break
                sent: list[int] = []
                for message in page:
                    element = self._parse(message, user)
                    if element is not None:
                        target.send(element)
                        if target.closed:
                            break  # dropped while writing: this one may not have got out
                    sent.append(message.id)
                    after = message.id
                if sent:
                    await store.delete(user, sent)
                    handed_over += len(sent)
        finally:
            self._untouched.discard(user)
            if self._deliveries.get(user) is delivery:
                del self._deliveries[user]
        return handed_over

    def _found_empty(self, user: str) -> None:
        """The store holds nothing more for ``user``: remember it, unless a
        message was stored for it while this delivery ran."""
        if user not in self._untouched:
            return
        empty = self._empty
        empty[user] = None
        empty.move_to_end(user)
        while len(empty) > self.options.empty_memory:
            empty.popitem(last=False)

    def _target(self, user: str, delivery: _Delivery) -> Optional[Any]:
        """The session the next page goes to: the delivery's own while it
        lasts, then an available resource with the highest non-negative
        priority (the one a new message would go to), or None: stop."""
        target = delivery.target
        if target is not None and not target.closed:
            return target
        candidates = [s for s in self.server.sessions.available(user)
                      if s.priority >= 0 and not s.closed]
        delivery.target = max(candidates, key=lambda s: s.priority) if candidates else None
        return delivery.target

    def _parse(self, message: StoredMessage, user: str) -> Optional[domish.Element]:
        try:
            return parse_stanza(message.xml)
        except Exception:
            # Unreadable rows would block the queue forever: log and drop.
            log.failure("dropping unreadable offline message {id} of {user}",
                        id=message.id, user=user)
            return None

    def _delivery_failed(self, failure: Failure, user: str) -> int:
        if not failure.check(UnknownUser):
            log.failure("delivering offline messages to {user} failed", failure, user=user)
        return 0
