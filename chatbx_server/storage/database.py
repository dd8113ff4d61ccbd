"""SQLAlchemy 2 Core on a Twisted thread pool.

Every database call runs ``fn(conn, *args)`` inside one transaction on a
dedicated :class:`~twisted.python.threadpool.ThreadPool`, so the reactor
thread never blocks on SQL. Transient failures (a dropped connection, a
deadlock, a serialization failure, SQLite's "database is locked") are retried
a few times; the ``_txn`` functions are written to be safe to run again.

SQLite gets one thread (it serializes writers anyway), WAL journaling and
``PRAGMA foreign_keys=ON`` on every connection. PostgreSQL gets a connection
pool and a thread pool of the same size.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import StaticPool
from twisted.internet import defer, task, threads
from twisted.logger import Logger

from chatbx_server.logs import log_observer
from twisted.python.threadpool import ThreadPool

from chatbx_server.storage.errors import StorageError

#: how often a stopping server looks whether the database went idle
DRAIN_POLL = 0.005

__all__ = [
    "Database",
    "MAX_RETRIES",
    "checks_own_references",
    "default_sqlite_url",
    "is_transient_error",
    "make_engine",
    "normalise_url",
]

T = TypeVar("T")

#: How many times a transaction is re-run after a transient error.
MAX_RETRIES = 3

# PostgreSQL SQLSTATEs worth retrying: serialization_failure, deadlock_detected,
# and the connection-exception class (08xxx) plus admin/crash shutdown.
_PG_TRANSIENT_CODES = frozenset({"40001", "40P01", "57P01", "57P02", "57P03"})

log = Logger(namespace="chatbx.storage", observer=log_observer)


def default_sqlite_url(data_dir: str | Path) -> str:
    """The SQLite URL used when the operator configures no database.

    Args:
        data_dir: the server's data directory.

    Returns:
        ``sqlite:///<data_dir>/chatbx.sqlite`` (absolute when data_dir is).
    """
    return f"sqlite:///{Path(data_dir) / 'chatbx.sqlite'}"


def normalise_url(url: str) -> str:
    """Pin ``postgresql://`` to psycopg2, the driver chatbx depends on.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which chatbx
    does not install; an explicit ``postgresql+driver://`` is left alone.
    """
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg2")
        return u.render_as_string(hide_password=False)
    return url


def _scrub_row_values(exc: DBAPIError) -> None:
    """Drop the driver's DETAIL lines from ``exc`` before anyone logs it.

    hide_parameters keeps SQLAlchemy from printing bound values, but
    PostgreSQL's own DETAIL of a NOT NULL or CHECK violation is "Failing row
    contains (...)": the whole row, message bodies included.
    """

    def scrub(text: Any) -> Any:
        if not isinstance(text, str) or "DETAIL:" not in text:
            return text
        return "\n".join(line for line in text.split("\n")
                         if not line.lstrip().startswith("DETAIL:"))

    for err in (exc, exc.orig):
        if err is not None and err.args:
            try:
                err.args = (scrub(err.args[0]),) + tuple(err.args[1:])
            except (AttributeError, TypeError):
                pass


def _is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _is_memory_sqlite(url: str) -> bool:
    u = make_url(url)
    return u.get_backend_name() == "sqlite" and u.database in (None, "", ":memory:")


def make_engine(url: str, *, pool_size: int = 5, foreign_keys: bool = True) -> Engine:
    """Build an Engine configured the way chatbx needs it.

    SQLite: the driver's own implicit transaction handling is switched off
    and SQLAlchemy emits ``BEGIN`` itself, so a transaction really starts at
    ``engine.begin()`` (pysqlite otherwise runs reads outside it); WAL lets
    readers (the CLI) work while the server writes. In-memory SQLite uses a
    StaticPool so every thread sees the one database.

    ``hide_parameters``: an error SQLAlchemy raises (and we log) shows the
    statement but not its values, which are message bodies, stanzas and
    credentials.

    Args:
        url: SQLAlchemy URL.
        pool_size: connections kept for PostgreSQL (ignored for SQLite).
        foreign_keys: SQLite only; migrations turn it off because batch
            mode re-creates tables and ON DELETE CASCADE would fire.

    Returns:
        a new Engine (no connection is opened yet).
    """
    url = normalise_url(url)
    if _is_sqlite(url):
        kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
        if _is_memory_sqlite(url):
            kwargs["poolclass"] = StaticPool
        else:
            db_path = make_url(url).database
            assert db_path is not None
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, hide_parameters=True, **kwargs)
        _install_sqlite_listeners(engine, foreign_keys=foreign_keys)
        return engine
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_pre_ping=True,
        hide_parameters=True,
    )


def _install_sqlite_listeners(engine: Engine, *, foreign_keys: bool) -> None:
    memory = _is_memory_sqlite(str(engine.url))

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from pysqlite (see make_engine).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
            # Statement journals in memory: a multi-row INSERT that may abort
            # (a foreign-key check can) has SQLite save every page it changes
            # first, and past 64 KiB that went to a temp file: as many page
            # writes again as the WAL got, for every archive batch. They only
            # serve to undo one statement, so they need no file.
            cur.execute("PRAGMA temp_store=MEMORY")
            cur.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Straight to the driver: SQLAlchemy's statement machinery (events,
        # a result object) for a bare BEGIN cost as much as a small query,
        # once per transaction.
        conn.connection.dbapi_connection.execute("BEGIN")  # type: ignore[union-attr]


def checks_own_references(fn: Callable[..., T]) -> Callable[..., T]:
    """Mark a ``_txn`` function that reads, in its own transaction, every
    row its inserts refer to, and inserts only rows whose parents it found:
    on SQLite it runs with foreign-key enforcement off, which otherwise
    looks up the parent of every inserted row again (archive rows: 7.5 ->
    7.0 µs each). Nothing can remove a parent between the read and
    the insert: SQLite has one writer, and a transaction that read before
    another one's commit fails to write (SQLITE_BUSY, retried from the
    start). Cascading deletes are unaffected: they run on other
    transactions, with enforcement on."""
    fn.sqlite_foreign_keys_off = True  # type: ignore[attr-defined]
    return fn


def is_transient_error(exc: BaseException) -> bool:
    """Whether re-running the whole transaction may succeed.

    Args:
        exc: what the transaction raised.

    Returns:
        True for disconnects, deadlocks, serialization failures and SQLite's
        "database is locked"; False for everything else (constraint
        violations, programming errors, our own exceptions).
    """
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    pgcode = getattr(orig, "pgcode", None)
    if pgcode is not None:
        return pgcode in _PG_TRANSIENT_CODES or pgcode.startswith("08")
    if isinstance(orig, sqlite3.OperationalError):
        msg = str(orig).lower()
        return "database is locked" in msg or "database is busy" in msg
    return False


class Database:
    """An Engine plus the thread pool that is the only place SQL runs.

    Args:
        url: SQLAlchemy URL (``sqlite:///path``, ``sqlite://``,
            ``postgresql://...``).
        reactor: what delivers results back to (``callFromThread``); the
            global reactor when None.
        pool_size: PostgreSQL connections and threads.
        threadpool: a ThreadPool to use instead of a new one.
        threadless: run each transaction immediately in the caller's thread
            and return an already-fired Deferred (unit tests: deterministic,
            no threads, no running reactor needed).
        retry_delay: first back-off (seconds) between retries, doubled each
            time; 0 in threadless mode.
    """

    def __init__(
        self,
        url: str,
        reactor: Any = None,
        *,
        pool_size: int = 5,
        threadpool: ThreadPool | None = None,
        threadless: bool = False,
        retry_delay: float = 0.05,
    ) -> None:
        self.url = url
        self.is_sqlite = _is_sqlite(url)
        self.threadless = threadless
        self.retry_delay = 0.0 if threadless else retry_delay
        self.engine: Engine = make_engine(url, pool_size=pool_size)
        self._stopped = False
        self._reactor = reactor
        #: transactions handed to the pool whose result is not delivered yet
        self.in_flight = 0
        self._threadpool: ThreadPool | None = None
        if not threadless:
            if threadpool is None:
                threads_n = 1 if self.is_sqlite else max(1, pool_size)
                threadpool = ThreadPool(minthreads=1, maxthreads=threads_n, name="chatbx-db")
            self._threadpool = threadpool

    @classmethod
    def for_tests(cls, url: str = "sqlite://") -> "Database":
        """A threadless Database: run() is synchronous (see class docs)."""
        return cls(url, threadless=True)

    @property
    def reactor(self) -> Any:
        """What results are delivered through (None: the global reactor)."""
        return self._reactor

    @property
    def dialect(self) -> str:
        """The backend name: ``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    def start(self) -> None:
        """Start the thread pool (no-op when threadless)."""
        self._stopped = False
        if self._threadpool is not None and not self._threadpool.started:
            self._threadpool.start()

    def stop(self) -> None:
        """Stop the thread pool (waits for running transactions), then
        close every pooled connection."""
        self._stopped = True
        if self._threadpool is not None and self._threadpool.started:
            self._threadpool.stop()
        self.engine.dispose()

    def run(self, desc: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred[T]:
        """Run ``fn(conn, *args, **kwargs)`` in one transaction off the reactor.

        Args:
            desc: a short name for logs (never data).
            fn: a ``_txn`` function: Core only, returns plain data, safe to
                re-run.

        Returns:
            a Deferred firing with fn's result, or failing with its
            exception (after retries, for transient ones).
        """
        if self._stopped:
            return defer.fail(StorageError(f"database stopped (running {desc})"))
        if self.threadless:
            try:
                return defer.succeed(self._run_txn(desc, fn, args, kwargs))
            except BaseException:
                return defer.fail()
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        assert self._threadpool is not None
        self.in_flight += 1
        d = threads.deferToThreadPool(
            reactor, self._threadpool, self._run_txn, desc, fn, args, kwargs
        )
        d.addBoth(self._delivered)
        return d

    def _delivered(self, result: Any) -> Any:
        self.in_flight -= 1
        return result

    @defer.inlineCallbacks
    def drain(self, clock: Any, timeout: float = 10.0) -> Any:
        """Wait (at most ``timeout``) until no transaction is running or
        queued, and the callbacks of the last ones started none: what a
        stopping server accepted (an offline message whose recipient's
        block list was still loading, a roster push) reaches the database
        before :meth:`stop` refuses new work. Fires True when idle."""
        if self.threadless:
            return True
        deadline = clock.seconds() + timeout
        quiet = 0
        while clock.seconds() < deadline:
            if self.in_flight:
                quiet = 0
                yield task.deferLater(clock, DRAIN_POLL, lambda: None)
                continue
            quiet += 1
            if quiet > 2:  # two whole reactor turns without new work
                return True
            yield task.deferLater(clock, 0, lambda: None)
        return self.in_flight == 0

    def _run_unchecked(self, fn: Callable[..., T], args: tuple[Any, ...],
                       kwargs: dict[str, Any]) -> T:
        """One transaction with SQLite's foreign-key checks off (see
        :func:`checks_own_references`): the pragma only takes effect
        outside a transaction, so it is set before BEGIN and back after."""
        with self.engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            raw.execute("PRAGMA foreign_keys=OFF")
            try:
                with conn.begin():
                    return fn(conn, *args, **kwargs)
            finally:
                raw.execute("PRAGMA foreign_keys=ON")

    def _run_txn(
        self, desc: str, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        attempt = 0
        unchecked = self.is_sqlite and getattr(fn, "sqlite_foreign_keys_off", False)
        while True:
            try:
                if unchecked:
                    return self._run_unchecked(fn, args, kwargs)
                with self.engine.begin() as conn:
                    return fn(conn, *args, **kwargs)
            except DBAPIError as exc:
                if attempt >= MAX_RETRIES or not is_transient_error(exc):
                    _scrub_row_values(exc)
                    raise
                attempt += 1
                log.warn(
                    "transient database error in {desc}, retry {attempt}/{max}: {error}",
                    desc=desc,
                    attempt=attempt,
                    max=MAX_RETRIES,
                    error=type(exc.orig).__name__,
                )
                if self.retry_delay:
                    time.sleep(self.retry_delay * 2 ** (attempt - 1))
