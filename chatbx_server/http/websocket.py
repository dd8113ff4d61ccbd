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
            self.ws.sendMessage(data, False)

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
