"""The session table: bare JID -> {resource: session}."""

from __future__ import annotations

from twisted.words.xish import domish

from chatbx_server.sessions import SessionManager
from tests.unit.fakes import make_server, session


def test_add_get_remove():
    """Sessions are found by bare JID and resource, and forgotten on remove."""
    server = make_server(modules=[])
    manager = SessionManager()
    a = session(server, "u@localhost/a")
    b = session(server, "u@localhost/b")
    assert manager.add(a) is None
    assert manager.add(b) is None
    assert manager.get("u@localhost", "a") is a
    assert manager.get("u@localhost", None) is None
    assert manager.get("v@localhost", "a") is None
    assert set(manager.resources("u@localhost")) == {"a", "b"}
    assert manager.count() == 2 and set(manager) == {a, b}
    assert manager.remove(a)
    assert manager.get("u@localhost", "a") is None
    assert manager.remove(b)
    assert manager.resources("u@localhost") == {} and manager.count() == 0
    assert not manager.remove(b)


def test_replacing_returns_the_old_session():
    """Adding a session for a taken resource returns the one it replaces;
    removing the replaced one later does not remove the newcomer."""
    server = make_server(modules=[])
    manager = SessionManager()
    old = session(server, "u@localhost/r")
    new = session(server, "u@localhost/r")
    manager.add(old)
    assert manager.add(new) is old
    assert not manager.remove(old)
    assert manager.get("u@localhost", "r") is new
    assert manager.add(new) is None  # re-adding itself is not a replacement


def test_available_and_interested():
    """available() lists sessions with presence, interested() those that asked for the roster."""
    server = make_server(modules=[])
    manager = SessionManager()
    a = session(server, "u@localhost/a")
    b = session(server, "u@localhost/b")
    manager.add(a)
    manager.add(b)
    assert manager.available("u@localhost") == [] and manager.interested("u@localhost") == []
    a.presence = domish.Element(("jabber:client", "presence"))
    b.roster_requested = True
    assert manager.available("u@localhost") == [a]
    assert a.available and not b.available
    assert manager.interested("u@localhost") == [b]
    assert manager.available("nobody@localhost") == []


def test_iteration_survives_removal():
    """Iterating while sessions close (server shutdown) does not break."""
    server = make_server(modules=[])
    manager = SessionManager()
    sessions = [session(server, f"u{i}@localhost/r") for i in range(3)]
    for s in sessions:
        manager.add(s)
    for s in manager:
        manager.remove(s)
    assert manager.count() == 0


def test_client_session_send_and_close():
    """A closed session sends nothing; close() passes the condition to the stream once."""
    server = make_server(modules=[])
    s = session(server, "u@localhost/r")
    s.send(domish.Element(("jabber:client", "message")))
    s.close("conflict", "replaced")
    assert s.stream.closed_with == ("conflict", "replaced")
    s.send(domish.Element(("jabber:client", "message")))
    assert len(s.sent) == 1
    assert (s.bare, s.resource, s.host, s.bare_jid.full) == ("u@localhost", "r", "localhost", "u@localhost")
