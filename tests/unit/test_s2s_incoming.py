"""Incoming s2s streams (RFC 6120 §4-§6, XEP-0178, XEP-0220) over a
StringTransport: STARTTLS offered and required, SASL EXTERNAL, dialback in
the receiving and authoritative roles, and the checks on what arrives
(invalid-from, host-unknown, nothing before authentication, jabber:client
refused, size limits)."""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet import defer

from chatbx_server.s2s.dialback import make_key
from chatbx_server.s2s.incoming import S2SInStream
from chatbx_server.xmpp import ns

from tests.unit.fakes import bind, create_user
from tests.unit.s2s_helpers import STREAM_HEAD, FixedTrust, PeerTransport, make_manager

HEAD = f"{STREAM_HEAD} from='b.example' to='a.example'>"


def connect(manager: Any, secure: bool = False) -> tuple[S2SInStream, PeerTransport]:
    stream = S2SInStream(manager, direct_tls=secure)
    transport = PeerTransport()
    stream.makeConnection(transport)
    return stream, transport


def feed(stream: S2SInStream, text: str) -> None:
    stream.dataReceived(text.encode())


def open_tls(manager: Any) -> tuple[S2SInStream, PeerTransport]:
    """A stream from b.example after STARTTLS, features received."""
    stream, transport = connect(manager)
    feed(stream, HEAD)
    feed(stream, "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert transport.last("proceed") is not None and transport.tls == "server-tls"
    transport.take()
    feed(stream, HEAD)
    return stream, transport


def features(transport: PeerTransport) -> dict[str, Any]:
    out = {}
    for child in transport.last("features").elements():
        out[child.name] = child
    return out


def test_starttls_offered_and_required() -> None:
    """Before TLS the only feature is <starttls><required/>; dialback is refused
    with policy-violation."""
    server, manager = make_manager()
    stream, transport = connect(manager)
    feed(stream, HEAD)
    header = transport.headers[0]
    assert header.defaultUri == ns.SERVER and header["from"] == "a.example" and header["id"]
    feats = features(transport)
    assert list(feats) == ["starttls"] and feats["starttls"].required is not None
    feed(stream, "<db:result from='b.example' to='a.example'>k</db:result>")
    assert transport.closed_with == ("policy-violation", "STARTTLS is required")


def test_plaintext_domain_may_skip_tls() -> None:
    """A domain in plaintext_domains gets optional STARTTLS and the dialback feature."""
    server, manager = make_manager("[s2s]\nplaintext_domains = ['b.example']\n")
    stream, transport = connect(manager)
    feed(stream, HEAD)
    feats = features(transport)
    assert feats["starttls"].required is None and "dialback" in feats


def test_jabber_client_stream_refused() -> None:
    """An s2s stream in jabber:client gets invalid-namespace."""
    server, manager = make_manager()
    stream, transport = connect(manager)
    feed(stream, HEAD.replace("xmlns='jabber:server'", "xmlns='jabber:client'"))
    assert transport.closed_with is not None and transport.closed_with[0] == "invalid-namespace"


def test_unknown_host_refused() -> None:
    """A stream to a domain not served here gets host-unknown."""
    server, manager = make_manager()
    stream, transport = connect(manager)
    feed(stream, HEAD.replace("to='a.example'", "to='c.example'"))
    assert transport.closed_with == ("host-unknown", None)


def test_stanza_before_authentication() -> None:
    """Nothing is routed before a domain is authenticated: not-authorized."""
    server, manager = make_manager()
    stream, transport = open_tls(manager)
    feed(stream, "<message from='x@b.example' to='alice@a.example'><body>hi</body></message>")
    assert transport.closed_with == ("not-authorized", "authenticate first")


def test_huge_element_before_authentication() -> None:
    """A pre-authentication element beyond max_stanza_size closes the stream."""
    server, manager = make_manager("[limits]\nmax_stanza_size = 4096\n")
    stream, transport = open_tls(manager)
    feed(stream, "<db:result from='b.example' to='a.example'>" + "k" * 10000 + "</db:result>")
    assert transport.closed_with == ("policy-violation", "stanza too large")


def test_sasl_external_with_valid_certificate_then_stanzas() -> None:
    """A certificate valid for b.example gets SASL EXTERNAL offered; success
    restarts the stream; stanzas from b.example are routed to local users."""
    server, manager = make_manager(trust=FixedTrust("b.example"))
    create_user(server, "alice@a.example")
    alice = bind(server, "alice@a.example/r", available=True)
    alice.take()
    stream, transport = open_tls(manager)
    feats = features(transport)
    assert [str(m) for m in feats["mechanisms"].elements()] == ["EXTERNAL"]
    authzid = base64.b64encode(b"b.example").decode()
    feed(stream, f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{authzid}</auth>")
    assert transport.last("success") is not None
    feed(stream, HEAD)
    assert "mechanisms" not in features(transport)
    feed(stream, "<message from='bob@b.example/x' to='alice@a.example/r' type='chat'><body>hi</body></message>")
    got = [e for e in alice.take() if e.name == "message"]
    assert len(got) == 1 and str(got[0].body) == "hi" and got[0]["from"] == "bob@b.example/x"
    assert stream.auth_method == "sasl-external" and transport.closed_with is None


def test_sasl_external_refused_without_valid_certificate() -> None:
    """EXTERNAL for a domain the certificate does not prove fails (not-authorized)."""
    server, manager = make_manager(trust=FixedTrust())
    stream, transport = open_tls(manager)
    assert "mechanisms" not in features(transport)
    feed(stream, "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>")
    assert transport.last("failure").firstChildElement().name == "not-authorized"
    assert not stream.authenticated


def _dialback(manager: Any, answer: bool) -> tuple[S2SInStream, PeerTransport, list[Any]]:
    asked: list[Any] = []
    d: defer.Deferred = defer.Deferred()

    def request_verify(local: str, remote: str, stream_id: str, key: str) -> defer.Deferred:
        asked.append((local, remote, stream_id, key))
        return d

    manager.request_verify = request_verify
    stream, transport = open_tls(manager)
    feed(stream, "<db:result from='b.example' to='a.example'>KEY</db:result>")
    assert asked == [("a.example", "b.example", stream.stream_id, "KEY")]
    d.callback(answer)
    return stream, transport, asked


def test_dialback_receiving_valid_then_spoofed_from() -> None:
    """Receiving role: the key is checked with the authoritative server, a
    valid answer authenticates b.example; a stanza from c.example on that
    stream then gets invalid-from and the stream closes."""
    server, manager = make_manager()
    stream, transport, _ = _dialback(manager, True)
    result = transport.last("result")
    assert result["type"] == "valid" and result["to"] == "b.example" and result["from"] == "a.example"
    assert stream.authenticated == {"b.example"}
    feed(stream, "<message from='eve@c.example' to='alice@a.example'><body>x</body></message>")
    assert transport.closed_with == ("invalid-from", None)


def test_dialback_receiving_invalid() -> None:
    """A key the authoritative server refuses: db:result type='invalid', nothing authenticated."""
    server, manager = make_manager()
    stream, transport, _ = _dialback(manager, False)
    assert transport.last("result")["type"] == "invalid"
    assert not stream.authenticated
    feed(stream, "<message from='eve@b.example' to='alice@a.example'/>")
    assert transport.closed_with == ("not-authorized", "authenticate first")


def test_dialback_to_unknown_host() -> None:
    """A db:result for a domain not served here: <item-not-found/> error."""
    server, manager = make_manager()
    stream, transport = open_tls(manager)
    feed(stream, "<db:result from='b.example' to='c.example'>KEY</db:result>")
    result = transport.last("result")
    assert result["type"] == "error"
    assert result.error.firstChildElement().name == "item-not-found"


def test_secure_auth_refuses_dialback_without_valid_certificate() -> None:
    """secure_auth = true: no dialback for a certificate that does not verify."""
    server, manager = make_manager("[s2s]\nsecure_auth = true\n")
    stream, transport = open_tls(manager)
    feed(stream, "<db:result from='b.example' to='a.example'>KEY</db:result>")
    result = transport.last("result")
    assert result["type"] == "error" and result.error.firstChildElement().name == "not-authorized"
    assert not stream.authenticated


def test_valid_certificate_skips_the_verify_round_trip() -> None:
    """XEP-0344: dialback from a domain whose certificate verifies is valid at once."""
    server, manager = make_manager(trust=FixedTrust("b.example"))
    manager.request_verify = None  # type: ignore[assignment]  (must not be called)
    stream, transport = open_tls(manager)
    feed(stream, "<db:result from='b.example' to='a.example'>KEY</db:result>")
    assert transport.last("result")["type"] == "valid"


def test_authoritative_verify() -> None:
    """Authoritative role: our key is 'valid', any other 'invalid', and a
    domain we do not host gets an error (no oracle)."""
    server, manager = make_manager()
    stream, transport = open_tls(manager)
    key = make_key(manager.secret, "b.example", "a.example", "S1")
    feed(stream, f"<db:verify from='b.example' to='a.example' id='S1'>{key}</db:verify>")
    answer = transport.last("verify")
    assert (answer["type"], answer["id"], answer["from"], answer["to"]) == ("valid", "S1", "a.example", "b.example")
    feed(stream, f"<db:verify from='b.example' to='a.example' id='S2'>{key}</db:verify>")
    assert transport.last("verify")["type"] == "invalid"
    feed(stream, f"<db:verify from='b.example' to='c.example' id='S1'>{key}</db:verify>")
    answer = transport.last("verify")
    assert answer["type"] == "error" and answer.error.firstChildElement().name == "item-not-found"
    assert transport.closed_with is None


def test_stanza_to_unknown_host_after_auth() -> None:
    """After authentication, a stanza to a domain not served here: host-unknown."""
    server, manager = make_manager()
    stream, transport, _ = _dialback(manager, True)
    feed(stream, "<message from='bob@b.example' to='x@c.example'/>")
    assert transport.closed_with == ("host-unknown", "that domain is not served here")


def test_jabber_client_stanza_after_auth() -> None:
    """A stanza in jabber:client on the s2s stream: invalid-namespace."""
    server, manager = make_manager()
    stream, transport, _ = _dialback(manager, True)
    feed(stream, "<message xmlns='jabber:client' from='bob@b.example' to='alice@a.example'/>")
    assert transport.closed_with is not None and transport.closed_with[0] == "invalid-namespace"


def test_iq_from_remote_is_answered_over_s2s() -> None:
    """A ping from a remote user to our server is answered through Router.remote."""
    server, manager = make_manager()
    stream, transport, _ = _dialback(manager, True)
    sent: list[Any] = []
    manager.route = lambda event: sent.append(event.stanza) or True  # type: ignore[method-assign]
    server.router.remote = manager.route
    feed(stream, "<iq type='get' id='p1' from='bob@b.example/x' to='a.example'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert len(sent) == 1 and sent[0]["type"] == "result" and sent[0]["to"] == "bob@b.example/x"


def test_dialback_requests_per_stream_are_bounded() -> None:
    """Each dialback check costs an outgoing connection: a stream gets at most
    MAX_PENDING_DIALBACK in flight; more get a resource-constraint error."""
    from chatbx_server.s2s.incoming import MAX_PENDING_DIALBACK

    server, manager = make_manager()
    asked: list[str] = []
    manager.request_verify = lambda local, remote, sid, key: asked.append(remote) or defer.Deferred()  # type: ignore[method-assign]
    stream, transport = open_tls(manager)
    for i in range(MAX_PENDING_DIALBACK + 1):
        feed(stream, f"<db:result from='d{i}.example' to='a.example'>KEY</db:result>")
    assert len(asked) == MAX_PENDING_DIALBACK
    result = transport.last("result")
    assert result["type"] == "error" and result.error.firstChildElement().name == "resource-constraint"


def test_peer_that_stops_reading_is_dropped() -> None:
    """Output beyond max_output_buffer while the transport is paused closes the stream."""
    server, manager = make_manager("[limits]\nmax_output_buffer = 10000\n")
    stream, transport = open_tls(manager)
    stream.pauseProducing()
    from chatbx_server.xmpp.stanzas import parse_stanza

    big = parse_stanza("<message to='x@b.example'><body>" + "x" * 3000 + "</body></message>")
    for _ in range(3):
        stream.send_element(big)
    assert transport.closed_with is None
    stream.send_element(big)
    assert stream.closed and transport.closed_with == ("policy-violation",
                                                      "output buffer full: the peer does not read")


def test_peer_stream_error_closes_quietly() -> None:
    """A <stream:error/> from the peer (e.g. system-shutdown) closes the stream
    without an error of ours in reply (RFC 6120 §4.9.1.1)."""
    server, manager = make_manager()
    stream, transport, _ = _dialback(manager, True)
    transport.take()
    feed(stream, "<stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                 "</stream:error>")
    assert stream.closed and transport.closed_with is None and transport.take() == []
    assert transport.value().endswith(b"</stream:stream>")
    assert stream not in manager.incoming
