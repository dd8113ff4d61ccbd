"""XEP-0202 entity time: UTC from the server's clock, zero offset."""

from __future__ import annotations

from chatbx_server.features.time import xep0082_datetime
from chatbx_server.xmpp import ns
from tests.unit.fakes import bind, make_server, stanza


def ask(server, session, xml):
    iq = stanza(xml)
    iq["from"] = session.jid.full
    server.router.route(iq, session)
    return session.take()


def test_time_comes_from_the_injected_clock() -> None:
    """The answer carries tzo +00:00 and the fake clock's time in XEP-0082 form."""
    server = make_server(modules=["message", "time"])
    server.clock.advance(1_700_000_000.6 - server.clock.seconds())
    alice = bind(server, "alice@localhost/a")
    [reply] = ask(server, alice, "<iq type='get' id='t1' to='localhost'><time xmlns='urn:xmpp:time'/></iq>")
    assert reply["type"] == "result" and reply["id"] == "t1"
    time = reply.firstChildElement()
    assert (time.uri, time.name) == (ns.TIME, "time")
    assert str(next(time.elements(ns.TIME, "tzo"))) == "+00:00"
    assert str(next(time.elements(ns.TIME, "utc"))) == "2023-11-14T22:13:20Z"


def test_xep0082_datetime_format() -> None:
    """Unix time 0 is 1970-01-01T00:00:00Z (UTC, 'Z', whole seconds)."""
    assert xep0082_datetime(0) == "1970-01-01T00:00:00Z"
    assert xep0082_datetime(86399.9) == "1970-01-01T23:59:59Z"


def test_time_is_advertised_in_disco() -> None:
    """The feature declares urn:xmpp:time for the server's disco#info."""
    server = make_server(modules=["message", "time"])
    assert ns.TIME in server.modules.get("time").disco_features
