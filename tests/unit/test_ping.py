"""XEP-0199 ping: the server answers pings to its domain and to the sender's own account."""

from __future__ import annotations

from chatbx_server.xmpp import ns
from tests.unit.fakes import bind, make_server, stanza


def ask(server, session, xml):
    iq = stanza(xml)
    iq["from"] = session.jid.full
    server.router.route(iq, session)
    return session.take()


def error_condition(reply) -> str:
    error = next(c for c in reply.elements() if c.name == "error")
    return next(c.name for c in error.elements() if c.uri == ns.STANZA_ERRORS)


def test_ping_to_host_gets_empty_result() -> None:
    """A ping to the domain is answered with an empty result from the domain."""
    server = make_server(modules=["message", "ping"])
    alice = bind(server, "alice@localhost/a")
    [reply] = ask(server, alice, "<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert reply["type"] == "result" and reply["id"] == "p1"
    assert reply["from"] == "localhost" and reply["to"] == "alice@localhost/a"
    assert list(reply.elements()) == []


def test_ping_without_to_is_answered_for_own_account() -> None:
    """A ping with no 'to' (the client's own bare JID) gets an empty result."""
    server = make_server(modules=["message", "ping"])
    alice = bind(server, "alice@localhost/a")
    [reply] = ask(server, alice, "<iq type='get' id='p2'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert reply["type"] == "result" and reply["id"] == "p2"


def test_ping_to_other_account_is_service_unavailable() -> None:
    """The server does not answer pings on behalf of someone else's account."""
    server = make_server(modules=["message", "ping"])
    alice = bind(server, "alice@localhost/a")
    [reply] = ask(server, alice, "<iq type='get' id='p3' to='bob@localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert reply["type"] == "error"
    assert error_condition(reply) == "service-unavailable"


def test_ping_without_module_is_service_unavailable() -> None:
    """Without the ping module loaded the same request is an error (the test can fail)."""
    server = make_server(modules=["message"])
    alice = bind(server, "alice@localhost/a")
    [reply] = ask(server, alice, "<iq type='get' id='p4' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert reply["type"] == "error"
