"""Certificates on s2s streams: who the peer is (RFC 6120 §13.7.2, RFC 6125).

A remote domain's certificate is accepted when its chain leads to a
trusted CA (the system's plus ``[s2s] ca_file``) and service-identity
matches the domain (DNS-ID, or SRV-ID ``_xmpp-server.domain``). OpenSSL is
told to accept any certificate during the handshake: a certificate that
does not verify still gives an encrypted stream, on which dialback may
authenticate the domain instead (unless secure_auth asks for more).
"""

from __future__ import annotations

import ssl
from typing import Any, Optional

from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

from chatbx_server.tls import CIPHERS, get_tls_connection

#: XEP-0368 §4: the ALPN protocol of direct-TLS s2s
ALPN_S2S = b"xmpp-server"


def _accept_any(conn: SSL.Connection, cert: Any, errno: int, depth: int, ok: int) -> bool:
    """Handshake verify callback: we judge the certificate ourselves afterwards."""
    return True


class Trust:
    """The trust store for remote servers' certificates.

    Args:
        ca_file: extra PEM CA certificates (``[s2s] ca_file``), or None.
        system: also trust the system's CAs.
    """

    def __init__(self, ca_file: Optional[str] = None, system: bool = True) -> None:
        self.ca_file = ca_file
        self.system = system
        self._store: Optional[crypto.X509Store] = None

    def store(self) -> crypto.X509Store:
        if self._store is None:
            store = crypto.X509Store()
            if self.system:
                paths = ssl.get_default_verify_paths()
                try:
                    store.load_locations(paths.cafile, paths.capath)
                except crypto.Error:
                    pass  # no system store: only ca_file is trusted
            if self.ca_file:
                store.load_locations(self.ca_file)
            self._store = store
        return self._store

    def verify(self, chain: list[crypto.X509], domain: str) -> tuple[bool, str]:
        """Whether ``chain`` (leaf first) proves ``domain``; and why not.

        Returns:
            (True, "valid") or (False, a short reason for logs).
        """
        if not chain:
            return False, "no certificate"
        try:
            crypto.X509StoreContext(self.store(), chain[0], chain[1:]).verify_certificate()
        except crypto.X509StoreContextError as exc:
            return False, f"untrusted: {exc}"
        return match_domain(chain[0].to_cryptography(), domain)

    def verify_connection(self, transport: Any, domain: str) -> tuple[bool, str]:
        """Verify the peer certificate of the TLS connection under ``transport``."""
        conn = get_tls_connection(transport)
        if conn is None:
            return False, "no TLS"
        leaf = conn.get_peer_certificate()
        if leaf is None:
            return False, "no certificate"
        # The client side's chain starts with the leaf; the server side's
        # (SSL_get_peer_cert_chain) does not.
        extra = list(conn.get_peer_cert_chain() or [])
        if extra and extra[0].digest("sha256") == leaf.digest("sha256"):
            extra = extra[1:]
        return self.verify([leaf, *extra], domain)


def match_domain(cert: x509.Certificate, domain: str) -> tuple[bool, str]:
    """RFC 6125 via service-identity: DNS-ID ``domain`` or SRV-ID ``_xmpp-server.domain``."""
    from service_identity import VerificationError
    from service_identity.cryptography import extract_patterns
    from service_identity.hazmat import DNS_ID, SRV_ID, verify_service_identity

    try:
        patterns = extract_patterns(cert)
        try:
            dns_id = DNS_ID(domain)
        except ValueError:
            return False, f"not a DNS name: {domain}"
        try:
            verify_service_identity(patterns, obligatory_ids=[dns_id], optional_ids=[])
            return True, "valid"
        except VerificationError:
            pass
        try:
            verify_service_identity(patterns, obligatory_ids=[SRV_ID(f"_xmpp-server.{domain}")],
                                    optional_ids=[])
            return True, "valid"
        except (VerificationError, ValueError):
            pass
    except Exception as exc:  # malformed certificate fields
        return False, f"unreadable certificate: {type(exc).__name__}"
    return False, f"certificate is not for {domain}"


def client_context(cert_path: str, key_path: str) -> SSL.Context:
    """The context of our outgoing streams for one local domain.

    It presents the domain's certificate (what SASL EXTERNAL and the
    remote's certificate checks see) and accepts any server certificate,
    which :class:`Trust` judges after the handshake.
    """
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    ctx.set_cipher_list(CIPHERS.encode("ascii"))
    ctx.set_verify(SSL.VERIFY_PEER, _accept_any)
    ctx.use_certificate_chain_file(cert_path)
    ctx.use_privatekey_file(key_path)
    ctx.check_privatekey()
    return ctx


@implementer(IOpenSSLClientConnectionCreator)
class ClientCreator:
    """``startTLS``/``wrapClientTLS`` argument: our context, SNI = the remote domain."""

    def __init__(self, context: SSL.Context, server_name: str, alpn: bool = False) -> None:
        self.context = context
        self.server_name = server_name
        self.alpn = alpn

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:  # noqa: N802
        conn = SSL.Connection(self.context, None)
        conn.set_connect_state()
        try:
            conn.set_tlsext_host_name(self.server_name.encode("idna"))
        except UnicodeError:
            pass
        if self.alpn:
            conn.set_alpn_protos([ALPN_S2S])
        return conn
