"""XMPP Ping (XEP-0199 2.0.1): client-to-server pings.

A client pings its server either at the domain or, as some clients do, with
no 'to' (which the router treats as the client's own bare JID). Pings to
another account's bare JID get service-unavailable: the server does not
answer for other accounts, and that answer reveals nothing about them.
"""

from __future__ import annotations

from chatbx_server.events import StanzaEvent
from chatbx_server.modules import Feature
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.stanzas import StanzaError


class PingFeature(Feature):
    name = "ping"
    spec = "XEP-0199 2.0.1 (XMPP Ping)"
    disco_features = (ns.PING,)

    def setup(self) -> None:
        self.iq("get", "host", ns.PING, "ping", self.on_ping)
        self.iq("get", "bare", ns.PING, "ping", self.on_ping_account)

    def on_ping(self, event: StanzaEvent) -> None:
        return None  # an empty result is the pong

    def on_ping_account(self, event: StanzaEvent) -> None:
        sender = event.sender
        if sender is None or sender.bare != event.to.bare:
            raise StanzaError("service-unavailable")
        return None
