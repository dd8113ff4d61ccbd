"""Classifies a stanza's ``to`` and fires the events that handle it.

RFC 6120 §10 (server rules for processing XML stanzas) and RFC 6121 §8.5
(local delivery). Names are built once per stanza and looked up in a dict:
``pre-message/bare`` for what a local client sends, ``message/full`` for
delivery to a local target, ``iq-get/host/urn:xmpp:ping:ping`` for requests,
``iq-result/host/{id}`` for answers to the server's own requests.

Each stanza fires each event once. Where a feature redirects a stanza to
another target kind (a message to a gone resource handled by the bare-JID
rules, RFC 6121 §8.5.3.2.1), it does not fire the other event again from
the top: ``events.fire_from(name, event, DELIVER)`` continues from delivery
down (see features/message.py), and presence subscriptions to a full JID
call the bare-JID handler directly (features/presence.py). IQs to a full
JID go to the session or bounce; they never fall back.
IQs also fire ``pre-iq/{kind}`` (sent by a local client) and, for a local
account, ``iq/bare|full`` before the per-payload name: generic filters
(XEP-0191 blocking) that may refuse any IQ.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.logger import Logger
from twisted.words.xish import domish

from chatbx_server.events import StanzaEvent
from chatbx_server.xmpp.jid import JID, InvalidJID, parse_or_none
from chatbx_server.xmpp.stanzas import error_reply, is_error_or_result
from chatbx_server.logs import log_observer

if TYPE_CHECKING:
    from chatbx_server.server import Server

log = Logger(observer=log_observer)

STANZA_NAMES = frozenset(("message", "presence", "iq"))


class Router:
    """Routes stanzas between local sessions, services and remote servers."""

    def __init__(self, server: "Server") -> None:
        self.server = server
        self.events = server.events
        self.sessions = server.sessions
        self.hosts: frozenset[str] = frozenset(server.hosts)
        #: hosted service domains (conference., upload. ...) -> deliver(event):
        #: a service gets the same StanzaEvent as local delivery (sender,
        #: origin session, target), after the sender's pre-* hooks ran
        self.services: dict[str, Callable[[StanzaEvent], Any]] = {}
        #: remote delivery (s2s); None bounces remote stanzas
        self.remote: Optional[Callable[[StanzaEvent], Any]] = None
        #: cluster only (cluster/lookup.py): may hold a stanza for a local
        #: account whose session the directory cache does not know yet
        #: (returns a Deferred) before it takes the no-session path
        self.hold: Optional[Callable[[StanzaEvent], Any]] = None

    def route(self, stanza: domish.Element, origin: Any = None) -> Any:
        """Route ``stanza``; ``origin`` is the local session that sent it.

        Returns the handler's result: a Deferred means the stanza is still
        being handled (what acknowledges it should wait on it).
        """
        name = stanza.name
        to_attr = stanza.getAttribute("to")
        if to_attr is None:
            if origin is None:
                return None
            # RFC 6120 §10.3: no 'to' from a client means its own account.
            to = origin.bare_jid
        else:
            try:
                to = JID.parse(to_attr)
            except InvalidJID:
                return self.bounce(stanza, "jid-malformed")
        if to.user is None:
            kind = "host"
        elif to.resource is None:
            kind = "bare"
        else:
            kind = "full"
        sender = origin.jid if origin is not None else parse_or_none(stanza.getAttribute("from"))
        event = StanzaEvent(stanza, origin, to, sender, kind)
        if name == "iq":
            return self._route_iq(event)
        if origin is not None:
            result = self.events.fire(f"pre-{name}/{kind}", event)
            if result is not None:
                return result
        return self.deliver(event)

    def deliver(self, event: StanzaEvent) -> Any:
        """Hand a stanza to its target (what follows the sender's pre- events)."""
        stanza = event.stanza
        if stanza.name == "iq":
            return self._deliver_iq(event)
        host = event.to.host
        if host in self.hosts:
            if self.hold is not None and event.kind != "host":
                held = self.hold(event)
                if held is not None:
                    return held
            result = self.events.fire(f"{stanza.name}/{event.kind}", event)
            if result is not None:
                return result
            if stanza.name == "message":
                return self.bounce(stanza, "service-unavailable")
            return None
        return self._elsewhere(event)

    def _elsewhere(self, event: StanzaEvent) -> Any:
        service = self.services.get(event.to.host)
        if service is not None:
            return service(event)
        if self.remote is not None:
            return self.remote(event)
        return self.bounce(event.stanza, "remote-server-not-found")

    def _route_iq(self, event: StanzaEvent) -> Any:
        stanza = event.stanza
        iq_type = stanza.getAttribute("type")
        if iq_type in ("get", "set"):
            if stanza.getAttribute("id") is None:
                return self.bounce(stanza, "bad-request", "iq without id")
            payload = None
            for child in stanza.elements():
                if payload is not None:
                    # RFC 6120 §8.2.3: exactly one payload element.
                    return self.bounce(stanza, "bad-request", "iq with more than one payload")
                payload = child
            if payload is None:
                return self.bounce(stanza, "bad-request", "iq without payload")
        elif iq_type not in ("result", "error"):
            return self.bounce(stanza, "bad-request", "bad iq type")
        if event.origin is not None:
            result = self.events.fire(f"pre-iq/{event.kind}", event)
            if result is not None:
                return result
        return self._deliver_iq(event)

    def _deliver_iq(self, event: StanzaEvent) -> Any:
        stanza = event.stanza
        iq_type = stanza.getAttribute("type")
        if event.to.host not in self.hosts:
            return self._elsewhere(event)
        if self.hold is not None and event.kind == "full":
            held = self.hold(event)
            if held is not None:
                return held
        if event.kind != "host":
            result = self.events.fire(f"iq/{event.kind}", event)
            if result is not None:
                return result
        if iq_type in ("get", "set"):
            payload = stanza.firstChildElement()
            result = self.events.fire(f"iq-{iq_type}/{event.kind}/{payload.uri}:{payload.name}", event)
            if result is not None:
                return result
            if event.kind == "full":
                session = self.sessions.get(event.to.bare, event.to.resource)
                if session is not None:
                    session.send(stanza)
                    return True
            return self.bounce(stanza, "service-unavailable")
        if event.kind == "full":
            session = self.sessions.get(event.to.bare, event.to.resource)
            if session is not None:
                session.send(stanza)
            return True
        return self.events.fire(f"iq-{iq_type}/{event.kind}/{stanza.getAttribute('id')}", event)

    def reply(self, event: StanzaEvent, reply: domish.Element) -> None:
        """Send an answer to the sender of ``event``, directly when local."""
        origin = event.origin
        if origin is not None:
            origin.send(reply)
        else:
            self.route(reply)

    def bounce(self, stanza: domish.Element, condition: str, text: Optional[str] = None) -> bool:
        """Answer ``stanza`` with an error, unless it is itself an error/result."""
        if is_error_or_result(stanza):
            return True
        reply = error_reply(stanza, condition, text=text)
        if reply.getAttribute("from") is None:
            # Errors for stanzas without 'to' come from the account/server.
            sender = parse_or_none(stanza.getAttribute("from"))
            if sender is not None:
                reply["from"] = sender.bare
        self.route(reply)
        return True
