"""XMPP over WebSocket (RFC 7395) at ``/xmpp-websocket`` (autobahn on twisted.web).

The session is the TCP one: the real :class:`C2SStream` runs over a small
transport adapter, so SASL, bind, every stream feature and every limit are
the same code. Only the framing differs (RFC 7395 §3.3):

- in: ``<open/>`` in ``urn:ietf:params:xml:ns:xmpp-framing`` becomes the
  stream header the stream's parser expects, ``<close/>`` its end tag, and
  every other message (one complete element, §3.3.3) goes to the parser
  as it is;
- out: the stream writes through :data:`FRAMING`, a serializer whose
  header is ``<open/>``, whose footer is ``<close/>`` and which writes
  every element as a standalone document (namespaces declared); each write
  is one WebSocket text message.

The ``xmpp`` subprotocol is required (§3.1). The transport is TLS (or a
trusted reverse proxy), so the stream starts secure: no STARTTLS (§3.6).

autobahn does the opening and closing handshakes and every unusual frame;
the common frames take a short path of our own (RFC 6455 §5.2), because
autobahn's per-frame machinery cost more than the whole XMPP work of a
message (bench/README.md, "WebSocket"): in, complete masked text frames
with FIN set and no RSV bits, outside a fragmented message and within the
size limit, are unmasked here and handed to the stream; anything else (a
control frame, a fragment, a partial frame, a protocol violation) goes to
autobahn with everything after it. Out, each stanza is one unmasked text
frame written straight to the transport while the connection is open.
Invalid UTF-8 in a text frame is then reported by expat as a stream error
(not-well-formed) instead of a WebSocket close code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.xish import domish

from chatbx_server.c2s.parser import SafeElementStream
from chatbx_server.c2s.stream import C2SFactory, C2SStream
from chatbx_server.logs import log_observer
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.serializer import StreamSerializer, escape_attr
from chatbx_server.xmpp.stanzas import StreamError

if TYPE_CHECKING:
    from chatbx_server.server import Server

log = Logger(observer=log_observer)

FRAMING_NS = "urn:ietf:params:xml:ns:xmpp-framing"
_OPEN = 3  # autobahn's WebSocketProtocol.STATE_OPEN


def unmask(payload: bytes, mask: bytes) -> bytes:
    """RFC 6455 §5.3: XOR with the 4-byte key, as one big-integer operation."""
    n = len(payload)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def split_text_frames(data: bytes, limit: int) -> tuple[list[bytes], int]:
    """The payloads of the complete, masked, final, unextended text frames
    at the start of ``data``, each at most ``limit`` bytes, and how many
    bytes they took; stops at the first frame that is anything else."""
    out: list[bytes] = []
    pos, end = 0, len(data)
    while end - pos >= 6:
        if data[pos] != 0x81:  # FIN, no RSV bits, opcode 1 (text)
            break
        second = data[pos + 1]
        if not second & 0x80:  # client frames are masked (§5.1)
            break
        length, head = second & 0x7F, pos + 2
        if length == 126:
            if end - pos < 8:
                break
            length, head = int.from_bytes(data[pos + 2:pos + 4], "big"), pos + 4
        elif length == 127:
            break
        if length > limit or head + 4 + length > end:
            break
        body = head + 4
        out.append(unmask(data[body:body + length], data[head:body]))
        pos = body + length
    return out, pos


def text_frame(payload: bytes) -> bytes:
    """One unmasked, final text frame from the server (RFC 6455 §5.2)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


class FramingSerializer(StreamSerializer):
    """RFC 7395 §3.3: every element a document of its own, open/close as header/footer."""

    def __init__(self) -> None:
        super().__init__(ns.CLIENT)
        self.footer = f"<close xmlns='{FRAMING_NS}'/>"
        # Nothing is in scope between messages: the fallback declares prefixes.
        self._scope = [()]

    def header(self, stream_id: str, from_: Optional[str], to: Optional[str] = None,
               version: Optional[str] = "1.0", lang: Optional[str] = "en") -> str:
        out = [f"<open xmlns='{FRAMING_NS}'"]
        for name, value in (("from", from_), ("to", to), ("id", stream_id),
                            ("version", version), ("xml:lang", lang)):
            if value:
                out.append(f" {name}='{escape_attr(value)}'")
        out.append("/>")
        return "".join(out)

    def serialize(self, element: domish.Element) -> str:
        out: list[str] = []
        # wire=None: a stanza declares jabber:client itself (§3.3.3).
        self._write(out.append, element, self.default_ns, None)
        if out and out[0].startswith("<") and ":" in out[0].split(" ", 1)[0]:
            out.insert(1, self._declarations)  # <stream:features xmlns:stream=...>
        return "".join(out)


FRAMING = FramingSerializer()


def stream_header(root: domish.Element) -> bytes:
    """The stream header an ``<open/>`` stands for (what C2SStream parses)."""
    out = [f"<stream:stream xmlns='{ns.CLIENT}' xmlns:stream='{ns.STREAMS}'"]
    for name in ("to", "from", "version", "id"):
        value = root.getAttribute(name)
        if value is not None:
            out.append(f" {name}='{escape_attr(value)}'")
    out.append(">")
    return "".join(out).encode("utf-8")


class WebSocketC2SStream(C2SStream):
    """The client stream with RFC 7395 framing on the way out."""

    serializer = FRAMING
    transport_kind = "websocket"


class WSTransport:
    """What C2SStream needs of a transport, over one WebSocket connection."""

    def __init__(self, ws: "XMPPWebSocketProtocol", peer: Any) -> None:
        self.ws = ws
        #: the TLS (or TCP) transport below: channel binding looks here
        self.transport: Any = ws.transport
        self._peer = peer
        self.disconnecting = False

    def getPeer(self) -> Any:
        return self._peer

    def getHost(self) -> Any:
        return self.transport.getHost()

    def write(self, data: bytes) -> None:
        if not self.disconnecting:
            ws = self.ws
            # Only while open: after the closing handshake began nothing
            # more may be sent (RFC 6455 §5.5.1).
            if ws.state == _OPEN and ws.transport is not None:
                ws.transport.write(text_frame(data))

    def loseConnection(self) -> None:
        if not self.disconnecting:
            self.disconnecting = True
            self.ws.sendClose(1000)

    def abortConnection(self) -> None:
        self.disconnecting = True
        self.ws.dropConnection(abort=True)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        # twisted.web's channel registered itself before the WebSocket took
        # the connection over; the stream takes its place so that it learns
        # when the client stops reading (its output stays bounded).
        try:
            self.transport.unregisterProducer()
        except Exception:  # noqa: BLE001 - nothing registered
            pass
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        try:
            self.transport.unregisterProducer()
        except Exception:  # noqa: BLE001
            pass

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def startTLS(self, *args: Any) -> None:
        raise StreamError("policy-violation", "no STARTTLS over WebSocket")


class XMPPWebSocketProtocol(WebSocketServerProtocol):
    """One WebSocket connection carrying one XMPP stream."""

    factory: "XMPPWebSocketFactory"
    # Type-only: a TLS or TCP transport (Twisted's stub says Optional[ITransport]).
    transport: Any
    stream: Optional[WebSocketC2SStream] = None
    adapter: Optional[WSTransport] = None
    client_ip = ""

    def onConnect(self, request: Any) -> str:
        # RFC 7395 §3.1: the xmpp subprotocol, or no XMPP session.
        if "xmpp" not in request.protocols:
            raise ConnectionDeny(400, "the 'xmpp' WebSocket subprotocol is required")
        return "xmpp"

    def onOpen(self) -> None:
        ip = self.client_ip or getattr(self.transport.getPeer(), "host", "")
        peer = (IPv6Address if ":" in ip else IPv4Address)("TCP", ip, 0)
        self.adapter = WSTransport(self, peer)
        self.stream = WebSocketC2SStream(self.factory.c2s)
        self.stream.makeConnection(self.adapter)

    def _dataReceived(self, data: bytes) -> None:
        # The short path for the common frames (module docstring); autobahn
        # keeps everything else, including a frame it has begun.
        if (self.state != _OPEN or self.current_frame is not None or self.inside_message
                or self.data or self.stream is None):
            super()._dataReceived(data)
            return
        payloads, used = split_text_frames(data, self.factory.max_message)
        for payload in payloads:
            self.onMessage(payload, False)
            if self.state != _OPEN or self.stream is None:
                return
        if used < len(data):
            super()._dataReceived(data[used:])

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        stream = self.stream
        if stream is None:
            return
        if isBinary:
            stream.close_stream("bad-format", "binary WebSocket messages are not XMPP (RFC 7395 §3.2)")
            return
        try:
            self._deliver(stream, payload)
        except StreamError as exc:
            stream.close_stream(exc.condition, exc.text)

    def _deliver(self, stream: WebSocketC2SStream, payload: bytes) -> None:
        text = payload.lstrip()
        if text.startswith(b"<?xml"):
            text = text[text.find(b"?>") + 2:].lstrip()
        if text.startswith(b"<open") or text.startswith(b"<close"):
            root = _parse_framing(text, stream.factory.limits)
            if root.uri != FRAMING_NS:
                raise StreamError("invalid-namespace", "open/close must be in the framing namespace")
            stream.dataReceived(stream_header(root) if root.name == "open" else b"</stream:stream>")
            return
        parser = stream.parser
        stream.dataReceived(payload)
        if parser is not None and stream.parser is parser and parser.depth != 1:
            # §3.3.3: one complete element per message, nothing split across messages.
            raise StreamError("not-well-formed", "a message must hold one whole element")

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.connectionLost(Failure(ConnectionDone()))


def _parse_framing(text: bytes, limits: Any) -> domish.Element:
    found: list[domish.Element] = []
    parser = SafeElementStream(4096, 2, limits.max_attributes)
    parser.DocumentStartEvent = found.append
    parser.ElementEvent = lambda element: None
    parser.DocumentEndEvent = lambda: None
    parser.parse(text)
    if not found or found[0].name not in ("open", "close"):
        raise StreamError("not-well-formed")
    return found[0]


class XMPPWebSocketFactory(WebSocketServerFactory):
    protocol = XMPPWebSocketProtocol  # type: ignore[assignment]

    def __init__(self, chatbx: "Server", url: str) -> None:
        super().__init__(url)
        self.chatbx = chatbx
        # Secure from the start (TLS below, or a trusted proxy's); shares the
        # per-address limits with the TCP listeners.
        self.c2s = C2SFactory(chatbx, tls=None, direct_tls=True)
        limits = chatbx.config.limits
        #: largest message (stanza) taken on the short path; autobahn refuses bigger ones
        self.max_message = limits.max_stanza_size
        self.setProtocolOptions(maxMessagePayloadSize=limits.max_stanza_size,
                                maxFramePayloadSize=limits.max_stanza_size,
                                autoPingInterval=0, openHandshakeTimeout=30,
                                closeHandshakeTimeout=5)
        #: the client address of the request being upgraded (set just before)
        self.next_client_ip = ""

    def buildProtocol(self, addr: Any) -> Any:
        protocol: Any = super().buildProtocol(addr)
        protocol.client_ip = self.next_client_ip
        return protocol


class XMPPWebSocketResource(WebSocketResource):
    """Records the client address (X-Forwarded-For from a trusted proxy) first."""

    def render(self, request: Any) -> Any:
        from chatbx_server.http import metrics

        metrics.HTTP_REQUESTS.labels("websocket").inc()
        self._factory.next_client_ip = request.client_ip()
        return super().render(request)


def websocket_resource(chatbx: "Server") -> XMPPWebSocketResource:
    return XMPPWebSocketResource(XMPPWebSocketFactory(chatbx, "wss://localhost/xmpp-websocket"))
