"""XMPP over WebSocket (RFC 7395) for the load generator, with the same
interface as the TCP client (``client.XmppConnection``), so the message
scenarios run unchanged over either transport.

The WebSocket side is written here on asyncio (RFC 6455: the upgrade
request, masked client frames, unmasked server frames) rather than with the
``websockets`` package, so the two transports cost the client the same:
expat parsing into the same tiny elements and one TLS write per event-loop
turn, each stanza its own WebSocket message (RFC 7395 §3.3.3).
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import ssl
import struct
from typing import Optional

from . import client, scram
from .client import NS_BIND, NS_PING, NS_SASL, T_FEATURES, LoginError, XmppConnection
from .scenarios import Target

FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
_STREAM_HEADER = (b"<stream:stream xmlns='jabber:client' "
                  b"xmlns:stream='http://etherx.jabber.org/streams'>")

try:  # websockets' C helper, when installed; the pure-Python XOR otherwise
    from websockets.speedups import apply_mask as _apply_mask  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    def _apply_mask(data: bytes, mask: bytes) -> bytes:
        n = len(data)
        key = (mask * (n // 4 + 1))[:n]
        return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def frame(payload: bytes, opcode: int = 1) -> bytes:
    """One masked client frame (RFC 6455 §5.2)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    mask = os.urandom(4)
    return head + mask + _apply_mask(payload, mask)


class WsXmppConnection(XmppConnection):
    """A c2s stream whose bytes travel as WebSocket messages."""

    def __init__(self, domain: str) -> None:
        super().__init__(domain)
        self._raw = b""
        self._upgraded: Optional[asyncio.Future] = None
        self._fragments: list[bytes] = []

    def reset_parser(self) -> None:
        super().reset_parser()
        # Each message is a standalone element: the parser gets a stream
        # root of its own so that the elements sit at depth 1.
        self._parser.Parse(_STREAM_HEADER, False)

    def data_received(self, data: bytes) -> None:
        self._raw += data
        if self._upgraded is not None and not self._upgraded.done():
            head, sep, rest = self._raw.partition(b"\r\n\r\n")
            if not sep:
                return
            self._raw = rest
            self._upgraded.set_result(head)
        self._frames()

    def _frames(self) -> None:
        raw = self._raw
        while len(raw) >= 2:
            b0, b1 = raw[0], raw[1]
            n, pos = b1 & 0x7F, 2
            if n == 126:
                if len(raw) < 4:
                    break
                n, pos = struct.unpack_from("!H", raw, 2)[0], 4
            elif n == 127:
                if len(raw) < 10:
                    break
                n, pos = struct.unpack_from("!Q", raw, 2)[0], 10
            if len(raw) < pos + n:
                break
            payload, raw = raw[pos:pos + n], raw[pos + n:]
            opcode = b0 & 0x0F
            if opcode in (0, 1):
                self._fragments.append(payload)
                if b0 & 0x80:
                    message, self._fragments = b"".join(self._fragments), []
                    self._message(message)
            elif opcode == 8:
                self._lose("server closed the WebSocket")
            elif opcode == 9 and self.transport is not None:
                self.transport.write(frame(payload, 10))  # type: ignore[attr-defined]
        self._raw = raw

    def _message(self, message: bytes) -> None:
        if message.startswith(b"<open"):
            return
        if message.startswith(b"<close"):
            self._lose("server closed the stream")
            return
        XmppConnection.data_received(self, message)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._wbuf and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(frame(m) for m in self._wbuf))  # type: ignore[attr-defined]
        self._wbuf.clear()

    def open_stream(self) -> None:
        self.send(f"<open xmlns='{FRAMING}' to='{self.domain}' version='1.0'/>".encode())

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.send(f"<close xmlns='{FRAMING}'/>".encode())
            self._flush()
            self.transport.write(frame(b"\x03\xe8", 8))  # type: ignore[attr-defined]
            self.transport.close()


async def ws_login(host: str, port: int, domain: str, username: str, password: str, *,
                   ssl_ctx: Optional[ssl.SSLContext] = None, path: str = "/xmpp-websocket",
                   resource: Optional[str] = None, presence: Optional[str] = "<presence/>",
                   timeout: float = 30.0, **_: object) -> XmppConnection:
    """Connect over wss://, log in with SCRAM-SHA-256 and bind, like ``client.login``."""
    return await asyncio.wait_for(_ws_login(host, port, domain, username, password,
                                            ssl_ctx or client.make_ssl_context(), path, resource,
                                            presence), timeout)


async def _ws_login(host: str, port: int, domain: str, username: str, password: str,
                    ssl_ctx: ssl.SSLContext, path: str, resource: Optional[str],
                    presence: Optional[str]) -> XmppConnection:
    loop = asyncio.get_running_loop()
    conn = WsXmppConnection(domain)
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await loop.sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        await loop.create_connection(lambda: conn, sock=sock, ssl=ssl_ctx, server_hostname=domain)
        conn._upgraded = loop.create_future()
        key = base64.b64encode(os.urandom(16)).decode()
        conn.transport.write((  # type: ignore[union-attr]
            f"GET {path} HTTP/1.1\r\nHost: {domain}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: xmpp\r\n\r\n").encode())
        head = await asyncio.wait_for(conn._upgraded, 30)
        if not head.startswith(b"HTTP/1.1 101"):
            raise LoginError(f"WebSocket upgrade refused: {head.splitlines()[0]!r}")
        conn.open_stream()
        features = await conn.recv_until(lambda el: el.tag == T_FEATURES, 30)
        mechs = features.find(NS_SASL + " mechanisms")
        offered = [m.text.strip() for m in mechs.children] if mechs is not None else []
        mech = scram.choose_mechanism(offered, ("SCRAM-SHA-256", "SCRAM-SHA-1"))
        if mech is None:
            raise LoginError(f"no usable SASL mechanism in {offered}")
        scram_client = scram.ScramClient(mech, username, password)
        conn.send(f"<auth xmlns='{NS_SASL}' mechanism='{mech}'>"
                  f"{base64.b64encode(scram_client.first()).decode()}</auth>".encode())
        while True:
            answer = await conn.recv(30)
            kind = answer.tag.split(" ")[-1]
            if kind == "challenge":
                final = scram_client.final(base64.b64decode(answer.text or ""))
                conn.send(f"<response xmlns='{NS_SASL}'>{base64.b64encode(final).decode()}</response>"
                          .encode())
            elif kind == "success":
                if answer.text and not scram_client.verify(base64.b64decode(answer.text)):
                    raise LoginError("server signature mismatch")
                break
            else:
                raise LoginError(f"SASL {mech} failed: {kind}")
        conn.reset_parser()
        conn.open_stream()
        await conn.recv_until(lambda el: el.tag == T_FEATURES, 30)
        res = resource or "w" + os.urandom(4).hex()
        reply = await conn.iq("set", f"<bind xmlns='{NS_BIND}'><resource>{res}</resource></bind>")
        bind = reply.find(NS_BIND + " bind")
        jid_el = bind.find(NS_BIND + " jid") if bind is not None else None
        conn.jid = jid_el.text if jid_el is not None else f"{username}@{domain}/{res}"
        if presence:
            conn.send(presence.encode())
            await conn.iq("get", f"<ping xmlns='{NS_PING}'/>", to=domain)
        return conn
    except BaseException:
        if conn.transport is not None:
            conn.transport.abort()  # type: ignore[attr-defined]
        raise


class WsTarget(Target):
    """A Target whose logins go over WebSocket to the HTTP port."""

    async def login(self, n: int, **kw: object) -> XmppConnection:
        return await ws_login(self.host, self.port, self.domain, self.user(n), self.password, **kw)
