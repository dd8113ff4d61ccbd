"""Fakes for unit tests: a server on a fake clock and in-memory SQLite,
and sessions that record what they were sent."""

from __future__ import annotations

from typing import Any, Iterable, Optional

from twisted.internet.testing import MemoryReactorClock
from twisted.words.xish import domish

from chatbx_server.c2s.session import ClientSession
from chatbx_server.config import load_config
from chatbx_server.server import Server
from chatbx_server.storage.database import Database
from chatbx_server.xmpp.jid import JID
from chatbx_server.xmpp.stanzas import parse_stanza


class FakeStream:
    """Stands in for the c2s protocol behind a ClientSession."""

    def __init__(self) -> None:
        self.sent: list[domish.Element] = []
        self.closed_with: Optional[tuple[Optional[str], Optional[str]]] = None
        self.session: Optional[ClientSession] = None

    def send_element(self, element: domish.Element) -> None:
        # Record a serialized round trip so later mutation cannot fool tests.
        self.sent.append(element)

    def close_stream(self, condition: Optional[str] = None, text: Optional[str] = None) -> None:
        self.closed_with = (condition, text)
        if self.session is not None:
            self.session.closed = True


class FakeSession(ClientSession):
    """A ClientSession whose stream records what it was sent."""

    __slots__ = ()

    def __init__(self, jid: str) -> None:
        stream = FakeStream()
        super().__init__(stream, JID.parse(jid))
        stream.session = self

    @property
    def sent(self) -> list[domish.Element]:
        return self.stream.sent

    def take(self) -> list[domish.Element]:
        """Return and forget what was sent so far."""
        out = list(self.stream.sent)
        self.stream.sent.clear()
        return out


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


def bind(server: Server, jid: str, available: bool = False, priority: int = 0) -> FakeSession:
    """A FakeSession registered as bound on ``server``."""
    session = FakeSession(jid)
    old = server.sessions.add(session)
    if old is not None:
        old.close("conflict")
    server.events.fire_all("session/bound", session)
    if available:
        pres = domish.Element(("jabber:client", "presence"))
        if priority:
            pres.addElement("priority", content=str(priority))
        server.router.route(pres, session)
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
