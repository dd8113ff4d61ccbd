"""SOCKS5 Bytestreams proxy (XEP-0065 1.8): the ``proxy.<domain>`` service.

Clients that cannot reach each other directly (both behind NAT) send files
with Jingle or plain SOCKS5 Bytestreams through this proxy: the requester
asks ``proxy.DOMAIN`` for its network address (XEP-0065 "Discovering the
network address of the proxy"), both parties connect to ``[listen] proxy``
with the same SHA-1 DST.ADDR, and the requester activates the pair with an
IQ-set (``<activate/>``). The TCP side, with its bounds on connections,
sessions, bandwidth and idle time, is chatbx_server/proxy/socks5.py.

Only local users may discover or activate (the proxy relays traffic for the
operator's users, not for the whole network: XEP-0065 allows ``forbidden``).
The service exists only while ``[listen] proxy`` is set. A session lives on
the node that accepted its two connections, so in a cluster each node
announces its own address (``host``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Optional

from twisted.logger import Logger
from twisted.words.xish import domish

from chatbx_server.logs import log_observer
from chatbx_server.events import StanzaEvent
from chatbx_server.modules import Feature
from chatbx_server.proxy.socks5 import Limits, Relay
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.jid import parse_or_none
from chatbx_server.xmpp.stanzas import StanzaError, error_reply, result_reply

log = Logger(observer=log_observer)

NS_BYTESTREAMS = "http://jabber.org/protocol/bytestreams"


@dataclass(frozen=True)
class Proxy65Options:
    """``[modules.proxy65]``."""

    #: the service is SUBDOMAIN.DOMAIN for every hosted domain
    subdomain: str = "proxy"
    #: address announced to clients ("" = the [listen] proxy address, or
    #: the domain itself when it listens on all addresses)
    host: str = ""
    #: port announced (0 = the [listen] proxy port; differs behind NAT)
    port: int = 0
    #: SOCKS5 connections open at once, and per client address
    max_connections: int = 1000
    max_connections_per_ip: int = 20
    #: activated sessions per requesting account
    max_sessions_per_user: int = 10
    #: bytes per second per session and direction (0 = unlimited)
    bandwidth: int = 10485760
    #: seconds an activated session may carry no byte
    idle_timeout: float = 120.0
    #: seconds a connection may wait for its partner and the activation
    activation_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not re.match(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", self.subdomain):
            raise ValueError(f"subdomain {self.subdomain!r} is not a DNS label")
        if self.host and not re.match(r"^[A-Za-z0-9.:-]{1,253}$", self.host):
            raise ValueError(f"host {self.host!r} is not a domain name or IP address")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is out of range")
        for name in ("max_connections", "max_connections_per_ip", "max_sessions_per_user",
                     "idle_timeout", "activation_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.bandwidth < 0:
            raise ValueError("bandwidth must not be negative")


def dst_addr(sid: str, requester: str, target: str) -> bytes:
    """XEP-0065: DST.ADDR = hex SHA-1 of SID + requester JID + target JID
    (the prepared JIDs of the IQ exchange)."""
    return hashlib.sha1((sid + requester + target).encode("utf-8")).hexdigest().encode("ascii")


class Proxy65Feature(Feature):
    name = "proxy65"
    spec = "XEP-0065 1.8.2 (SOCKS5 Bytestreams, proxy)"
    Options = Proxy65Options

    def setup(self) -> None:
        options: Proxy65Options = self.options
        #: service domain -> the hosted domain it serves
        self.services: dict[str, str] = {}
        self.relay: Optional[Relay] = None
        endpoint = self.server.config.listen.proxy
        if endpoint is None:
            log.info("proxy65: no [listen] proxy, no proxy service")
            return
        self.relay = Relay(self.server.clock, Limits(
            options.max_connections, options.max_connections_per_ip, options.max_sessions_per_user,
            options.bandwidth, options.idle_timeout, options.activation_timeout))
        self.endpoint = endpoint
        for host in sorted(self.server.hosts):
            service = f"{options.subdomain}.{host}"
            self.services[service] = host
            self.server.router.services[service] = self.on_stanza

    def teardown(self) -> None:
        for service in self.services:
            if self.server.router.services.get(service) == self.on_stanza:
                del self.server.router.services[service]
        self.services.clear()
        if self.relay is not None:
            self.relay.close_all()
        super().teardown()

    def streamhost(self, service: str) -> tuple[str, int]:
        """The host and port clients connect to."""
        options: Proxy65Options = self.options
        host = options.host or self.endpoint.host
        try:
            if ipaddress.ip_address(host).is_unspecified:
                host = self.services[service]
        except ValueError:
            pass
        return host, options.port or self.endpoint.port

    # -- stanzas to proxy.DOMAIN ---------------------------------------------------
    def on_stanza(self, event: StanzaEvent) -> Any:
        """A stanza for proxy.<domain> (router service: gets the event)."""
        stanza = event.stanza
        if stanza.name != "iq" or stanza.getAttribute("type") not in ("get", "set"):
            if stanza.name == "message" and stanza.getAttribute("type") != "error":
                self._send(error_reply(stanza, "service-unavailable"))
            return True
        payload = stanza.firstChildElement()
        kind = stanza["type"]
        try:
            if payload is None:
                raise StanzaError("bad-request")
            if kind == "get" and payload.uri == ns.DISCO_INFO and payload.name == "query":
                reply = self._disco_info(stanza, payload)
            elif kind == "get" and payload.uri == ns.DISCO_ITEMS and payload.name == "query":
                reply = result_reply(stanza)
                reply.addElement((ns.DISCO_ITEMS, "query"))
            elif payload.uri == NS_BYTESTREAMS and payload.name == "query":
                reply = self._query(stanza, payload, kind)
            else:
                raise StanzaError("service-unavailable")
        except StanzaError as exc:
            reply = error_reply(stanza, exc)
        self._send(reply)
        return True

    def _send(self, reply: domish.Element) -> None:
        self.server.router.route(reply)

    def _disco_info(self, stanza: domish.Element, query: domish.Element) -> domish.Element:
        if query.getAttribute("node"):
            raise StanzaError("item-not-found")
        reply = result_reply(stanza)
        out = reply.addElement((ns.DISCO_INFO, "query"))
        identity = out.addElement("identity")
        identity["category"], identity["type"] = "proxy", "bytestreams"
        identity["name"] = "SOCKS5 Bytestreams Service"
        for var in (ns.DISCO_INFO, ns.DISCO_ITEMS, NS_BYTESTREAMS):
            out.addElement("feature")["var"] = var
        return reply

    def _local_sender(self, stanza: domish.Element) -> Any:
        sender = parse_or_none(stanza.getAttribute("from"))
        if (sender is None or sender.user is None or sender.resource is None
                or sender.host not in self.server.hosts):
            raise StanzaError("forbidden", text="this proxy serves local users only")
        return sender

    def _query(self, stanza: domish.Element, query: domish.Element, kind: str) -> domish.Element:
        sender = self._local_sender(stanza)
        service = parse_or_none(stanza.getAttribute("to"))
        service_host = service.host if service is not None else ""
        if kind == "get":
            host, port = self.streamhost(service_host)
            reply = result_reply(stanza)
            out = reply.addElement((NS_BYTESTREAMS, "query"))
            streamhost = out.addElement("streamhost")
            streamhost["jid"], streamhost["host"], streamhost["port"] = service_host, host, str(port)
            return reply
        activate = next((c for c in query.elements() if c.name == "activate"), None)
        sid = query.getAttribute("sid", "")
        if activate is None or not sid or len(sid) > 1024:
            raise StanzaError("bad-request", text="sid and <activate/> are required")
        target = parse_or_none(str(activate).strip())
        if target is None:
            raise StanzaError("jid-malformed", type="modify", text="bad target JID")
        assert self.relay is not None
        problem = self.relay.activate(dst_addr(sid, sender.full, target.full), sender.bare)
        if problem == "item-not-found":
            raise StanzaError("item-not-found", text="no connections for this stream")
        if problem == "not-allowed":
            raise StanzaError("not-allowed", text="only one party is connected")
        if problem == "resource-constraint":
            raise StanzaError("resource-constraint", type="wait", text="too many transfers at once")
        return result_reply(stanza)
