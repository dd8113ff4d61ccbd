"""Fakes for unit tests: a server on a fake clock and in-memory SQLite,
and sessions that record what they were sent.

A fake session is a real ClientSession on a real C2SStream whose transport
is a StringTransport: what a session is sent is serialized by the real
stream serializer and parsed back the way a client parses it, so tests see
what goes on the wire (not the live element a feature may change later),
and binding, replacing and closing run the stream's own code.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Optional

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.words.xish import domish

from chatbx_server.c2s import stream as c2s
from chatbx_server.c2s.session import ClientSession
from chatbx_server.config import load_config
from chatbx_server.server import Server
from chatbx_server.storage.database import Database
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.jid import JID
from chatbx_server.xmpp.stanzas import parse_stanza

_addresses = itertools.count(1)


class ClientTransport(StringTransport):
    """Records the bytes and parses them as the client would, as they are written."""

    def __init__(self, peer: str) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", peer, 40000))
        #: stanzas (and other non-stream elements) received, parsed
        self.elements: list[domish.Element] = []
        #: (condition, text) of the stream error, or (None, None) for a
        #: clean close; None while the stream is open
        self.closed_with: Optional[tuple[Optional[str], Optional[str]]] = None
        self._parser = domish.elementStream()
        self._parser.DocumentStartEvent = lambda root: None
        self._parser.ElementEvent = self._on_element
        self._parser.DocumentEndEvent = self._on_end

    def write(self, data: bytes) -> None:
        super().write(data)
        self._parser.parse(data)

    def _on_element(self, element: domish.Element) -> None:
        if element.uri != ns.STREAMS:
            self.elements.append(element)
        elif element.name == "error":
            condition = text = None
            for child in element.elements():
                if child.name == "text":
                    text = str(child)
                else:
                    condition = child.name
            self.closed_with = (condition, text)

    def _on_end(self) -> None:
        if self.closed_with is None:
            self.closed_with = (None, None)


class FakeStream(c2s.C2SStream):
    """A real, authenticated client stream over a ClientTransport."""

    transport: ClientTransport

    def __init__(self, server: Server, jid: JID) -> None:
        n = next(_addresses)
        super().__init__(c2s.C2SFactory(server, tls=None, direct_tls=True))
        self.makeConnection(ClientTransport(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"))
        # Where SASL success leaves a client; then it restarts the stream.
        self.user = jid.bare_jid()
        self.dataReceived(f"<?xml version='1.0'?><stream:stream xmlns='{ns.CLIENT}' "
                          f"xmlns:stream='{ns.STREAMS}' to='{jid.host}' version='1.0'>".encode())
        assert self.state == c2s.BIND_NEEDED, self.transport.value()

    @property
    def sent(self) -> list[domish.Element]:
        return self.transport.elements

    @property
    def closed_with(self) -> Optional[tuple[Optional[str], Optional[str]]]:
        return self.transport.closed_with


class FakeSession(ClientSession):
    """A ClientSession whose stream records what it was sent (parsed from the wire)."""

    __slots__ = ()

    @property
    def sent(self) -> list[domish.Element]:
        return self.stream.sent

    def take(self) -> list[domish.Element]:
        """Return and forget what was sent so far."""
        out = list(self.stream.sent)
        self.stream.sent.clear()
        return out


FakeStream.session_class = FakeSession


def session(server: Server, jid: str) -> FakeSession:
    """A FakeSession on its own stream, not registered in server.sessions
    (for tests of the session table itself)."""
    full = JID.parse(jid)
    stream = FakeStream(server, full)
    fake = stream.session = FakeSession(stream, full)
    return fake


def make_server(modules: Optional[Iterable[str]] = None, domains: Iterable[str] = ("localhost",),
                config_text: str = "") -> Server:
    """A started Server on a MemoryReactorClock and threadless in-memory SQLite."""
    import tempfile, os

    text = "domains = [%s]\n" % ", ".join(f'"{d}"' for d in domains)
    if modules is not None:
        text += "modules = [%s]\n" % ", ".join(f'"{m}"' for m in modules)
    text += config_text
    fd, path = tempfile.mkstemp(suffix=".toml")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    try:
        config = load_config(path)
    finally:
        os.unlink(path)
    clock = MemoryReactorClock()
    db = Database.for_tests("sqlite://")
    from chatbx_server.storage import schema

    with db.engine.begin() as conn:
        schema.metadata.create_all(conn)
    server = Server(config, clock=clock, database=db)
    server.start()
    return server


def disconnect(session: ClientSession) -> None:
    """The client's connection drops: the stream ends its session (session/closed fires)."""
    session.stream.connectionLost(Failure(ConnectionDone()))


def bind(server: Server, jid: str, available: bool = False, priority: int = 0) -> FakeSession:
    """A FakeSession bound on ``server`` by the real stream code (an older
    session on the same resource is replaced, session/bound fires)."""
    full = JID.parse(jid)
    session = FakeStream(server, full).bind_session(full)
    assert isinstance(session, FakeSession)
    if available:
        pres = domish.Element((ns.CLIENT, "presence"))
        if priority:
            pres.addElement("priority", content=str(priority))
        session.stream.dataReceived(c2s.CLIENT_STREAMS.serialize(pres).encode())
    return session


def stanza(xml: str) -> domish.Element:
    """Parse one stanza from text (default namespace jabber:client)."""
    return parse_stanza(xml)


def create_user(server: Server, jid: str, password: str = "secret") -> None:
    """Create an account synchronously (threadless test database)."""
    d = server.stores.users.create(jid, password)
    failures: list[Any] = []
    d.addErrback(failures.append)
    if failures:
        failures[0].raiseException()
