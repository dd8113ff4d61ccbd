"""Logging in to the real server (RFC 6120 §5-§7, RFC 5802, RFC 9266, XEP-0368).

Each mechanism the server offers is used end to end: slixmpp for the
ones Python's ssl can do, the raw client for SCRAM-*-PLUS (channel
binding) and for the failure cases a real client library will not
produce.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET

import pytest
from OpenSSL import SSL

from conftest import run, slix_close, slix_login
from rawclient import NS_SASL, NS_STREAMS, NS_TLS, RawClient, StreamClosed, q

pytestmark = pytest.mark.integration

ALICE, ALICE_PW = "alice@localhost", "alice-pw"


@pytest.fixture
def server(shared_server):
    """The module's SQLite server with the default accounts."""
    return shared_server


def _failure_condition(element: ET.Element) -> str:
    assert element.tag == q(NS_SASL, "failure"), ET.tostring(element)
    conditions = [c.tag.split("}")[1] for c in element if c.tag != q(NS_SASL, "text")]
    assert len(conditions) == 1, ET.tostring(element)
    return conditions[0]


def _tls_client(server, **kwargs) -> RawClient:
    client = RawClient(server.c2s_port, **kwargs)
    client.open_stream()
    client.starttls()
    return client


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"])
def test_slixmpp_login_over_starttls(server, mechanism):
    """slixmpp logs in over STARTTLS with each non-PLUS mechanism and gets
    a bound full JID of its account."""

    async def main():
        client = await slix_login(server, f"{ALICE}/phone", sasl_mech=mechanism)
        try:
            assert client.boundjid.bare == ALICE
            assert client.boundjid.resource == "phone"
        finally:
            await slix_close(client)

    run(main())


def test_slixmpp_login_over_direct_tls(server):
    """slixmpp logs in on the direct TLS port (XEP-0368) with SCRAM-SHA-256."""

    async def main():
        client = await slix_login(server, f"{ALICE}/laptop", sasl_mech="SCRAM-SHA-256", direct_tls=True)
        try:
            assert client.boundjid.full == f"{ALICE}/laptop"
        finally:
            await slix_close(client)

    run(main())


@pytest.mark.parametrize("cb_type", ["tls-exporter", "tls-server-end-point"])
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"])
def test_scram_plus_login(server, mechanism, cb_type):
    """Over TLS 1.3 the server offers both -PLUS mechanisms with both
    channel-binding types (XEP-0440), and a client binding to the channel
    with either type logs in and verifies the server signature."""
    client = _tls_client(server)
    try:
        assert client.tls.get_protocol_version_name() == "TLSv1.3"
        assert mechanism in client.mechanisms()
        assert cb_type in client.channel_binding_types()
        answer = client.scram(mechanism, "alice", ALICE_PW, cb_type=cb_type)
        assert answer.tag == q(NS_SASL, "success"), ET.tostring(answer)
        assert client.bind("plus") == f"{ALICE}/plus"
    finally:
        client.close()


def test_scram_plus_on_direct_tls(server):
    """SCRAM-SHA-256-PLUS with tls-exporter works on the direct TLS port too."""
    client = RawClient(server.c2s_tls_port, direct_tls=True)
    try:
        client.open_stream()
        answer = client.scram("SCRAM-SHA-256-PLUS", "alice", ALICE_PW, cb_type="tls-exporter")
        assert answer.tag == q(NS_SASL, "success"), ET.tostring(answer)
    finally:
        client.close()


def test_tls12_offers_only_server_end_point(server):
    """On TLS 1.2, tls-exporter is not safe (RFC 9266 §3) and is not
    offered; tls-server-end-point is, and a login with it works."""
    client = _tls_client(server, tls_max=SSL.TLS1_2_VERSION)
    try:
        assert client.tls.get_protocol_version_name() == "TLSv1.2"
        assert client.channel_binding_types() == ["tls-server-end-point"]
        answer = client.scram("SCRAM-SHA-1-PLUS", "alice", ALICE_PW, cb_type="tls-server-end-point")
        assert answer.tag == q(NS_SASL, "success"), ET.tostring(answer)
    finally:
        client.close()


def test_channel_binding_mismatch_is_refused(server):
    """A -PLUS exchange whose channel-binding data is not this connection's
    (as behind a TLS-terminating attacker) fails with not-authorized."""
    client = _tls_client(server)
    try:
        client.channel_binding = lambda cb_type: b"\0" * 32  # type: ignore[method-assign]
        answer = client.scram("SCRAM-SHA-256-PLUS", "alice", ALICE_PW, cb_type="tls-exporter")
        assert _failure_condition(answer) == "not-authorized"
    finally:
        client.close()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "PLAIN"])
def test_wrong_password(server, mechanism):
    """A wrong password fails with not-authorized (SCRAM and PLAIN)."""
    client = _tls_client(server)
    try:
        if mechanism == "PLAIN":
            answer = client.plain("alice", "not-the-password")
        else:
            answer = client.scram(mechanism, "alice", "not-the-password")
        assert _failure_condition(answer) == "not-authorized"
    finally:
        client.close()


def test_slixmpp_wrong_password(server):
    """slixmpp with a wrong password does not get a session."""

    async def main():
        with pytest.raises(AssertionError, match="could not log in"):
            await slix_login(server, f"{ALICE}/x", password="wrong", sasl_mech="SCRAM-SHA-256")

    run(main())


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"])
def test_unknown_user(server, mechanism):
    """An account that does not exist fails exactly like a wrong password
    (not-authorized), after a normal-looking SCRAM challenge."""
    client = _tls_client(server)
    try:
        if mechanism == "PLAIN":
            answer = client.plain("nobody", "whatever")
        else:
            answer = client.scram(mechanism, "nobody", "whatever")
        assert _failure_condition(answer) == "not-authorized"
    finally:
        client.close()


def test_malformed_base64(server):
    """An <auth/> payload that is not base64 fails with incorrect-encoding."""
    client = _tls_client(server)
    try:
        client.send(f"<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-256'>!!not*base64!!</auth>")
        assert _failure_condition(client.sasl_answer()) == "incorrect-encoding"
    finally:
        client.close()


def test_abort(server):
    """<abort/> in the middle of a SCRAM exchange answers aborted, and the
    client can then log in on the same stream."""
    client = _tls_client(server)
    try:
        client.auth("SCRAM-SHA-256", b"n,,n=alice,r=abcdefgh")
        assert client.sasl_answer().tag == q(NS_SASL, "challenge")
        client.send(f"<abort xmlns='{NS_SASL}'/>")
        assert _failure_condition(client.sasl_answer()) == "aborted"
        answer = client.scram("SCRAM-SHA-256", "alice", ALICE_PW)
        assert answer.tag == q(NS_SASL, "success"), ET.tostring(answer)
    finally:
        client.close()


def test_no_auth_before_starttls(server):
    """Before STARTTLS the server offers only STARTTLS (required), no SASL
    mechanisms; PLAIN sent anyway is refused (encryption-required failure,
    or a stream error) and never succeeds."""
    client = RawClient(server.c2s_port)
    try:
        features = client.open_stream()
        starttls = features.find(q(NS_TLS, "starttls"))
        assert starttls is not None and starttls.find(q(NS_TLS, "required")) is not None
        assert client.mechanisms() == []
        client.auth("PLAIN", f"\0alice\0{ALICE_PW}".encode())
        try:
            answer = client.next()
        except StreamClosed:
            return  # refused by closing the stream
        if answer.tag == q(NS_STREAMS, "error"):
            return
        assert _failure_condition(answer) == "encryption-required"
    finally:
        client.close()


def test_repeated_failures_are_slowed_down(chatbx_server):
    """The answer to the third failed login from one address waits at least
    the configured auth_failure_delay (0.3 s in the test config), while
    the first one is immediate."""
    delay = 0.3
    server = chatbx_server(extra_config=f"[limits]\nauth_failure_delay = {delay}")
    client = _tls_client(server)
    try:
        times = []
        for _ in range(3):
            started = time.monotonic()
            answer = client.plain("alice", "wrong")
            times.append(time.monotonic() - started)
            assert _failure_condition(answer) == "not-authorized"
        assert times[0] < delay, times
        assert times[2] >= delay, times
    finally:
        client.close()


def test_server_generated_resource(server):
    """Binding without a resource gets a server-generated one (RFC 6120
    §7.6), different for each session."""
    jids = []
    for _ in range(2):
        client = _tls_client(server)
        try:
            assert client.scram("SCRAM-SHA-256", "alice", ALICE_PW).tag == q(NS_SASL, "success")
            jids.append(client.bind(None))
        finally:
            client.close()
    for jid in jids:
        bare, _, resource = jid.partition("/")
        assert bare == ALICE and resource, jids
    assert jids[0] != jids[1]


def test_unknown_host(server):
    """A stream to a domain the server does not host gets host-unknown."""
    client = RawClient(server.c2s_port, domain="elsewhere.example")
    try:
        client.open_stream(read_features=False)
        assert client.stream_error() == "host-unknown"
        client.assert_closed()
    finally:
        client.close()
