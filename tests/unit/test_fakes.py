"""The unit-test fakes run the real stream: what a fake session is sent is
serialized and parsed back, and binding and closing go through C2SStream."""

from __future__ import annotations

from twisted.words.xish import domish

from chatbx_server.c2s.stream import BOUND, C2SStream
from chatbx_server.xmpp import ns
from tests.unit.fakes import bind, disconnect, make_server


def test_sent_is_a_parsed_copy_of_the_wire():
    """The recorded stanza is what was written, not the live element: changing
    the element afterwards does not change the record, and namespaces are
    what a client parses (jabber:client for a stanza built without one)."""
    server = make_server(modules=[])
    alice = bind(server, "alice@localhost/r")
    msg = domish.Element((None, "message"))
    msg["to"] = "alice@localhost/r"
    msg.addElement("body", content="first")
    alice.send(msg)
    msg.body.children[:] = ["changed"]
    (got,) = alice.take()
    assert got is not msg
    assert str(got.body) == "first" and got.uri == ns.CLIENT and got.body.uri == ns.CLIENT


def test_fake_stream_is_the_real_stream_and_writes_wire_bytes():
    """A bound fake session sits on a real C2SStream whose transport holds the
    bytes a client would read (header, features, stanzas without xmlns)."""
    server = make_server(modules=[])
    alice = bind(server, "alice@localhost/r")
    assert isinstance(alice.stream, C2SStream) and alice.stream.state == BOUND
    assert server.sessions.get("alice@localhost", "r") is alice
    msg = domish.Element((ns.CLIENT, "message"))
    msg.addElement("body", content="hi")
    alice.send(msg)
    wire = alice.stream.transport.value().decode()
    assert "<stream:features>" in wire and wire.endswith("<message><body>hi</body></message>")


def test_rebinding_a_resource_runs_the_streams_conflict_logic():
    """Binding the same resource again closes the older stream with conflict
    and fires session/closed for it (the real stream's code, not a copy)."""
    server = make_server(modules=[])
    closed: list = []
    server.events.on("session/closed", closed.append)
    old = bind(server, "alice@localhost/r")
    new = bind(server, "alice@localhost/r")
    assert old.stream.closed_with == ("conflict", "replaced by a new connection")
    assert closed == [old] and old.closed and not new.closed
    assert server.sessions.get("alice@localhost", "r") is new


def test_disconnect_ends_the_session_once():
    """A dropped connection removes the session and fires session/closed once."""
    server = make_server(modules=[])
    closed: list = []
    server.events.on("session/closed", closed.append)
    alice = bind(server, "alice@localhost/r")
    disconnect(alice)
    disconnect(alice)
    assert closed == [alice] and server.sessions.count() == 0


def test_available_goes_through_the_stream():
    """bind(available=True) sends initial presence as the client would; the
    stream stamps it with the full JID before routing."""
    server = make_server(modules=["presence"])
    alice = bind(server, "alice@localhost/r", available=True, priority=3)
    assert alice.available and alice.priority == 3
    assert alice.presence is not None and alice.presence["from"] == "alice@localhost/r"
