"""Bidirectional s2s streams (XEP-0288) in both roles: the feature offered
and requested after STARTTLS, our stanzas sent on a peer's incoming stream
once it authenticated (and only for the pairs it authenticated), stanzas
accepted on our outgoing stream from the domain we connected to, and
``[s2s] bidi = false`` turning it all off."""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet import defer

from tests.unit.fakes import bind, create_user
from tests.unit.s2s_helpers import FixedTrust, PeerTransport
from tests.unit.test_s2s_incoming import HEAD, features, open_tls
from tests.unit.test_s2s_incoming import feed as feed_in
from tests.unit.test_s2s_outgoing import errors, feed, send, setup, through_tls

BIDI = "<bidi xmlns='urn:xmpp:bidi'/>"
BIDI_FEATURE = "<bidi xmlns='urn:xmpp:features:bidi'/>"
EXTERNAL = ("<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism>"
            "</mechanisms>")


def sasl_in(stream: Any, transport: PeerTransport) -> None:
    authzid = base64.b64encode(b"b.example").decode()
    feed_in(stream, f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{authzid}</auth>")
    assert transport.last("success") is not None


def messages(transport: PeerTransport) -> list[str]:
    return [e["id"] for e in transport.elements if e.name == "message"]


# -- receiving role: the peer's incoming stream carries our stanzas ---------------

def test_feature_offered_after_tls_only() -> None:
    """The bidi feature is offered once the stream is encrypted (TLS required),
    not before, and not again after the SASL restart."""
    server, manager, connector, alice = setup(trust=FixedTrust("b.example"))
    from tests.unit.test_s2s_incoming import connect

    stream, transport = connect(manager)
    feed_in(stream, HEAD)
    assert "bidi" not in features(transport)
    stream, transport = open_tls(manager)
    assert features(transport)["bidi"].uri == "urn:xmpp:features:bidi"
    sasl_in(stream, transport)
    feed_in(stream, HEAD)
    assert "bidi" not in features(transport)


def test_sasl_bidi_stream_carries_our_stanzas_after_the_restart() -> None:
    """A peer that asked for bidi and authenticated with SASL EXTERNAL gets our
    stanzas for it on its own stream: not between <success/> and the restarted
    header (they wait), then in order, and no connection of ours is opened
    once the stream is usable."""
    server, manager, connector, alice = setup(trust=FixedTrust("b.example"))
    stream, transport = open_tls(manager)
    feed_in(stream, BIDI)
    sasl_in(stream, transport)
    transport.take()
    send(alice, "<message id='m1' to='bob@b.example'><body>one</body></message>")
    assert messages(transport) == []  # the peer restarts its stream first
    feed_in(stream, HEAD)
    assert messages(transport) == ["m1"]
    attempts = len(connector.attempts)
    send(alice, "<message id='m2' to='bob@b.example'><body>two</body></message>")
    assert messages(transport) == ["m1", "m2"] and len(connector.attempts) == attempts
    assert b"jabber:client" not in transport.value()
    status = manager.status()
    out = [o for o in status["outgoing"] if o["remote"] == "b.example"]
    assert out[0]["state"] == "ready" and out[0]["bidi"] and out[0]["via"] == "incoming"
    assert status["incoming"][0]["bidi"] is True


def test_dialback_bidi_only_for_authenticated_pairs() -> None:
    """With dialback the stream carries stanzas from the local domain of each
    verified pair (XEP-0288 §2.2), not from another hosted domain."""
    server, manager, connector, alice = setup()
    d: defer.Deferred = defer.Deferred()
    manager.request_verify = lambda local, remote, sid, key: d  # type: ignore[method-assign]
    stream, transport = open_tls(manager)
    feed_in(stream, BIDI)
    feed_in(stream, "<db:result from='b.example' to='a.example'>KEY</db:result>")
    send(alice, "<message id='m0' to='bob@b.example'><body>early</body></message>")
    assert messages(transport) == []  # not before the peer is verified
    d.callback(True)
    assert transport.last("result")["type"] == "valid"
    assert messages(transport) == ["m0"]
    assert set(manager.routes) == {("a.example", "b.example")}
    # Another local domain has no authenticated pair on this stream.
    assert ("conference.a.example", "b.example") not in stream.pairs


def test_bidi_before_tls_is_refused() -> None:
    """XEP-0288 §2.1: STARTTLS comes first when TLS is required."""
    server, manager, connector, alice = setup()
    from tests.unit.test_s2s_incoming import connect

    stream, transport = connect(manager)
    feed_in(stream, HEAD)
    feed_in(stream, BIDI)
    assert transport.closed_with == ("policy-violation", "STARTTLS is required")


def test_closed_bidi_stream_falls_back_to_our_own() -> None:
    """When the peer's bidirectional stream closes, the next stanza opens our
    own outgoing stream."""
    server, manager, connector, alice = setup(trust=FixedTrust("b.example"))
    stream, transport = open_tls(manager)
    feed_in(stream, BIDI)
    sasl_in(stream, transport)
    feed_in(stream, HEAD)
    attempts = len(connector.attempts)
    feed_in(stream, "</stream:stream>")
    assert stream.closed
    send(alice, "<message id='m1' to='bob@b.example'><body>one</body></message>")
    assert len(connector.attempts) == attempts + 1
    assert manager.routes[("a.example", "b.example")].bidi is None


def test_bidi_off_by_config() -> None:
    """[s2s] bidi = false: not offered, and a request is refused."""
    server, manager, connector, alice = setup("[s2s]\nbidi = false\n")
    stream, transport = open_tls(manager)
    assert "bidi" not in features(transport)
    feed_in(stream, BIDI)
    assert transport.closed_with is not None and transport.closed_with[0] == "unsupported-stanza-type"


# -- initiating role: our outgoing stream receives the remote's stanzas --------------

def _outgoing_bidi(features_xml: str = BIDI_FEATURE + EXTERNAL, config: str = "") -> tuple[Any, ...]:
    server, manager, connector, alice = setup(config, trust=FixedTrust("b.example"))
    send(alice, "<message id='m1' to='bob@b.example'><body>one</body></message>")
    stream, transport = connector.accept()
    through_tls(stream, transport, features_xml)
    return server, manager, stream, transport, alice


def test_outgoing_requests_bidi_before_auth_and_accepts_stanzas() -> None:
    """The remote offers bidi: <bidi/> goes out before <auth/>; once ready, a
    stanza from the remote on our stream reaches the local user."""
    server, manager, stream, transport, alice = _outgoing_bidi()
    names = [e.name for e in transport.elements]
    assert names.index("bidi") < names.index("auth")
    assert transport.last("bidi").uri == "urn:xmpp:bidi"
    feed(stream, "<message id='early' from='bob@b.example' to='alice@a.example'/>")
    assert transport.closed_with == ("not-authorized", "not authenticated yet")


def test_outgoing_bidi_ready_routes_stanzas_in() -> None:
    """After SASL and the restart, the remote's stanzas on our outgoing
    stream are delivered; a spoofed domain gets invalid-from."""
    server, manager, stream, transport, alice = _outgoing_bidi()
    feed(stream, "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
    from tests.unit.test_s2s_outgoing import REMOTE_HEAD

    feed(stream, REMOTE_HEAD + "<stream:features/>")
    assert stream.ready and stream.bidi
    alice.take()
    feed(stream, "<message id='in1' type='chat' from='bob@b.example/x' to='alice@a.example/r'>"
                 "<body>hi</body></message>")
    got = [e for e in alice.take() if e.name == "message"]
    assert len(got) == 1 and got[0]["id"] == "in1" and got[0]["from"] == "bob@b.example/x"
    assert transport.closed_with is None
    feed(stream, "<message id='in2' from='eve@c.example' to='alice@a.example/r'/>")
    assert transport.closed_with == ("invalid-from", None)


def test_outgoing_bidi_refuses_piggybacked_dialback() -> None:
    """The remote may try to authenticate another of its domains on our
    bidirectional stream (XEP-0288 §2.2): it gets a dialback error, the
    stream stays up."""
    server, manager, stream, transport, alice = _outgoing_bidi(BIDI_FEATURE +
                                                               "<dialback xmlns='urn:xmpp:features:dialback'/>")
    feed(stream, "<db:result from='b.example' to='a.example' type='valid'/>")
    assert stream.ready
    feed(stream, "<db:result from='muc.b.example' to='a.example'>KEY</db:result>")
    result = transport.last("result")
    assert result["type"] == "error" and result["to"] == "muc.b.example"
    assert result.error.firstChildElement().name == "feature-not-implemented"
    assert transport.closed_with is None and not errors(alice)


def test_outgoing_without_bidi_refuses_stanzas() -> None:
    """No bidi offered (or bidi = false): nothing is requested and a stanza
    from the remote on our stream is an error (RFC 6120 §4.9.3.22)."""
    for features_xml, config in ((EXTERNAL, ""), (BIDI_FEATURE + EXTERNAL, "[s2s]\nbidi = false\n")):
        server, manager, stream, transport, alice = _outgoing_bidi(features_xml, config)
        assert "bidi" not in [e.name for e in transport.elements]
        feed(stream, "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
        from tests.unit.test_s2s_outgoing import REMOTE_HEAD

        feed(stream, REMOTE_HEAD + "<stream:features/>")
        feed(stream, "<message from='bob@b.example' to='alice@a.example'/>")
        assert transport.closed_with is not None and transport.closed_with[0] == "unsupported-stanza-type"
