"""Presence and presence subscriptions (RFC 6121 §3, §4; §8.5 for delivery).

Outbound (``pre-presence/*``, what a local client sends):
- no ``to``, available or unavailable: a broadcast to the contacts with a
  'from'/'both' subscription and to all of the user's available resources,
  including the sender (§4.2.2, §4.4.2, §4.5.2). Initial presence also
  probes the contacts with 'to'/'both' (§4.3.1; local contacts are answered
  at once with their resources' last presence), shows the new resource the
  user's other resources, and delivers the stored subscription requests
  (§3.1.3);
- with ``to``: directed presence (§4.6), remembered in ``session.directed``
  so the target hears unavailable when the resource goes away. At most
  ``max_directed_presence`` targets per resource: available presence to
  one more is refused with ``policy-violation`` (see PresenceOptions);
- subscription types: the state machine of ``subscription.py`` with the
  ``from`` stamped as the user's bare JID (§3.1.2); client probes are
  ignored (§4.3).

Inbound (``presence/bare|full``, to a local account): available,
unavailable and error presence go to every available resource (bare) or to
the addressed session (full); subscription stanzas run the inbound state
machine; probes are answered as §4.3.2 says (presence, or unavailable
when no resource is available, for subscribed contacts; ``unsubscribed``
for anyone else). Other stanzas to an account that does not exist are
silently ignored (§8.5.1).

When a session ends, cleanly or not (``session/closed``), its contacts and
directed-presence targets receive unavailable presence, ``UNAVAILABLE_SLICE``
stanzas per reactor turn (the first slice at once), so a logoff with a
large roster never holds the reactor. If the same full JID sends presence
again while its unavailable presence is still going out, the rest is sent
first, so no target sees the new presence before the old unavailable.

Remote contacts are reached with ``router.route`` like everything else, so
this code is unchanged when s2s arrives.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Optional, cast

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.xish import domish

from chatbx_server.events import DELIVER, FALLBACK, StanzaEvent
from chatbx_server.features.roster import RosterState, item_with_state, state_of
from chatbx_server.features.subscription import (
    SUBSCRIPTION_TYPES, Outcome, SubState, has_from, inbound, outbound,
)
from chatbx_server.modules import Feature
from chatbx_server.storage.errors import UnknownUser
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.stanzas import StanzaError, error_reply
from chatbx_server.logs import log_observer

log = Logger(observer=log_observer)

__all__ = ["PresenceFeature", "PresenceOptions", "UNAVAILABLE_SLICE", "parse_priority"]

PRESENCE_TYPES = frozenset((None, "unavailable", "probe", "error")) | SUBSCRIPTION_TYPES

#: unavailable presence stanzas routed per reactor turn when a resource goes away
UNAVAILABLE_SLICE = 64


@dataclass(frozen=True)
class PresenceOptions:
    """``[modules.presence]``.

    ``max_directed_presence``: distinct targets of directed presence (§4.6)
    one resource may have at once. Each is remembered until the resource
    goes away, to send it unavailable presence then, so the set is bounded.
    Past the limit, available presence to a new target is refused with
    ``policy-violation`` rather than evicting an older target: an evicted
    target (a chat room, often) would never hear that the resource left,
    while a refusal leaves nothing stale and tells the client at once. A
    directed unavailable frees its target's place. 256 leaves room for
    users in many group chats (each room joined is one target).
    """

    max_directed_presence: int = 256

    def __post_init__(self) -> None:
        if self.max_directed_presence < 1:
            raise ValueError("max_directed_presence must be at least 1")


def parse_priority(stanza: domish.Element) -> int:
    """The ``<priority/>`` of an available presence, 0 when absent (§4.7.2.3).

    Raises:
        ValueError: not an integer in -128..127.
    """
    for child in stanza.elements():
        if child.name == "priority":
            value = int(str(child).strip())
            if not -128 <= value <= 127:
                raise ValueError("priority out of range")
            return value
    return 0


def copy_to(stanza: domish.Element, to: str) -> domish.Element:
    """A copy of ``stanza`` addressed to ``to``; children are shared, not copied.

    Each recipient gets its own element, so queued stanzas (stream
    management) are never changed afterwards.
    """
    el = domish.Element((stanza.uri, stanza.name))
    el.attributes = dict(stanza.attributes)
    el["to"] = to
    el.children = list(stanza.children)
    return el


def _presence(sender: str, to: Optional[str], ptype: Optional[str] = None,
              status: Optional[str] = None) -> domish.Element:
    pres = domish.Element((ns.CLIENT, "presence"))
    pres["from"] = sender
    if to is not None:
        pres["to"] = to
    if ptype is not None:
        pres["type"] = ptype
    if status:
        pres.addElement("status", content=status)
    return pres


def _status(stanza: domish.Element) -> Optional[str]:
    for child in stanza.elements():
        if child.name == "status":
            return str(child)
    return None


def _log_failure(failure: Failure, what: str) -> None:
    if failure.check(UnknownUser):
        return None  # §8.5.1: no such local account, silently ignored
    log.failure("presence: {what} failed", failure, what=what)
    return None


class PresenceFeature(Feature):
    name = "presence"
    spec = "RFC 6121 §3-§4"
    depends = ("roster",)
    Options = PresenceOptions

    def setup(self) -> None:
        if self.options is None:
            self.options = PresenceOptions()
        #: full JID -> (stanza, target) still to send after it went away
        self._outgoing: dict[str, deque[tuple[domish.Element, str]]] = {}
        #: full JID -> the delayed call that sends its next slice
        self._next_slice: dict[str, Any] = {}
        self.roster: Any = self.server.modules.get("roster")
        self.router = self.server.router
        self.sessions = self.server.sessions
        for kind in ("bare", "full", "host"):
            self.hook(f"pre-presence/{kind}", self.on_outbound, DELIVER)
        self.hook("presence/bare", self.on_inbound_bare, DELIVER)
        self.hook("presence/full", self.on_inbound_full, DELIVER)
        self.hook("presence/host", self.on_inbound_host, FALLBACK)
        self.hook("session/closed", self.on_session_closed, DELIVER)

    def teardown(self) -> None:
        super().teardown()
        for call in self._next_slice.values():
            if call.active():
                call.cancel()
        self._next_slice.clear()
        self._outgoing.clear()

    # -- outbound --------------------------------------------------------
    def on_outbound(self, event: StanzaEvent) -> Any:
        stanza = event.stanza
        session = event.origin
        ptype = stanza.getAttribute("type")
        if ptype not in PRESENCE_TYPES:
            session.send(error_reply(stanza, "bad-request", text="unknown presence type"))
            return True
        if ptype in SUBSCRIPTION_TYPES:
            return self._outbound_subscription(event, ptype)
        if ptype == "probe":
            return True  # §4.3: probes are the server's business
        stanza["from"] = session.jid.full
        if session.jid.full in self._outgoing:
            self._flush(session.jid.full)  # the old unavailable goes first
        if ptype == "error":
            return None
        if stanza.getAttribute("to") is None:
            if ptype is None:
                return self._broadcast_available(session, stanza)
            return self._broadcast_unavailable(session, stanza)
        # §4.6: directed presence; remembered unless it is for the account itself.
        if event.to.bare != session.bare:
            target = event.to.full
            if ptype is None:
                directed = session.directed
                if directed is None:
                    directed = session.directed = set()
                if target not in directed:
                    if len(directed) >= self.options.max_directed_presence:
                        session.send(error_reply(stanza, "policy-violation",
                                                 text="too many directed presence targets"))
                        return True
                    directed.add(target)
            elif session.directed:
                session.directed.discard(target)
        return None

    def _broadcast_available(self, session: Any, stanza: domish.Element) -> Any:
        try:
            priority = parse_priority(stanza)
        except ValueError:
            session.send(error_reply(stanza, "bad-request", text="priority must be -128..127"))
            return True
        initial = session.presence is None
        session.priority = priority
        session.presence = stanza
        user = session.bare
        available = self.sessions.available(user)
        for other in available:
            other.send(copy_to(stanza, other.jid.full))
        if initial:
            for other in available:
                if other is not session:
                    session.send(copy_to(other.presence, session.jid.full))
        d = self.roster.load(user)
        d.addCallback(self._available_to_contacts, session, stanza, initial)
        d.addErrback(_log_failure, "available broadcast")
        return d

    def _available_to_contacts(self, state: RosterState, session: Any,
                               stanza: domish.Element, initial: bool) -> None:
        for contact in state.subscribers():
            self.router.route(copy_to(stanza, contact))
        if not initial:
            return
        for contact in state.subscriptions():
            self._probe(session, contact)
        for contact, status in list(state.requests.items()):
            session.send(_presence(contact, session.bare, "subscribe", status))

    def _probe(self, session: Any, contact: str) -> None:
        """§4.3.1; a local contact is answered here without a probe stanza."""
        host = contact.rpartition("@")[2]
        if not self.server.is_local(host):
            self.router.route(_presence(session.bare, contact, "probe"))
            return
        contact_state = self.roster.cached(contact)
        if contact_state is None:
            if not self.sessions.available(contact):
                return  # not online: nothing to report (§4.3.2 lets us stay silent)
            # Online on another node of a cluster: its roster is not cached here.
            d = self.roster.load(contact)
            d.addCallback(self._answer_probe, session, contact)
            d.addErrback(_log_failure, "probe")
            return
        self._answer_probe(contact_state, session, contact)

    def _answer_probe(self, contact_state: RosterState, session: Any, contact: str) -> None:
        item = contact_state.items.get(session.bare)
        if item is None or not has_from(item.subscription):
            return
        for other in self.sessions.available(contact):
            # Routed, not sent directly: the contact's filters (blocking) apply.
            self.router.route(copy_to(other.presence, session.jid.full))

    def _broadcast_unavailable(self, session: Any, stanza: Optional[domish.Element]) -> Any:
        """§4.5.2: to subscribers, own resources and directed targets."""
        if stanza is None:
            stanza = _presence(session.jid.full, None, "unavailable")
        stanza["from"] = session.jid.full
        was_available = session.presence is not None
        session.presence = None
        directed = session.directed or set()
        session.directed = None
        full = session.jid.full
        if not was_available:
            self._send_unavailable(full, stanza, directed)
            return True
        user = session.bare
        for other in self.sessions.available(user):
            other.send(copy_to(stanza, other.jid.full))
        if not session.closed:
            session.send(copy_to(stanza, session.jid.full))
        d = self.roster.load(user)

        def to_contacts(state: RosterState) -> None:
            subscribers = state.subscribers()
            skip = set(subscribers)
            others = [t for t in directed if t.partition("/")[0] not in skip]
            self._send_unavailable(full, stanza, subscribers + others)

        d.addCallback(to_contacts)
        d.addErrback(_log_failure, "unavailable broadcast")
        return d

    # -- sliced fan-out ------------------------------------------------------
    def _send_unavailable(self, full: str, stanza: domish.Element,
                          targets: Iterable[str]) -> None:
        """Route ``stanza`` to each target, UNAVAILABLE_SLICE per reactor turn."""
        queue = self._outgoing.get(full)
        if queue is None:
            queue = self._outgoing[full] = deque()
        queue.extend((stanza, target) for target in targets)
        if full not in self._next_slice:
            self._send_slice(full)

    def _send_slice(self, full: str) -> None:
        self._next_slice.pop(full, None)
        queue = self._outgoing.get(full)
        if queue is None:
            return
        for _ in range(min(UNAVAILABLE_SLICE, len(queue))):
            stanza, target = queue.popleft()
            self._route_logged(copy_to(stanza, target))
        if queue:
            self._next_slice[full] = self.server.clock.callLater(0, self._send_slice, full)
        else:
            del self._outgoing[full]

    def _flush(self, full: str) -> None:
        """Send the rest of ``full``'s unavailable presence now."""
        call = self._next_slice.pop(full, None)
        if call is not None and call.active():
            call.cancel()
        for stanza, target in self._outgoing.pop(full, ()):
            self._route_logged(copy_to(stanza, target))

    def _route_logged(self, stanza: domish.Element) -> None:
        # Off the stanza's own call stack: a failure must not stop the rest.
        try:
            self.router.route(stanza)
        except Exception:
            log.failure("presence: routing unavailable presence failed")

    def on_session_closed(self, session: Any) -> None:
        if session.presence is None and not session.directed:
            return
        self._broadcast_unavailable(session, None)

    # -- subscriptions -----------------------------------------------------
    def _outbound_subscription(self, event: StanzaEvent, ptype: str) -> Any:
        user = event.origin.bare
        contact = event.to.bare
        if contact == user:
            return True  # an account is always subscribed to itself
        stanza = event.stanza
        stanza["from"] = user  # §3.1.2: the bare JID
        stanza["to"] = contact
        session = event.origin
        d = self.roster.run_locked(
            user, lambda: self._apply(user, contact, outbound, ptype, stanza))
        d.addCallback(self.roster.route_all)

        def refused(failure: Failure) -> None:
            # A roster limit (RosterFeature.check_room): the client hears why.
            failure.trap(StanzaError)
            reply = error_reply(stanza, cast(StanzaError, failure.value))
            reply["to"] = session.jid.full
            session.send(reply)

        d.addErrback(refused)
        d.addErrback(_log_failure, "outbound subscription")
        return d

    def _inbound_subscription(self, event: StanzaEvent, ptype: str) -> Any:
        if event.sender is None:
            return True
        user = event.to.bare
        contact = event.sender.bare
        if contact == user:
            return True
        stanza = event.stanza
        stanza["from"] = contact
        stanza["to"] = user
        d = self.roster.run_locked(
            user, lambda: self._apply(user, contact, inbound, ptype, stanza))
        d.addCallback(self.roster.route_all)

        def refused(failure: Failure) -> None:
            failure.trap(StanzaError)
            error = cast(StanzaError, failure.value)
            self.router.bounce(stanza, error.condition, error.text)

        d.addErrback(refused)
        d.addErrback(_log_failure, "inbound subscription")
        return d

    async def _apply(self, user: str, contact: str, machine: Any, ptype: str,
                     stanza: domish.Element) -> list[domish.Element]:
        """Run the state machine for ``user`` (under its roster lock).

        Returns what to route once the lock is released.
        """
        state = await self.roster.load(user)
        outcome: Outcome = machine(state_of(state, contact), ptype)
        new: SubState = outcome.state
        item = item_with_state(state.items.get(contact), contact, new)
        # Both limits before any write, so a refusal changes nothing.
        self.roster.check_room(state, contact, item, new.pending_in)
        await self.roster.store_item(user, state, contact, item)
        status = _status(stanza) if ptype == "subscribe" else None
        await self.roster.set_pending_in(user, state, contact, new.pending_in, status)
        out: list[domish.Element] = []
        if outcome.forward:
            if machine is outbound:
                out.append(stanza)
            else:
                for session in self.sessions.available(user):
                    session.send(stanza)
        if outcome.auto_reply:
            out.append(_presence(user, contact, outcome.auto_reply))
        if outcome.send_presence:
            for session in self.sessions.available(user):
                out.append(copy_to(session.presence, contact))
        if outcome.send_unavailable:
            for session in self.sessions.available(user):
                out.append(_presence(session.jid.full, contact, "unavailable"))
        return out

    # -- inbound -----------------------------------------------------------
    def on_inbound_bare(self, event: StanzaEvent) -> Any:
        ptype = event.stanza.getAttribute("type")
        if ptype in SUBSCRIPTION_TYPES:
            return self._inbound_subscription(event, ptype)
        if ptype == "probe":
            return self._inbound_probe(event)
        # §8.5.2.1.2: every available resource; none: silently ignored.
        for session in self.sessions.available(event.to.bare):
            session.send(event.stanza)
        return True

    def on_inbound_full(self, event: StanzaEvent) -> Any:
        ptype = event.stanza.getAttribute("type")
        if ptype in SUBSCRIPTION_TYPES or ptype == "probe":
            return self.on_inbound_bare(event)  # §8.5.3: as if to the bare JID
        session = self.sessions.get(event.to.bare, event.to.resource)
        if session is not None:
            session.send(event.stanza)
        return True  # §8.5.3.2.2: no such resource: silently ignored

    def on_inbound_host(self, event: StanzaEvent) -> Any:
        return True  # presence to the server itself has no meaning here

    def _inbound_probe(self, event: StanzaEvent) -> Any:
        """Answer a probe for ``event.to`` (RFC 6121 §4.3.2).

        The prober may be anywhere (today a remote server's probe; the
        local shortcut is :meth:`_probe`), so answers go through the router:

        1. no such account, or the prober's bare JID is not 'From', 'From +
           Pending Out' or 'Both' on the roster: ``unsubscribed`` to the
           prober's bare JID. Nothing changes here, so a pre-approval
           (§3.4) survives. A missing account answers like a stranger's, so
           probes do not reveal which accounts exist;
        2. no available resource: ``unavailable`` from the bare JID (chatbx
           keeps no last unavailable presence to send instead);
        3. otherwise the last presence of each available resource.
        Rules 2 and 3 answer the probe's 'from' as it came (full or bare).
        """
        sender = event.sender
        user = event.to.bare
        if sender is None or sender.bare == user:
            return True
        d = self.roster.load(user)

        def answer(state: Optional[RosterState]) -> None:
            item = state.items.get(sender.bare) if state is not None else None
            if item is None or not has_from(item.subscription):
                self.router.route(_presence(user, sender.bare, "unsubscribed"))
                return
            available = self.sessions.available(user)
            if not available:
                self.router.route(_presence(user, sender.full, "unavailable"))
                return
            for session in available:
                self.router.route(copy_to(session.presence, sender.full))

        def no_account(failure: Failure) -> None:
            failure.trap(UnknownUser)
            return None

        d.addErrback(no_account)
        d.addCallback(answer)
        d.addErrback(_log_failure, "probe")
        return d
