"""Offline message storage (XEP-0160 1.0.1) with delay stamps (XEP-0203 2.0).

Messages that no available resource took (``message/bare`` at priority
OFFLINE, below delivery) are stored when they are worth keeping, stamped
with ``<delay from='DOMAIN' stamp='...'/>`` at receipt, and delivered when
the account next sends initial presence with a non-negative priority
(RFC 6121 §8.5.2.1.1, XEP-0160 §2), then deleted. Deleting only after
sending means a crash in between re-delivers rather than loses.

What is kept (like ejabberd's and Prosody's rules): chat and normal
messages (or no type) that carry a body, a subject or another payload
(receipts, encrypted payloads, ...). Not kept: error, groupchat and
headline messages (RFC 6121 §8.5.2.2.1), messages carrying a XEP-0334
``<no-store/>`` or ``<no-permanent-store/>`` hint (these fall through to
the message module, which bounces chat/normal with service-unavailable),
and pure XEP-0085 chat-state notifications, which are dropped silently:
a "typing..." for someone offline is worth neither storage nor an error.

The store is bounded per account (``max_per_user``); a full store or a
JID without an account answers service-unavailable. The handler returns
the store's Deferred, so what acknowledges the stanza (XEP-0198) waits for
the commit.

Initial presence is seen on ``pre-presence/bare`` above DELIVER (the
presence module has no ``presence/initial`` event): the handler returns
None, so the presence module still handles the stanza.
"""

from __future__ import annotations

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
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.stanzas import parse_stanza
from chatbx_server.logs import log_observer

log = Logger(observer=log_observer)

HINTS = "urn:xmpp:hints"
CHATSTATES = "http://jabber.org/protocol/chatstates"
#: payloads that alone do not make a message worth storing
_EPHEMERAL_NS = frozenset((CHATSTATES, HINTS, ns.DELAY, "urn:xmpp:sid:0"))
_STORED_TYPES = frozenset(("chat", "normal"))

#: runs before the presence module handles the initial presence
INITIAL_PRESENCE_PRIORITY = DELIVER + 50


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


class OfflineFeature(Feature):
    name = "offline"
    spec = "XEP-0160 1.0.1 (Offline Messages), XEP-0203 2.0 (Delayed Delivery)"
    disco_features = (ns.OFFLINE,)
    depends = ("message",)

    @dataclass(frozen=True)
    class Options:
        #: messages kept per account; further ones bounce with service-unavailable
        max_per_user: int = 1000

        def __post_init__(self) -> None:
            if self.max_per_user < 1:
                raise ValueError("max_per_user must be at least 1")

    def setup(self) -> None:
        #: accounts whose stored messages are being fetched and sent
        self._delivering: set[str] = set()
        self.hook("message/bare", self.on_offline_message, OFFLINE)
        self.hook("pre-presence/bare", self.on_presence, INITIAL_PRESENCE_PRIORITY)

    # -- storing -------------------------------------------------------------
    def on_offline_message(self, event: StanzaEvent) -> Any:
        stanza = event.stanza
        decision = storage_decision(stanza)
        if decision is None:
            return None
        if decision is False:
            return True
        user = event.to.bare
        d = self.server.stores.offline.store(user, self._serialize(event), self.options.max_per_user)
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
            self.server.router.bounce(stanza, "service-unavailable", "offline storage full")
        return True

    def _store_failed(self, stanza: domish.Element, user: str, failure: Failure) -> bool:
        if not failure.check(UnknownUser):
            log.failure("storing an offline message for {user} failed", failure, user=user)
        self.server.router.bounce(stanza, "service-unavailable")
        return True

    # -- delivering ----------------------------------------------------------
    def on_presence(self, event: StanzaEvent) -> None:
        stanza = event.stanza
        session = event.origin
        if (session is None or stanza.getAttribute("to") is not None
                or stanza.getAttribute("type") is not None or session.presence is not None):
            return None
        try:
            priority = parse_priority(stanza)
        except ValueError:
            return None  # the presence module refuses it: the session stays unavailable
        if priority < 0:
            return None  # RFC 6121 §8.5.2.1.1: never to a negative priority
        self.deliver_to(session)
        return None

    def deliver_to(self, session: Any) -> defer.Deferred:
        """Send the account's stored messages to ``session``, then delete them.

        One delivery per account at a time: a second resource coming online
        while the first one's fetch is in flight would otherwise get the same
        rows (XEP-0160 delivers to one resource). What arrives meanwhile goes
        to the available resources directly.
        """
        user = session.bare
        if user in self._delivering:
            return defer.succeed(None)
        self._delivering.add(user)
        d = self.server.stores.offline.fetch(user)
        d.addCallback(self._send_stored, session, user)
        d.addErrback(self._delivery_failed, user)

        def done(result: Any) -> Any:
            self._delivering.discard(user)
            return result

        d.addBoth(done)
        return d

    def _send_stored(self, rows: list[tuple[int, str, float]], session: Any, user: str) -> Any:
        if not rows or session.closed:
            return None
        sent: list[int] = []
        for row_id, xml, _created in rows:
            try:
                element = parse_stanza(xml)
            except Exception:
                # Unreadable rows would block the queue forever: log and drop.
                log.failure("dropping unreadable offline message {id} of {user}", id=row_id, user=user)
            else:
                session.send(element)
            sent.append(row_id)
        return self.server.stores.offline.delete(user, sent)

    def _delivery_failed(self, failure: Failure, user: str) -> None:
        if failure.check(UnknownUser):
            return None
        log.failure("delivering offline messages to {user} failed", failure, user=user)
        return None
