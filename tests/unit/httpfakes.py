"""Drive the real ChatbxSite over a StringTransport: raw HTTP in, parsed response out."""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from chatbx_server.http.server import build_site


class Response:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.code = int(lines[0].split(b" ")[1]) if lines and lines[0] else 0
        self.headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            self.headers[name.decode().strip().lower()] = value.decode("latin-1").strip()
        if self.headers.get("transfer-encoding") == "chunked":
            body = b""
            while rest:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    break
                body += rest[:size]
                rest = rest[size + 2:]
            self.body = body
        else:
            length = int(self.headers.get("content-length", len(rest)))
            self.body = rest[:length]


def site_for(server: Any) -> Any:
    return build_site(server, server.clock)


def request(site: Any, raw: bytes, peer: str = "192.0.2.1", close: bool = True
            ) -> tuple[Response, StringTransport]:
    """Send one raw request on a new connection; the response as written so far."""
    channel = site.buildProtocol(IPv4Address("TCP", peer, 1234))
    transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 1234))
    channel.makeConnection(transport)
    channel.dataReceived(raw)
    pump(channel)
    settle(site)
    pump(channel)
    response = Response(transport.value())
    if close:
        # The client goes away (the fake transport never reports it itself):
        # no idle timer of this connection is left on the clock.
        channel.connectionLost(Failure(ConnectionDone()))
    return response, transport


def settle(site: Any) -> None:
    """Run what waits on the fake clock for the next turn (batched upload
    completions)."""
    clock = getattr(site.chatbx, "clock", None)
    if clock is not None and hasattr(clock, "advance"):
        clock.advance(0)


def pump(channel: Any, rounds: int = 10000) -> None:
    """Do what the global cooperator would (it needs a running reactor):
    pull static.File's producer until the response is complete."""
    channel = getattr(channel, "_channel", channel)  # Site wraps HTTPChannel
    for _ in range(rounds):
        wrapper = getattr(channel, "_requestProducer", None)
        inner = getattr(wrapper, "_producer", None)
        if inner is None:
            return
        inner.resumeProducing()


def simple(method: str, path: str, body: Optional[bytes] = None,
           headers: Optional[dict[str, str]] = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body is not None and not any(k.lower() == "content-length" for k in (headers or {})):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")
