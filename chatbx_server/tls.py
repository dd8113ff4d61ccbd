"""TLS for chatbx: per-domain certificates (SNI), self-signed generation and
channel-binding data.

- RFC 6120 §5 (STARTTLS) and XEP-0368 (direct TLS, ALPN ``xmpp-client``):
  one context factory serves both ``transport.startTLS(...)`` and
  ``SSL4ServerEndpoint``/``listenSSL``; TLS 1.2 is the minimum.
- RFC 6066 §3 (SNI): the client names the domain, the callback swaps in
  that domain's certificate.
- RFC 9266 (``tls-exporter``) and RFC 5929 (``tls-server-end-point``):
  the data SCRAM-*-PLUS binds to.

A first run has no certificate, so one is generated per domain under
``data_dir/certs`` (self-signed, SAN ``domain`` and ``*.domain``, so the
service subdomains such as ``conference.domain`` are covered too).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLContextFactory, IOpenSSLServerConnectionCreator
from twisted.logger import Logger

from chatbx_server.logs import log_observer
from zope.interface import implementer

from chatbx_server.config import ConfigError

if TYPE_CHECKING:
    from chatbx_server.config import Config

__all__ = [
    "ALPN_PROTOCOLS",
    "CIPHERS",
    "CertificateError",
    "ServerContextFactory",
    "TLSContexts",
    "available_channel_bindings",
    "channel_binding",
    "ensure_certificates",
    "generate_self_signed",
    "get_tls_connection",
]

log = Logger(namespace="chatbx.tls", observer=log_observer)

#: TLS 1.2 suites (Mozilla "intermediate"): forward secrecy, AEAD only.
#: TLS 1.3 suites are OpenSSL's defaults, all of them modern.
CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)

#: ALPN protocol ids we accept (XEP-0368); a client offering none still connects.
ALPN_PROTOCOLS = (b"xmpp-client", b"xmpp-server")

#: RFC 9266 §2: the label of the TLS exporter used for channel binding.
EXPORTER_LABEL = b"EXPORTER-Channel-Binding"


class CertificateError(ConfigError):
    """A certificate or key cannot be loaded or does not match."""


def generate_self_signed(domain: str, cert_path: str | os.PathLike[str],
                         key_path: str | os.PathLike[str], days: int = 3650) -> None:
    """Write a self-signed certificate for ``domain`` and its subdomains.

    The key (EC P-256) is written with mode 0600 before any byte of it is,
    so it is never readable by others, not even briefly.

    Args:
        domain: the XMPP domain (SAN dNSName ``domain`` and ``*.domain``).
        cert_path: where the PEM certificate goes.
        key_path: where the PEM private key goes.
        days: validity.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = datetime.datetime.now(datetime.timezone.utc)
    sans: list[x509.GeneralName] = [x509.DNSName(domain)]
    if "." in domain or domain == "localhost":
        sans.append(x509.DNSName(f"*.{domain}"))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH,
                                   x509.ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False)
        .sign(key, hashes.SHA256())
    )
    for path in (cert_path, key_path):
        parent = os.path.dirname(os.fspath(path))
        if parent:
            os.makedirs(parent, exist_ok=True)
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _write(key_path, key_pem, 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _write(path: str | os.PathLike[str], data: bytes, mode: int) -> None:
    """Write atomically (temp file + rename) with ``mode`` from the start."""
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)  # umask may have narrowed it; never widened
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def self_signed_paths(config: Config, domain: str) -> tuple[str, str]:
    """Where the generated certificate and key for ``domain`` live."""
    return (os.path.join(config.certs_dir, f"{domain}.crt"),
            os.path.join(config.certs_dir, f"{domain}.key"))


def ensure_certificates(config: Config) -> dict[str, tuple[str, str]]:
    """Map every domain to its (certificate, key) files, generating missing ones.

    Order of preference: ``[tls.domains."d"]``, then ``[tls] certificate/key``,
    then a self-signed pair under ``data_dir/certs`` (generated on first use).
    The first configured domain comes first: it is the default for clients
    that send no SNI.

    Raises:
        CertificateError: an operator-configured file does not exist.
    """
    result: dict[str, tuple[str, str]] = {}
    tls = config.tls
    for domain in config.domains:
        if domain in tls.domains:
            entry = tls.domains[domain]
            pair = (entry.certificate, entry.key)
            key = f'tls.domains."{domain}"'
        elif tls.certificate and tls.key:
            pair = (tls.certificate, tls.key)
            key = "tls"
        else:
            pair = self_signed_paths(config, domain)
            if not (os.path.exists(pair[0]) and os.path.exists(pair[1])):
                log.info("generating a self-signed certificate for {domain}", domain=domain)
                generate_self_signed(domain, *pair)
            result[domain] = pair
            continue
        _check_files(pair, key, config.path)
        result[domain] = pair
    for domain, entry in tls.domains.items():  # service domains, e.g. conference.*
        if domain not in result:
            pair = (entry.certificate, entry.key)
            _check_files(pair, f'tls.domains."{domain}"', config.path)
            result[domain] = pair
    return result


def _check_files(pair: tuple[str, str], key: str, path: str | None) -> None:
    for name, file in zip(("certificate", "key"), pair):
        if not os.path.isfile(file):
            raise CertificateError(f"file not found: {file}", f"{key}.{name}", path)


# --- contexts -----------------------------------------------------------------

# pyOpenSSL names the "no ALPN" sentinel's type privately; the annotation is
# never evaluated (postponed annotations), so only mypy reads it.
def _alpn_select(conn: SSL.Connection,
                 offered: list[bytes]) -> bytes | SSL._NoOverlappingProtocols:
    for proto in ALPN_PROTOCOLS:
        if proto in offered:
            return proto
    return SSL.NO_OVERLAPPING_PROTOCOLS  # carry on without ALPN


def _accept_any_peer(conn: SSL.Connection, cert: Any, errno: int, depth: int, ok: int) -> bool:
    """Handshake verify callback that accepts: the certificate is judged later."""
    return True


def _make_context(cert_path: str, key_path: str) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE
                    | SSL.OP_NO_RENEGOTIATION | SSL.OP_SINGLE_ECDH_USE)
    ctx.set_cipher_list(CIPHERS.encode("ascii"))
    ctx.set_session_id(b"chatbx")
    ctx.set_alpn_select_callback(_alpn_select)
    # Idle XMPP connections are the common case: let OpenSSL free its
    # per-connection read/write buffers between records (~24 KiB each
    # connection, measured with bench/compare idle_memory).
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    ctx.use_certificate_chain_file(cert_path)
    ctx.use_privatekey_file(key_path)
    ctx.check_privatekey()
    return ctx


class TLSContexts:
    """One OpenSSL context per domain; SNI picks among them.

    Args:
        certificates: domain -> (certificate chain PEM path, key PEM path);
            the first entry is the default (no SNI, or an unknown name).
        verify_peer: ask the peer for its certificate (s2s: the remote
            server's identity); any is accepted in the handshake and judged
            afterwards (chatbx_server.s2s.certs).
    """

    def __init__(self, certificates: Mapping[str, tuple[str, str]], verify_peer: bool = False):
        if not certificates:
            raise ValueError("TLSContexts needs at least one certificate")
        self.verify_peer = verify_peer
        self._certificates = dict(certificates)
        self._contexts: dict[str, SSL.Context] = {}
        self._default: SSL.Context | None = None
        self.reload()

    @classmethod
    def from_config(cls, config: Config) -> TLSContexts:
        """Contexts for every configured domain (generating self-signed ones)."""
        return cls(ensure_certificates(config))

    def reload(self) -> None:
        """Re-read every certificate (after a renewal); new handshakes use them.

        Raises:
            CertificateError: a file is unreadable or the key does not match.
        """
        contexts = {}
        for domain, (cert_path, key_path) in self._certificates.items():
            try:
                ctx = _make_context(cert_path, key_path)
            except (SSL.Error, OSError) as exc:
                raise CertificateError(
                    f"cannot load certificate {cert_path} / key {key_path}: {exc}",
                    f'tls.domains."{domain}"') from None
            ctx.set_tlsext_servername_callback(self._on_servername)
            if self.verify_peer:
                ctx.set_verify(SSL.VERIFY_PEER, _accept_any_peer)
                ctx.set_session_id(b"chatbx-s2s")
            contexts[domain] = ctx
        self._contexts = contexts
        self._default = next(iter(contexts.values()))

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(self._contexts)

    def context_for(self, name: str | None) -> SSL.Context:
        """The context for a server name: exact, else its parent domain, else default."""
        assert self._default is not None
        if name:
            name = name.lower().rstrip(".")
            ctx = self._contexts.get(name)
            if ctx is not None:
                return ctx
            parent = name.partition(".")[2]
            ctx = self._contexts.get(parent)
            if ctx is not None:
                return ctx
        return self._default

    def _on_servername(self, conn: SSL.Connection) -> None:
        raw = conn.get_servername()
        name = raw.decode("ascii", "replace") if raw else None
        ctx = self.context_for(name)
        if ctx is not conn.get_context():
            conn.set_context(ctx)

    def server_context_factory(self) -> ServerContextFactory:
        """A context factory for ``startTLS`` and ``SSL4ServerEndpoint``."""
        return ServerContextFactory(self)


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLContextFactory)
class ServerContextFactory:
    """A server connection creator that is also an old-style ContextFactory.

    Accepted by ``ITLSTransport.startTLS``, ``reactor.listenSSL``,
    ``SSL4ServerEndpoint`` and ``TLSMemoryBIOFactory``; the context it
    returns carries the SNI callback, which swaps in the domain's context.
    """

    isClient = 0

    def __init__(self, contexts: TLSContexts):
        self.contexts = contexts

    def getContext(self) -> SSL.Context:  # noqa: N802 (Twisted's name)
        """The default domain's context (SNI switches it per connection)."""
        return self.contexts.context_for(None)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:  # noqa: N802,N803
        """A new server-side connection for Twisted's TLS layer."""
        return SSL.Connection(self.getContext(), None)


# --- channel binding ------------------------------------------------------------

def get_tls_connection(transport: Any, max_depth: int = 8) -> SSL.Connection | None:
    """The pyOpenSSL Connection under a Twisted transport, or None (no TLS).

    Handles a TCP transport after ``startTLS`` (its ``getHandle`` is patched
    to the TLS layer's), a ``TLSMemoryBIOProtocol``, and protocol wrappers
    (``twisted.protocols.policies.ProtocolWrapper``) around either.
    """
    seen = 0
    current = transport
    while current is not None and seen < max_depth:
        seen += 1
        get_handle = getattr(current, "getHandle", None)
        if get_handle is not None:
            try:
                handle = get_handle()
            except Exception:
                handle = None
            if isinstance(handle, SSL.Connection):
                return handle
        current = getattr(current, "transport", None)
    return None


def _server_end_point(conn: SSL.Connection, server: bool) -> bytes | None:
    """RFC 5929 §4.1: hash of the server certificate with its signature hash."""
    cert = conn.get_certificate() if server else conn.get_peer_certificate()
    if cert is None:
        return None
    crypto_cert = cert.to_cryptography()
    try:
        algorithm = crypto_cert.signature_hash_algorithm
    except Exception:  # unsupported signature algorithm
        return None
    if algorithm is None:  # Ed25519/Ed448: RFC 5929 defines nothing
        return None
    if isinstance(algorithm, (hashes.MD5, hashes.SHA1)):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(crypto_cert.public_bytes(serialization.Encoding.DER))
    return digest.finalize()


def _is_tls13(conn: SSL.Connection) -> bool:
    return conn.get_protocol_version_name() == "TLSv1.3"


def channel_binding_for_connection(conn: SSL.Connection, cb_type: str,
                                   server: bool = True) -> bytes | None:
    """Channel-binding data of ``cb_type`` for an established connection.

    Args:
        conn: a pyOpenSSL connection after the handshake.
        cb_type: ``tls-exporter`` (RFC 9266, TLS 1.3 only) or
            ``tls-server-end-point`` (RFC 5929).
        server: whether we are the server end (selects whose certificate).

    Returns:
        the bytes, or None when the type is unknown or not available here.
    """
    if cb_type == "tls-exporter":
        if not _is_tls13(conn):
            return None  # RFC 9266 §3: not safe without the extended master secret
        return conn.export_keying_material(EXPORTER_LABEL, 32)
    if cb_type == "tls-server-end-point":
        return _server_end_point(conn, server)
    return None


def channel_binding(transport: Any, cb_type: str, server: bool = True) -> bytes | None:
    """Channel-binding data for the TLS connection under ``transport``.

    Returns:
        the bytes, or None without TLS, for an unknown type, or when the
        type is unavailable (``tls-exporter`` before TLS 1.3).
    """
    conn = get_tls_connection(transport)
    if conn is None:
        return None
    return channel_binding_for_connection(conn, cb_type, server)


def available_channel_bindings(transport: Any, server: bool = True) -> list[str]:
    """The channel-binding types usable on ``transport``, best first (XEP-0440)."""
    conn = get_tls_connection(transport)
    if conn is None:
        return []
    return [t for t in ("tls-exporter", "tls-server-end-point")
            if channel_binding_for_connection(conn, t, server) is not None]


def certificate_fingerprint(cert_path: str, algorithm: Callable[[], hashes.HashAlgorithm]
                            = hashes.SHA256) -> str:
    """Colon-separated fingerprint of a PEM certificate (for operators to compare)."""
    with open(cert_path, "rb") as fh:
        cert = x509.load_pem_x509_certificate(fh.read())
    return cert.fingerprint(algorithm()).hex(":").upper()

