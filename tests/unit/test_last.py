"""XEP-0012 last activity: server uptime, and the minimal, non-leaking account answer."""

from __future__ import annotations

from chatbx_server.storage.roster import RosterItem
from chatbx_server.xmpp import ns
from tests.unit.fakes import bind, create_user, make_server, stanza


def ask(server, session, xml):
    iq = stanza(xml)
    iq["from"] = session.jid.full
    server.router.route(iq, session)
    return session.take()


def condition(reply) -> str:
    error = next(reply.elements(ns.CLIENT, "error"))
    return next(c.name for c in error.elements() if c.uri == ns.STANZA_ERRORS)


def make_available(server, session) -> None:
    """What the presence module does on initial presence (it is not loaded here)."""
    session.presence = stanza("<presence/>")


def query(to: str) -> str:
    return f"<iq type='get' id='l1' to='{to}'><query xmlns='jabber:iq:last'/></iq>"


def test_host_query_returns_uptime_from_the_clock() -> None:
    """The server's answer is the seconds since it started, on the injected clock."""
    server = make_server(modules=["message", "last"])
    server.clock.advance(123.7)
    alice = bind(server, "alice@localhost/a")
    [reply] = ask(server, alice, query("localhost"))
    assert reply["type"] == "result"
    result = reply.firstChildElement()
    assert (result.uri, result.name, result["seconds"]) == (ns.LAST, "query", "123")


def test_own_account_with_available_resource_is_zero() -> None:
    """An account asking about itself while available gets seconds='0'."""
    server = make_server(modules=["message", "last"])
    create_user(server, "alice@localhost")
    alice = bind(server, "alice@localhost/a")
    make_available(server, alice)
    [reply] = ask(server, alice, query("alice@localhost"))
    assert reply["type"] == "result"
    assert reply.firstChildElement()["seconds"] == "0"


def test_own_account_without_available_resource_is_service_unavailable() -> None:
    """No logout time is recorded yet, so an offline account has no answer."""
    server = make_server(modules=["message", "last"])
    create_user(server, "alice@localhost")
    alice = bind(server, "alice@localhost/a")
    [reply] = ask(server, alice, query("alice@localhost"))
    assert reply["type"] == "error" and condition(reply) == "service-unavailable"


def test_stranger_is_forbidden_existing_or_not() -> None:
    """Someone without a presence subscription gets forbidden, for real and unknown accounts alike."""
    server = make_server(modules=["message", "last"])
    create_user(server, "alice@localhost")
    create_user(server, "mallory@localhost")
    make_available(server, bind(server, "alice@localhost/a"))
    mallory = bind(server, "mallory@localhost/m")
    [reply] = ask(server, mallory, query("alice@localhost"))
    assert reply["type"] == "error" and condition(reply) == "forbidden"
    [reply] = ask(server, mallory, query("nobody@localhost"))
    assert reply["type"] == "error" and condition(reply) == "forbidden"


def test_subscribed_contact_sees_zero() -> None:
    """A contact the account shares presence with (subscription 'from') sees seconds='0'."""
    server = make_server(modules=["message", "last"])
    create_user(server, "alice@localhost")
    create_user(server, "bob@localhost")
    server.stores.roster.set_item("alice@localhost", RosterItem("bob@localhost", subscription="from"))
    make_available(server, bind(server, "alice@localhost/a"))
    bob = bind(server, "bob@localhost/b")
    [reply] = ask(server, bob, query("alice@localhost"))
    assert reply["type"] == "result" and reply.firstChildElement()["seconds"] == "0"
