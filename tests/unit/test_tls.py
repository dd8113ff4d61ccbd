"""Tests for chatbx_server.tls: certificates, SNI, protocol floor, channel binding.

Handshakes run fully in memory: two pyOpenSSL Connections on memory BIOs,
bytes shuttled by hand, so the tests are deterministic and need no sockets.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from OpenSSL import SSL
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory

from chatbx_server.config import Config, TLSCertConfig, TLSConfig, FrozenDict
from chatbx_server.tls import (
    CertificateError,
    TLSContexts,
    available_channel_bindings,
    channel_binding,
    channel_binding_for_connection,
    ensure_certificates,
    generate_self_signed,
    get_tls_connection,
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    """Self-signed pairs for two domains, generated once for the module."""
    base = tmp_path_factory.mktemp("certs")
    out = {}
    for domain in ("example.org", "example.net"):
        pair = (str(base / f"{domain}.crt"), str(base / f"{domain}.key"))
        generate_self_signed(domain, *pair)
        out[domain] = pair
    return out


def _client_context(min_version: int | None = None, max_version: int | None = None,
                    alpn: list[bytes] | None = None) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    if min_version is not None:
        ctx.set_min_proto_version(min_version)
    if max_version is not None:
        ctx.set_max_proto_version(max_version)
    if alpn:
        ctx.set_alpn_protos(alpn)
    return ctx


def _pump(client: SSL.Connection, server: SSL.Connection) -> None:
    """Run the handshake on memory BIOs until both sides are done (or one fails)."""
    done = {"c": False, "s": False}
    for _ in range(50):
        for key, conn in (("c", client), ("s", server)):
            if not done[key]:
                try:
                    conn.do_handshake()
                    done[key] = True
                except SSL.WantReadError:
                    pass
        moved = False
        for src, dst in ((client, server), (server, client)):
            try:
                data = src.bio_read(65536)
            except SSL.WantReadError:
                continue
            dst.bio_write(data)
            moved = True
        if done["c"] and done["s"] and not moved:
            return
    raise AssertionError("handshake did not finish")


def _handshake(contexts: TLSContexts, sni: bytes | None = None,
               client_ctx: SSL.Context | None = None) -> tuple[SSL.Connection, SSL.Connection]:
    server = SSL.Connection(contexts.server_context_factory().getContext(), None)
    server.set_accept_state()
    client = SSL.Connection(client_ctx or _client_context(), None)
    if sni:
        client.set_tlsext_host_name(sni)
    client.set_connect_state()
    _pump(client, server)
    return client, server


def _san_names(conn: SSL.Connection) -> list[str]:
    cert = conn.get_peer_certificate().to_cryptography()
    return cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


class _HandleTransport:
    """Stands in for a TLS transport: only getHandle(), like Twisted's."""

    def __init__(self, conn: SSL.Connection):
        self.conn = conn

    def getHandle(self) -> SSL.Connection:  # noqa: N802
        return self.conn


def test_generate_self_signed_writes_private_key_and_sans(tmp_path: Path) -> None:
    """The key file is 0600 and the certificate names the domain and its subdomains."""
    cert_path, key_path = tmp_path / "d" / "x.crt", tmp_path / "d" / "x.key"
    generate_self_signed("chat.example", cert_path, key_path)
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    names = cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert names == ["chat.example", "*.chat.example"]


def test_ensure_certificates_generates_once_and_prefers_configured(tmp_path: Path,
                                                                 certs) -> None:
    """Missing self-signed pairs are generated in data_dir/certs and reused later;
    a [tls.domains] entry wins for its domain."""
    config = Config(domains=("a.example", "example.org"), data_dir=str(tmp_path),
                    tls=TLSConfig(domains=FrozenDict({
                        "example.org": TLSCertConfig(*certs["example.org"])})))
    first = ensure_certificates(config)
    assert list(first) == ["a.example", "example.org"]
    assert first["a.example"] == (str(tmp_path / "certs" / "a.example.crt"),
                                  str(tmp_path / "certs" / "a.example.key"))
    assert first["example.org"] == certs["example.org"]
    before = Path(first["a.example"][0]).read_bytes()
    second = ensure_certificates(config)
    assert Path(second["a.example"][0]).read_bytes() == before


def test_ensure_certificates_names_missing_file(tmp_path: Path) -> None:
    """A configured certificate that does not exist is an error naming the key."""
    config = Config(domains=("example.org",), data_dir=str(tmp_path), path="chatbx.toml",
                    tls=TLSConfig(certificate=str(tmp_path / "nope.crt"),
                                  key=str(tmp_path / "nope.key")))
    with pytest.raises(CertificateError, match=r"chatbx.toml: tls.certificate: file not found"):
        ensure_certificates(config)


def test_mismatched_key_is_refused(tmp_path: Path, certs) -> None:
    """A key that does not belong to the certificate fails at load, naming the domain."""
    with pytest.raises(CertificateError, match="example.org"):
        TLSContexts({"example.org": (certs["example.org"][0], certs["example.net"][1])})


def test_sni_selects_domain_certificate(certs) -> None:
    """SNI picks the named domain; a subdomain gets its parent's; no SNI gets the first."""
    contexts = TLSContexts(certs)
    client, _ = _handshake(contexts, b"example.net")
    assert _san_names(client)[0] == "example.net"
    client, _ = _handshake(contexts, b"conference.example.net")
    assert _san_names(client)[0] == "example.net"
    client, _ = _handshake(contexts, None)
    assert _san_names(client)[0] == "example.org"
    client, _ = _handshake(contexts, b"unknown.invalid")
    assert _san_names(client)[0] == "example.org"


def test_contexts_release_idle_buffers(certs) -> None:
    """Every domain's context frees OpenSSL's buffers on idle connections (memory per connection)."""
    contexts = TLSContexts(certs)
    for domain in contexts.domains:
        # set_mode(0) adds nothing and returns the mode in force.
        assert contexts.context_for(domain).set_mode(0) & SSL.MODE_RELEASE_BUFFERS


def test_tls_1_1_is_refused(certs) -> None:
    """A client limited to TLS 1.1 cannot complete a handshake."""
    contexts = TLSContexts(certs)
    client_ctx = _client_context(max_version=SSL.TLS1_1_VERSION)
    client_ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
    with pytest.raises(SSL.Error):
        _handshake(contexts, b"example.org", client_ctx)


def test_tls_1_2_works_with_forward_secret_aead(certs) -> None:
    """TLS 1.2 is accepted and negotiates an ECDHE AEAD suite."""
    contexts = TLSContexts(certs)
    client, server = _handshake(contexts, b"example.org",
                                _client_context(max_version=SSL.TLS1_2_VERSION))
    assert server.get_protocol_version_name() == "TLSv1.2"
    cipher = server.get_cipher_name()
    assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher)


def test_alpn_xmpp_client_is_selected(certs) -> None:
    """XEP-0368: a client offering xmpp-client gets it; one offering nothing known still connects."""
    contexts = TLSContexts(certs)
    client, _ = _handshake(contexts, b"example.org",
                           _client_context(alpn=[b"h2", b"xmpp-client"]))
    assert client.get_alpn_proto_negotiated() == b"xmpp-client"
    client, _ = _handshake(contexts, b"example.org", _client_context(alpn=[b"h2"]))
    assert client.get_alpn_proto_negotiated() == b""


def test_tls13_channel_bindings_match_both_sides(certs) -> None:
    """tls-exporter and tls-server-end-point computed by server and client agree."""
    contexts = TLSContexts(certs)
    client, server = _handshake(contexts, b"example.net")
    transport = _HandleTransport(server)
    assert available_channel_bindings(transport) == ["tls-exporter", "tls-server-end-point"]
    exporter = channel_binding(transport, "tls-exporter")
    assert exporter is not None and len(exporter) == 32
    assert exporter == client.export_keying_material(b"EXPORTER-Channel-Binding", 32)
    end_point = channel_binding(transport, "tls-server-end-point")
    pem = Path(certs["example.net"][0]).read_bytes()
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    expected = hashlib.sha256(der).digest()  # ecdsa-with-SHA256 -> SHA-256
    assert end_point == expected
    assert channel_binding_for_connection(client, "tls-server-end-point", server=False) == expected
    assert channel_binding(transport, "tls-unique") is None


def test_tls12_has_no_exporter_binding(certs) -> None:
    """RFC 9266: tls-exporter is offered only on TLS 1.3."""
    contexts = TLSContexts(certs)
    _, server = _handshake(contexts, b"example.org",
                           _client_context(max_version=SSL.TLS1_2_VERSION))
    transport = _HandleTransport(server)
    assert channel_binding(transport, "tls-exporter") is None
    assert available_channel_bindings(transport) == ["tls-server-end-point"]


def test_no_tls_means_no_binding() -> None:
    """A plain transport has no channel binding at all."""
    transport = StringTransport()
    assert get_tls_connection(transport) is None
    assert channel_binding(transport, "tls-server-end-point") is None
    assert available_channel_bindings(transport) == []


def test_connection_found_through_twisted_wrappers(certs) -> None:
    """The SSL.Connection is found from a TLSMemoryBIOProtocol and through a
    ProtocolWrapper stacked on top of it."""
    contexts = TLSContexts(certs)
    inner_factory = WrappingFactory(Factory.forProtocol(Protocol))
    tls_factory = TLSMemoryBIOFactory(contexts.server_context_factory(), False, inner_factory)
    tls_protocol = tls_factory.buildProtocol(None)
    tls_protocol.makeConnection(StringTransport())
    conn = get_tls_connection(tls_protocol)
    assert isinstance(conn, SSL.Connection)
    # The application protocol sits under a ProtocolWrapper whose transport is TLS.
    wrapper = tls_protocol.wrappedProtocol
    assert isinstance(wrapper, ProtocolWrapper)
    assert get_tls_connection(wrapper) is conn
    assert get_tls_connection(wrapper.wrappedProtocol.transport) is conn


def test_twisted_tls_layer_handshake_and_binding(certs) -> None:
    """Through Twisted's TLSMemoryBIOProtocol (what startTLS and SSL endpoints use):
    the client verifies the SNI-selected certificate, and the application
    protocol's transport yields the same tls-exporter value as the client."""
    from twisted.internet.ssl import Certificate, optionsForClientTLS

    contexts = TLSContexts(certs)
    server_app, client_app = Protocol(), Protocol()
    server = TLSMemoryBIOFactory(contexts.server_context_factory(), False,
                                 Factory.forProtocol(lambda: server_app)).buildProtocol(None)
    trust = Certificate.loadPEM(Path(certs["example.net"][0]).read_bytes())
    client = TLSMemoryBIOFactory(optionsForClientTLS("example.net", trustRoot=trust), True,
                                 Factory.forProtocol(lambda: client_app)).buildProtocol(None)
    server_wire, client_wire = StringTransport(), StringTransport()
    server.makeConnection(server_wire)
    client.makeConnection(client_wire)
    for _ in range(10):
        to_server, to_client = client_wire.value(), server_wire.value()
        client_wire.clear()
        server_wire.clear()
        if to_server:
            server.dataReceived(to_server)
        if to_client:
            client.dataReceived(to_client)
    assert not client_wire.disconnecting and not server_wire.disconnecting
    client_conn = get_tls_connection(client_app.transport)
    assert client_conn is not None and client_conn.get_protocol_version_name() == "TLSv1.3"
    assert channel_binding(server_app.transport, "tls-exporter") == \
        client_conn.export_keying_material(b"EXPORTER-Channel-Binding", 32)


def _fingerprint(cert: x509.Certificate | None) -> str:
    assert cert is not None
    return cert.fingerprint(hashes.SHA256()).hex()


def _peer_fingerprint(conn: SSL.Connection) -> str:
    return _fingerprint(conn.get_peer_certificate().to_cryptography())


def _renew(pair: tuple[str, str], domain: str, tmp_path: Path) -> None:
    """Replace a certificate and key in place, as a renewal does."""
    new = (str(tmp_path / f"new-{domain}.crt"), str(tmp_path / f"new-{domain}.key"))
    generate_self_signed(domain, *new)
    os.replace(new[0], pair[0])
    os.replace(new[1], pair[1])


def test_reload_gives_new_connections_the_new_certificate(tmp_path: Path) -> None:
    """After reload() new handshakes (with or without SNI) present the renewed
    certificate, while a connection made before keeps its own and still works."""
    pairs = {}
    for domain in ("example.org", "example.net"):
        pairs[domain] = (str(tmp_path / f"{domain}.crt"), str(tmp_path / f"{domain}.key"))
        generate_self_signed(domain, *pairs[domain])
    contexts = TLSContexts(pairs)
    old_client, old_server = _handshake(contexts, b"example.net")
    before = _peer_fingerprint(old_client)
    before_default = _peer_fingerprint(_handshake(contexts, None)[0])
    for domain, pair in pairs.items():
        _renew(pair, domain, tmp_path)
    contexts.reload()
    new_client, _ = _handshake(contexts, b"example.net")
    assert _peer_fingerprint(new_client) != before
    assert _peer_fingerprint(new_client) == _fingerprint(
        x509.load_pem_x509_certificate(Path(pairs["example.net"][0]).read_bytes()))
    assert _peer_fingerprint(_handshake(contexts, None)[0]) != before_default
    # The old connection keeps its certificate and carries data both ways.
    assert _fingerprint(old_server.get_certificate().to_cryptography()) == before
    old_client.send(b"ping")
    old_server.bio_write(old_client.bio_read(65536))
    assert old_server.recv(4) == b"ping"


@pytest.mark.parametrize("damage", ["garbage", "mismatched key", "missing"])
def test_reload_error_keeps_old_certificates(tmp_path: Path, damage: str) -> None:
    """A reload that cannot load the new files raises CertificateError and
    changes nothing: new connections still get the old certificate."""
    pair = (str(tmp_path / "a.crt"), str(tmp_path / "a.key"))
    generate_self_signed("example.org", *pair)
    contexts = TLSContexts({"example.org": pair})
    before = _peer_fingerprint(_handshake(contexts, None)[0])
    if damage == "garbage":
        Path(pair[0]).write_text("not a certificate")
    elif damage == "mismatched key":
        generate_self_signed("example.org", pair[0], str(tmp_path / "other.key"))
    else:
        os.unlink(pair[1])
    with pytest.raises(CertificateError, match="example.org"):
        contexts.reload()
    assert _peer_fingerprint(_handshake(contexts, None)[0]) == before
