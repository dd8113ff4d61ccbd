"""The client stream (RFC 6120): header, STARTTLS, SASL, bind, stanzas.

One protocol object per connection. During negotiation it handles the
few top-level elements itself; once a resource is bound every stanza is
checked (namespace, 'from'), stamped with the full JID and handed to the
router: no XPath observers on the hot path.

Everything is written through the c2s StreamSerializer, so stream-level
elements carry the ``stream:`` prefix and stanzas no redundant namespace
(RFC 6120 §4.8.5). A bound stream that goes silent is pinged (XEP-0199)
and closed when the ping gets no answer, so dead peers do not stay online.
A bound stream that goes quiet also frees its XML parser until it speaks
again (``ParserReaper``, ``[limits] c2s_parser_idle``): idle connections
should cost kilobytes.
"""

from __future__ import annotations

import base64
import os
from time import perf_counter
from typing import TYPE_CHECKING, Any, Callable, Optional, Union, cast

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.xish import domish
from zope.interface import implementer

from chatbx_server.c2s.parser import SafeElementStream
from chatbx_server.c2s.sasl import (AuthThrottle, SASLExchange, SASLFailure, decode_payload,
                                    failure_element, features_element, mechanisms_for)
from chatbx_server.c2s import sasl2
from chatbx_server.c2s.session import ClientSession
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.jid import JID, InvalidJID
from chatbx_server.xmpp.serializer import CLIENT_STREAMS, StreamSerializer
from chatbx_server.xmpp.transport import set_no_delay
from chatbx_server.xmpp.stanzas import StanzaError, StreamError, error_reply, result_reply
from chatbx_server.logs import log_observer
from chatbx_server.http import metrics

if TYPE_CHECKING:
    from chatbx_server.server import Server

log = Logger(observer=log_observer)

STANZAS = frozenset(("message", "presence", "iq"))
#: what a bound stream keeps of the offered mechanisms (one shared empty list)
_NO_MECHANISMS: list[str] = []
#: stream errors after which a resumable session waits for its client:
#: the peer vanished (keepalive), rather than being sent away
HIBERNATE_CONDITIONS = frozenset(("connection-timeout",))
MAX_SASL_FAILURES = 5
#: IQs a connection may send before authenticating (registration forms,
#: CAPTCHAs: each costs work)
MAX_PREAUTH_IQS = 10

# Negotiation states, in order.
CONNECTED, TLS_NEEDED, AUTH_NEEDED, BIND_NEEDED, BOUND, CLOSED = range(6)


@implementer(IPushProducer)
class C2SStream(Protocol):
    """One client connection."""

    # Type-only: Protocol declares Optional[ITransport], but this protocol
    # runs on a TCP/TLS transport (startTLS, abortConnection, producer
    # methods) set before connectionMade, and zope.interface methods (no
    # ``self``) are not callable through the interface type without the
    # mypy-zope plugin.
    transport: Any

    #: writes what this stream sends, in the scope of its header
    serializer: StreamSerializer = CLIENT_STREAMS
    #: the class of the session a bound resource gets (test fakes record)
    session_class: type[ClientSession] = ClientSession
    #: the account as the password login read it (storage.accounts.AccountInfo),
    #: from authentication until the session is bound: ``session/bound``
    #: handlers use it instead of reading the account again. A class
    #: default, so a bound stream holds no instance entry for it.
    account_info: Any = None

    def __init__(self, factory: "C2SFactory") -> None:
        self.factory = factory
        self.server = factory.server
        self.state = CONNECTED
        self.secure = factory.direct_tls
        self.host: Optional[str] = None
        self.stream_id = ""
        #: our header for the current stream (reset at every restart) is out
        self.header_sent = False
        #: the client's 'from' on the current stream header, echoed as our 'to'
        self.peer_from: Optional[str] = None
        self.parser: Optional[SafeElementStream] = None
        self.sasl: Optional[sasl2.Exchange] = None
        #: the XEP-0388 <authenticate/> being answered (None: RFC 6120 SASL)
        self.sasl2: Optional[sasl2.Authenticate] = None
        self.sasl_failures = 0
        self.preauth_iqs = 0
        #: a XEP-0445 invite token this connection presented, for registration
        self.preauth_token: Optional[str] = None
        self.mechanisms: list[str] = _NO_MECHANISMS
        self.user: Optional[JID] = None
        self.session: Optional[ClientSession] = None
        self.peer = ""
        #: elements received while a SASL step or a delayed failure is
        #: pending; None when not holding (see _hold)
        self._held: Optional[list[domish.Element]] = None
        #: the one timer of this connection: the negotiation deadline until
        #: bound, then the keepalive check
        self._timeout: Any = None
        #: clock time of the last bytes received
        self._last_input = 0.0
        #: id and clock time of the keepalive ping awaiting an answer
        self._ping_id: Optional[str] = None
        self._ping_at: Optional[float] = None
        self._cb_cache: Optional[dict[str, bytes]] = None
        #: counted in the factory's per-address connection limit
        self.admitted = False
        #: and in the cluster's (cluster/limits.py)
        self.counted_in_cluster = False
        #: bytes written while the transport says its buffer is full; None
        #: while the client keeps up
        self._backlog: Optional[int] = None

    # -- connection ------------------------------------------------------
    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer = getattr(peer, "host", "") or ""
        self._last_input = self.server.clock.seconds()
        if not self.factory.admit(self):
            self.transport.abortConnection()
            return
        set_no_delay(self.transport)
        self._reset_parser()
        # Learn when the client stops reading (IPushProducer, below), so what
        # we queue for it stays bounded.
        self.transport.registerProducer(self, True)
        # Bounded: a connection that never logs in does not stay forever.
        # The same timer becomes the keepalive once bound (_attach).
        self._timeout = self.server.clock.callLater(
            self.factory.limits.negotiation_timeout, self._keepalive_timer)

    def refuse_over_limit(self) -> None:
        """The address has too many connections across the cluster: this
        one goes, as one over the local limit does (unanswered)."""
        if self.state != CLOSED:
            self.transport.abortConnection()

    def _keepalive_timer(self) -> None:
        """The connection's one timer: the negotiation deadline until the
        stream is bound, then the keepalive."""
        if self.state == BOUND:
            self._keepalive()
        else:
            self._negotiation_timed_out()

    def _negotiation_timed_out(self) -> None:
        self._timeout = None
        if self.state not in (BOUND, CLOSED):
            self.close_stream("connection-timeout", "negotiation took too long")

    def _cancel_timeout(self) -> None:
        timeout, self._timeout = self._timeout, None
        if timeout is not None and timeout.active():
            timeout.cancel()

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        self.state = CLOSED
        self._cancel_timeout()
        self.factory.release(self)
        if self.factory.reaper is not None:
            self.factory.reaper.forget(self)
        # The connection went away without </stream:stream>: a resumable
        # session waits for its client to come back (XEP-0198 §5).
        self._end_session(hibernate=True)
        self._detach_parser()

    def _reset_parser(self) -> None:
        """Start a new stream (at connect, after STARTTLS and SASL success)."""
        self._detach_parser()
        # RFC 6120 §4.9.1.2: every stream, restarted ones too, gets our
        # header before anything else, stream errors included.
        self.header_sent = False
        self.peer_from = None
        limits = self.factory.limits
        parser = SafeElementStream(limits.max_stanza_size, limits.max_depth, limits.max_attributes)
        parser.DocumentStartEvent = self._on_stream_start
        parser.ElementEvent = self._on_element
        parser.DocumentEndEvent = self._on_stream_end
        self.parser = parser

    def _detach_parser(self) -> None:
        """Forget the parser; what it still parses of the current read is dropped.

        A parser replaced in the middle of a read (STARTTLS, SASL success,
        closing) goes on parsing the rest of that read: RFC 6120 §5.4.3.3,
        data after <starttls/> is discarded, never acted on.
        """
        old, self.parser = self.parser, None
        if old is not None:
            old.DocumentStartEvent = old.ElementEvent = _discard
            old.DocumentEndEvent = _discard

    def dataReceived(self, data: bytes) -> None:
        # Any input shows the peer is alive (the keepalive re-checks this
        # when its timer fires instead of being rescheduled per read).
        self._last_input = self.server.clock.seconds()
        reaper = self.factory.reaper
        if reaper is not None:
            reaper.young.add(self)
        parser = self.parser
        if parser is None:
            return
        try:
            parser.parse(data)
        except StreamError as exc:
            if self.parser is not None and self.parser is not parser:
                return  # the replaced parser choked on discarded bytes
            self.close_stream(exc.condition, exc.text)
        except Exception:
            log.failure("c2s stream from {peer} failed", peer=self.peer)
            self.close_stream("internal-server-error")

    # -- output ----------------------------------------------------------
    def send_element(self, element: domish.Element) -> None:
        if self.state != CLOSED:
            self._write(self.serializer.encode(element))

    def send_raw(self, data: str) -> None:
        if self.state != CLOSED:
            self._write(data.encode("utf-8"))

    def send_queued(self, element: domish.Element) -> bytes:
        """:meth:`send_element`, returning the bytes: what the XEP-0198
        queue keeps (text is not cyclic garbage the collector must walk
        while the ack is on its way; an element tree is)."""
        data = self.serializer.encode(element)
        if self.state != CLOSED:
            self._write(data)
        return data

    def send_data(self, data: bytes) -> None:
        """Bytes this stream's serializer made (a resent SM queue)."""
        if self.state != CLOSED:
            self._write(data)

    def _write(self, data: bytes) -> None:
        backlog = self._backlog
        if backlog is not None:
            backlog += len(data)
            self._backlog = backlog
            if backlog > self.factory.limits.max_output_buffer:
                self._drop_slow_reader()
                return
        self.transport.write(data)

    def _drop_slow_reader(self) -> None:
        # What is queued will never be read: do not wait for it to drain.
        log.warn("c2s {peer}: client stopped reading, output buffer full", peer=self.peer)
        self._backlog = None
        self.close_stream("policy-violation", "output buffer full: the client does not read")
        self.transport.abortConnection()

    # -- flow control: the transport tells us when the client stops reading --
    def pauseProducing(self) -> None:
        """The transport's buffer is full: count what we queue beyond it."""
        if self._backlog is None:
            self._backlog = 0

    def resumeProducing(self) -> None:
        """The client caught up."""
        self._backlog = None

    def stopProducing(self) -> None:
        """The connection is going away; connectionLost cleans up."""

    def _send_header(self) -> None:
        # 128 random bits, as uuid4().hex was, without building a UUID object
        self.stream_id = os.urandom(16).hex()
        host = self.host or next(iter(sorted(self.server.hosts)))
        # RFC 6120 §4.7.2: 'to' is the initiating entity's JID when known;
        # like Prosody, the 'from' of the client's header.
        self.send_raw(self.serializer.header(self.stream_id, host, self.peer_from))
        self.header_sent = True

    def close_stream(self, condition: Optional[str] = None, text: Optional[str] = None) -> None:
        """Close with a stream error (RFC 6120 §4.9) or cleanly."""
        if self.state == CLOSED:
            return
        self._cancel_timeout()
        if not self.header_sent:
            # RFC 6120 §4.9.1.2: our header first, on a restarted stream too;
            # a clean close needs an open stream as well.
            self._send_header()
        if condition is not None:
            self.send_element(StreamError(condition, text).element())
            log.info("c2s stream error {condition} for {peer}", condition=condition, peer=self.peer)
        self.send_raw(self.serializer.footer)
        self.state = CLOSED
        self._detach_parser()
        # Only a vanished peer (no answer to the keepalive) may come back.
        self._end_session(hibernate=condition in HIBERNATE_CONDITIONS)
        # A registered producer keeps a TLS transport from shutting down.
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def _end_session(self, hibernate: bool = False) -> None:
        """The connection of the bound session is over.

        With ``hibernate``, a ``session/hibernate`` handler (stream
        management) may keep the session, detached, in ``server.sessions``
        until its client resumes it or a timeout ends it.
        """
        session = self.session
        if session is None:
            return
        self.session = None
        if hibernate and self.server.events.fire("session/hibernate", session):
            return
        end_session(self.server, session)

    # -- stream header ---------------------------------------------------
    def _on_stream_start(self, root: domish.Element) -> None:
        sender = root.getAttribute("from")
        if sender:
            try:
                self.peer_from = JID.parse(sender, cache=False).full
            except InvalidJID:
                pass  # RFC 6120 §4.7.1: not worth an error; just not echoed
        to = root.getAttribute("to")
        host = None
        if to:
            try:
                host = JID.parse(to, cache=False).host
            except InvalidJID:
                pass
        if self.host is not None and host != self.host:
            # A restarted stream (after STARTTLS or SASL) stays on its host.
            raise StreamError("host-unknown", "the stream was restarted for another host")
        self.host = host
        if root.uri != ns.STREAMS or root.name != "stream":
            raise StreamError("invalid-namespace")
        if root.defaultUri != ns.CLIENT:
            raise StreamError("invalid-namespace")
        if self.host not in self.server.hosts:
            self.host = None
            raise StreamError("host-unknown")
        if _major_version(root.getAttribute("version")) < 1:
            raise StreamError("unsupported-version")
        self._send_header()
        features = domish.Element((ns.STREAMS, "features"))
        if not self.secure:
            self.state = TLS_NEEDED
            features.addElement((ns.TLS, "starttls")).addElement("required")
        elif self.user is None:
            self.state = AUTH_NEEDED
            self.mechanisms = mechanisms_for(self._bindings())
            for child in features_element(self.mechanisms, self._bindings()):
                features.addChild(child)
            features.addChild(self._sasl2_features())
            # In-band registration (XEP-0077 §8, XEP-0445) adds its features here.
            self.server.events.fire_all("c2s-preauth-features", (self, features))
        else:
            self.state = BIND_NEEDED
            features = self._bind_features()
        self.send_element(features)

    def _bind_features(self) -> domish.Element:
        features = domish.Element((ns.STREAMS, "features"))
        features.addElement((ns.BIND, "bind"))
        features.addElement((ns.SESSION, "session")).addElement("optional")
        for child in self.server.modules.stream_features(self):
            features.addChild(child)
        return features

    def _sasl2_features(self) -> domish.Element:
        """XEP-0388 §2.1 with the Bind2 inline features the modules answer
        and the SASL2 inline features they add (FAST, SM resumption)."""
        events = self.server.events
        inline = [var for uri, name, var in sasl2.INLINE if events.has(f"bind2-inline/{uri}:{name}")]
        extra: list[domish.Element] = []
        events.fire_all("sasl2-features", (self, extra))
        return sasl2.features_element(self.mechanisms, inline, extra)

    def _on_stream_end(self) -> None:
        self.close_stream()

    def _bindings(self) -> dict[str, bytes]:
        """Channel-binding data of this TLS connection, read once."""
        if self._cb_cache is None:
            self._cb_cache = self.factory.channel_bindings(self.transport)
        return self._cb_cache

    def channel_bindings(self) -> dict[str, bytes]:
        """Channel-binding data by type (for mechanisms run by modules)."""
        return self._bindings()

    # -- elements --------------------------------------------------------
    def _on_element(self, element: domish.Element) -> None:
        if self._held is not None:
            self._held.append(element)
            return
        state = self.state
        if state == BOUND:
            self._on_stanza(element)
        elif state == TLS_NEEDED:
            self._on_starttls(element)
        elif state == AUTH_NEEDED:
            self._on_sasl(element)
        elif state == BIND_NEEDED:
            self._on_bind(element)

    def _on_starttls(self, element: domish.Element) -> None:
        if element.uri == ns.TLS and element.name == "starttls":
            self.send_element(domish.Element((ns.TLS, "proceed")))
            self.transport.startTLS(self.factory.tls_context())
            self.secure = True
            self._reset_parser()
            return
        if element.uri == ns.SASL and element.name == "auth":
            # RFC 6120 §6.4.4 with §5.3.1: TLS is mandatory here.
            self.send_element(failure_element("encryption-required"))
            return
        raise StreamError("policy-violation", "STARTTLS is required")

    def _on_sasl(self, element: domish.Element) -> None:
        is_sasl2 = element.uri == sasl2.NS
        if element.uri != ns.SASL and not is_sasl2:
            if element.name == "iq" and element.uri == ns.CLIENT and self._preauth_iq(element):
                return
            if element.name in STANZAS:
                raise StreamError("not-authorized")
            raise StreamError("policy-violation", "authenticate first")
        try:
            if element.name == "auth" or (is_sasl2 and element.name == "authenticate"):
                if self.sasl is not None:
                    raise SASLFailure("malformed-request")
                exchange: Optional[sasl2.Exchange] = None
                if is_sasl2:
                    # XEP-0388 §2.3: the same mechanisms, another wrapper.
                    request = self.sasl2 = sasl2.Authenticate(element)
                    mechanism, initial = request.mechanism, request.initial or b""
                    # Mechanisms a module runs (XEP-0484 HT-*).
                    exchange = self.server.events.fire(f"sasl2-mechanism/{mechanism}",
                                                       (self, request))
                else:
                    mechanism, initial = element.getAttribute("mechanism", ""), decode_payload(element)
                if exchange is None:
                    exchange = SASLExchange(self.server, self.host or "", mechanism,
                                            self.mechanisms, self._bindings(), self.peer)
                self.sasl = exchange
                d = exchange.start(initial)
            elif element.name == "response":
                if self.sasl is None:
                    raise SASLFailure("malformed-request")
                d = self.sasl.step(decode_payload(element))
            elif element.name == "abort":
                raise SASLFailure("aborted")
            else:
                raise StreamError("unsupported-stanza-type")
        except SASLFailure as exc:
            d = defer.fail(exc)
        if not d.called:
            self._hold()
        d.addCallbacks(self._sasl_step, self._sasl_failed)
        d.addErrback(self._crash)

    def _preauth_iq(self, iq: domish.Element) -> bool:
        """An IQ before authentication that a feature takes (in-band
        registration, XEP-0077 §3.1; its token, XEP-0445): handled by the
        ``c2s-preauth/{ns}:{name}`` event with ``(stream, iq)``. At most
        MAX_PREAUTH_IQS per connection; later input waits for the answer."""
        payload = iq.firstChildElement()
        if payload is None:
            return False
        name = f"c2s-preauth/{payload.uri}:{payload.name}"
        if not self.server.events.has(name):
            return False
        self.preauth_iqs += 1
        if self.preauth_iqs > MAX_PREAUTH_IQS:
            raise StreamError("policy-violation", "too many requests before authentication")
        result = self.server.events.fire(name, (self, iq))
        if isinstance(result, defer.Deferred) and not result.called:
            self._hold()
            result.addBoth(lambda _: self._release())
        return result is not None

    def _hold(self) -> None:
        """Process nothing more until the pending SASL answer is sent.

        Without this a client could pipeline guesses: each would be checked
        at once and only the failure answers delayed, while a right guess
        succeeds immediately, so the throttle would slow nothing.
        """
        if self._held is None:
            self._held = []
            self.transport.pauseProducing()

    def pause_input(self) -> None:
        """Hold what the client sends until :meth:`resume_input` (a module
        answering a nonza asynchronously, e.g. a resumption that waits)."""
        self._hold()

    def resume_input(self) -> None:
        """Handle what was held, then go on reading."""
        self._release()

    def _release(self, replay: bool = True) -> None:
        held, self._held = self._held, None
        if held is None:
            return
        self.transport.resumeProducing()
        if not replay:
            return
        for index, element in enumerate(held):
            if self.state == CLOSED:
                return
            if self._held is not None:
                self._held.extend(held[index:])  # a replayed step is pending again
                return
            try:
                self._on_element(element)
            except StreamError as exc:
                self.close_stream(exc.condition, exc.text)
                return

    def _sasl_step(self, result: tuple[str, Any]) -> None:
        if self.state != AUTH_NEEDED:
            return
        kind, data = result
        if kind == "challenge":
            if self.sasl2 is not None:
                self.send_element(sasl2.challenge(data))
            else:
                self.send_element(_with_b64(domish.Element((ns.SASL, "challenge")), data))
            self._release()
            return
        if self.sasl2 is not None:
            self._sasl2_success(*data)
            return
        # RFC 6120 §6.4.6: nothing the client sent before seeing <success/>
        # belongs to the restarted stream.
        self._release(replay=False)
        jid, additional = data
        self._keep_account_info(self.sasl)
        self.sasl = None
        self.user = jid
        self.factory.throttle.succeeded(self.peer)
        metrics.AUTH_SUCCESS.inc()
        # RFC 6120 §6.4.6: additional data with success (SCRAM's v=) or none.
        self.send_element(_with_b64(domish.Element((ns.SASL, "success")), additional))
        log.info("c2s {peer} authenticated as {user}", peer=self.peer, user=jid.bare)
        self._reset_parser()  # RFC 6120 §6.4.6: stream restart

    def _keep_account_info(self, exchange: Any) -> None:
        info = getattr(exchange, "account", None)
        if info is not None:
            self.account_info = info

    def _sasl_failed(self, failure: Failure) -> None:
        failure.trap(SASLFailure)
        exc = cast(SASLFailure, failure.value)  # trap() let only SASLFailure through
        self.sasl = None
        if self.state != AUTH_NEEDED:
            return
        condition = exc.condition
        self.sasl_failures += 1
        metrics.AUTH_FAILURE.inc()
        if self.sasl2 is not None:
            element = sasl2.failure(condition, exc.text)
            self.sasl2 = None
        else:
            element = failure_element(condition, exc.text)

        def answer() -> None:
            if self.state != AUTH_NEEDED:
                return
            self.send_element(element)
            if self.sasl_failures >= MAX_SASL_FAILURES:
                self.close_stream("policy-violation", "too many authentication failures")
                return
            self._release()

        if condition == "aborted":
            answer()
        else:
            self._hold()
            self.factory.throttle.delay_call(self.peer, answer, exc)

    def _sasl2_success(self, jid: JID, additional: Optional[bytes]) -> None:
        """XEP-0388 §2.6.1: no stream restart. Modules add to <success/>
        (a FAST token, which is stored first), then an inline <resume/>
        (XEP-0198) or a Bind2 request (XEP-0386 §3) makes the stream bound
        in the same answer."""
        request = self.sasl2
        assert request is not None
        outcome = sasl2.Outcome(self, request, jid, self.sasl)
        self._keep_account_info(self.sasl)
        self.sasl = None
        self.user = jid
        self.factory.throttle.succeeded(self.peer)
        metrics.AUTH_SUCCESS.inc()
        log.info("c2s {peer} authenticated as {user} (SASL2)", peer=self.peer, user=jid.bare)
        self.server.events.fire_all("sasl2-authenticated", outcome)
        if not outcome.pending:
            self._sasl2_finish(outcome, additional)
            return
        self._hold()
        d = defer.gatherResults(outcome.pending, consumeErrors=True)
        d.addCallback(lambda _: self._sasl2_finish(outcome, additional))
        d.addErrback(self._crash)

    def _sasl2_finish(self, outcome: sasl2.Outcome, additional: Optional[bytes]) -> None:
        if self.state != AUTH_NEEDED:
            return  # the connection went away meanwhile
        request = outcome.request
        self.sasl2 = None
        events = self.server.events
        answers: list[domish.Element] = []
        for item in request.extensions:
            answer = events.fire(f"sasl2-inline/{item.uri}:{item.name}", (self, item, outcome))
            if isinstance(answer, domish.Element):
                answers.append(answer)
            if self.state == CLOSED:
                return  # e.g. a <resume/> acknowledging more than was sent
        answers.extend(outcome.children)

        def success(authzid: str) -> domish.Element:
            element = sasl2.success(additional, authzid)
            for child in answers:
                element.addChild(child)
            return element

        if outcome.resumed is not None:
            # XEP-0198 with XEP-0388: a resumed session needs no binding.
            self.send_element(success(outcome.resumed.jid.full))
        elif not request.bind:
            self.send_element(success(outcome.jid.bare))
            self.state = BIND_NEEDED
            self.send_element(self._bind_features())
        else:
            self._bind2(request, success)
        for after in outcome.after:
            after()
        # Pipelined stanzas are in the same stream (no restart): handle them.
        self._release()

    def _bind2(self, request: sasl2.Authenticate,
               success: Callable[[str], domish.Element]) -> None:
        assert self.user is not None
        resource = sasl2.bind2_resource(self.user.bare, request.tag, request.user_agent)
        full = JID.parse(f"{self.user.bare}/{resource}")
        events = self.server.events

        def bound(session: ClientSession) -> domish.Element:
            element = success(full.full)
            bound = element.addElement((sasl2.BIND2, "bound"))
            for item in request.inline:
                answer = events.fire(f"bind2-inline/{item.uri}:{item.name}", (session, item))
                if isinstance(answer, domish.Element):
                    bound.addChild(answer)
            return element

        self.bind_session(full, bound)

    def _crash(self, failure: Failure) -> None:
        log.failure("c2s negotiation for {peer} failed", failure, peer=self.peer)
        self.close_stream("internal-server-error")

    def _on_bind(self, element: domish.Element) -> None:
        if element.name != "iq" or element.uri != ns.CLIENT:
            # Nonzas allowed before bind (XEP-0198 <resume/>, <enable/>'s
            # failure) are answered by the feature that knows them.
            if self.server.events.fire(f"unbound-element/{element.uri}:{element.name}",
                                       (self, element)) is None:
                raise StreamError("not-authorized")
            return
        bind = element.firstChildElement()
        if (element.getAttribute("type") != "set" or bind is None
                or bind.uri != ns.BIND or bind.name != "bind"):
            # Only binding is allowed before a resource is bound (RFC 6120 §7.1).
            self.send_element(error_reply(element, "not-authorized"))
            return
        resource = None
        for child in bind.elements():
            if child.name == "resource":
                resource = str(child).strip() or None
        assert self.user is not None
        if resource is None:
            resource = base64.b32encode(os.urandom(10)).decode().rstrip("=").lower()
        try:
            full = JID.parse(f"{self.user.bare}/{resource}")
        except InvalidJID:
            self.send_element(error_reply(element, "bad-request", text="invalid resource"))
            return
        reply = result_reply(element)
        reply.addElement((ns.BIND, "bind")).addElement("jid", content=full.full)
        reply.attributes.pop("from", None)
        reply.attributes.pop("to", None)
        self.bind_session(full, reply)

    def bind_session(self, full: JID, reply: Union[None, domish.Element,
                                                   Callable[[ClientSession], domish.Element]] = None
                     ) -> ClientSession:
        """Make ``full`` this authenticated stream's session and announce it.

        The older session on the same resource is closed with ``conflict``
        (RFC 6120 §7.7.2.2). ``reply`` (the bind result) goes out before
        anything a ``session/bound`` handler sends. The unit-test fakes bind
        through here too, so they run this code, not a copy of it.
        """
        session = self.session_class(self, full, self.peer, secure=self.secure)
        replaced = self.server.sessions.add(session)
        if replaced is not None:
            replaced.close("conflict", "replaced by a new connection")
        self._attach(session)
        if reply is not None and not isinstance(reply, domish.Element):
            reply = reply(session)
        if reply is not None:
            self.send_element(reply)
        self.server.events.fire_all("session/bound", session)
        if "account_info" in self.__dict__:
            del self.account_info  # only the handlers above needed it
        return session

    def resume_session(self, session: ClientSession) -> None:
        """Make an existing (hibernating or still attached) ``session`` this
        stream's: XEP-0198 §5 resumption. The caller has checked that it
        belongs to this stream's account and detached its old stream."""
        session.stream = self
        self._attach(session)
        if "account_info" in self.__dict__:
            del self.account_info  # no session/bound: nobody needs it

    def _attach(self, session: ClientSession) -> None:
        self.session = session
        self.state = BOUND
        idle = self.factory.limits.c2s_idle_timeout
        timeout = self._timeout
        if timeout is not None and timeout.active():
            # The negotiation timer turns into the keepalive: no second
            # DelayedCall, no cancelled one left in the reactor's heap.
            timeout.reset(idle)
        else:
            self._timeout = self.server.clock.callLater(idle, self._keepalive)
        # What only negotiation needed (DESIGN: idle connections cost kilobytes).
        self._cb_cache = None
        self.mechanisms = _NO_MECHANISMS

    def release_parser(self) -> bool:
        """The connection went quiet: drop the expat parser if it is between
        stanzas (c2s/parser.py); the next read builds a new one."""
        parser = self.parser
        if self.state != BOUND or parser is None or self._held is not None:
            return False
        return parser.suspend()

    def detach_session(self) -> Optional[ClientSession]:
        """Let go of the bound session without ending it (it is being
        resumed on another connection); returns it."""
        session, self.session = self.session, None
        return session

    # -- keepalive (XEP-0199 server-to-client ping) -----------------------
    def _keepalive(self) -> None:
        """The bound stream's timer: ping when idle, close when the ping went unanswered.

        One DelayedCall per connection, re-armed here rather than moved on
        every read: reads only record the time.
        """
        self._timeout = None
        if self.state != BOUND:
            return
        limits = self.factory.limits
        clock = self.server.clock
        now = clock.seconds()
        ping_at = self._ping_at
        if ping_at is not None:
            if self._last_input < ping_at:
                log.info("c2s {peer}: no answer to a ping in {seconds} s", peer=self.peer,
                         seconds=limits.c2s_ping_timeout)
                self.close_stream("connection-timeout", "no answer to a ping")
                return
            self._ping_at = None
        idle = now - self._last_input
        if idle < limits.c2s_idle_timeout:
            self._timeout = clock.callLater(limits.c2s_idle_timeout - idle, self._keepalive)
            return
        session = self.session
        assert session is not None
        ping_id = "ping-" + os.urandom(6).hex()
        iq = domish.Element((ns.CLIENT, "iq"))
        iq["type"] = "get"
        iq["id"] = ping_id
        iq["from"] = session.host
        iq["to"] = session.jid.full
        iq.addElement((ns.PING, "ping"))
        self._ping_id = ping_id
        self._ping_at = now
        self._timeout = clock.callLater(limits.c2s_ping_timeout, self._keepalive)
        self.send_element(iq)

    def _is_pong(self, iq: domish.Element) -> bool:
        """The answer (result, or an error from a client without XEP-0199) to our ping."""
        if iq.getAttribute("id") != self._ping_id or iq.getAttribute("type") not in ("result", "error"):
            return False
        self._ping_id = None
        return True

    def _on_stanza(self, stanza: domish.Element) -> None:
        session = self.session
        assert session is not None
        if stanza.name in STANZAS and stanza.uri != ns.CLIENT:
            raise StreamError("invalid-namespace")
        if stanza.uri != ns.CLIENT or stanza.name not in STANZAS:
            result = self.server.events.fire(f"stream-element/{stanza.uri}:{stanza.name}", (session, stanza))
            if result is None:
                raise StreamError("unsupported-stanza-type")
            return
        result = self._handle_stanza(session, stanza)
        sm = session.sm
        if sm is not None:
            # XEP-0198 §4: counted as handled once its handling completed
            # (a Deferred result: when it fired, e.g. after a commit).
            sm.inbound.track(result)

    def _handle_stanza(self, session: ClientSession, stanza: domish.Element) -> Any:
        """Check, stamp and route a stanza; returns the router's result."""
        sender = stanza.getAttribute("from")
        if sender is not None and sender != session.jid.full:
            try:
                sender_jid = JID.parse(sender)
            except InvalidJID:
                raise StreamError("invalid-from") from None
            if sender_jid.bare != session.bare or (sender_jid.resource not in (None, session.resource)):
                raise StreamError("invalid-from")  # RFC 6120 §8.1.2.1
        stanza["from"] = session.jid.full
        if stanza.name == "iq":
            if self._ping_id is not None and self._is_pong(stanza):
                return True  # the keepalive only needed the bytes; nothing to route
            if self._legacy_session(stanza):
                return True
        counter = metrics.STANZAS_IN.get(stanza.name)
        if counter is not None:
            counter.inc()
        started = perf_counter()
        try:
            result = self.server.router.route(stanza, session)
            metrics.ROUTE_SECONDS.observe(perf_counter() - started)
        except StanzaError as exc:
            return self.server.router.bounce(stanza, exc.condition, exc.text)
        except Exception:
            log.failure("routing a {name} from {user} failed", name=stanza.name, user=session.bare)
            return self.server.router.bounce(stanza, "internal-server-error")
        # None and True first: isinstance against Deferred (an ABC through
        # Awaitable) is slow for what is not one.
        if result is not None and result is not True and isinstance(result, defer.Deferred):
            result.addErrback(self._route_failed, stanza)
        return result

    def _route_failed(self, failure: Failure, stanza: domish.Element) -> None:
        log.failure("handling a {name} failed", failure, name=stanza.name)
        self.server.router.bounce(stanza, "internal-server-error")

    def _legacy_session(self, iq: domish.Element) -> bool:
        # RFC 3921 session establishment: old clients still send it.
        payload = iq.firstChildElement()
        if (payload is None or payload.uri != ns.SESSION or iq.getAttribute("type") != "set"
                or iq.getAttribute("to") not in (None, self.host)):
            return False
        reply = result_reply(iq)
        reply.attributes.pop("to", None)
        reply["to"] = iq["from"]
        self.send_element(reply)
        return True


def end_session(server: "Server", session: ClientSession) -> None:
    """A session is over: out of the session table, ``session/closed`` fired
    (presence unavailable, stream management's undelivered stanzas ...)."""
    session.closed = True
    server.sessions.remove(session)
    server.events.fire_all("session/closed", session)


def _discard(*args: Any) -> None:
    """Event handler of a parser that was replaced or closed."""


def _major_version(version: Optional[str]) -> int:
    """RFC 6120 §4.7.5: "major.minor", each a non-negative integer; absent is 0.9."""
    major, dot, minor = (version or "0.9").partition(".")
    if not (dot and major.isdigit() and minor.isdigit()):
        raise StreamError("unsupported-version")
    return int(major)


def _with_b64(element: domish.Element, data: Optional[bytes]) -> domish.Element:
    """SASL data as base64 character data (RFC 6120 §6.4.3, §6.4.6).

    None (no data, e.g. PLAIN's success) leaves the element empty; '='
    stands for data of zero length (an empty SCRAM challenge).
    """
    if data is not None:
        element.addContent(base64.b64encode(data).decode() if data else "=")
    return element


class ParserReaper:
    """Drops the expat parsers of bound streams that went quiet.

    One LoopingCall per listener and two generations of recently active
    streams (a set insertion per read): at each sweep the streams that read
    during the previous period but not during the last one release their
    parser (``C2SStream.release_parser``). An idle connection then holds no
    parser (~12 KiB) until it speaks again, which costs building one
    (~10 µs). Work per sweep is proportional to the streams active lately,
    not to all connections.
    """

    def __init__(self, clock: Any, period: float) -> None:
        self.period = period
        #: streams that read during this period / during the previous one
        self.young: set[C2SStream] = set()
        self.old: set[C2SStream] = set()
        self._call = LoopingCall(self.sweep)
        self._call.clock = clock

    def start(self) -> None:
        if not self._call.running:
            self._call.start(self.period, now=False)

    def stop(self) -> None:
        if self._call.running:
            self._call.stop()

    def forget(self, stream: C2SStream) -> None:
        self.young.discard(stream)
        self.old.discard(stream)

    def sweep(self) -> int:
        """Release the parsers of streams quiet for a whole period; returns how many."""
        quiet = self.old - self.young
        self.old, self.young = self.young, set()
        released = 0
        for stream in quiet:
            if stream.release_parser():
                released += 1
        return released


class C2SFactory(Factory):
    """Builds client streams for one listening port."""

    noisy = False  # no "Starting factory" lines; the listener logs its port

    def __init__(self, server: "Server", tls: Any, direct_tls: bool = False) -> None:
        self.server = server
        self.tls = tls
        self.direct_tls = direct_tls
        self.limits = server.config.limits
        # Shared by every c2s listener of the server: the limits are per
        # address, whichever port it comes in on.
        shared = server.c2s_shared
        if shared is None:
            shared = server.c2s_shared = (
                AuthThrottle(server.clock, self.limits.auth_failure_delay,
                             self.limits.auth_failure_max_delay), {})
        self.throttle: AuthThrottle = shared[0]
        self._per_ip: dict[str, int] = shared[1]
        #: runs while the listener does (startFactory); None: parsers stay
        self.reaper: Optional[ParserReaper] = None

    def startFactory(self) -> None:
        period = self.limits.c2s_parser_idle
        if period > 0 and self.reaper is None:
            self.reaper = ParserReaper(self.server.clock, period)
            self.reaper.start()

    def stopFactory(self) -> None:
        reaper, self.reaper = self.reaper, None
        if reaper is not None:
            reaper.stop()

    def buildProtocol(self, addr: Any) -> C2SStream:
        return C2SStream(self)

    def admit(self, stream: C2SStream) -> bool:
        count = self._per_ip.get(stream.peer, 0)
        if count >= self.limits.max_connections_per_ip:
            log.warn("c2s connection limit reached for {peer}", peer=stream.peer)
            return False
        self._per_ip[stream.peer] = count + 1
        stream.admitted = True
        cluster = self.server.cluster
        if cluster is not None:
            # The same limit over every node (cluster/limits.py).
            stream.counted_in_cluster = cluster.connections.connected(
                stream.peer, self.limits.max_connections_per_ip, stream.refuse_over_limit)
        return True

    def release(self, stream: C2SStream) -> None:
        if not stream.admitted:
            return
        stream.admitted = False
        if stream.counted_in_cluster:
            stream.counted_in_cluster = False
            self.server.cluster.connections.disconnected(stream.peer)
        count = self._per_ip.get(stream.peer, 1) - 1
        if count <= 0:
            self._per_ip.pop(stream.peer, None)
        else:
            self._per_ip[stream.peer] = count

    def tls_context(self) -> Any:
        return self.tls.server_context_factory()

    def channel_bindings(self, transport: Any) -> dict[str, bytes]:
        from chatbx_server.tls import channel_binding

        out: dict[str, bytes] = {}
        for cb_type in ("tls-exporter", "tls-server-end-point"):
            data = channel_binding(transport, cb_type)
            if data:
                out[cb_type] = data
        return out
