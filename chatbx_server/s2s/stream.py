"""What incoming and outgoing s2s streams share (RFC 6120 §4, §5).

- The parser: c2s's restricted-XML, size and depth limits, plus the
  namespace rule of §4.8.3: stanzas on a server stream are qualified by
  ``jabber:server``. They are mapped to ``jabber:client`` as they are
  parsed, so the rest of the server sees one kind of stanza; a
  ``jabber:client`` default namespace on an s2s stream is refused
  (``invalid-namespace``).
- The serializer: ``stream:`` and ``db:`` prefixes declared once in the
  header, stanzas written in the stream's default namespace without a
  redundant ``xmlns`` (what chatbx builds in ``jabber:client`` goes out as
  ``jabber:server``).
- Output, close with a stream error, timers, per-stream bookkeeping.
- The checks on a stanza the peer sends (``accept_stanza``), used by
  incoming streams and by outgoing ones that are bidirectional (XEP-0288).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Container, Optional
from uuid import uuid4

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.xish import domish
from zope.interface import implementer

from chatbx_server.c2s.parser import SafeElementStream
from chatbx_server.logs import log_observer
from chatbx_server.s2s.dialback import NS_DIALBACK
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.serializer import StreamSerializer
from chatbx_server.xmpp.transport import set_no_delay
from chatbx_server.xmpp.jid import JID, InvalidJID
from chatbx_server.xmpp.stanzas import StanzaError, StreamError

if TYPE_CHECKING:
    from chatbx_server.s2s.manager import S2SManager

log = Logger(namespace="chatbx.s2s", observer=log_observer)

STANZAS = frozenset(("message", "presence", "iq"))
#: XEP-0288: the request (initiating server) and the stream feature
NS_BIDI = "urn:xmpp:bidi"
NS_BIDI_FEATURE = "urn:xmpp:features:bidi"
#: jabber:server streams with the dialback prefix declared in the header
SERIALIZER = StreamSerializer(ns.SERVER, {ns.STREAMS: "stream", NS_DIALBACK: "db"})
_SERVER_PREFIX = ns.SERVER + " "
_CLIENT_PREFIX = ns.CLIENT + " "


class ServerElementStream(SafeElementStream):
    """SafeElementStream for ``jabber:server``: stanzas come out as ``jabber:client``.

    ``stream_ns`` is the default namespace the peer declared on its stream
    header (checked by the stream).
    """

    def __init__(self, max_stanza_size: int, max_depth: int, max_attributes: int) -> None:
        super().__init__(max_stanza_size, max_depth, max_attributes)
        self.stream_ns: Optional[str] = None

    def _onStartNamespace(self, prefix: Optional[str], uri: str) -> None:  # noqa: N802
        if prefix is None:
            if not self.documentStarted:
                self.stream_ns = uri
            elif uri == ns.CLIENT:
                raise StreamError("invalid-namespace", "jabber:client on a server stream")
            if uri == ns.SERVER:
                uri = ns.CLIENT
        super()._onStartNamespace(prefix, uri)

    def _onStartElement(self, name: str, attrs: dict) -> None:  # noqa: N802
        if name.startswith(_SERVER_PREFIX):
            name = _CLIENT_PREFIX + name[len(_SERVER_PREFIX):]
        super()._onStartElement(name, attrs)


def serialize(element: domish.Element) -> str:
    """An element as it goes out on a server stream (the shared serializer)."""
    return SERIALIZER.serialize(element)


def header(local: Optional[str], remote: Optional[str], stream_id: Optional[str] = None) -> str:
    """The stream header (RFC 6120 §4.7), declaring the dialback prefix (XEP-0220)."""
    return SERIALIZER.header(stream_id or "", local, remote, lang=None)


def major_version(version: Optional[str]) -> int:
    """RFC 6120 §4.7.5: "major.minor"; absent is 0.9 (a pre-RFC peer)."""
    major, dot, minor = (version or "0.9").partition(".")
    if not (dot and major.isdigit() and minor.isdigit()):
        raise StreamError("unsupported-version")
    return int(major)


def _discard(*args: Any) -> None:
    """Event handler of a parser that was replaced or closed."""


@implementer(IPushProducer)
class S2SStream(Protocol):
    """Common state and plumbing of one server-to-server connection.

    It is the transport's producer, so it learns when the peer stops
    reading; what is written beyond the transport's buffer is counted and
    the stream dropped past ``[limits] max_output_buffer`` (as c2s does).
    """

    direction = "?"
    # A TCP/TLS transport (startTLS, abortConnection) set before connectionMade.
    transport: Any

    def __init__(self, manager: "S2SManager") -> None:
        self.manager = manager
        self.server = manager.server
        self.clock = manager.clock
        self.closed = False
        self.secure = False
        self.header_sent = False
        #: our domain on this stream, and the peer's (when known)
        self.local: Optional[str] = None
        self.remote: Optional[str] = None
        self.stream_id = ""
        self.peer = ""
        #: "sasl-external", "dialback" or "" (not authenticated)
        self.auth_method = ""
        #: a bidirectional stream (XEP-0288): stanzas flow both ways on it
        self.bidi = False
        #: the peer certificate's verdict for self.remote: (valid, reason)
        self.cert: Optional[tuple[bool, str]] = None
        self.parser: Optional[ServerElementStream] = None
        self.started_at = self.clock.seconds()
        self.last_active = self.started_at
        self._auth_timer: Any = None
        self._reported = False
        #: bytes written while the transport's buffer is full; None otherwise
        self._backlog: Optional[int] = None

    # -- connection ------------------------------------------------------
    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer = f"{getattr(peer, 'host', '')}:{getattr(peer, 'port', '')}"
        set_no_delay(self.transport)
        self._reset_parser()
        self.transport.registerProducer(self, True)
        self._auth_timer = self.clock.callLater(self.manager.config.auth_timeout, self._auth_timed_out)

    def _auth_timed_out(self) -> None:
        self._auth_timer = None
        if not self.closed:
            self.fail("connection-timeout", "authentication took too long", timeout=True)

    def cancel_auth_timer(self) -> None:
        timer, self._auth_timer = self._auth_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        self.closed = True
        self.cancel_auth_timer()
        self._detach_parser()
        self._report_lost("connection lost")

    def _report_lost(self, reason: str) -> None:
        if not self._reported:
            self._reported = True
            self.lost(reason)

    def lost(self, reason: str) -> None:
        """Subclasses tell the manager (called once per stream)."""

    def fail(self, condition: str, text: str, timeout: bool = False) -> None:
        """Give up on the stream with a stream error; subclasses add bookkeeping."""
        self.close_stream(condition, text)

    def _reset_parser(self) -> None:
        self._detach_parser()
        limits = self.server.config.limits
        parser = ServerElementStream(limits.max_stanza_size, limits.max_depth, limits.max_attributes)
        parser.DocumentStartEvent = self._on_stream_start_checked
        parser.ElementEvent = self._on_element
        parser.DocumentEndEvent = self._on_stream_end
        self.parser = parser

    def _detach_parser(self) -> None:
        """Forget the parser; what it still parses of the current read is dropped."""
        old, self.parser = self.parser, None
        if old is not None:
            old.DocumentStartEvent = old.ElementEvent = _discard
            old.DocumentEndEvent = _discard

    def dataReceived(self, data: bytes) -> None:
        parser = self.parser
        if parser is None:
            return
        self.last_active = self.clock.seconds()
        try:
            parser.parse(data)
        except StreamError as exc:
            if self.parser is not None and self.parser is not parser:
                return  # the replaced parser choked on discarded bytes
            self.close_stream(exc.condition, exc.text)
        except Exception:
            log.failure("s2s stream {direction} {peer} failed", direction=self.direction, peer=self.peer)
            self.close_stream("internal-server-error")

    def _on_stream_start_checked(self, root: domish.Element) -> None:
        if root.uri != ns.STREAMS or root.name != "stream":
            raise StreamError("invalid-namespace")
        assert self.parser is not None
        if self.parser.stream_ns != ns.SERVER:
            raise StreamError("invalid-namespace", "an s2s stream is in jabber:server")
        self.on_stream_start(root)

    def on_stream_start(self, root: domish.Element) -> None:
        raise NotImplementedError

    def _on_stream_end(self) -> None:
        self.close_stream()

    def on_peer_error(self, element: domish.Element) -> None:
        """The peer closes with a stream error (RFC 6120 §4.9.1.1): log it, close our side."""
        condition, text = "undefined-condition", ""
        for child in element.elements():
            if child.name == "text":
                text = str(child)[:200]
            elif child.uri == ns.STREAM_ERRORS:
                condition = child.name
        reason = f"stream error from the peer: {condition}" + (f" ({text})" if text else "")
        self.peer_error(reason)
        self.manager.log_event(self, "peer-error", reason=reason)
        self.close_stream(text=reason)

    def peer_error(self, reason: str) -> None:
        """Subclasses record why the peer closed (called before the close)."""

    def _on_element(self, element: domish.Element) -> None:
        raise NotImplementedError

    # -- output ----------------------------------------------------------
    def send_element(self, element: domish.Element) -> None:
        if not self.closed:
            self.last_active = self.clock.seconds()
            self._write(serialize(element).encode("utf-8"))

    def send_raw(self, data: str) -> None:
        if not self.closed:
            self._write(data.encode("utf-8"))

    def _write(self, data: bytes) -> None:
        backlog = self._backlog
        if backlog is not None:
            backlog += len(data)
            self._backlog = backlog
            if backlog > self.server.config.limits.max_output_buffer:
                self._backlog = None
                self.fail("policy-violation", "output buffer full: the peer does not read")
                self.transport.abortConnection()
                return
        self.transport.write(data)

    # -- flow control (IPushProducer) -------------------------------------------
    def pauseProducing(self) -> None:  # noqa: N802
        if self._backlog is None:
            self._backlog = 0

    def resumeProducing(self) -> None:  # noqa: N802
        self._backlog = None

    def stopProducing(self) -> None:  # noqa: N802
        """The connection is going away; connectionLost cleans up."""

    def send_header(self) -> None:
        raise NotImplementedError

    def close_stream(self, condition: Optional[str] = None, text: Optional[str] = None) -> None:
        """Close with a stream error (RFC 6120 §4.9) or cleanly."""
        if self.closed:
            return
        if condition is not None:
            if not self.header_sent:
                self.send_header()
            self.send_element(StreamError(condition, text).element())
            self.manager.log_event(self, "stream-error", condition=condition, reason=text or condition)
        self.send_raw(SERIALIZER.footer)
        self.closed = True
        self.cancel_auth_timer()
        self._detach_parser()
        # A registered producer keeps a TLS transport from shutting down.
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        self._report_lost(text or condition or "closed")

    # -- stanzas from the peer ----------------------------------------------------
    def accept_stanza(self, stanza: domish.Element, senders: Container[str],
                      target: Optional[str] = None) -> None:
        """Check a stanza from the peer and route it.

        Args:
            stanza: a message, presence or iq the peer sent.
            senders: the remote domains authenticated on this stream; a
                ``from`` outside them is spoofing (RFC 6120 §4.9.3.9,
                §13.9.3): ``invalid-from``.
            target: the one local domain the stanza may be for (a
                bidirectional outgoing stream, XEP-0288 §2.2), or None for
                any hosted domain.
        """
        try:
            sender = JID.parse(stanza.getAttribute("from") or "")
        except InvalidJID:
            raise StreamError("invalid-from") from None
        if sender.host not in senders:
            self.manager.log_event(self, "invalid-from", remote=sender.host,
                                   reason="stanza from a domain not authenticated on this stream")
            raise StreamError("invalid-from")
        to_text = stanza.getAttribute("to")
        if not to_text:
            raise StreamError("improper-addressing", "a stanza without 'to'")
        router = self.server.router
        try:
            to = JID.parse(to_text)
        except InvalidJID:
            router.bounce(stanza, "jid-malformed")
            return
        if not self.manager.is_local_domain(to.host) or (target is not None and to.host != target):
            raise StreamError("host-unknown", "that domain is not served here")
        self.last_active = self.clock.seconds()
        try:
            result = router.route(stanza)
        except StanzaError as exc:
            router.bounce(stanza, exc.condition, exc.text)
            return
        except Exception:
            log.failure("routing a {name} from {remote} failed", name=stanza.name, remote=sender.host)
            router.bounce(stanza, "internal-server-error")
            return
        if isinstance(result, defer.Deferred):
            result.addErrback(self._route_failed, stanza)

    def _route_failed(self, failure: Failure, stanza: domish.Element) -> None:
        log.failure("handling a {name} from {remote} failed", failure, name=stanza.name,
                    remote=self.remote)
        self.server.router.bounce(stanza, "internal-server-error")

    @staticmethod
    def new_id() -> str:
        return uuid4().hex

    def verify_certificate(self, domain: str) -> tuple[bool, str]:
        """The peer certificate's verdict for ``domain`` (cached for self.remote)."""
        if not self.secure:
            return False, "no TLS"
        if self.cert is not None and domain == self.remote:
            return self.cert
        verdict = self.manager.trust.verify_connection(self.transport, domain)
        if domain == self.remote:
            self.cert = verdict
        return verdict
