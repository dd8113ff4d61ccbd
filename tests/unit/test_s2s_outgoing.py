"""Outgoing s2s streams and the manager's queues (RFC 6120, XEP-0178,
XEP-0220): STARTTLS then SASL EXTERNAL or dialback, stanzas queued while
connecting and sent in order, bounces when the remote cannot be reached,
refuses us or never answers, back-off, bounded queues, db:verify questions."""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError

from chatbx_server.s2s.dialback import make_key
from chatbx_server.s2s.outgoing import S2SOutStream

from tests.unit.fakes import bind, create_user
from tests.unit.s2s_helpers import STREAM_HEAD, FixedTrust, PeerTransport, make_manager

REMOTE_HEAD = f"{STREAM_HEAD} from='b.example' to='a.example' id='RID'>"
TLS_FEATURES = ("<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"
                "</stream:features>")


class Connector:
    """connect() for the manager: records attempts; the test decides their fate."""

    def __init__(self) -> None:
        self.attempts: list[tuple[Any, Any, defer.Deferred]] = []

    def __call__(self, target: Any, factory: Any, route: Any) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.attempts.append((target, factory, d))
        return d

    def accept(self, index: int = -1) -> tuple[S2SOutStream, PeerTransport]:
        target, factory, d = self.attempts[index]
        stream = factory.buildProtocol(None)
        transport = PeerTransport()
        stream.makeConnection(transport)
        d.callback(stream)
        return stream, transport

    def refuse(self, index: int = -1) -> None:
        self.attempts[index][2].errback(ConnectionRefusedError("refused"))


def setup(config: str = "", trust: Any = None) -> tuple[Any, Any, Connector, Any]:
    connector = Connector()
    server, manager = make_manager(config, trust=trust, connect=connector)
    create_user(server, "alice@a.example")
    alice = bind(server, "alice@a.example/r", available=True)
    alice.take()
    return server, manager, connector, alice


def send(alice: Any, xml: str) -> None:
    from chatbx_server.c2s.stream import CLIENT_STREAMS
    from tests.unit.fakes import stanza

    alice.stream.dataReceived(CLIENT_STREAMS.serialize(stanza(xml)).encode())


def feed(stream: S2SOutStream, text: str) -> None:
    stream.dataReceived(text.encode())


def through_tls(stream: S2SOutStream, transport: PeerTransport, features: str) -> None:
    feed(stream, REMOTE_HEAD + TLS_FEATURES)
    assert transport.last("starttls") is not None
    feed(stream, "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert transport.tls == "client-tls:a.example->b.example"
    assert transport.headers[-1]["to"] == "b.example" and transport.headers[-1]["from"] == "a.example"
    transport.take()
    feed(stream, REMOTE_HEAD + f"<stream:features>{features}</stream:features>")


def errors(alice: Any) -> list[tuple[str, str]]:
    out = []
    for element in alice.take():
        if element.getAttribute("type") == "error":
            out.append((element.getAttribute("id") or element.name,
                        element.error.firstChildElement().name))
    return out


def test_sasl_external_then_queued_stanzas_in_order() -> None:
    """Stanzas wait while the stream is set up (TLS, SASL EXTERNAL, restart)
    and then go out in order without a jabber:client xmlns."""
    server, manager, connector, alice = setup(trust=FixedTrust("b.example"))
    send(alice, "<message id='m1' to='bob@b.example'><body>one</body></message>")
    send(alice, "<message id='m2' to='bob@b.example'><body>two</body></message>")
    assert len(connector.attempts) == 1  # one stream for the pair
    assert connector.attempts[0][0] == ("127.0.0.1", 5269, False)
    stream, transport = connector.accept()
    through_tls(stream, transport,
                "<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism></mechanisms>")
    auth = transport.last("auth")
    assert auth["mechanism"] == "EXTERNAL" and base64.b64decode(str(auth)) == b"a.example"
    assert not [e for e in transport.elements if e.name == "message"]
    feed(stream, "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
    feed(stream, REMOTE_HEAD + "<stream:features/>")
    assert stream.ready and stream.auth_method == "sasl-external"
    assert [e["id"] for e in transport.elements if e.name == "message"] == ["m1", "m2"]
    assert b"jabber:client" not in transport.value()
    send(alice, "<message id='m3' to='bob@b.example'><body>three</body></message>")
    assert transport.elements[-1]["id"] == "m3" and len(connector.attempts) == 1


def test_dialback_originating() -> None:
    """Without EXTERNAL the stream sends a db:result with the XEP-0185 key for
    the remote's stream id; type='valid' makes it ready."""
    server, manager, connector, alice = setup()
    send(alice, "<message id='m1' to='bob@b.example'><body>one</body></message>")
    stream, transport = connector.accept()
    through_tls(stream, transport, "<dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>")
    result = transport.last("result")
    assert str(result) == make_key(manager.secret, "b.example", "a.example", "RID")
    feed(stream, "<db:result from='b.example' to='a.example' type='valid'/>")
    assert stream.ready and transport.elements[-1]["id"] == "m1"


def test_dialback_refused_bounces_queue() -> None:
    """A remote that refuses our key: queued stanzas that expect an answer
    bounce with remote-server-not-found; presence without a type does not."""
    server, manager, connector, alice = setup()
    send(alice, "<message id='m1' to='bob@b.example'><body>one</body></message>")
    send(alice, "<iq id='q1' type='get' to='b.example'><ping xmlns='urn:xmpp:ping'/></iq>")
    send(alice, "<presence to='bob@b.example'/>")
    stream, transport = connector.accept()
    through_tls(stream, transport, "<dialback xmlns='urn:xmpp:features:dialback'/>")
    feed(stream, "<db:result from='b.example' to='a.example' type='invalid'/>")
    assert errors(alice) == [("m1", "remote-server-not-found"), ("q1", "remote-server-not-found")]
    assert manager.routes[("a.example", "b.example")].stream is None


def test_unreachable_bounces_and_backs_off() -> None:
    """Connection refused: queued stanzas bounce; during the back-off new ones
    bounce at once without a new attempt; afterwards a new attempt is made."""
    server, manager, connector, alice = setup("[s2s]\nretry_delay = 5.0\n")
    send(alice, "<message id='m1' to='bob@b.example'><body>one</body></message>")
    connector.refuse()
    assert errors(alice) == [("m1", "remote-server-not-found")]
    send(alice, "<message id='m2' to='bob@b.example'><body>two</body></message>")
    assert errors(alice) == [("m2", "remote-server-not-found")] and len(connector.attempts) == 1
    server.clock.advance(5)
    send(alice, "<message id='m3' to='bob@b.example'><body>three</body></message>")
    assert len(connector.attempts) == 2 and errors(alice) == []


def test_remote_that_never_answers_times_out() -> None:
    """TCP accepted but no answer: after auth_timeout the queue bounces with
    remote-server-timeout."""
    server, manager, connector, alice = setup("[s2s]\nauth_timeout = 20.0\n")
    send(alice, "<message id='m1' to='bob@b.example'><body>one</body></message>")
    stream, transport = connector.accept()
    server.clock.advance(20)
    assert errors(alice) == [("m1", "remote-server-timeout")]
    assert transport.closed_with is not None and transport.closed_with[0] == "connection-timeout"


def test_queue_is_bounded() -> None:
    """Beyond max_queue stanzas for one remote domain, more bounce (resource-constraint)."""
    server, manager, connector, alice = setup("[s2s]\nmax_queue = 2\n")
    for i in range(3):
        send(alice, f"<message id='m{i}' to='bob@b.example'><body>x</body></message>")
    assert errors(alice) == [("m2", "resource-constraint")]


def test_tls_required_but_not_offered() -> None:
    """require_encryption: a remote without STARTTLS is given up (and the queue bounces)."""
    server, manager, connector, alice = setup()
    send(alice, "<message id='m1' to='bob@b.example'><body>one</body></message>")
    stream, transport = connector.accept()
    feed(stream, REMOTE_HEAD + "<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>")
    assert transport.closed_with == ("policy-violation", "the remote server does not offer TLS")
    assert errors(alice) == [("m1", "remote-server-not-found")]


def test_secure_auth_refuses_unverified_remote() -> None:
    """secure_auth: an outgoing stream to a remote whose certificate does not
    verify is closed before anything is sent."""
    server, manager, connector, alice = setup("[s2s]\nsecure_auth = true\n")
    send(alice, "<message id='m1' to='bob@b.example'><body>one</body></message>")
    stream, transport = connector.accept()
    through_tls(stream, transport, "<dialback xmlns='urn:xmpp:features:dialback'/>")
    assert transport.closed_with is not None and transport.closed_with[0] == "policy-violation"
    assert errors(alice) == [("m1", "remote-server-not-found")]


def test_verify_question_rides_the_outgoing_stream() -> None:
    """Receiving role: request_verify sends db:verify once the outgoing stream
    is encrypted (before it is authenticated) and the answer fires the Deferred."""
    server, manager, connector, alice = setup()
    answers: list[Any] = []
    manager.request_verify("a.example", "b.example", "SID", "KEY").addCallback(answers.append)
    stream, transport = connector.accept()
    through_tls(stream, transport, "<dialback xmlns='urn:xmpp:features:dialback'/>")
    verify = transport.last("verify")
    assert (verify["id"], str(verify), verify["to"]) == ("SID", "KEY", "b.example")
    feed(stream, "<db:verify from='b.example' to='a.example' id='SID' type='valid'/>")
    assert answers == [True]


def test_idle_stream_closes() -> None:
    """A ready stream without traffic for idle_timeout is closed cleanly; the
    next stanza opens a new one."""
    server, manager, connector, alice = setup("[s2s]\nidle_timeout = 60.0\n")
    send(alice, "<message id='m1' to='bob@b.example'><body>one</body></message>")
    stream, transport = connector.accept()
    through_tls(stream, transport, "<dialback xmlns='urn:xmpp:features:dialback'/>")
    feed(stream, "<db:result from='b.example' to='a.example' type='valid'/>")
    server.clock.advance(61)
    server.clock.advance(15)
    assert stream.closed and transport.closed_with is None and b"</stream:stream>" in transport.value()
    send(alice, "<message id='m2' to='bob@b.example'><body>two</body></message>")
    assert len(connector.attempts) == 2


def test_each_virtual_host_federates_as_itself() -> None:
    """Two hosted domains: each (local, remote) pair gets its own stream whose
    header and dialback name that local domain."""
    connector = Connector()
    server, manager = make_manager(connect=connector, domains=("a.example", "z.example"))
    for jid in ("alice@a.example", "zoe@z.example"):
        create_user(server, jid)
    alice = bind(server, "alice@a.example/r", available=True)
    zoe = bind(server, "zoe@z.example/r", available=True)
    send(alice, "<message id='a1' to='bob@b.example'><body>x</body></message>")
    send(zoe, "<message id='z1' to='bob@b.example'><body>y</body></message>")
    assert len(connector.attempts) == 2
    sent = {}
    for index in (0, 1):
        stream, transport = connector.accept(index)
        local = stream.local
        head = REMOTE_HEAD.replace("to='a.example'", f"to='{local}'")
        feed(stream, head + TLS_FEATURES)
        feed(stream, "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        assert transport.headers[-1]["from"] == local
        feed(stream, head + "<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>")
        assert transport.last("result")["from"] == local
        assert str(transport.last("result")) == make_key(manager.secret, "b.example", local, "RID")
        feed(stream, f"<db:result from='b.example' to='{local}' type='valid'/>")
        sent[local] = [e["id"] for e in transport.elements if e.name == "message"]
    assert sent == {"a.example": ["a1"], "z.example": ["z1"]}


def test_peer_stream_error_while_connecting_bounces() -> None:
    """A <stream:error/> from the remote before we are ready closes our side
    without an error of ours, and queued stanzas bounce."""
    server, manager, connector, alice = setup()
    send(alice, "<message id='m1' to='bob@b.example'><body>one</body></message>")
    stream, transport = connector.accept()
    feed(stream, REMOTE_HEAD + "<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                               "</stream:error>")
    assert stream.closed and transport.closed_with is None
    assert errors(alice) == [("m1", "remote-server-not-found")]
    assert "host-unknown" in manager.routes[("a.example", "b.example")].last_error
