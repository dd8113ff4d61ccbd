"""Grouped durable writes: many rows, one transaction (DESIGN.md, Storage).

Frequent small writes (archive rows; later offline messages) would cost one
transaction each: a thread hop, a ``BEGIN``/``COMMIT`` and, on SQLite, the
pages the commit rewrites. A :class:`BatchWriter` queues rows and writes them
with one call of its ``_txn`` function per batch, so the per-row cost falls
as the load rises (a busy server commits hundreds of rows at a time).

The rules:

- ``write(row)`` returns a Deferred that fires, with what the ``_txn``
  function returned for that row, only after the transaction holding the
  row has committed: a promise of storage (an XEP-0198 ack, an offline
  message accepted) waits on it. Nothing else needs to wait: delivery to
  online resources goes on while the row is queued. ``submit(row)`` is the
  same without a Deferred, for callers that wait on nothing (the hot path
  saves making one per row); failures are logged all the same. A caller
  that must wait but not pay a Deferred per row (an XEP-0198 ack covering
  two archive rows of every message) reads :attr:`accepted` after its
  ``submit`` and hands that mark to :meth:`when_done`: rows finish in the
  order they were accepted, so one count says all of them are.
- A batch is written when ``max_batch`` rows are queued, or ``delay``
  seconds after the first row arrived (or after the previous batch
  finished), or when someone calls :meth:`flush` (a query that must see its
  own writes). So under load a batch holds what arrives in ``delay``: a
  commit costs about the same for ten rows as for a thousand (SQLite
  rewrites whole index pages), which is what makes the archive affordable.
  One batch is in flight at a time, so rows commit in the order written.
- Rows are never dropped. Past ``capacity`` queued rows the writer is
  ``full``: callers that can hold back their input (a stream that can stop
  reading, a bulk import) wait on :meth:`wait_for_room`; rows written
  anyway are still queued.
- Transient database errors are retried by :meth:`Database.run`; a batch
  that still fails with one fails every Deferred of the batch and is logged
  (callers that do not wait on the Deferred add an errback that ignores it).
  Any other error (a row the database refuses) is narrowed down by retrying
  the batch in halves, so only the offending rows fail, each logged.
- :meth:`close` writes everything queued and refuses new rows; the server
  waits for it before stopping the database.

The writer is generic: one per table or ``_txn`` function, which receives
the connection and the list of rows and returns one result per row.
"""

from __future__ import annotations

import heapq
from collections import deque
from itertools import count
from typing import Any, Callable, Generic, Optional, Sequence, TypeVar

from sqlalchemy.engine import Connection
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatbx_server.logs import log_observer
from chatbx_server.storage.database import Database, is_transient_error
from chatbx_server.storage.errors import StorageError

__all__ = ["BatchWriter"]

log = Logger(namespace="chatbx.storage", observer=log_observer)

R = TypeVar("R")
BatchTxn = Callable[[Connection, list[Any]], Sequence[Any]]


class BatchWriter(Generic[R]):
    """Queues rows and writes them in batches with ``txn(conn, rows)``.

    Args:
        db: the Database the batches run on.
        desc: the name of the batch transaction in logs (never row data).
        txn: a ``_txn`` function ``(conn, rows) -> results``, one result per
            row in order; safe to run again (transient errors are retried).
        clock: an ``IReactorTime`` for the delay timer (the reactor if None).
        max_batch: rows per transaction at most.
        capacity: queued rows past which the writer counts as full.
        delay: seconds the first queued row waits for others to join it.
    """

    def __init__(self, db: Database, desc: str, txn: BatchTxn, clock: Any = None, *,
                 max_batch: int = 1000, capacity: int = 50000, delay: float = 0.02) -> None:
        if max_batch < 1 or capacity < 1 or delay < 0:
            raise ValueError("max_batch and capacity must be at least 1, delay not negative")
        if clock is None:
            from twisted.internet import reactor as clock
        self.db = db
        self.desc = desc
        self.txn = txn
        self.clock = clock
        self.max_batch = max_batch
        self.capacity = capacity
        self.delay = delay
        self._queue: deque[tuple[R, Optional[defer.Deferred[Any]]]] = deque()
        #: batches to retry first, in order (halves of a batch that failed)
        self._retry: deque[list[tuple[R, Optional[defer.Deferred[Any]]]]] = deque()
        self._timer: Any = None
        self._running = False
        self._closed = False
        #: rows accepted / rows finished (committed or failed), for flush()
        self._accepted = 0
        self._finished = 0
        self._flush_waiters: list[tuple[int, defer.Deferred[None]]] = []
        #: (mark, tiebreak, callable) heap for when_done
        self._mark_waiters: list[tuple[int, int, Callable[[], None]]] = []
        self._tiebreak = count()
        self._room_waiters: list[defer.Deferred[None]] = []
        #: counters for logs and benchmarks
        self.batches = 0
        self.rows_written = 0
        self.rows_failed = 0

    # -- public ---------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Rows accepted and not yet committed or failed."""
        return self._accepted - self._finished

    @property
    def accepted(self) -> int:
        """Rows accepted so far: after ``submit(row)``, the row's mark for
        :meth:`when_done`."""
        return self._accepted

    def when_done(self, mark: int, fn: Callable[[], None]) -> None:
        """Call ``fn()`` once the first ``mark`` rows accepted are finished
        (committed, or failed and logged): at once when they are."""
        if self._finished >= mark:
            fn()
        else:
            heapq.heappush(self._mark_waiters, (mark, next(self._tiebreak), fn))

    @property
    def full(self) -> bool:
        """More than ``capacity`` rows are queued (see :meth:`wait_for_room`)."""
        return len(self._queue) >= self.capacity

    def write(self, row: R) -> defer.Deferred[Any]:
        """Queue ``row``; the Deferred fires with its result after the commit.

        Fails at once with StorageError after :meth:`close`.
        """
        if self._closed:
            return defer.fail(StorageError(f"{self.desc}: writer closed"))
        d: defer.Deferred[Any] = defer.Deferred()
        self._enqueue(row, d)
        return d

    def submit(self, row: R) -> None:
        """Queue ``row`` without a Deferred (nothing waits for its commit).

        Raises:
            StorageError: after :meth:`close`.
        """
        if self._closed:
            raise StorageError(f"{self.desc}: writer closed")
        # _enqueue inlined: the archive submits two rows per message.
        queue = self._queue
        queue.append((row, None))
        self._accepted += 1
        if not self._running:
            if len(queue) >= self.max_batch:
                self._start()
            elif self._timer is None:
                self._timer = self.clock.callLater(self.delay, self._on_timer)

    def _enqueue(self, row: R, d: Optional[defer.Deferred[Any]]) -> None:
        self._queue.append((row, d))
        self._accepted += 1
        if not self._running:
            if len(self._queue) >= self.max_batch:
                self._start()
            elif self._timer is None:
                self._timer = self.clock.callLater(self.delay, self._on_timer)

    def wait_for_room(self) -> defer.Deferred[None]:
        """Fires when the writer is not full (at once when it is not)."""
        if not self.full:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._room_waiters.append(d)
        return d

    def flush(self) -> defer.Deferred[None]:
        """Write what is queued now; fires when every row accepted before
        this call has been committed (or has failed)."""
        if self.pending == 0:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._flush_waiters.append((self._accepted, d))
        if not self._running:
            self._start()
        return d

    def close(self) -> defer.Deferred[None]:
        """Refuse new rows and write everything queued; fires when done."""
        self._closed = True
        return self.flush()

    # -- batches --------------------------------------------------------------
    def _on_timer(self) -> None:
        self._timer = None
        if not self._running:
            self._start()

    def _start(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if self._retry:
            batch = self._retry.popleft()
        else:
            take = min(self.max_batch, len(self._queue))
            if not take:
                return
            batch = [self._queue.popleft() for _ in range(take)]
            self._release_room()
        self._running = True
        rows = [row for row, _ in batch]
        d = self.db.run(self.desc, self.txn, rows)
        d.addBoth(self._done, batch)

    def _done(self, result: Any, batch: list[tuple[R, Optional[defer.Deferred[Any]]]]) -> None:
        self._running = False
        self.batches += 1
        if isinstance(result, Failure):
            self._failed(result, batch)
        else:
            if len(result) != len(batch):
                failure = Failure(StorageError(
                    f"{self.desc}: {len(result)} results for {len(batch)} rows"))
                self._fail_rows(failure, batch)
            else:
                self.rows_written += len(batch)
                self._finished += len(batch)
                for (_, d), value in zip(batch, result):
                    if d is not None:
                        d.callback(value)
        self._release_marks()
        self._release_flushers()
        if self._retry or self._flush_waiters or len(self._queue) >= self.max_batch:
            self._start()
        elif self._queue and self._timer is None:
            self._timer = self.clock.callLater(self.delay, self._on_timer)

    def _failed(self, failure: Failure,
                batch: list[tuple[R, Optional[defer.Deferred[Any]]]]) -> None:
        exc = failure.value
        transient = isinstance(exc, BaseException) and (
            is_transient_error(exc) or isinstance(exc, StorageError))
        if len(batch) > 1 and not transient:
            # One bad row must not take the others with it: retry in halves.
            half = len(batch) // 2
            self._retry.appendleft(batch[half:])
            self._retry.appendleft(batch[:half])
            log.warn("{desc}: a batch of {count} rows failed ({error}); retrying in halves",
                     desc=self.desc, count=len(batch), error=type(exc).__name__)
            return
        log.failure("{desc}: {count} rows not written", failure, desc=self.desc, count=len(batch))
        self._fail_rows(failure, batch)

    def _fail_rows(self, failure: Failure,
                   batch: list[tuple[R, Optional[defer.Deferred[Any]]]]) -> None:
        self.rows_failed += len(batch)
        self._finished += len(batch)
        for _, d in batch:
            if d is not None:
                d.errback(failure)

    def _release_marks(self) -> None:
        waiters = self._mark_waiters
        finished = self._finished
        while waiters and waiters[0][0] <= finished:
            try:
                heapq.heappop(waiters)[2]()
            except Exception:
                # The writer must go on whatever a waiter does.
                log.failure("{desc}: a waiter for written rows failed", desc=self.desc)

    def _release_room(self) -> None:
        if self._room_waiters and not self.full:
            waiters, self._room_waiters = self._room_waiters, []
            for d in waiters:
                d.callback(None)

    def _release_flushers(self) -> None:
        if not self._flush_waiters:
            return
        ready = [d for target, d in self._flush_waiters if target <= self._finished]
        if ready:
            self._flush_waiters = [(t, d) for t, d in self._flush_waiters if t > self._finished]
            for d in ready:
                d.callback(None)

    def __repr__(self) -> str:
        return f"<BatchWriter {self.desc} pending={self.pending}>"
