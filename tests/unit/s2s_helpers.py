"""Helpers for the s2s unit tests: a transport that parses what a stream
writes (headers, features, errors included) and records STARTTLS, a trust
store with fixed verdicts, and a manager on the fake server."""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.words.xish import domish

from chatbx_server.s2s.dns import Resolver
from chatbx_server.s2s.manager import S2SManager
from chatbx_server.server import Server
from chatbx_server.xmpp import ns

from tests.unit.fakes import make_server

STREAM_HEAD = ("<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
               "xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
               "version='1.0'")


class PeerTransport(StringTransport):
    """What the other server sees: every element we write, parsed."""

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
        self.headers: list[domish.Element] = []
        self.elements: list[domish.Element] = []
        self.tls: Any = None
        self.closed_with: Optional[tuple[Optional[str], Optional[str]]] = None
        self._new_parser()

    def _new_parser(self) -> None:
        parser = domish.elementStream()
        parser.DocumentStartEvent = self.headers.append
        parser.ElementEvent = self._on_element
        parser.DocumentEndEvent = lambda: None
        self._parser = parser

    def write(self, data: bytes) -> None:
        super().write(data)
        text = data.decode()
        if text.startswith("<?xml"):
            self._new_parser()  # a restarted stream
        self._parser.parse(data)

    def _on_element(self, element: domish.Element) -> None:
        if element.uri == ns.STREAMS and element.name == "error":
            condition = text = None
            for child in element.elements():
                if child.name == "text":
                    text = str(child)
                else:
                    condition = child.name
            self.closed_with = (condition, text)
        self.elements.append(element)

    def startTLS(self, ctx: Any) -> None:  # noqa: N802
        self.tls = ctx

    def take(self) -> list[domish.Element]:
        out, self.elements = self.elements, []
        return out

    def last(self, name: str) -> domish.Element:
        for element in reversed(self.elements):
            if element.name == name:
                return element
        raise AssertionError(f"no <{name}/> in {[e.toXml() for e in self.elements]}")


class FixedTrust:
    """A trust store whose verdict is set by the test: domains in ``valid`` pass."""

    def __init__(self, *valid: str) -> None:
        self.valid = set(valid)

    def verify_connection(self, transport: Any, domain: str) -> tuple[bool, str]:
        return (True, "valid") if domain in self.valid else (False, "self-signed")


def make_manager(config_text: str = "", trust: Optional[FixedTrust] = None,
                 connect: Any = None, modules: Any = None,
                 domains: tuple[str, ...] = ("a.example",)) -> tuple[Server, S2SManager]:
    """A server hosting a.example with federation on; DNS is never used."""
    server = make_server(modules=modules, domains=domains, config_text=config_text)
    resolver = Resolver(server.clock, {"b.example": "127.0.0.1:5269"},
                        lookup=lambda name: defer.fail(AssertionError("no DNS in tests")))
    manager = S2SManager(server, {"a.example": ("a.crt", "a.key")}, server_tls="server-tls",
                         resolver=resolver, connect=connect or (lambda *a: defer.Deferred()),
                         trust=trust or FixedTrust())
    manager.client_tls = lambda local, remote, alpn=False: f"client-tls:{local}->{remote}"  # type: ignore[assignment,method-assign,misc]
    server.s2s = manager
    server.router.remote = manager.route
    manager.start()
    return server, manager
