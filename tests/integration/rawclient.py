"""A small raw XMPP client for integration tests (RFC 6120, RFC 5802, RFC 9266).

slixmpp cannot do SCRAM-*-PLUS (Python's ``ssl`` has no tls-exporter) and
will not send broken XML on purpose, so the tests that need either speak
XMPP by hand here: plain sockets, pyOpenSSL for STARTTLS / direct TLS (it
exposes ``export_keying_material`` for RFC 9266), the client side of SCRAM
with hashlib/hmac, and an incremental ElementTree parser for what the
server sends. Every read has a deadline, so a silent server fails a test
instead of hanging it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import select
import socket
import time
import xml.etree.ElementTree as ET
from typing import Callable, Optional

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

NS_CLIENT = "jabber:client"
NS_STREAMS = "http://etherx.jabber.org/streams"
NS_STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
NS_STANZA_ERRORS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_SASL_CB = "urn:xmpp:sasl-cb:0"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_DELAY = "urn:xmpp:delay"
NS_ROSTER = "jabber:iq:roster"

DEFAULT_TIMEOUT = 5.0


def q(ns: str, name: str) -> str:
    """ElementTree's '{namespace}name' form."""
    return f"{{{ns}}}{name}"


class StreamClosed(Exception):
    """The server ended the stream or closed the connection."""


class RawClient:
    """One client connection driven step by step by a test.

    Args:
        port: the c2s (STARTTLS) or c2s_tls (direct TLS) port on 127.0.0.1.
        domain: the 'to' of the stream header.
        direct_tls: start TLS at connect (XEP-0368).
        tls_max: highest TLS version (``SSL.TLS1_3_VERSION`` / ``SSL.TLS1_2_VERSION``).
    """

    def __init__(self, port: int, domain: str = "localhost", direct_tls: bool = False,
                 timeout: float = DEFAULT_TIMEOUT, tls_max: Optional[int] = None) -> None:
        self.domain = domain
        self.timeout = timeout
        self.tls_max = tls_max
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setblocking(False)
        self.tls: Optional[SSL.Connection] = None
        self.parser: Optional[ET.XMLPullParser] = None
        self.depth = 0
        self.header: Optional[ET.Element] = None
        self.features: Optional[ET.Element] = None
        self.queue: list[ET.Element] = []
        self.ended = False  # </stream:stream> received
        self.eof = False  # connection closed by the server
        self.jid: Optional[str] = None
        self._ids = 0
        if direct_tls:
            self._start_tls()

    # -- transport ---------------------------------------------------------
    def _wait(self, for_write: bool, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no answer from the server in time")
        r, w, _ = select.select([] if for_write else [self.sock], [self.sock] if for_write else [], [], left)
        if not r and not w:
            raise TimeoutError("no answer from the server in time")

    def _start_tls(self) -> None:
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        if self.tls_max is not None:
            ctx.set_max_proto_version(self.tls_max)
        ctx.set_verify(SSL.VERIFY_NONE, lambda *a: True)  # self-signed test certificate
        conn = SSL.Connection(ctx, self.sock)
        conn.set_tlsext_host_name(self.domain.encode())
        conn.set_connect_state()
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                conn.do_handshake()
                break
            except SSL.WantReadError:
                self._wait(False, deadline)
            except SSL.WantWriteError:
                self._wait(True, deadline)
        self.tls = conn

    def send(self, data: bytes | str) -> None:
        """Write raw bytes (whatever the test wants, well-formed or not)."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        deadline = time.monotonic() + self.timeout
        view = memoryview(data)
        while view:
            try:
                if self.tls is not None:
                    n = self.tls.send(bytes(view[:16384]))
                else:
                    n = self.sock.send(view)
                view = view[n:]
            except (SSL.WantWriteError, BlockingIOError):
                self._wait(True, deadline)
            except SSL.WantReadError:
                self._wait(False, deadline)

    def _recv(self, deadline: float) -> bytes:
        while True:
            try:
                if self.tls is not None:
                    return self.tls.recv(65536)
                return self.sock.recv(65536)
            except (SSL.WantReadError, BlockingIOError):
                self._wait(False, deadline)
            except SSL.ZeroReturnError:
                return b""
            except (SSL.SysCallError, ConnectionResetError):
                return b""
            except SSL.Error:
                return b""

    def close(self) -> None:
        try:
            if self.tls is not None:
                try:
                    self.tls.shutdown()
                except SSL.Error:
                    pass
            self.sock.close()
        except OSError:
            pass

    # -- stream ------------------------------------------------------------
    def open_stream(self, to: Optional[str] = None, xmlns: str = NS_CLIENT,
                    stream_ns: str = NS_STREAMS, read_features: bool = True) -> Optional[ET.Element]:
        """Send a stream header; read the server's header and features."""
        self.parser = ET.XMLPullParser(events=("start", "end"))
        self.depth = 0
        self.header = None
        self.features = None
        self.send(f"<?xml version='1.0'?><stream:stream to='{to or self.domain}' xmlns='{xmlns}' "
                  f"xmlns:stream='{stream_ns}' version='1.0'>")
        if not read_features:
            return None
        self.features = self.expect(q(NS_STREAMS, "features"))
        return self.features

    def _feed(self, data: bytes) -> None:
        assert self.parser is not None
        self.parser.feed(data)
        for event, elem in self.parser.read_events():
            if event == "start":
                if self.depth == 0:
                    self.header = elem
                self.depth += 1
            else:
                self.depth -= 1
                if self.depth == 1:
                    self.queue.append(elem)
                    if self.header is not None:
                        self.header.remove(elem)  # keep a long stream's tree small
                elif self.depth == 0:
                    self.ended = True

    def next(self, timeout: Optional[float] = None) -> ET.Element:
        """The next top-level element; StreamClosed when the stream ends first."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.queue:
            if self.ended or self.eof:
                raise StreamClosed("stream closed")
            data = self._recv(deadline)
            if not data:
                self.eof = True
                continue
            self._feed(data)
        return self.queue.pop(0)

    def expect(self, tag: str, timeout: Optional[float] = None) -> ET.Element:
        """The next element, which must have this tag."""
        elem = self.next(timeout)
        if elem.tag != tag:
            raise AssertionError(f"expected {tag}, got {ET.tostring(elem)!r}")
        return elem

    def wait_for(self, match: Callable[[ET.Element], bool], timeout: Optional[float] = None) -> ET.Element:
        """Skip elements until one matches (other elements are dropped)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no matching element in time")
            elem = self.next(left)
            if match(elem):
                return elem

    def stream_error(self, timeout: Optional[float] = None) -> str:
        """Read up to a stream error; return its condition and check the
        stream is then closed (RFC 6120 §4.9.1.1)."""
        elem = self.wait_for(lambda e: e.tag == q(NS_STREAMS, "error"), timeout)
        conditions = [c.tag.split("}")[1] for c in elem if c.tag.startswith(f"{{{NS_STREAM_ERRORS}}}")
                      and not c.tag.endswith("}text")]
        assert len(conditions) == 1, ET.tostring(elem)
        return conditions[0]

    def assert_closed(self, timeout: Optional[float] = None) -> None:
        """The server ends the stream and closes the TCP connection."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("the server did not close the connection")
            data = self._recv(deadline)
            if not data:
                self.eof = True
            elif not self.ended:
                self._feed(data)
        assert self.ended, "connection closed without </stream:stream>"

    # -- negotiation -------------------------------------------------------
    def starttls(self) -> ET.Element:
        """STARTTLS (RFC 6120 §5) and the stream restart; returns the new features."""
        self.send(f"<starttls xmlns='{NS_TLS}'/>")
        self.expect(q(NS_TLS, "proceed"))
        self._start_tls()
        return self.open_stream()

    def mechanisms(self) -> list[str]:
        assert self.features is not None
        mechs = self.features.find(q(NS_SASL, "mechanisms"))
        return [m.text or "" for m in mechs] if mechs is not None else []

    def channel_binding_types(self) -> list[str]:
        assert self.features is not None
        cb = self.features.find(q(NS_SASL_CB, "sasl-channel-binding"))
        return [c.get("type", "") for c in cb] if cb is not None else []

    def channel_binding(self, cb_type: str) -> bytes:
        """Client-side channel-binding data (RFC 9266, RFC 5929 §4.1)."""
        assert self.tls is not None
        if cb_type == "tls-exporter":
            return self.tls.export_keying_material(b"EXPORTER-Channel-Binding", 32)
        if cb_type == "tls-server-end-point":
            cert = self.tls.get_peer_certificate().to_cryptography()
            algo = cert.signature_hash_algorithm
            if algo is None or isinstance(algo, (hashes.MD5, hashes.SHA1)):
                algo = hashes.SHA256()
            digest = hashes.Hash(algo)
            digest.update(cert.public_bytes(Encoding.DER))
            return digest.finalize()
        raise ValueError(cb_type)

    def auth(self, mechanism: str, payload: bytes | None) -> None:
        """Send <auth/>; None means no initial response, b'' is '='."""
        text = "" if payload is None else (base64.b64encode(payload).decode() or "=")
        self.send(f"<auth xmlns='{NS_SASL}' mechanism='{mechanism}'>{text}</auth>")

    def sasl_answer(self, timeout: Optional[float] = None) -> ET.Element:
        elem = self.next(timeout)
        assert elem.tag.startswith(f"{{{NS_SASL}}}"), ET.tostring(elem)
        return elem

    def plain(self, user: str, password: str) -> ET.Element:
        self.auth("PLAIN", f"\0{user}\0{password}".encode())
        return self.sasl_answer()

    def scram(self, mechanism: str, user: str, password: str,
              cb_type: Optional[str] = None) -> ET.Element:
        """A whole SCRAM exchange (RFC 5802); returns the server's last
        element (success or failure). The server signature is verified."""
        hash_name = "sha256" if "SHA-256" in mechanism else "sha1"
        if mechanism.endswith("-PLUS"):
            assert cb_type is not None
            gs2 = f"p={cb_type},,"
            cb_data = self.channel_binding(cb_type)
        else:
            gs2 = "n,,"
            cb_data = b""
        nonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = f"n={user.replace('=', '=3D').replace(',', '=2C')},r={nonce}"
        self.auth(mechanism, (gs2 + first_bare).encode())
        answer = self.sasl_answer()
        if answer.tag != q(NS_SASL, "challenge"):
            return answer
        server_first = base64.b64decode(answer.text or "").decode()
        attrs = dict(part.split("=", 1) for part in server_first.split(","))
        assert attrs["r"].startswith(nonce)
        salted = hashlib.pbkdf2_hmac(hash_name, password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
        client_key = hmac.digest(salted, b"Client Key", hash_name)
        stored_key = hashlib.new(hash_name, client_key).digest()
        final_no_proof = f"c={base64.b64encode(gs2.encode() + cb_data).decode()},r={attrs['r']}"
        auth_message = f"{first_bare},{server_first},{final_no_proof}".encode()
        signature = hmac.digest(stored_key, auth_message, hash_name)
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        final = f"{final_no_proof},p={base64.b64encode(proof).decode()}"
        self.send(f"<response xmlns='{NS_SASL}'>{base64.b64encode(final.encode()).decode()}</response>")
        answer = self.sasl_answer()
        if answer.tag == q(NS_SASL, "success"):
            server_key = hmac.digest(salted, b"Server Key", hash_name)
            expected = b"v=" + base64.b64encode(hmac.digest(server_key, auth_message, hash_name))
            assert base64.b64decode(answer.text or "") == expected, "server signature does not verify"
        return answer

    def bind(self, resource: Optional[str] = None) -> str:
        """Restart the stream after SASL success and bind a resource (RFC 6120 §7)."""
        features = self.open_stream()
        assert features.find(q(NS_BIND, "bind")) is not None, ET.tostring(features)
        inner = f"<resource>{resource}</resource>" if resource else ""
        self.send(f"<iq type='set' id='bind1'><bind xmlns='{NS_BIND}'>{inner}</bind></iq>")
        reply = self.expect(q(NS_CLIENT, "iq"))
        assert reply.get("type") == "result", ET.tostring(reply)
        jid_elem = reply.find(f"{q(NS_BIND, 'bind')}/{q(NS_BIND, 'jid')}")
        assert jid_elem is not None and jid_elem.text
        self.jid = jid_elem.text
        return self.jid

    def next_id(self) -> str:
        self._ids += 1
        return f"raw{self._ids}"

    def message(self, to: str, body: str, mtype: str = "chat") -> None:
        self.send(f"<message to='{to}' type='{mtype}' id='{self.next_id()}'><body>{body}</body></message>")

    def wait_message(self, body: str, timeout: Optional[float] = None) -> ET.Element:
        """Wait for a message with this body (other elements are skipped)."""
        return self.wait_for(
            lambda e: e.tag == q(NS_CLIENT, "message") and e.findtext(q(NS_CLIENT, "body")) == body, timeout)


def login(port: int, user: str, password: str, resource: Optional[str] = None,
          domain: str = "localhost", mechanism: str = "SCRAM-SHA-256") -> RawClient:
    """Connect, STARTTLS, authenticate and bind: a ready session."""
    client = RawClient(port, domain)
    client.open_stream()
    client.starttls()
    answer = client.scram(mechanism, user, password)
    assert answer.tag == q(NS_SASL, "success"), ET.tostring(answer)
    client.bind(resource)
    return client
