"""A renewed certificate without a restart: SIGHUP makes the real server
re-read its certificates (tap.ChatbxService, TLSContexts.reload)."""

from __future__ import annotations

import os
import signal
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes

from chatbx_server.tls import generate_self_signed
from rawclient import NS_SASL, RawClient, q

pytestmark = pytest.mark.integration

RELOAD_TIMEOUT = 10.0


def _fingerprint(client: RawClient) -> str:
    assert client.tls is not None
    return client.tls.get_peer_certificate().to_cryptography().fingerprint(hashes.SHA256()).hex()


def _file_fingerprint(path: Path) -> str:
    from cryptography import x509

    return x509.load_pem_x509_certificate(path.read_bytes()).fingerprint(hashes.SHA256()).hex()


def _wait_for_log(server, text: str, count: int) -> None:
    """Poll the server log (bounded) until ``text`` appears ``count`` times."""
    deadline = time.monotonic() + RELOAD_TIMEOUT
    while server.log_text().count(text) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"no {text!r} in the server log within {RELOAD_TIMEOUT}s")
        time.sleep(0.05)  # polling a log file, bounded by the deadline


def test_sighup_reloads_certificate(chatbx_server, tmp_path: Path):
    """After the certificate files are replaced and the server gets SIGHUP, a
    new TLS connection sees the new certificate, a connection made before
    keeps working, and a broken replacement is refused (old one kept)."""
    server = chatbx_server()
    cert = server.data_dir / "certs" / "localhost.crt"
    key = server.data_dir / "certs" / "localhost.key"
    old = RawClient(server.c2s_tls_port, direct_tls=True)
    try:
        before = _fingerprint(old)
        assert before == _file_fingerprint(cert)

        new_cert, new_key = tmp_path / "new.crt", tmp_path / "new.key"
        generate_self_signed("localhost", new_cert, new_key)
        os.replace(new_key, key)
        os.replace(new_cert, cert)
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGHUP)
        _wait_for_log(server, "TLS certificates reloaded", 1)

        fresh = RawClient(server.c2s_tls_port, direct_tls=True)
        try:
            after = _fingerprint(fresh)
        finally:
            fresh.close()
        assert after != before and after == _file_fingerprint(cert)

        # The connection from before the reload still works on its certificate.
        old.open_stream()
        answer = old.scram("SCRAM-SHA-256", "alice", server.users["alice@localhost"])
        assert answer.tag == q(NS_SASL, "success"), ET.tostring(answer)
        assert _fingerprint(old) == before

        # A broken certificate is refused; new connections keep the last good one.
        cert.write_text("not a certificate\n")
        os.kill(server.proc.pid, signal.SIGHUP)
        _wait_for_log(server, "TLS certificates not reloaded", 1)
        again = RawClient(server.c2s_tls_port, direct_tls=True)
        try:
            assert _fingerprint(again) == after
        finally:
            again.close()
        assert server.proc.poll() is None
    finally:
        old.close()
