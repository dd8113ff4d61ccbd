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
  so the target hears unavailable when the resource goes away;
- subscription types: the state machine of ``subscription.py`` with the
  ``from`` stamped as the user's bare JID (§3.1.2); client probes are
  ignored (§4.3).

Inbound (``presence/bare|full``, to a local account): available,
unavailable and error presence go to every available resource (bare) or to
the addressed session (full); subscription stanzas run the inbound state
machine; probes are answered for subscribed contacts (§4.3.2). Stanzas to
an account that does not exist are silently ignored (§8.5.1).

When a session ends, cleanly or not (``session/closed``), its contacts and
directed-presence targets receive unavailable presence.

Remote contacts are reached with ``router.route`` like everything else, so
this code is unchanged when s2s arrives.
"""

from __future__ import annotations

from typing import Any, Optional

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
from chatbx_server.xmpp.stanzas import error_reply
from chatbx_server.logs import log_observer

log = Logger(observer=log_observer)

__all__ = ["PresenceFeature", "parse_priority"]

PRESENCE_TYPES = frozenset((None, "unavailable", "probe", "error")) | SUBSCRIPTION_TYPES


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

    def setup(self) -> None:
        self.roster: Any = self.server.modules.get("roster")
        self.router = self.server.router
        self.sessions = self.server.sessions
        for kind in ("bare", "full", "host"):
            self.hook(f"pre-presence/{kind}", self.on_outbound, DELIVER)
        self.hook("presence/bare", self.on_inbound_bare, DELIVER)
        self.hook("presence/full", self.on_inbound_full, DELIVER)
        self.hook("presence/host", self.on_inbound_host, FALLBACK)
        self.hook("session/closed", self.on_session_closed, DELIVER)

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
        if ptype == "error":
            return None
        if stanza.getAttribute("to") is None:
            if ptype is None:
                return self._broadcast_available(session, stanza)
            return self._broadcast_unavailable(session, stanza)
        # §4.6: directed presence; remembered unless it is for the account itself.
        if event.to.bare != session.bare:
            if ptype is None:
                if session.directed is None:
                    session.directed = set()
                session.directed.add(event.to.full)
            elif session.directed:
                session.directed.discard(event.to.full)
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
            return  # not online: nothing to report (§4.3.2 lets us stay silent)
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
        if not was_available:
            for target in directed:
                self.router.route(copy_to(stanza, target))
            return True
        user = session.bare
        for other in self.sessions.available(user):
            other.send(copy_to(stanza, other.jid.full))
        if not session.closed:
            session.send(copy_to(stanza, session.jid.full))
        d = self.roster.load(user)

        def to_contacts(state: RosterState) -> None:
            subscribers = state.subscribers()
            for contact in subscribers:
                self.router.route(copy_to(stanza, contact))
            skip = set(subscribers)
            for target in directed:
                if target.partition("/")[0] not in skip:
                    self.router.route(copy_to(stanza, target))

        d.addCallback(to_contacts)
        d.addErrback(_log_failure, "unavailable broadcast")
        return d

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
        d = self.roster.run_locked(
            user, lambda: self._apply(user, contact, outbound, ptype, stanza))
        d.addCallback(self.roster.route_all)
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
        """§4.3.2: subscribed contacts get the last presence of each resource."""
        sender = event.sender
        user = event.to.bare
        if sender is None or sender.bare == user:
            return True
        d = self.roster.load(user)

        def answer(state: RosterState) -> None:
            item = state.items.get(sender.bare)
            if item is None or not has_from(item.subscription):
                self.router.route(_presence(user, sender.bare, "unsubscribed"))
                return
            for session in self.sessions.available(user):
                self.router.route(copy_to(session.presence, sender.full))

        d.addCallback(answer)
        d.addErrback(_log_failure, "probe")
        return d

