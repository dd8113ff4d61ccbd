"""Stream Management state of one session (XEP-0198 1.6): counters and queue.

Pure bookkeeping, no I/O: the feature (``features/smacks.py``) decides
what to write and when. Kept here, beside the session, because
``ClientSession.send`` goes through it (DESIGN: "Delivery to a session goes
through its stream-management queue and CSI buffer, then XmlStream.send").

Counters are kept as unbounded Python integers and reported modulo 2**32
(XEP-0198 §4: "h" wraps to zero after 2^32 - 1).
"""

from __future__ import annotations

from collections import deque
from functools import partial
from typing import Any, Callable, Optional, Union

from twisted.internet import defer
from twisted.words.xish import domish

from chatbx_server.xmpp.serializer import CLIENT_STREAMS, StreamSerializer
from chatbx_server.xmpp.stanzas import parse_stanza

MOD = 2 ** 32
NS = "urn:xmpp:sm:3"


def wire(count: int) -> int:
    """A counter as it goes into an 'h' attribute (XEP-0198 §4)."""
    return count % MOD


def parse_h(value: Optional[str]) -> Optional[int]:
    """The 'h' attribute: an unsigned 32-bit integer, or None when invalid."""
    if value is None or not value.isdigit():
        return None
    h = int(value)
    return h if h < MOD else None


def newly_acked(last_acked: int, h: int) -> int:
    """How many stanzas an ack with ``h`` acknowledges beyond ``last_acked``
    (both on the wire, modulo 2**32)."""
    return (h - last_acked) % MOD


class HandledCountTooHigh(Exception):
    """The peer acknowledged stanzas we never sent (XEP-0198 §4, §6)."""

    def __init__(self, h: int, sent: int) -> None:
        super().__init__(f"h={h} but only {sent} stanzas were sent")
        self.h = h
        self.sent = sent


class InboundCounter:
    """Stanzas received from the client and how many are handled.

    XEP-0198 §4: 'h' is the number of stanzas *handled*. chatbx calls a
    stanza handled when its handling completed: when the router's result
    is a Deferred (the offline store fires after the commit), only when it
    fired. The count advances in order: a stanza finished early waits for
    those before it, so an ack never covers a stanza still in flight.
    """

    __slots__ = ("received", "handled", "_done", "on_advance", "_also", "_held", "_settle")

    def __init__(self, received: int = 0) -> None:
        #: stanzas received since SM was enabled
        self.received = received
        #: the longest prefix of them whose handling completed
        self.handled = received
        #: sequence numbers (1-based) completed out of order
        self._done: Optional[set[int]] = None
        #: called with the handled count after each completion
        self.on_advance: Optional[Callable[[int], None]] = None
        #: more writes the stanza being handled waits for (see also_wait)
        self._also: Optional[list[defer.Deferred]] = None
        #: (writer, mark): rows of a batch writer the stanza being handled
        #: waits for, without a Deferred per row (see hold_write)
        self._held: Optional[tuple[Any, int]] = None
        #: (count, Deferred) fired once ``handled`` reaches count (settled())
        self._settle: Optional[list[tuple[int, defer.Deferred]]] = None

    @property
    def pending(self) -> int:
        return self.received - self.handled

    def settled(self) -> defer.Deferred:
        """Fires once every stanza received so far is handled (resumption
        waits for it, so its 'h' covers what is being committed)."""
        if self.handled >= self.received:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        if self._settle is None:
            self._settle = []
        self._settle.append((self.received, d))
        return d

    def also_wait(self, d: defer.Deferred) -> None:
        """The stanza being handled is handled only once ``d`` fired too."""
        if self._also is None:
            self._also = []
        self._also.append(d)

    def also_wait_written(self, writer: Any, mark: int) -> None:
        """The stanza being handled is handled only once ``writer`` (a
        :class:`~chatbx_server.storage.batch.BatchWriter`) has finished its
        first ``mark`` rows: the cheap form of :meth:`also_wait`."""
        held = self._held
        if held is not None and held[0] is not writer:
            self.also_wait(_written(*held))  # a second writer: rare
        elif held is not None and held[1] > mark:
            return
        self._held = (writer, mark)

    def track(self, result: Any) -> None:
        """Count one received stanza; ``result`` is the router's result."""
        self.received += 1
        seq = self.received
        held = self._held
        if held is not None:
            self._held = None
            if not self._also and not (isinstance(result, defer.Deferred) and not result.called):
                # The common case (an archived message under SM): no Deferred.
                held[0].when_done(held[1], partial(self.complete, seq))
                return
            self.also_wait(_written(*held))
        also, self._also = self._also, None
        if also:
            if isinstance(result, defer.Deferred):
                also.append(result)
            result = defer.DeferredList(also, consumeErrors=True)
        if isinstance(result, defer.Deferred) and not result.called:
            result.addBoth(self._completed, seq)
        else:
            self.complete(seq)

    def _completed(self, result: Any, seq: int) -> None:
        # The route's own errback has answered a failure already: swallow it.
        # A handler that went on asynchronously (e.g. after loading a block
        # list) may have called hold_write from this Deferred's callbacks: those
        # writes belong to this stanza too.
        held, self._held = self._held, None
        if held is not None:
            self.also_wait(_written(*held))
        also, self._also = self._also, None
        if also:
            waiting = defer.DeferredList(also, consumeErrors=True)
            waiting.addBoth(lambda _: self.complete(seq))
            return
        self.complete(seq)

    def complete(self, seq: int) -> None:
        """Stanza number ``seq`` is handled; advance over every finished one."""
        if seq != self.handled + 1:
            if self._done is None:
                self._done = set()
            self._done.add(seq)
            return
        handled = seq
        done = self._done
        if done:
            while handled + 1 in done:
                handled += 1
                done.discard(handled)
            if not done:
                self._done = None
        self.handled = handled
        if self.on_advance is not None:
            self.on_advance(handled)
        settle = self._settle
        if settle:
            due = [d for count, d in settle if count <= handled]
            if due:
                self._settle = [(c, d) for c, d in settle if c > handled] or None
                for d in due:
                    d.callback(None)


def _written(writer: Any, mark: int) -> defer.Deferred:
    d: defer.Deferred = defer.Deferred()
    writer.when_done(mark, lambda: d.callback(None))
    return d


def hold_write(session: Any, writer: Any) -> bool:
    """Make the XEP-0198 ack of the stanza ``session`` is sending wait for
    the rows just given to ``writer.submit`` (a BatchWriter).

    For writes a handler does beside the stanza's own result (the archive
    row written through the batch writer while delivery goes on): DESIGN,
    "an acknowledgement that promises storage is sent only after the batch
    that holds the row has committed". The ack waits until the writer has
    finished every row accepted so far, with no Deferred per row. Call it
    while the stanza is being routed. Returns False (nothing waits) when SM
    is not enabled.
    """
    sm = getattr(session, "sm", None)
    if sm is None:
        return False
    sm.inbound.also_wait_written(writer, writer.accepted)
    return True


ACK_REQUEST = f"<r xmlns='{NS}'/>"


class AckRequests:
    """When the server asks a client for an ack (``<r/>``, XEP-0198 §4).

    At once when ``every`` stanzas are unacknowledged; below that, a
    session joins ``waiting`` and the next :meth:`sweep` (one timer for
    all sessions, every ``request_delay`` seconds) asks it. So a busy
    stream costs one ``<r/>`` and one ``<a/>`` per ``every`` stanzas
    instead of one round trip per burst (on a loaded server that was one
    per stanza: an <a/> parsed and dispatched for each message delivered),
    and a quiet one still hears its stanzas acknowledged within the delay.
    """

    __slots__ = ("every", "waiting")

    def __init__(self, every: int = 1) -> None:
        self.every = every
        self.waiting: set[Any] = set()

    def after_send(self, session: Any, sm: "StreamManagement") -> None:
        """A stanza was queued for ``session`` and no request is out."""
        if len(sm.queue) >= self.every:
            sm.request_outstanding = True
            session.stream.send_raw(ACK_REQUEST)
        else:
            self.waiting.add(session)

    def sweep(self) -> None:
        waiting, self.waiting = self.waiting, set()
        for session in waiting:
            sm = session.sm
            if (session.closed or sm is None or sm.request_outstanding
                    or sm.hibernated is not None or not sm.queue):
                continue
            sm.request_outstanding = True
            session.stream.send_raw(ACK_REQUEST)


#: ask at once after every stanza (tests, and sessions built without the feature)
IMMEDIATE = AckRequests(1)


class StreamManagement:
    """SM state of one session: the unacked queue and both counters."""

    __slots__ = ("queue", "acked", "inbound", "resume_id", "max_queue",
                 "request_outstanding", "resume_timeout", "hibernated", "ack_target",
                 "overflowed", "requests", "encoding")

    def __init__(self, max_queue: int, resume_id: Optional[str] = None,
                 resume_timeout: float = 0.0, requests: AckRequests = IMMEDIATE) -> None:
        #: stanzas sent (or to send) that the client has not acknowledged,
        #: as the bytes written (by ``encoding``); an empty tuple while
        #: there are none (an idle session keeps no deque: ~0.7 KiB each)
        self.queue: Union[deque[bytes], tuple[()]] = ()
        #: stanzas the client acknowledged (outbound 'h', unbounded)
        self.acked = 0
        self.inbound = InboundCounter()
        #: the resumption id when resumable; None otherwise
        self.resume_id = resume_id
        self.resume_timeout = resume_timeout
        #: unacked stanzas allowed before the client is dropped
        self.max_queue = max_queue
        #: an <r/> is on its way and not yet answered
        self.request_outstanding = False
        #: the hibernation (a DelayedCall holder) while detached; None when attached
        self.hibernated: Any = None
        #: the client asked (<r/>) while stanzas were in flight: send <a/>
        #: again once ``inbound.handled`` reaches this count
        self.ack_target: Optional[int] = None
        #: the queue passed its bound; the session is being closed
        self.overflowed = False
        #: when to send <r/> (shared by the sessions of one server)
        self.requests = requests
        #: the serializer of the stream the queued bytes were written to
        self.encoding: StreamSerializer = CLIENT_STREAMS

    @property
    def sent(self) -> int:
        """Stanzas counted as sent: acknowledged plus queued."""
        return self.acked + len(self.queue)

    def push(self, data: bytes) -> bool:
        """Queue a stanza as written; False when the queue is now over its bound."""
        queue = self.queue
        if not isinstance(queue, deque):
            queue = self.queue = deque()
        queue.append(data)
        return len(queue) <= self.max_queue

    def ack(self, h: int) -> int:
        """Apply an ack with wire value ``h``; returns how many were dropped.

        Raises:
            HandledCountTooHigh: ``h`` covers more than was sent (§4).
        """
        count = newly_acked(wire(self.acked), h)
        if count > len(self.queue):
            raise HandledCountTooHigh(h, wire(self.sent))
        queue = self.queue
        if count:
            assert isinstance(queue, deque)
            for _ in range(count):
                queue.popleft()
            if not queue:
                self.queue = ()
        self.acked += count
        return count

    def take_unacked(self) -> list[domish.Element]:
        """Empty the queue (the session ends): what the client may not have,
        parsed again (a stanza queued twice comes back once)."""
        out: list[domish.Element] = []
        seen: set[int] = set()
        for data in self.queue:
            if id(data) not in seen:
                seen.add(id(data))
                out.append(parse_stanza(data.decode("utf-8")))
        self.queue = ()
        return out

    def unacked_xml(self) -> list[str]:
        """The queue as text (a session handed to another node)."""
        return [data.decode("utf-8") for data in self.queue]

    def reencode(self, serializer: StreamSerializer) -> None:
        """The session moved to a stream that writes stanzas differently
        (resumed over WebSocket after TCP): queue what that stream writes."""
        if serializer is self.encoding:
            return
        if self.queue:
            self.queue = deque(serializer.encode(parse_stanza(data.decode("utf-8")))
                               for data in self.queue)
        self.encoding = serializer
