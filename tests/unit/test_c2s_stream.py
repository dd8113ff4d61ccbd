"""The client stream (RFC 6120 §4-§8) driven byte by byte over a StringTransport:
stream header checks, STARTTLS, SASL (with the throttle on the fake clock),
resource binding and the checks on every stanza."""

from __future__ import annotations

import base64
from typing import Any, Optional

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.words.xish import domish

from chatbx_server.c2s import stream as c2s_state
from chatbx_server.c2s.stream import C2SFactory
from chatbx_server.xmpp import ns
from tests.unit.fakes import create_user, make_server
from tests.unit.test_scram import client_final

BINDINGS = {"tls-exporter": b"\x05" * 32}


class TLSTransport(StringTransport):
    """A StringTransport that records startTLS instead of lacking it."""

    def __init__(self, peer: str = "10.0.0.1") -> None:
        super().__init__(peerAddress=IPv4Address("TCP", peer, 40000))
        self.tls_started: list[Any] = []

    def startTLS(self, context: Any) -> None:  # noqa: N802 (Twisted's name)
        self.tls_started.append(context)


class FakeTLS:
    """Stands in for TLSContexts: hands out a marker context factory."""

    context = object()

    def server_context_factory(self) -> Any:
        return self.context


class Client:
    """One connection: writes bytes to the stream and parses what comes back."""

    def __init__(self, factory: C2SFactory, peer: str = "10.0.0.1") -> None:
        self.factory = factory
        self.transport = TLSTransport(peer)
        self.proto = factory.buildProtocol(self.transport.getPeer())
        self.proto.makeConnection(self.transport)
        self.headers: list[domish.Element] = []
        self.ended = 0
        self._pending: list[domish.Element] = []
        self._offset = 0
        self._parser: Any = None

    # -- input to the server -----------------------------------------------
    def send(self, data: str | bytes) -> None:
        self.proto.dataReceived(data.encode() if isinstance(data, str) else data)

    def header(self, to: str = "localhost", version: str = "1.0", xmlns: str = ns.CLIENT,
               stream_ns: str = ns.STREAMS, sender: Optional[str] = None) -> None:
        attrs = f" to='{to}'" if to else ""
        attrs += f' from="{sender}"' if sender else ""
        attrs += f" version='{version}'" if version else ""
        self.send(f"<?xml version='1.0'?><stream:stream xmlns='{xmlns}' "
                  f"xmlns:stream='{stream_ns}'{attrs}>")

    # -- output of the server ----------------------------------------------
    def _new_parser(self) -> None:
        parser = domish.elementStream()
        parser.DocumentStartEvent = self.headers.append
        parser.ElementEvent = self._pending.append
        parser.DocumentEndEvent = lambda: setattr(self, "ended", self.ended + 1)
        self._parser = parser

    def received(self) -> list[domish.Element]:
        """Elements sent since the last call (stream headers are in .headers)."""
        data = self.transport.value()[self._offset:]
        self._offset += len(data)
        for i, chunk in enumerate(data.split(b"<?xml version='1.0'?>")):
            if i > 0:
                self._new_parser()
            if chunk:
                self._parser.parse(chunk)
        out, self._pending[:] = list(self._pending), []
        return out

    def one(self) -> domish.Element:
        elements = self.received()
        assert len(elements) == 1, [e.toXml() for e in elements]
        return elements[0]

    def stream_error(self) -> Optional[str]:
        """The condition of a stream error among what was received, if any."""
        for el in self.received():
            if el.uri == ns.STREAMS and el.name == "error":
                return [c.name for c in el.elements() if c.name != "text"][0]
        return None

    def lose(self) -> None:
        self.proto.connectionLost(None)

    # -- conversations -----------------------------------------------------
    def features(self) -> domish.Element:
        els = self.received()
        feats = [e for e in els if e.name == "features"]
        assert feats, [e.toXml() for e in els]
        return feats[0]

    def scram(self, user: str = "alice", password: str = "pencil",
              mechanism: str = "SCRAM-SHA-256", gs2: str = "n,,", cb: bytes = b"") -> domish.Element:
        """A SCRAM exchange; returns the <success/> or <failure/> element."""
        bare = f"n={user},r=cnonce"
        first = base64.b64encode((gs2 + bare).encode()).decode()
        self.send(f"<auth xmlns='{ns.SASL}' mechanism='{mechanism}'>{first}</auth>")
        challenge = self.one()
        if challenge.name != "challenge":
            return challenge
        server_first = base64.b64decode(str(challenge))
        hash_name = "SHA-1" if "SHA-1" in mechanism else "SHA-256"
        final = client_final(hash_name, password, bare, server_first, gs2, cb)
        self.send(f"<response xmlns='{ns.SASL}'>{base64.b64encode(final).decode()}</response>")
        return self.one()

    def plain(self, user: str, password: str) -> None:
        payload = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        self.send(f"<auth xmlns='{ns.SASL}' mechanism='PLAIN'>{payload}</auth>")

    def bind(self, resource: Optional[str] = None) -> domish.Element:
        inner = f"<resource>{resource}</resource>" if resource else ""
        self.send(f"<iq type='set' id='bind1'><bind xmlns='{ns.BIND}'>{inner}</bind></iq>")
        return self.one()

    def login(self, resource: Optional[str] = "res", user: str = "alice", password: str = "pencil") -> str:
        """Header, SCRAM, restart, bind; return the bound full JID."""
        self.header()
        self.features()
        success = self.scram(user, password)
        assert success.name == "success", success.toXml()
        self.header()
        self.features()
        reply = self.bind(resource)
        assert reply["type"] == "result", reply.toXml()
        return str(reply.bind.jid)


@pytest.fixture
def server():
    srv = make_server(modules=["message"], domains=("localhost", "example.org"),
                      config_text="[limits]\nmax_connections_per_ip = 3\n"
                                  "auth_failure_delay = 2.0\nauth_failure_max_delay = 5.0\n")
    create_user(srv, "alice@localhost", "pencil")
    create_user(srv, "bob@localhost", "secret")
    return srv


@pytest.fixture
def tls_factory(server, monkeypatch):
    """A direct-TLS listener (XEP-0368) whose connections have channel bindings."""
    factory = C2SFactory(server, FakeTLS(), direct_tls=True)
    monkeypatch.setattr(factory, "channel_bindings", lambda transport: dict(BINDINGS))
    return factory


@pytest.fixture
def client(tls_factory):
    return Client(tls_factory)


def mechanisms(features: domish.Element) -> list[str]:
    for child in features.elements():
        if child.uri == ns.SASL and child.name == "mechanisms":
            return [str(m) for m in child.elements()]
    return []


def children(features: domish.Element) -> list[tuple[str, str]]:
    return [(c.uri, c.name) for c in features.elements()]


def bound_closed(server) -> list:
    closed: list = []
    server.events.on("session/closed", closed.append)
    return closed


# -- stream header -----------------------------------------------------------

def test_header_reply(client):
    """The server answers with its own header (from = the requested host, an id, version 1.0)."""
    client.header(to="Example.ORG")
    client.features()
    (header,) = client.headers
    assert header["from"] == "example.org" and header["version"] == "1.0" and header["id"]
    assert header.uri == ns.STREAMS and header.name == "stream"


@pytest.mark.parametrize("kwargs,condition", [
    ({"to": "unknown.example"}, "host-unknown"),
    ({"to": ""}, "host-unknown"),
    ({"to": "@@bad"}, "host-unknown"),
    ({"xmlns": "jabber:server"}, "invalid-namespace"),
    ({"stream_ns": "urn:wrong"}, "invalid-namespace"),
    ({"version": ""}, "unsupported-version"),
    ({"version": "0.9"}, "unsupported-version"),
    ({"version": "abc"}, "unsupported-version"),
    ({"version": "1"}, "unsupported-version"),
])
def test_header_errors(client, kwargs, condition):
    """Bad headers close the stream with the matching stream error, after a header of our own."""
    client.header(**kwargs)
    assert client.stream_error() == condition
    assert client.headers, "a stream error needs a stream header first"
    assert client.ended == 1
    assert client.transport.disconnecting


# -- STARTTLS ----------------------------------------------------------------

def test_starttls_required_then_upgrade(server, monkeypatch):
    """Plain connections are offered only a required STARTTLS; <starttls/> is
    answered <proceed/>, TLS starts, and the restarted stream offers SASL."""
    factory = C2SFactory(server, FakeTLS(), direct_tls=False)
    monkeypatch.setattr(factory, "channel_bindings", lambda transport: {})
    c = Client(factory)
    c.header()
    feats = c.features()
    assert children(feats) == [(ns.TLS, "starttls")]
    assert feats.firstChildElement().firstChildElement().name == "required"
    c.send(f"<starttls xmlns='{ns.TLS}'/>")
    assert c.one().name == "proceed"
    assert c.transport.tls_started == [FakeTLS.context]
    c.header()
    feats = c.features()
    assert mechanisms(feats) == ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]
    assert (ns.SASL_CB, "sasl-channel-binding") not in children(feats)


def test_auth_before_starttls(server):
    """<auth/> on a plain stream gets encryption-required; a stanza is a policy violation."""
    c = Client(C2SFactory(server, FakeTLS(), direct_tls=False))
    c.header()
    c.features()
    c.plain("alice", "pencil")
    failure = c.one()
    assert failure.name == "failure" and failure.firstChildElement().name == "encryption-required"
    c.send("<message to='bob@localhost'><body>x</body></message>")
    assert c.stream_error() == "policy-violation"


# -- SASL --------------------------------------------------------------------

def test_mechanisms_with_bindings(client):
    """With channel bindings, -PLUS mechanisms and the XEP-0440 list are offered."""
    client.header()
    feats = client.features()
    assert mechanisms(feats) == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256",
                                 "SCRAM-SHA-1", "PLAIN"]
    cb = [c for c in feats.elements() if c.name == "sasl-channel-binding"][0]
    assert [t["type"] for t in cb.elements()] == ["tls-exporter"]


def test_full_scram_login_and_bind(client, server):
    """SCRAM-SHA-256 login, restart with bind and session features, client-chosen resource."""
    bound: list = []
    server.events.on("session/bound", bound.append)
    client.header()
    client.features()
    success = client.scram()
    assert success.name == "success" and base64.b64decode(str(success)).startswith(b"v=")
    client.header()
    feats = client.features()
    assert (ns.BIND, "bind") in children(feats) and (ns.SESSION, "session") in children(feats)
    assert mechanisms(feats) == []
    reply = client.bind("Phone")
    assert reply["type"] == "result" and reply["id"] == "bind1"
    assert str(reply.bind.jid) == "alice@localhost/Phone"
    assert server.sessions.get("alice@localhost", "Phone") is client.proto.session
    assert [s.jid.full for s in bound] == ["alice@localhost/Phone"]


def test_scram_plus_login(client):
    """SCRAM-SHA-256-PLUS with the connection's tls-exporter data succeeds."""
    client.header()
    client.features()
    result = client.scram(mechanism="SCRAM-SHA-256-PLUS", gs2="p=tls-exporter,,",
                          cb=BINDINGS["tls-exporter"])
    assert result.name == "success"


def test_server_chosen_resource(client):
    """Without a requested resource the server picks a random one."""
    jid = client.login(resource=None)
    assert jid.startswith("alice@localhost/") and len(jid) > len("alice@localhost/") + 8


def test_bind_features_include_modules(server, monkeypatch):
    """Stream features of loaded modules are offered after authentication."""
    extra = domish.Element(("urn:example:feature", "thing"))
    monkeypatch.setattr(server.modules, "stream_features", lambda session: [extra])
    factory = C2SFactory(server, FakeTLS(), direct_tls=True)
    monkeypatch.setattr(factory, "channel_bindings", lambda t: {})
    c = Client(factory)
    c.header()
    c.features()
    assert c.scram().name == "success"
    c.header()
    assert ("urn:example:feature", "thing") in children(c.features())


def test_resource_conflict_closes_older(tls_factory, server):
    """Binding a resource already in use closes the older stream with conflict."""
    closed = bound_closed(server)
    first = Client(tls_factory, "10.0.0.1")
    second = Client(tls_factory, "10.0.0.2")
    first.login("same")
    old_session = first.proto.session
    second.login("same")
    assert first.stream_error() == "conflict"
    assert first.ended == 1
    assert server.sessions.get("alice@localhost", "same") is second.proto.session
    assert closed == [old_session]


def test_legacy_session_iq(client):
    """The RFC 3921 session iq is answered with an empty result."""
    client.login()
    client.send(f"<iq type='set' id='s1'><session xmlns='{ns.SESSION}'/></iq>")
    reply = client.one()
    assert reply["type"] == "result" and reply["id"] == "s1" and reply["to"] == "alice@localhost/res"


def test_stanza_before_auth(client):
    """A stanza before authentication closes the stream with not-authorized."""
    client.header()
    client.features()
    client.send("<message to='bob@localhost'><body>x</body></message>")
    assert client.stream_error() == "not-authorized"


def test_other_iq_before_bind(client):
    """Before binding only the bind iq is allowed (RFC 6120 §7.1)."""
    client.header()
    client.features()
    client.scram()
    client.header()
    client.features()
    client.send("<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>")
    reply = client.one()
    assert reply["type"] == "error" and reply.error.firstChildElement().name == "not-authorized"


def test_bad_resource(client):
    """An invalid resource is refused with bad-request, the stream stays up."""
    client.header()
    client.features()
    client.scram()
    client.header()
    client.features()
    reply = client.bind("bad\u200dres")
    assert reply["type"] == "error" and reply.error.firstChildElement().name == "bad-request"
    assert client.bind("ok")["type"] == "result"


@pytest.mark.parametrize("sender", ["bob@localhost/res", "alice@localhost/other", "@@bad", "localhost"])
def test_invalid_from(client, sender):
    """A 'from' that is not the client's own JID closes the stream with invalid-from."""
    client.login()
    client.send(f"<message from='{sender}' to='bob@localhost'><body>x</body></message>")
    assert client.stream_error() == "invalid-from"


def test_from_stamped_with_full_jid(tls_factory, server):
    """Stanzas are delivered with the sender's full JID, whatever 'from' said (own bare, none)."""
    alice = Client(tls_factory, "10.0.0.1")
    bob = Client(tls_factory, "10.0.0.2")
    alice.login("a")
    bob.header()
    bob.features()
    assert bob.scram("bob", "secret").name == "success"
    bob.header()
    bob.features()
    bob.bind("b")
    bob.send("<presence/>")
    bob.received()
    alice.send("<message to='bob@localhost/b' id='m1'><body>1</body></message>")
    alice.send("<message from='alice@localhost' to='bob@localhost/b' id='m2'><body>2</body></message>")
    alice.send("<message from='Alice@LOCALHOST/a' to='bob@localhost/b' id='m3'><body>3</body></message>")
    got = bob.received()
    assert [(m["id"], m["from"]) for m in got] == [("m1", "alice@localhost/a"), ("m2", "alice@localhost/a"),
                                                  ("m3", "alice@localhost/a")]


def test_wrong_stanza_namespace(client):
    """A stanza in another namespace than jabber:client is a stream error."""
    client.login()
    client.send("<message xmlns='jabber:server' to='bob@localhost'/>")
    assert client.stream_error() == "invalid-namespace"


def test_unknown_nonza(client):
    """An unknown top-level element nobody handles is unsupported-stanza-type."""
    client.login()
    client.send("<enable xmlns='urn:xmpp:sm:3'/>")
    assert client.stream_error() == "unsupported-stanza-type"


def test_nonza_handled_by_module(client, server):
    """A stream-element/ handler takes top-level elements of its namespace."""
    seen: list = []
    server.events.on("stream-element/urn:xmpp:sm:3:enable", lambda pair: seen.append(pair) or True)
    client.login()
    client.send("<enable xmlns='urn:xmpp:sm:3'/>")
    assert client.received() == [] and seen[0][1].name == "enable"
    assert seen[0][0] is client.proto.session


def test_clean_close(client, server):
    """</stream:stream> from the client is answered in kind and fires session/closed."""
    closed = bound_closed(server)
    client.login()
    session = client.proto.session
    client.send("</stream:stream>")
    client.received()
    assert client.ended == 1
    assert closed == [session]
    assert server.sessions.get("alice@localhost", "res") is None
    assert client.transport.disconnecting
    client.lose()
    assert closed == [session]  # not twice


def test_connection_lost_fires_closed(client, server):
    """A dropped TCP connection ends the session too."""
    closed = bound_closed(server)
    client.login()
    client.lose()
    assert len(closed) == 1 and server.sessions.count() == 0


def test_connection_limit_per_ip(tls_factory):
    """Beyond max_connections_per_ip the connection is aborted; closing one frees a slot."""
    clients = [Client(tls_factory, "10.9.9.9") for _ in range(3)]
    assert not any(c.transport.disconnecting for c in clients)
    fourth = Client(tls_factory, "10.9.9.9")
    assert fourth.transport.disconnecting and fourth.transport.value() == b""
    fourth.lose()
    other = Client(tls_factory, "10.9.9.10")
    assert not other.transport.disconnecting
    clients[0].lose()
    fifth = Client(tls_factory, "10.9.9.9")
    assert not fifth.transport.disconnecting


def test_sasl_failure_delayed_by_throttle(client, server):
    """The first failure is answered at once, the next ones after a growing delay."""
    client.header()
    client.features()
    client.plain("alice", "wrong")
    assert client.one().firstChildElement().name == "not-authorized"
    client.plain("alice", "wrong")
    assert client.received() == []
    server.clock.advance(1.9)
    assert client.received() == []
    server.clock.advance(0.1)
    assert client.one().firstChildElement().name == "not-authorized"


def test_success_does_not_reset_throttle(client, server, tls_factory):
    """A success does not clear the address's failures: the next failure
    from it is still delayed (one valid account must not reset the count)."""
    client.header()
    client.features()
    client.plain("alice", "wrong")
    client.received()
    assert client.scram().name == "success"
    other = Client(tls_factory)
    other.header()
    other.features()
    other.plain("alice", "wrong")
    assert other.received() == []
    server.clock.advance(2)
    assert other.one().name == "failure"


def test_too_many_failures_close_stream(client, server):
    """The fifth failure closes the stream with policy-violation."""
    client.header()
    client.features()
    for _ in range(5):
        client.plain("alice", "wrong")
        server.clock.advance(10)
    els = client.received()
    assert [e.name for e in els] == ["failure"] * 5 + ["error"]
    assert els[-1].firstChildElement().name == "policy-violation"
    assert client.transport.disconnecting


def test_abort_is_not_delayed(client):
    """<abort/> is answered at once with aborted."""
    client.header()
    client.features()
    client.send(f"<auth xmlns='{ns.SASL}' mechanism='SCRAM-SHA-256'>=</auth>")
    assert client.one().name == "challenge"
    client.send(f"<abort xmlns='{ns.SASL}'/>")
    assert client.one().firstChildElement().name == "aborted"


def test_invalid_mechanism(client):
    """Asking for a mechanism that was not offered fails with invalid-mechanism."""
    client.header()
    client.features()
    client.send(f"<auth xmlns='{ns.SASL}' mechanism='X-OAUTH'>=</auth>")
    assert client.one().firstChildElement().name == "invalid-mechanism"


def test_restricted_xml_closes_stream(client):
    """Parser errors surface as stream errors on the connection."""
    client.header()
    client.features()
    client.send("<!-- hi -->")
    assert client.stream_error() == "restricted-xml"


def test_pipelined_guesses_are_throttled(client, server):
    """Password guesses sent without waiting for the answers are not checked
    faster than the throttle allows: a right password pipelined behind wrong
    ones is only accepted once the earlier failures have been answered."""
    client.header()
    client.features()
    for password in ("w1", "w2", "w3"):
        client.plain("alice", password)
    client.plain("alice", "pencil")
    assert [e.name for e in client.received()] == ["failure"]  # first failure: no delay
    assert client.transport.producerState == "paused"
    server.clock.advance(2)      # second failure: 2 s
    assert [e.name for e in client.received()] == ["failure"]
    server.clock.advance(3.9)    # third failure: 4 s
    assert client.received() == []
    server.clock.advance(0.1)
    assert [e.name for e in client.received()] == ["failure", "success"]
    assert client.transport.producerState == "producing"


def test_elements_held_while_auth_in_flight(client, server, monkeypatch):
    """While a password check runs (in a thread, in production) further
    elements wait for its answer instead of racing it."""
    from twisted.internet import defer

    pending: list = []

    def slow_check(jid, password):
        d = defer.Deferred()
        pending.append((d, password == "pencil"))
        return d

    monkeypatch.setattr(server.stores.users, "check_password", slow_check)
    client.header()
    client.features()
    client.plain("alice", "pencil")
    client.plain("alice", "again")
    assert len(pending) == 1 and client.received() == []
    d, ok = pending.pop()
    d.callback(ok)
    assert [e.name for e in client.received()] == ["success"]
    assert pending == []  # the pipelined <auth/> was discarded at the restart


def test_starttls_plaintext_injection_ignored(server):
    """Bytes sent in the clear after <starttls/> (in the same read) are not
    processed as if they came over TLS (CVE-2011-0411 style injection)."""
    c = Client(C2SFactory(server, FakeTLS(), direct_tls=False))
    c.header()
    c.features()
    c.send(f"<starttls xmlns='{ns.TLS}'/><auth xmlns='{ns.SASL}' mechanism='PLAIN'>"
           + base64.b64encode(b"\0alice\0pencil").decode() + "</auth>")
    assert [e.name for e in c.received()] == ["proceed"]


def test_restart_must_keep_host(server, tls_factory):
    """After SASL the restarted stream may not switch to another hosted domain."""
    server.hosts = frozenset({"localhost", "other.example"})
    c = Client(tls_factory)
    c.header()
    c.features()
    assert c.scram().name == "success"
    c.header(to="other.example")
    assert c.stream_error() == "host-unknown"


def test_negotiation_timeout_closes_idle_connection(server, tls_factory):
    """A connection that does not bind a resource in time is closed with connection-timeout."""
    c = Client(tls_factory)
    c.header()
    c.features()
    server.clock.advance(tls_factory.limits.negotiation_timeout + 1)
    assert c.stream_error() == "connection-timeout"


def test_bound_connection_outlives_negotiation_timeout(server, tls_factory):
    """Once a resource is bound the negotiation timer is gone."""
    c = Client(tls_factory)
    c.login()
    server.clock.advance(tls_factory.limits.negotiation_timeout + 1)
    assert c.stream_error() is None
    assert not c.transport.disconnecting


def test_client_that_stops_reading_is_dropped_at_the_output_bound(server, tls_factory):
    """Once the transport reports a full buffer, queued bytes are counted; past
    max_output_buffer the stream is closed with policy-violation and aborted."""
    c = Client(tls_factory)
    c.login()
    assert c.transport.producer is c.proto  # the stream learns about back-pressure
    session = c.proto.session
    c.received()
    body = "x" * 1000
    c.proto.pauseProducing()  # what the transport does when its buffer is full
    limit = tls_factory.limits.max_output_buffer
    sent = 0
    while not c.transport.disconnected and sent < limit // 1000 + 10:
        msg = domish.Element((ns.CLIENT, "message"))
        msg["to"] = session.jid.full
        msg.addElement("body", content=body)
        session.send(msg)
        sent += 1
    assert c.transport.disconnected
    assert sent > limit // 1100  # not before the bound
    assert c.stream_error() == "policy-violation"


def test_client_that_catches_up_is_not_dropped(server, tls_factory):
    """Pauses that end (resumeProducing) reset the count: a slow but reading client stays."""
    c = Client(tls_factory)
    c.login()
    session = c.proto.session
    limit = tls_factory.limits.max_output_buffer
    for _ in range(3):
        c.proto.pauseProducing()
        for _ in range(limit // 2000):
            msg = domish.Element((ns.CLIENT, "message"))
            msg["to"] = session.jid.full
            msg.addElement("body", content="y" * 1000)
            session.send(msg)
        c.proto.resumeProducing()
    assert not c.transport.disconnecting


def test_closing_unregisters_the_producer(server, tls_factory):
    """A TLS transport shuts down only once no producer is registered: closing must unregister."""
    c = Client(tls_factory)
    c.login()
    assert c.transport.producer is c.proto
    c.send("</stream:stream>")
    assert c.transport.producer is None
    assert c.transport.disconnecting


# -- what goes on the wire (RFC 6120 §4.8.5) ----------------------------------

def raw(client: Client) -> str:
    return client.transport.value().decode()


def test_features_and_errors_use_the_stream_prefix(client):
    """Stream features and stream errors go out as <stream:features> and
    <stream:error>, in the scope the header declared (loudmouth, hence
    mcabber, waits forever for a <stream:features> it recognizes)."""
    client.header()
    client.features()
    client.send("<!-- no comments -->")
    assert client.stream_error() == "restricted-xml"
    wire = raw(client)
    assert "<stream:features>" in wire and "<stream:error>" in wire
    assert "<features" not in wire and "<error" not in wire
    assert wire.count(ns.STREAMS) == 1  # declared once, by the header


def test_stanzas_carry_no_redundant_namespace(tls_factory):
    """Stanzas on a client stream are written without xmlns='jabber:client'
    (the stream's default namespace); payloads keep their own."""
    alice, bob = Client(tls_factory, "10.0.0.1"), Client(tls_factory, "10.0.0.2")
    alice.login("a")
    bob.login("b", user="bob", password="secret")
    bob.received()
    bob.transport.clear()
    bob._offset = 0
    alice.send("<message to='bob@localhost/b' id='m1'><body>hi</body>"
               "<active xmlns='http://jabber.org/protocol/chatstates'/></message>")
    assert raw(bob) == ("<message to='bob@localhost/b' id='m1' from='alice@localhost/a'><body>hi</body>"
                        "<active xmlns='http://jabber.org/protocol/chatstates'/></message>")
    assert "<iq id='bind1' type='result'><bind" in raw(alice)
    assert raw(alice).count("jabber:client") == len(alice.headers) == 2  # only the headers declare it


# -- a restarted stream is a new stream (RFC 6120 §4.9.1.2) -------------------

def after_sasl(client: Client) -> None:
    client.header()
    client.features()
    assert client.scram().name == "success"


@pytest.mark.parametrize("data,condition", [
    ("<?xml version='1.0'?><!DOCTYPE stream>", "restricted-xml"),
    ("<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
     "xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>", "invalid-namespace"),
    ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
     "xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='0.9'>", "unsupported-version"),
    ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
     "xmlns:stream='http://etherx.jabber.org/streams' to='example.org' version='1.0'>", "host-unknown"),
    ("<a<<", "not-well-formed"),
])
def test_stream_error_on_restarted_stream_follows_a_new_header(client, data, condition):
    """An error on the stream restarted after SASL is sent after a new stream
    header of ours, not into the old stream: header first, then the error."""
    after_sasl(client)
    client.send(data)
    assert client.stream_error() == condition
    assert len(client.headers) == 2
    wire = raw(client)
    restart = wire.index("<success")
    assert wire.index("<?xml", restart) < wire.index("<stream:error>", restart)


def test_stream_error_after_starttls_follows_a_new_header(server):
    """The same after STARTTLS: a bad restarted header gets our header, then the error."""
    c = Client(C2SFactory(server, FakeTLS(), direct_tls=False))
    c.header()
    c.features()
    c.send(f"<starttls xmlns='{ns.TLS}'/>")
    assert c.one().name == "proceed"
    c.header(xmlns="jabber:server")
    assert c.stream_error() == "invalid-namespace"
    assert len(c.headers) == 2


def test_timeout_before_the_restarted_header(server, tls_factory):
    """A client that never restarts the stream after SASL still gets a
    header before the connection-timeout error."""
    c = Client(tls_factory)
    after_sasl(c)
    server.clock.advance(tls_factory.limits.negotiation_timeout + 1)
    assert c.stream_error() == "connection-timeout"
    assert len(c.headers) == 2


def test_server_close_of_a_restarted_stream_opens_it_first(client):
    """Closing a restarted stream whose header is not out yet (server
    shutdown, say) writes our header before </stream:stream>."""
    after_sasl(client)
    client.proto.close_stream()
    client.received()
    assert len(client.headers) == 2 and client.ended == 1


def test_plain_success_has_no_data(client):
    """PLAIN has no additional data with success: <success/> is empty, not
    '=' (which would mean additional data of length zero; RFC 6120 §6.4.6)."""
    client.header()
    client.features()
    client.received()
    client.plain("alice", "pencil")
    assert raw(client).endswith(f"<success xmlns='{ns.SASL}'/>")


def test_scram_success_carries_the_signature(client):
    """SCRAM's success carries its v= verifier as base64 data."""
    client.header()
    client.features()
    success = client.scram()
    assert base64.b64decode(str(success)).startswith(b"v=")


def test_empty_challenge_is_an_equals_sign(client):
    """An empty challenge (SCRAM after an empty initial response) is '=' (§6.4.3 with §6.4.2)."""
    client.header()
    client.features()
    client.send(f"<auth xmlns='{ns.SASL}' mechanism='SCRAM-SHA-256'>=</auth>")
    assert raw(client).endswith(f"<challenge xmlns='{ns.SASL}'>=</challenge>")


# -- the response header (RFC 6120 §4.7.2) ------------------------------------

def test_header_echoes_the_clients_from(client):
    """The response header's 'to' is the 'from' of the client's header,
    escaped (a resource may hold quotes and angle brackets)."""
    client.header(sender="alice@localhost/a'b&lt;c")
    client.features()
    assert client.headers[0]["to"] == "alice@localhost/a'b<c"
    assert "to='alice@localhost/a&apos;b&lt;c'" in raw(client)


def test_header_without_or_with_invalid_from_has_no_to(client, tls_factory):
    """No 'from' (or one that is not a JID): no 'to' in our header."""
    client.header()
    client.features()
    other = Client(tls_factory, "10.0.0.3")
    other.header(sender="@@bad")
    other.features()
    assert "to" not in client.headers[0].attributes and "to" not in other.headers[0].attributes


# -- keepalive (XEP-0199 from the server) -------------------------------------

def pings(client: Client) -> list[domish.Element]:
    return [e for e in client.received() if e.name == "iq" and e.getAttribute("type") == "get"
            and e.firstChildElement() is not None and e.firstChildElement().uri == ns.PING]


def test_idle_bound_stream_is_pinged(server, client):
    """After c2s_idle_timeout without input the server pings the client's full JID."""
    client.login()
    client.received()
    server.clock.advance(server.config.limits.c2s_idle_timeout - 1)
    assert pings(client) == []
    server.clock.advance(1)
    (ping,) = pings(client)
    assert ping["to"] == "alice@localhost/res" and ping["from"] == "localhost" and ping["id"]


def test_pong_keeps_the_stream_and_is_not_routed(server, client, monkeypatch):
    """The pong (an iq result to the server) counts as life, gets no error
    and is not routed; the next silence gets the next ping."""
    limits = server.config.limits
    client.login()
    routed: list = []
    route = server.router.route
    monkeypatch.setattr(server.router, "route", lambda st, origin=None: routed.append(st) or route(st, origin))
    server.clock.advance(limits.c2s_idle_timeout)
    (ping,) = pings(client)
    client.send(f"<iq type='result' id='{ping['id']}' to='localhost'/>")
    server.clock.advance(limits.c2s_ping_timeout)
    assert client.received() == [] and routed == []
    assert not client.transport.disconnecting
    server.clock.advance(limits.c2s_idle_timeout - limits.c2s_ping_timeout)
    assert len(pings(client)) == 1


def test_error_answer_to_the_ping_also_counts(server, client):
    """A client without XEP-0199 answers with an error: it is alive all the same, and the error is not bounced."""
    limits = server.config.limits
    client.login()
    server.clock.advance(limits.c2s_idle_timeout)
    (ping,) = pings(client)
    client.send(f"<iq type='error' id='{ping['id']}' to='localhost'><ping xmlns='{ns.PING}'/>"
                f"<error type='cancel'><service-unavailable xmlns='{ns.STANZA_ERRORS}'/></error></iq>")
    server.clock.advance(limits.c2s_ping_timeout + 1)
    assert client.received() == [] and not client.transport.disconnecting


def test_any_input_counts_as_alive(server, client):
    """Whitespace (or any stanza) after the ping is as good as a pong."""
    limits = server.config.limits
    client.login()
    server.clock.advance(limits.c2s_idle_timeout)
    assert len(pings(client)) == 1
    server.clock.advance(limits.c2s_ping_timeout - 1)
    client.send(" ")
    server.clock.advance(1)
    assert client.stream_error() is None and not client.transport.disconnecting


def test_silent_peer_is_dropped_and_its_session_ends(server, client):
    """No answer within c2s_ping_timeout: connection-timeout, the session is
    gone and session/closed fired (so contacts see it go offline)."""
    limits = server.config.limits
    closed = bound_closed(server)
    client.login()
    session = client.proto.session
    server.clock.advance(limits.c2s_idle_timeout)
    assert len(pings(client)) == 1
    server.clock.advance(limits.c2s_ping_timeout - 0.5)
    assert not client.transport.disconnecting
    server.clock.advance(0.5)
    assert client.stream_error() == "connection-timeout"
    assert client.transport.disconnecting
    assert closed == [session] and server.sessions.count() == 0


def test_traffic_postpones_the_ping(server, client):
    """Input before the idle timeout moves the ping to a full idle period after it."""
    limits = server.config.limits
    client.login()
    server.clock.advance(limits.c2s_idle_timeout - 10)
    client.send(" ")
    server.clock.advance(10)
    assert pings(client) == []
    server.clock.advance(limits.c2s_idle_timeout - 10)
    assert len(pings(client)) == 1


def test_reads_do_not_reschedule_the_timer(server, client):
    """One timer per connection: reads only record the time (no cancel and
    reschedule per read)."""
    client.login()
    before = list(server.clock.getDelayedCalls())
    for i in range(20):
        client.send(f"<presence id='p{i}'/>")
        server.clock.advance(1)
    assert server.clock.getDelayedCalls() == before


def test_keepalive_settings_are_read_from_config():
    """[limits] c2s_idle_timeout and c2s_ping_timeout drive the keepalive."""
    srv = make_server(modules=[], config_text="[limits]\nc2s_idle_timeout = 30.0\nc2s_ping_timeout = 5.0\n")
    create_user(srv, "alice@localhost", "pencil")
    factory = C2SFactory(srv, FakeTLS(), direct_tls=True)
    factory.channel_bindings = lambda transport: {}  # type: ignore[method-assign]
    c = Client(factory)
    c.login()
    srv.clock.advance(30)
    assert len(pings(c)) == 1
    srv.clock.advance(5)
    assert c.stream_error() == "connection-timeout"


# -- idle connections: one timer, no parser -----------------------------------------

def test_negotiation_timer_becomes_the_keepalive(server, client):
    """Binding turns the negotiation timer into the keepalive: one DelayedCall
    per connection, and no cancelled one left in the clock."""
    (negotiation,) = [c for c in server.clock.getDelayedCalls()
                      if getattr(c.func, "__self__", None) is client.proto]
    client.login()
    (mine,) = [c for c in server.clock.getDelayedCalls()
               if getattr(c.func, "__self__", None) is client.proto]
    assert mine is negotiation
    assert mine.getTime() == server.clock.seconds() + server.config.limits.c2s_idle_timeout


def test_quiet_bound_stream_drops_its_parser_and_reads_on(server, tls_factory):
    """With the listener running, a bound stream silent for a whole
    c2s_parser_idle period loses its parser; a stream that spoke keeps it;
    the next stanza builds a new parser and is handled as usual."""
    tls_factory.startFactory()
    try:
        quiet, busy = Client(tls_factory, "10.0.0.1"), Client(tls_factory, "10.0.0.2")
        quiet.login()
        busy.login(user="bob", password="secret")
        period = server.config.limits.c2s_parser_idle
        server.clock.advance(period)
        busy.send("<presence/>")
        server.clock.advance(period)
        assert quiet.proto.parser.suspended and not busy.proto.parser.suspended
        quiet.received()
        quiet.send(f"<iq type='get' id='p1'><ping xmlns='{ns.PING}'/></iq>")
        (pong,) = quiet.received()
        assert pong["id"] == "p1"  # parsed and answered (the ping module is not loaded here)
        assert not quiet.proto.parser.suspended
        server.clock.advance(period)
        server.clock.advance(period)
        assert quiet.proto.parser.suspended
        quiet.send("</stream:stream>")  # a clean close, read by a new parser
        quiet.received()
        assert quiet.ended == 1 and quiet.proto.state == c2s_state.CLOSED
    finally:
        tls_factory.stopFactory()
