"""The batching writer (chatbx_server.storage.batch): grouping, commit-then-fire,
ordering, backpressure, failures and close."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from chatbx_server.storage.batch import BatchWriter
from chatbx_server.storage.database import Database
from chatbx_server.storage.errors import StorageError


def insert_txn(conn: Any, rows: list[int]) -> list[int]:
    """Insert the values; a negative one violates the CHECK constraint."""
    conn.exec_driver_sql("INSERT INTO t (v) VALUES (?)", [(v,) for v in rows])
    return [v * 10 for v in rows]


@pytest.fixture
def db() -> Any:
    database = Database.for_tests()
    with database.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (v INTEGER NOT NULL CHECK (v >= 0))")
    yield database
    database.stop()


def stored(db: Database) -> list[int]:
    with db.engine.connect() as conn:
        return [r[0] for r in conn.exec_driver_sql("SELECT v FROM t ORDER BY rowid")]


def results(d: defer.Deferred) -> list[Any]:
    out: list[Any] = []
    d.addBoth(out.append)
    return out


class ControlledDB:
    """A Database stand-in whose transactions finish when the test says so."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[Any], defer.Deferred]] = []

    def run(self, desc: str, fn: Any, rows: list[Any]) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.calls.append((list(rows), d))
        return d


def test_rows_wait_for_the_delay_then_commit_together(db: Database) -> None:
    """Rows queue until the delay passes, go in one transaction, and each Deferred fires
    with its row's result only after that commit."""
    clock = Clock()
    writer: BatchWriter[int] = BatchWriter(db, "t", insert_txn, clock, max_batch=100, delay=0.05)
    fired = [results(writer.write(v)) for v in (1, 2, 3)]
    assert stored(db) == [] and fired == [[], [], []] and writer.pending == 3
    clock.advance(0.05)
    assert stored(db) == [1, 2, 3]
    assert fired == [[10], [20], [30]]
    assert writer.batches == 1 and writer.pending == 0


def test_a_full_batch_is_written_at_once(db: Database) -> None:
    """max_batch queued rows start a transaction without waiting for the delay."""
    clock = Clock()
    writer: BatchWriter[int] = BatchWriter(db, "t", insert_txn, clock, max_batch=3, delay=10)
    for v in range(3):
        writer.write(v)
    assert stored(db) == [0, 1, 2]
    assert not clock.getDelayedCalls()


def test_one_batch_in_flight_and_order_kept() -> None:
    """While a batch runs, new rows queue; afterwards they wait for the delay (or a full
    batch) and commit after the first, in the order written."""
    clock = Clock()
    fake = ControlledDB()
    writer: BatchWriter[int] = BatchWriter(fake, "t", insert_txn, clock, max_batch=2, delay=0.05)  # type: ignore[arg-type]
    writer.write(1)
    writer.write(2)
    assert [rows for rows, _ in fake.calls] == [[1, 2]]
    late = results(writer.write(3))
    writer.write(4)
    writer.write(5)
    assert len(fake.calls) == 1  # still one in flight
    fake.calls[0][1].callback([10, 20])
    # 3 rows queued >= max_batch: the next batch starts at once
    assert [rows for rows, _ in fake.calls] == [[1, 2], [3, 4]]
    fake.calls[1][1].callback([30, 40])
    assert late == [30]
    assert len(fake.calls) == 2  # row 5 waits for the delay
    clock.advance(0.05)
    assert [rows for rows, _ in fake.calls][-1] == [5]


def test_flush_fires_after_everything_before_it_committed(db: Database) -> None:
    """flush() writes at once and fires when the rows accepted before it are committed;
    with nothing pending it fires immediately."""
    clock = Clock()
    writer: BatchWriter[int] = BatchWriter(db, "t", insert_txn, clock, max_batch=100, delay=60)
    assert results(writer.flush()) == [None]
    writer.write(7)
    writer.submit(8)
    done = results(writer.flush())
    assert done == [None] and stored(db) == [7, 8]


def test_flush_waits_for_a_batch_in_flight() -> None:
    """A flush during a running batch fires only when the rows it covers are done."""
    clock = Clock()
    fake = ControlledDB()
    writer: BatchWriter[int] = BatchWriter(fake, "t", insert_txn, clock, max_batch=1, delay=1)  # type: ignore[arg-type]
    writer.write(1)
    writer.write(2)
    done = results(writer.flush())
    assert done == []
    fake.calls[0][1].callback([10])
    assert done == [] and len(fake.calls) == 2
    fake.calls[1][1].callback([20])
    assert done == [None]


def test_full_writer_makes_callers_wait_and_drops_nothing() -> None:
    """Past capacity the writer is full and wait_for_room() waits until a batch takes
    rows; rows written while full are still queued and written."""
    clock = Clock()
    fake = ControlledDB()
    writer: BatchWriter[int] = BatchWriter(fake, "t", insert_txn, clock, max_batch=2, capacity=3, delay=1)  # type: ignore[arg-type]
    writer.write(0)
    writer.write(1)            # batch [0, 1] in flight
    for v in (2, 3, 4):
        writer.write(v)
    assert writer.full
    room = results(writer.wait_for_room())
    extra = results(writer.write(5))  # still accepted
    assert room == [] and writer.pending == 6
    fake.calls[0][1].callback([0, 10])  # next batch [2, 3] leaves 2 queued: room
    assert room == [None] and not writer.full
    fake.calls[1][1].callback([20, 30])
    clock.advance(1)
    fake.calls[2][1].callback([40, 50])
    assert extra == [50] and writer.pending == 0
    assert results(writer.wait_for_room()) == [None]


def test_when_done_fires_once_every_row_up_to_the_mark_finished() -> None:
    """``accepted`` after a submit is the row's mark; ``when_done(mark)``
    fires after the batch holding that row (and every earlier one) is done,
    at once when it is, and also when the rows failed."""
    clock = Clock()
    fake = ControlledDB()
    writer: BatchWriter[int] = BatchWriter(fake, "t", insert_txn, clock, max_batch=2, delay=0.05)  # type: ignore[arg-type]
    fired: list[str] = []
    writer.submit(1)
    first = writer.accepted
    writer.submit(2)  # a full batch: in flight
    writer.submit(3)
    third = writer.accepted
    writer.when_done(third, lambda: fired.append("third"))
    writer.when_done(first, lambda: fired.append("first"))
    assert first == 1 and third == 3 and fired == []
    fake.calls[0][1].callback([10, 20])
    assert fired == ["first"]  # row 3 is not written yet
    clock.advance(0.05)
    fake.calls[1][1].errback(Failure(StorageError("gone")))
    assert fired == ["first", "third"]  # failed rows are finished too (logged)
    writer.when_done(third, lambda: fired.append("now"))
    assert fired[-1] == "now"


def test_a_bad_row_fails_alone(db: Database) -> None:
    """A row the database refuses fails its own Deferred (logged); the other rows of
    its batch are retried in halves and stored."""
    clock = Clock()
    writer: BatchWriter[int] = BatchWriter(db, "t", insert_txn, clock, max_batch=100, delay=0.01)
    outcomes = [results(writer.write(v)) for v in (1, 2, -3, 4, 5)]
    writer.submit(-6)
    clock.advance(0.01)
    assert stored(db) == [1, 2, 4, 5]
    assert [o[0] for o in outcomes if not isinstance(o[0], Failure)] == [10, 20, 40, 50]
    bad = outcomes[2][0]
    assert isinstance(bad, Failure) and bad.check(IntegrityError)
    assert writer.rows_failed == 2 and writer.rows_written == 4 and writer.pending == 0


def test_a_transient_failure_fails_the_whole_batch_without_splitting() -> None:
    """When retries (Database.run) are exhausted on a transient error, every row of the
    batch fails at once: splitting would only hammer a database that is down."""
    clock = Clock()
    fake = ControlledDB()
    writer: BatchWriter[int] = BatchWriter(fake, "t", insert_txn, clock, max_batch=3, delay=1)  # type: ignore[arg-type]
    outcomes = [results(writer.write(v)) for v in (1, 2, 3)]
    locked = OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))
    fake.calls[0][1].errback(Failure(locked))
    assert len(fake.calls) == 1
    assert all(isinstance(o[0], Failure) and o[0].check(OperationalError) for o in outcomes)
    assert writer.rows_failed == 3


def test_close_writes_the_queue_and_refuses_new_rows(db: Database) -> None:
    """close() commits what is queued and fires; later write() fails and submit() raises."""
    clock = Clock()
    writer: BatchWriter[int] = BatchWriter(db, "t", insert_txn, clock, max_batch=100, delay=60)
    writer.write(1)
    assert results(writer.close()) == [None]
    assert stored(db) == [1]
    late = results(writer.write(2))
    assert isinstance(late[0], Failure) and late[0].check(StorageError)
    with pytest.raises(StorageError):
        writer.submit(3)


def test_result_count_mismatch_fails_the_rows(db: Database) -> None:
    """A _txn that returns the wrong number of results fails the batch instead of
    firing Deferreds with someone else's result."""
    clock = Clock()
    writer: BatchWriter[int] = BatchWriter(db, "t", lambda conn, rows: [1], clock, delay=0)
    outcomes = [results(writer.write(v)) for v in (1, 2)]
    clock.advance(0)
    assert all(isinstance(o[0], Failure) and o[0].check(StorageError) for o in outcomes)


def test_invalid_parameters() -> None:
    """Nonsense sizes are refused."""
    with pytest.raises(ValueError):
        BatchWriter(Database.for_tests(), "t", insert_txn, Clock(), max_batch=0)


def test_uses_core_connection(db: Database) -> None:
    """The _txn function receives a SQLAlchemy Connection inside one transaction."""
    seen: list[Any] = []

    def txn(conn: Any, rows: list[int]) -> list[None]:
        seen.append((isinstance(conn, sa.Connection), conn.in_transaction()))
        return [None] * len(rows)

    clock = Clock()
    writer: BatchWriter[int] = BatchWriter(db, "t", txn, clock, delay=0)
    writer.write(1)
    clock.advance(0)
    assert seen == [(True, True)]
