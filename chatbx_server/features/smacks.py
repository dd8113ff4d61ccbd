"""Stream Management (XEP-0198 1.6.3): acks both ways, resumption, hibernation.

- ``<enable/>`` after bind (§3) gives the session a
  :class:`~chatbx_server.c2s.smacks.StreamManagement` state; ``session.send``
  then queues every stanza until the client acknowledges it, and asks for
  acks itself (one ``<r/>`` in flight at a time). The queue is bounded
  (``max_unacked``): a client that never acknowledges is disconnected.
- Inbound 'h' counts stanzas whose handling *completed* (c2s/smacks.py
  ``InboundCounter``): an ``<a/>`` never covers a message the offline store
  has not committed. ``<r/>`` is answered at once (§4: not withheld); when
  stanzas were still in flight, another ``<a/>`` follows when they are done.
- A resumable session whose connection is lost without
  ``</stream:stream>`` (or that stops answering the keepalive) hibernates:
  it stays in ``server.sessions`` (still available; what is sent to it
  waits in its queue) for ``resume_timeout`` seconds (one timer per
  session, on the injected clock). ``<resume/>`` (§5) after SASL and before
  bind takes it over on the new connection, replacing an old connection
  that is still open; its id is unguessable and only the same account may
  resume it. A timed-out or unknown id gets ``<failed/>`` with
  item-not-found, with the old session's 'h' when it is remembered (1.6:
  the client learns which of its stanzas arrived).
- Acks also wait for writes a handler makes beside the stanza's own
  result (the archive's batched rows: ``c2s.smacks.hold_write``), and a
  ``<resume/>`` whose session still has stanzas being committed is
  answered once they are, so its 'h' covers them. ``<resume/>`` may also
  come inside a SASL2 ``<authenticate/>`` (XEP-0388 inline feature
  ``<sm/>``): ``<resumed/>`` or ``<failed/>`` then goes into
  ``<success/>``. ``session/resumed`` fires after a resumption.
- In a cluster the session may hibernate on another node: ``<resume/>``
  then waits (at most ``handover_timeout``) for that node to hand it over
  (cluster/handover.py, features/smacks_cluster.py), and goes on as above;
  when the holder is dead or silent the answer is item-not-found.
- When a session with unacknowledged stanzas ends (timeout, clean close,
  queue overflow, replacement), those stanzas go where an undelivered
  stanza goes (§5: "treat unacknowledged stanzas in the same way that it
  would treat a stanza sent to an unavailable resource"): messages are
  routed again to the account (another resource, or offline storage; the
  archive recognises its own stanza-id and keeps them once), IQ requests
  are answered with service-unavailable, presence is dropped.

``[modules.smacks]``: see :class:`SmacksFeature.Options`.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.words.xish import domish

from chatbx_server.c2s.smacks import (NS, AckRequests, HandledCountTooHigh,
                                      StreamManagement, parse_h, wire)
from chatbx_server.c2s.session import ClientSession
from chatbx_server.c2s import stream as c2s_stream
from chatbx_server.c2s.stream import end_session
from chatbx_server.events import OFFLINE, StanzaEvent
from chatbx_server.features import smacks_cluster
from chatbx_server.logs import log_observer
from chatbx_server.modules import Feature
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.jid import parse_or_none
from chatbx_server.xmpp.serializer import CLIENT_STREAMS

log = Logger(observer=log_observer)

CARBONS = "urn:xmpp:carbons:2"


def failed(condition: str, h: Optional[int] = None) -> domish.Element:
    """``<failed/>`` with a stanza error condition (XEP-0198 §6), and the
    handled count of the old session when known (§5, 1.6)."""
    el = domish.Element((NS, "failed"))
    if h is not None:
        el["h"] = str(wire(h))
    el.addElement((ns.STANZA_ERRORS, condition))
    return el


def ack(h: int) -> str:
    return f"<a xmlns='{NS}' h='{wire(h)}'/>"


def is_carbon(stanza: domish.Element) -> bool:
    for child in stanza.elements():
        if child.uri == CARBONS and child.name in ("sent", "received"):
            return True
    return False


class Hibernation:
    """Stands in for the stream of a session whose connection is gone.

    Writes nothing (what is sent waits in the SM queue); closing it (the
    session is replaced, the server shuts down, the queue overflows) ends
    the session as a timeout would.
    """

    __slots__ = ("feature", "session", "call")

    def __init__(self, feature: "SmacksFeature", session: Any, call: Any) -> None:
        self.feature = feature
        self.session = session
        self.call = call

    @property
    def server(self) -> Any:
        return self.feature.server

    def send_element(self, element: domish.Element) -> None:
        pass

    def send_raw(self, data: str) -> None:
        pass

    def send_queued(self, element: domish.Element) -> bytes:
        """Nothing is written; the queue keeps what the stream would have."""
        sm = self.session.sm
        return (sm.encoding if sm is not None else CLIENT_STREAMS).encode(element)

    def send_data(self, data: bytes) -> None:
        pass

    def cancel(self) -> None:
        call, self.call = self.call, None
        if call is not None and call.active():
            call.cancel()

    def close_stream(self, condition: Optional[str] = None, text: Optional[str] = None) -> None:
        self.feature.end_hibernation(self.session, condition or "closed")


class SmacksFeature(Feature):
    name = "smacks"
    spec = "XEP-0198 1.6.3 (Stream Management)"

    @dataclass(frozen=True)
    class Options:
        #: seconds a session waits for its client to resume it (Prosody: 600)
        resume_timeout: float = 600.0
        #: unacknowledged stanzas a session may queue before it is dropped
        max_unacked: int = 500
        #: ids of ended sessions remembered to answer a late <resume/> with their 'h'
        max_remembered: int = 10000
        #: seconds a <resume/> waits for the node holding the session to
        #: hand it over (cluster only); then item-not-found
        handover_timeout: float = 5.0
        #: unacknowledged stanzas after which the server asks for an ack at
        #: once (Prosody's smacks_max_unacked_stanzas + 1); fewer are asked
        #: about within ``request_delay`` seconds
        request_after: int = 5
        #: seconds at most before a stanza below ``request_after`` is asked about
        request_delay: float = 1.0

        def __post_init__(self) -> None:
            if self.resume_timeout < 0:
                raise ValueError("resume_timeout must not be negative")
            if self.max_unacked < 1:
                raise ValueError("max_unacked must be at least 1")
            if self.max_remembered < 0:
                raise ValueError("max_remembered must not be negative")
            if self.handover_timeout <= 0:
                raise ValueError("handover_timeout must be positive")
            if self.request_after < 1:
                raise ValueError("request_after must be at least 1")
            if self.request_delay <= 0:
                raise ValueError("request_delay must be positive")

    def setup(self) -> None:
        #: resumption id -> session (attached or hibernating)
        self._resumable: dict[str, ClientSession] = {}
        #: resumption id -> (account, inbound h) of sessions that ended, bounded
        self._ended: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self.requests = AckRequests(self.options.request_after)
        self._sweep = task.LoopingCall(self.requests.sweep)
        self._sweep.clock = self.server.clock
        self._sweep.start(self.options.request_delay, now=False)
        for name, handler in (("enable", self.on_enable), ("r", self.on_request),
                              ("a", self.on_ack), ("resume", self.on_late_resume)):
            self.hook(f"stream-element/{NS}:{name}", handler)
        self.hook(f"bind2-inline/{NS}:enable", self.on_inline_enable)
        self.hook(f"unbound-element/{NS}:resume", self.on_resume)
        self.hook(f"sasl2-inline/{NS}:resume", self.on_inline_resume)
        self.hook("sasl2-authenticated", self.on_sasl2_authenticated)
        self.hook("sasl2-features", self.on_sasl2_features)
        self.hook(f"unbound-element/{NS}:enable", self.on_early_enable)
        self.hook("session/hibernate", self.on_hibernate)
        # After presence has said unavailable: the stanzas go elsewhere.
        self.hook("session/closed", self.on_closed, OFFLINE)
        cluster = self.server.cluster
        if cluster is not None:
            cluster.handover.export = lambda request: smacks_cluster.export(self, request)
            cluster.handover.adopt = lambda state: smacks_cluster.adopt(self, state)

    def teardown(self) -> None:
        if self._sweep.running:
            self._sweep.stop()
        for session in list(self._resumable.values()):
            sm = session.sm
            if sm is not None and sm.hibernated is not None:
                sm.hibernated.cancel()
        cluster = self.server.cluster
        if cluster is not None:
            cluster.handover.export = cluster.handover.adopt = None
        super().teardown()

    # -- the table of resumable sessions (also for smacks_cluster) -----------
    def resumable(self, resume_id: str) -> Optional[ClientSession]:
        return self._resumable.get(resume_id)

    def add_resumable(self, resume_id: str, session: ClientSession) -> None:
        self._resumable[resume_id] = session
        cluster = self.server.cluster
        if cluster is not None:
            cluster.handover.claim(resume_id)

    def forget_resumable(self, resume_id: str) -> None:
        """The session moved to another node (which claims the id)."""
        self._resumable.pop(resume_id, None)

    def remember_ended(self, resume_id: str, user: str, handled: int) -> None:
        if self.options.max_remembered:
            self._ended[resume_id] = (user, handled)
            while len(self._ended) > self.options.max_remembered:
                self._ended.popitem(last=False)

    def ended_h(self, resume_id: str, user: str) -> Optional[int]:
        """The handled count of ``user``'s ended session ``resume_id``, if remembered."""
        ended = self._ended.get(resume_id)
        return ended[1] if ended is not None and ended[0] == user else None

    def stream_features(self, stream: Any) -> list[domish.Element]:
        return [domish.Element((NS, "sm"))]

    # -- enabling (§3) -----------------------------------------------------
    def on_enable(self, item: tuple[Any, domish.Element]) -> bool:
        session, _ = item
        session.stream.send_element(self.on_inline_enable(item))
        return True

    def on_inline_enable(self, item: tuple[Any, domish.Element]) -> domish.Element:
        """<enable/> alone or inside a Bind2 request (XEP-0386 §4): the answer."""
        session, element = item
        if session.sm is not None:
            return failed("unexpected-request")
        options = self.options
        want_resume = element.getAttribute("resume") in ("true", "1")
        timeout = options.resume_timeout
        client_max = parse_h(element.getAttribute("max"))
        if client_max:
            timeout = min(timeout, float(client_max))
        resume_id = secrets.token_urlsafe(24) if want_resume and timeout > 0 else None
        session.sm = StreamManagement(options.max_unacked, resume_id, timeout, self.requests)
        session.sm.encoding = session.stream.serializer
        enabled = domish.Element((NS, "enabled"))
        if resume_id is not None:
            self.add_resumable(resume_id, session)
            enabled["id"] = resume_id
            enabled["resume"] = "true"
            enabled["max"] = str(int(timeout))
        log.debug("c2s {jid}: stream management enabled (resumable: {resumable})",
                  jid=session.jid.full, resumable=resume_id is not None)
        return enabled

    def on_early_enable(self, item: tuple[Any, domish.Element]) -> bool:
        stream, _ = item
        # §3: the client MUST NOT enable before binding; the server says so.
        stream.send_element(failed("unexpected-request"))
        return True

    def on_late_resume(self, item: tuple[Any, domish.Element]) -> bool:
        session, _ = item
        session.stream.send_element(failed("unexpected-request"))
        return True

    # -- acks (§4) ------------------------------------------------------------
    def on_request(self, item: tuple[Any, domish.Element]) -> Optional[bool]:
        session, _ = item
        sm = session.sm
        if sm is None:
            return None  # unsupported-stanza-type: SM is not enabled
        inbound = sm.inbound
        session.stream.send_raw(ack(inbound.handled))
        if inbound.pending:
            sm.ack_target = inbound.received
            inbound.on_advance = lambda handled: self._advanced(session, handled)
        return True

    def _advanced(self, session: Any, handled: int) -> None:
        sm = session.sm
        if sm is None or sm.ack_target is None or handled < sm.ack_target:
            return
        sm.ack_target = None
        sm.inbound.on_advance = None
        session.stream.send_raw(ack(handled))

    def on_ack(self, item: tuple[Any, domish.Element]) -> Optional[bool]:
        session, element = item
        sm = session.sm
        if sm is None:
            return None
        h = parse_h(element.getAttribute("h"))
        if h is None:
            self._stream_error(session.stream, "undefined-condition", "bad 'h' in an ack")
            return True
        try:
            sm.ack(h)
        except HandledCountTooHigh as exc:
            self._too_high(session.stream, exc)
            return True
        sm.request_outstanding = False
        if sm.queue:
            # Sent after our request: ask again (one request in flight).
            sm.requests.after_send(session, sm)
        return True

    def _too_high(self, stream: Any, exc: HandledCountTooHigh) -> None:
        # §4: undefined-condition with <handled-count-too-high/>.
        log.info("c2s {peer}: client acknowledged {h} stanzas, {sent} were sent",
                 peer=stream.peer, h=exc.h, sent=exc.sent)
        err = domish.Element((ns.STREAMS, "error"))
        err.addElement((ns.STREAM_ERRORS, "undefined-condition"))
        too_high = err.addElement((NS, "handled-count-too-high"))
        too_high["h"] = str(exc.h)
        too_high["send-count"] = str(exc.sent)
        stream.send_element(err)
        stream.close_stream()

    @staticmethod
    def _stream_error(stream: Any, condition: str, text: str) -> None:
        stream.close_stream(condition, text)

    # -- hibernation and resumption (§5) --------------------------------------
    def on_hibernate(self, session: ClientSession) -> Optional[bool]:
        sm = session.sm
        if sm is None or sm.resume_id is None or self._resumable.get(sm.resume_id) is not session:
            return None
        call = self.server.clock.callLater(sm.resume_timeout, self.end_hibernation, session, "timeout")
        hibernation = Hibernation(self, session, call)
        session.stream = hibernation
        sm.hibernated = hibernation
        sm.request_outstanding = False
        log.info("c2s {jid}: connection lost, session kept {seconds} s for resumption "
                 "({unacked} unacked)", jid=session.jid.full, seconds=sm.resume_timeout,
                 unacked=len(sm.queue))
        return True

    def end_hibernation(self, session: ClientSession, why: str) -> None:
        """The hibernating session is over (timeout, replaced, shutdown)."""
        sm = session.sm
        if sm is None or sm.hibernated is None or session.closed:
            return
        sm.hibernated.cancel()
        sm.hibernated = None
        log.info("c2s {jid}: hibernated session ended ({why}), {unacked} unacked",
                 jid=session.jid.full, why=why, unacked=len(sm.queue))
        end_session(self.server, session)

    def _unsettled(self, stream: Any, element: domish.Element) -> Optional[Any]:
        """The ``settled()`` Deferred of the session ``<resume/>`` names when
        some of its client's stanzas are still being committed: the 'h' of
        ``<resumed/>`` waits for them, or the client would send them again."""
        session = self._resumable.get(element.getAttribute("previd") or "")
        if session is None or session.sm is None or session.bare != stream.user.bare:
            return None
        inbound = session.sm.inbound
        return inbound.settled() if inbound.pending else None

    def _remote(self, stream: Any, element: domish.Element) -> Optional[defer.Deferred]:
        """In a cluster, when ``<resume/>`` names a session this node does
        not hold: a Deferred that fires once another node handed it over
        (it is then in ``_resumable``) or could not (the answer is then
        ``<failed/>``, with the 'h' the holder remembered)."""
        cluster = self.server.cluster
        previd = element.getAttribute("previd") or ""
        if cluster is None or not previd or previd in self._resumable:
            return None
        if parse_h(element.getAttribute("h")) is None:
            return None  # bad-request, here
        user = stream.user.bare
        d = cluster.handover.fetch(previd, user, self.options.handover_timeout)

        def fetched(result: tuple[bool, Optional[int]]) -> None:
            found, h = result
            if not found and h is not None:
                self.remember_ended(previd, user, int(h))

        d.addCallback(fetched)
        d.addErrback(lambda f: log.failure("smacks: resumption on another node failed", f))
        return d

    def on_resume(self, item: tuple[Any, domish.Element]) -> bool:
        """``<resume/>`` after SASL, before bind (§5)."""
        stream, element = item
        # A session held by another node is fetched first (that node waits
        # for the client's stanzas to settle before it answers); one held
        # here waits for its own unsettled stanzas.
        waiting = self._remote(stream, element)
        if waiting is None:
            waiting = self._unsettled(stream, element)
        if waiting is None:
            self._resume(stream, element)
            return True
        stream.pause_input()

        def ready(_: Any) -> None:
            if stream.state != c2s_stream.CLOSED:
                self._resume(stream, element)
                stream.resume_input()

        waiting.addCallback(ready)
        return True

    def on_sasl2_authenticated(self, outcome: Any) -> None:
        """An inline ``<resume/>`` waits the same way, before ``<success/>``."""
        element = outcome.request.extension(NS, "resume")
        if element is not None:
            remote = self._remote(outcome.stream, element)
            if remote is not None:
                outcome.wait(remote)
                return
            waiting = self._unsettled(outcome.stream, element)
            if waiting is not None:
                outcome.wait(waiting)

    def _resume(self, stream: Any, element: domish.Element) -> None:
        answer, session = self.take_over(stream, element)
        if answer is None:
            return  # the stream was closed
        stream.send_element(answer)
        if session is not None:
            self.replay(stream, session)

    def on_inline_resume(self, item: tuple[Any, domish.Element, Any]) -> Optional[domish.Element]:
        """``<resume/>`` inside a SASL2 ``<authenticate/>`` (XEP-0198 with
        XEP-0388): the answer goes into ``<success/>``; after a resumption
        Bind2 is skipped and the queue is sent again after ``<success/>``;
        after ``<failed/>`` the login goes on (binding, if asked)."""
        stream, element, outcome = item
        answer, session = self.take_over(stream, element)
        if session is not None:
            outcome.resumed = session
            outcome.after.append(lambda: self.replay(stream, session))
        return answer

    def on_sasl2_features(self, item: tuple[Any, list[domish.Element]]) -> None:
        _, extra = item
        extra.append(domish.Element((NS, "sm")))

    def take_over(self, stream: Any, element: domish.Element
                  ) -> tuple[Optional[domish.Element], Optional[ClientSession]]:
        """Attach the session ``<resume/>`` names to ``stream``.

        Returns the answer (``<resumed/>`` or ``<failed/>``; None when the
        stream was closed for a bad 'h') and the session when resumed.
        """
        previd = element.getAttribute("previd") or ""
        h = parse_h(element.getAttribute("h"))
        if h is None:
            return failed("bad-request"), None
        user = stream.user.bare
        session = self._resumable.get(previd)
        if session is None or session.bare != user or session.closed or session.sm is None:
            ended = self._ended.get(previd)
            known = ended is not None and ended[0] == user
            log.info("c2s {peer}: resumption of an unknown or expired session", peer=stream.peer)
            return failed("item-not-found", ended[1] if known and ended else None), None
        sm: StreamManagement = session.sm
        try:
            sm.ack(h)
        except HandledCountTooHigh as exc:
            self._too_high(stream, exc)
            return None, None
        old = session.stream
        if sm.hibernated is not None:
            sm.hibernated.cancel()
            sm.hibernated = None
        else:
            # §5: the old connection may not have noticed it is dead yet.
            old.detach_session()
            old.close_stream("conflict", "replaced by a resumed session")
        stream.resume_session(session)
        sm.reencode(stream.serializer)
        sm.request_outstanding = False
        resumed = domish.Element((NS, "resumed"))
        resumed["previd"] = previd
        resumed["h"] = str(wire(sm.inbound.handled))
        return resumed, session

    def replay(self, stream: Any, session: ClientSession) -> None:
        """Send the unacknowledged stanzas again on the new connection (§5)."""
        sm = session.sm
        if sm is None:
            return
        log.info("c2s {jid} resumed from {peer}, {count} stanzas sent again",
                 jid=session.jid.full, peer=stream.peer, count=len(sm.queue))
        for data in list(sm.queue):
            stream.send_data(data)
        if sm.queue:
            sm.request_outstanding = True
            stream.send_raw(f"<r xmlns='{NS}'/>")
        self.server.events.fire_all("session/resumed", session)

    # -- the end of a session: what it did not acknowledge -------------------
    def on_closed(self, session: ClientSession) -> None:
        sm = session.sm
        if sm is None:
            return
        if sm.hibernated is not None:
            sm.hibernated.cancel()
            sm.hibernated = None
        resume_id = sm.resume_id
        if resume_id is not None and self._resumable.get(resume_id) is session:
            del self._resumable[resume_id]
            self.remember_ended(resume_id, session.bare, sm.inbound.handled)
            cluster = self.server.cluster
            if cluster is not None:
                cluster.handover.release(resume_id)
        unacked = sm.take_unacked()
        session.sm = None
        if unacked:
            self.undelivered(session, unacked)

    def undelivered(self, session: ClientSession, stanzas: list[domish.Element]) -> None:
        """XEP-0198 §5: as if sent to an unavailable resource."""
        router = self.server.router
        seen: set[int] = set()
        messages = iqs = 0
        for stanza in stanzas:
            if id(stanza) in seen:
                continue
            seen.add(id(stanza))
            if stanza.name == "message":
                if stanza.getAttribute("type") == "error" or is_carbon(stanza):
                    continue  # errors are never answered; a carbon's original went its way
                to = parse_or_none(stanza.getAttribute("to")) or session.bare_jid
                if to.bare != session.bare:
                    to = session.jid
                kind = "full" if to.resource is not None else "bare"
                event = StanzaEvent(stanza, None, to, parse_or_none(stanza.getAttribute("from")), kind)
                messages += 1
                try:
                    router.deliver(event)
                except Exception:
                    log.failure("re-routing an unacknowledged message of {jid} failed",
                                jid=session.jid.full)
            elif stanza.name == "iq" and stanza.getAttribute("type") in ("get", "set"):
                iqs += 1
                router.bounce(stanza, "service-unavailable")
        log.info("c2s {jid}: {count} unacknowledged stanzas: {messages} messages routed again, "
                 "{iqs} requests answered", jid=session.jid.full, count=len(stanzas),
                 messages=messages, iqs=iqs)


__all__ = ["SmacksFeature", "Hibernation", "failed"]
