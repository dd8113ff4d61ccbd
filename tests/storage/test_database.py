"""Tests for chatbx_server.storage.database: transactions, retries, backends."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError
from twisted.python.threadpool import ThreadPool

from chatbx_server.storage import schema
from chatbx_server.storage.database import (
    MAX_RETRIES,
    Database,
    checks_own_references,
    default_sqlite_url,
    is_transient_error,
)
from chatbx_server.storage.errors import StorageError


class ImmediateReactor:
    """Delivers thread results at once, in the pool thread, so a test can
    wait on a threading.Event without running a reactor."""

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N802
        f(*args, **kwargs)


def wait_for(d: Any, timeout: float = 10.0) -> Any:
    """Block until a Deferred fired from another thread; return or raise."""
    done = threading.Event()
    box: list[Any] = []

    def _fired(result: Any) -> None:
        box.append(result)
        done.set()

    d.addBoth(_fired)
    assert done.wait(timeout), "database call did not finish"
    result = box[0]
    if hasattr(result, "raiseException"):
        result.raiseException()
    return result


def _locked() -> OperationalError:
    return OperationalError("INSERT ...", {}, sqlite3.OperationalError("database is locked"))


class _PgError(Exception):
    def __init__(self, pgcode: str) -> None:
        super().__init__(pgcode)
        self.pgcode = pgcode


def test_default_sqlite_url(tmp_path: Path) -> None:
    """The default URL names chatbx.sqlite inside the data directory."""
    assert default_sqlite_url(tmp_path) == f"sqlite:///{tmp_path}/chatbx.sqlite"


def test_sqlite_file_creates_parent_and_sets_pragmas(tmp_path: Path, result_of: Any) -> None:
    """A file database gets its folder created, WAL journaling, foreign keys and
    temporary data (statement journals) in memory."""
    url = default_sqlite_url(tmp_path / "nested" / "data")
    db = Database(url, threadless=True)
    db.start()
    try:
        assert (tmp_path / "nested" / "data").is_dir()
        mode = result_of(db.run("t", lambda c: c.exec_driver_sql("PRAGMA journal_mode").scalar()))
        fks = result_of(db.run("t", lambda c: c.exec_driver_sql("PRAGMA foreign_keys").scalar()))
        temp = result_of(db.run("t", lambda c: c.exec_driver_sql("PRAGMA temp_store").scalar()))
        assert mode == "wal"
        assert fks == 1
        assert temp == 2  # MEMORY: statement journals of batch inserts write no temp file
    finally:
        db.stop()


def test_foreign_keys_off_only_for_marked_transactions(tmp_path: Path, result_of: Any) -> None:
    """A txn marked checks_own_references runs on SQLite without foreign-key
    enforcement (a row without its parent goes in), and the next one, on
    the same connection, has it again, also after the marked one failed."""
    db = Database(default_sqlite_url(tmp_path), threadless=True)
    db.start()
    schema.metadata.create_all(db.engine)
    orphan = sa.insert(schema.archive_messages).values(
        id=1, user_id=999, nonce=0, with_hash=0, with_jid="x@y", stanza="<message/>")

    @checks_own_references
    def marked(conn: Any, fail: bool = False) -> Any:
        conn.execute(orphan)
        if fail:
            raise KeyError("boom")
        return conn.exec_driver_sql("PRAGMA foreign_keys").scalar()

    try:
        with pytest.raises(KeyError):
            result_of(db.run("t", marked, fail=True))
        assert result_of(db.run("t", lambda c: c.exec_driver_sql("PRAGMA foreign_keys").scalar())) == 1
        assert result_of(db.run("t", marked)) == 0
        assert result_of(db.run("t", lambda c: c.exec_driver_sql("PRAGMA foreign_keys").scalar())) == 1
        with pytest.raises(IntegrityError):
            result_of(db.run("t", lambda c: c.execute(orphan.values(id=2))))
    finally:
        db.stop()


def test_memory_sqlite_is_one_shared_database(result_of: Any) -> None:
    """``sqlite://`` keeps one connection, so data survives across transactions."""
    db = Database.for_tests()
    db.start()
    schema.metadata.create_all(db.engine)
    result_of(db.run("t", lambda c: c.execute(
        sa.insert(schema.users).values(username="a", domain="d", created_at=1.0))))
    count = result_of(db.run("t", lambda c: c.execute(
        sa.select(sa.func.count()).select_from(schema.users)).scalar()))
    assert count == 1
    db.stop()


def test_threadless_run_is_synchronous_and_passes_arguments(result_of: Any) -> None:
    """run() in threadless mode fires before returning, with fn's result."""
    db = Database.for_tests()
    d = db.run("t", lambda conn, a, b=0: (conn.exec_driver_sql("SELECT 1").scalar(), a, b),
               "x", b=2)
    assert d.called
    assert result_of(d) == (1, "x", 2)


def test_exception_rolls_back_the_transaction(result_of: Any) -> None:
    """An exception in fn fails the Deferred and undoes fn's writes."""
    db = Database.for_tests()
    schema.metadata.create_all(db.engine)

    def insert_then_fail(conn: Any) -> None:
        conn.execute(sa.insert(schema.users).values(username="a", domain="d", created_at=1.0))
        raise KeyError("boom")

    with pytest.raises(KeyError):
        result_of(db.run("t", insert_then_fail))
    count = result_of(db.run("t", lambda c: c.execute(
        sa.select(sa.func.count()).select_from(schema.users)).scalar()))
    assert count == 0


def test_transient_errors_are_retried(result_of: Any) -> None:
    """'database is locked' twice, then success: the caller sees the success."""
    db = Database.for_tests()
    calls = []

    def flaky(conn: Any) -> str:
        calls.append(1)
        if len(calls) < 3:
            raise _locked()
        return "ok"

    assert result_of(db.run("t", flaky)) == "ok"
    assert len(calls) == 3


def test_retries_are_bounded(result_of: Any) -> None:
    """A transient error that persists fails after MAX_RETRIES re-runs."""
    db = Database.for_tests()
    calls = []

    def always_locked(conn: Any) -> None:
        calls.append(1)
        raise _locked()

    with pytest.raises(OperationalError):
        result_of(db.run("t", always_locked))
    assert len(calls) == MAX_RETRIES + 1


def test_other_errors_are_not_retried(result_of: Any) -> None:
    """A constraint violation runs once and fails."""
    db = Database.for_tests()
    calls = []

    def violates(conn: Any) -> None:
        calls.append(1)
        raise IntegrityError("INSERT ...", {}, sqlite3.IntegrityError("UNIQUE failed"))

    with pytest.raises(IntegrityError):
        result_of(db.run("t", violates))
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (_locked(), True),
        (OperationalError("x", {}, _PgError("40001")), True),  # serialization failure
        (OperationalError("x", {}, _PgError("40P01")), True),  # deadlock
        (OperationalError("x", {}, _PgError("08006")), True),  # connection failure
        (OperationalError("x", {}, _PgError("23505")), False),  # unique violation
        (OperationalError("x", {}, sqlite3.OperationalError("no such table: t")), False),
        (OperationalError("x", {}, Exception("gone"), connection_invalidated=True), True),
        (ValueError("not a db error"), False),
    ],
)
def test_is_transient_error(exc: BaseException, transient: bool) -> None:
    """Only disconnects, deadlocks, serialization failures and locks are transient."""
    assert is_transient_error(exc) is transient


def test_run_after_stop_fails(result_of: Any) -> None:
    """A stopped Database refuses work with StorageError instead of hanging."""
    db = Database.for_tests()
    db.start()
    db.stop()
    with pytest.raises(StorageError):
        result_of(db.run("t", lambda c: 1))


def test_threaded_run_uses_the_pool(db_url: str) -> None:
    """With a real ThreadPool, fn runs off the calling thread, results and
    errors come back through the reactor's callFromThread."""
    db = Database(db_url, ImmediateReactor(), pool_size=3)
    db.start()
    try:
        caller = threading.get_ident()
        ident = wait_for(db.run("t", lambda conn: (conn.exec_driver_sql("SELECT 1").scalar(),
                                                    threading.get_ident())))
        assert ident[0] == 1
        assert ident[1] != caller
        deferreds = [db.run("t", lambda conn, i: conn.exec_driver_sql(
            f"SELECT {i}").scalar(), i) for i in range(10)]
        assert [wait_for(d) for d in deferreds] == list(range(10))
        with pytest.raises(ZeroDivisionError):
            wait_for(db.run("t", lambda conn: 1 / 0))
    finally:
        db.stop()


def test_pool_sizes(db_url: str) -> None:
    """SQLite gets one thread; PostgreSQL gets pool_size threads and connections."""
    db = Database(db_url, ImmediateReactor(), pool_size=4)
    try:
        assert db._threadpool is not None
        if db.dialect == "sqlite":
            assert db._threadpool.max == 1
        else:
            assert db._threadpool.max == 4
            assert db.engine.pool.size() == 4  # type: ignore[attr-defined]
    finally:
        db.stop()


def test_given_threadpool_is_used(tmp_path: Path) -> None:
    """A ThreadPool passed in is the one started, used and stopped."""
    pool = ThreadPool(minthreads=1, maxthreads=1, name="test-db")
    db = Database(default_sqlite_url(tmp_path), ImmediateReactor(), threadpool=pool)
    db.start()
    assert pool.started
    assert wait_for(db.run("t", lambda c: threading.current_thread().name)) == "PoolThread-test-db-0"
    db.stop()
    assert not pool.started


def test_errors_do_not_show_parameters(database: Any, result_of: Any) -> None:
    """A failed statement's error (what gets logged) shows the SQL but not
    the values bound to it: they can be message bodies or credentials."""

    def bad_body(conn: Any) -> None:
        conn.execute(sa.insert(schema.offline_messages).values(
            user_id=424242, stanza="<message><body>secret words</body></message>",
            created_at=1.0))

    with pytest.raises(IntegrityError) as info:
        result_of(database.run("t", bad_body))
    assert "secret words" not in str(info.value)
    assert "hidden due to hide_parameters" in str(info.value)
    assert database.engine.hide_parameters
