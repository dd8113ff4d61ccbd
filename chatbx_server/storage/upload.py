"""HTTP File Upload (XEP-0363) storage: slot rows in ``uploads``, files on disk.

A slot is reserved (a row with ``completed_at`` NULL) when a client asks
for one, so the quotas count what is promised, not only what arrived; the
PUT completes it. The quota check and the insert run in one transaction,
serialized per uploader (an advisory lock on PostgreSQL; SQLite has one
writer), so concurrent requests cannot overshoot.

Files live under one directory, named by the slot id only (the client's
file name never touches the file system): ``ROOT/ab/abcdef...``. A PUT
body is written to ``ROOT/tmp`` and renamed into place, so a file appears
whole or not at all (rename is atomic on one file system).

Expired files and unused slots are removed in bounded batches: the rows
due are read, their files unlinked, then the rows deleted; a crash between
the two leaves rows whose files are gone, which the next batch deletes.
"""

from __future__ import annotations

import os
import re
import zlib
from typing import Any, Callable, Iterable, NamedTuple, Optional, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from twisted.internet import defer, threads
from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool

from chatbx_server.storage.batch import BatchWriter
from chatbx_server.storage.database import Database
from chatbx_server.storage.schema import uploads
from chatbx_server.storage.users import now_function

__all__ = ["DAY", "SPARE_BODIES", "SYNC_JOBS", "FileSyncer", "SpareBodyFiles", "QuotaExceeded", "UploadFiles", "UploadRecord", "UploadStore",
           "Usage", "is_slot"]

DAY = 86400.0
_SLOT = re.compile(r"^[0-9a-f]{32}$")
_DELETE_CHUNK = 500
_t = uploads.c


def is_slot(text: str) -> bool:
    """A well-formed slot id (32 lowercase hex digits): nothing else reaches the disk."""
    return bool(_SLOT.match(text))


class QuotaExceeded(Exception):
    """The uploader's daily or total quota would be passed.

    Attributes:
        which: "daily" or "total".
        limit: the quota in bytes.
        used: bytes already counted against it.
    """

    def __init__(self, which: str, limit: int, used: int) -> None:
        super().__init__(f"{which} upload quota of {limit} bytes reached ({used} used)")
        self.which = which
        self.limit = limit
        self.used = used


class UploadRecord(NamedTuple):
    slot: str
    uploader: str
    filename: str
    size: int
    content_type: str
    created_at: float
    completed_at: Optional[float]
    expires_at: Optional[float]


class Usage(NamedTuple):
    """One uploader's stored files (completed) and reservations."""

    uploader: str
    files: int
    bytes: int
    #: bytes requested in the last 24 hours (the daily quota's count)
    bytes_today: int


def _lock_uploader_txn(conn: Connection, uploader: str) -> None:
    if conn.dialect.name == "postgresql":
        # Serializes quota checks of one uploader across nodes; released at commit.
        key = zlib.crc32(uploader.encode("utf-8")) - 2**31
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


def reserve_txn(conn: Connection, record: UploadRecord, daily_quota: int,
                total_quota: int) -> None:
    """Insert a slot unless it takes the uploader past a quota (0 = no quota).

    Raises:
        QuotaExceeded: which quota, its limit and what is used.
    """
    _lock_uploader_txn(conn, record.uploader)
    if total_quota:
        used = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(_t.size), 0))
                            .where(_t.uploader == record.uploader)).scalar_one()
        if int(used) + record.size > total_quota:
            raise QuotaExceeded("total", total_quota, int(used))
    if daily_quota:
        used = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(_t.size), 0))
                            .where(_t.uploader == record.uploader,
                                   _t.created_at > record.created_at - DAY)).scalar_one()
        if int(used) + record.size > daily_quota:
            raise QuotaExceeded("daily", daily_quota, int(used))
    conn.execute(sa.insert(uploads).values(**record._asdict()))


def complete_txn(conn: Connection, slot: str, now: float) -> bool:
    """Mark a reserved slot as uploaded; False when unknown or already used."""
    result = conn.execute(sa.update(uploads)
                          .where(_t.slot == slot, _t.completed_at.is_(None))
                          .values(completed_at=now))
    return result.rowcount == 1


def complete_many_txn(conn: Connection, rows: list[tuple[str, float]]) -> list[bool]:
    """:func:`complete_txn` for a batch of (slot, time): one transaction for all.

    One SELECT (row locks on PostgreSQL, taken in slot order so two nodes'
    batches cannot deadlock; another node completing the same slot waits and
    then sees it used) and one executemany UPDATE for the batch: an UPDATE
    statement per row cost 0.08 ms of CPU a row in SQLAlchemy, 5 % of a
    small upload. A slot twice in the batch: the first is used, the second
    refused.
    """
    wanted = sorted({slot for slot, _ in rows})
    unused: set[str] = set()
    for start in range(0, len(wanted), _DELETE_CHUNK):
        chunk = wanted[start:start + _DELETE_CHUNK]
        query = (sa.select(_t.slot).where(_t.slot.in_(chunk), _t.completed_at.is_(None))
                 .order_by(_t.slot).with_for_update())
        unused.update(row[0] for row in conn.execute(query))
    results: list[bool] = []
    updates: list[dict[str, Any]] = []
    for slot, now in rows:
        ok = slot in unused
        if ok:
            unused.discard(slot)
            updates.append({"s": slot, "t": now})
        results.append(ok)
    if updates:
        conn.execute(sa.update(uploads)
                     .where(_t.slot == sa.bindparam("s"), _t.completed_at.is_(None))
                     .values(completed_at=sa.bindparam("t")), updates)
    return results


def get_txn(conn: Connection, slot: str) -> Optional[UploadRecord]:
    row = conn.execute(sa.select(*[_t[f] for f in UploadRecord._fields])
                       .where(_t.slot == slot)).one_or_none()
    return UploadRecord(*row) if row is not None else None


def due_txn(conn: Connection, now: float, unused_before: float, limit: int) -> list[str]:
    """Up to ``limit`` slots to remove: expired files and slots never used in time."""
    query = (sa.select(_t.slot)
             .where(sa.or_(_t.expires_at <= now,
                           sa.and_(_t.completed_at.is_(None), _t.created_at < unused_before)))
             .order_by(_t.created_at).limit(limit))
    return [row[0] for row in conn.execute(query)]


def of_uploader_txn(conn: Connection, uploader: str, limit: int) -> list[str]:
    query = (sa.select(_t.slot).where(_t.uploader == uploader)
             .order_by(_t.created_at).limit(limit))
    return [row[0] for row in conn.execute(query)]


def delete_txn(conn: Connection, slots: list[str]) -> int:
    count = 0
    for start in range(0, len(slots), _DELETE_CHUNK):
        chunk = slots[start:start + _DELETE_CHUNK]
        count += conn.execute(sa.delete(uploads).where(_t.slot.in_(chunk))).rowcount
    return count


def usage_txn(conn: Connection, uploader: Optional[str], now: float) -> list[Usage]:
    """Per-uploader totals (one uploader, or all ordered by bytes, largest first)."""
    today = sa.case((_t.created_at > now - DAY, _t.size), else_=0)
    done = sa.case((_t.completed_at.is_not(None), 1), else_=0)
    done_bytes = sa.case((_t.completed_at.is_not(None), _t.size), else_=0)
    query = (sa.select(_t.uploader, sa.func.sum(done), sa.func.sum(done_bytes),
                       sa.func.sum(today))
             .group_by(_t.uploader).order_by(sa.func.sum(done_bytes).desc(), _t.uploader))
    if uploader is not None:
        query = query.where(_t.uploader == uploader)
    return [Usage(row[0], int(row[1] or 0), int(row[2] or 0), int(row[3] or 0))
            for row in conn.execute(query)]


class UploadFiles:
    """Where the bytes of uploaded files live (names are slot ids only)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.tmp = os.path.join(root, "tmp")
        #: the ``ROOT/ab`` directories known to exist (at most 256)
        self._dirs: set[str] = set()

    def ensure(self) -> None:
        os.makedirs(self.tmp, mode=0o700, exist_ok=True)

    def path(self, slot: str) -> str:
        if not is_slot(slot):
            raise ValueError("not a slot id")
        return os.path.join(self.root, slot[:2], slot)

    def install(self, temp_path: str, slot: str) -> str:
        """Move a finished temporary file into place (atomic rename)."""
        final = self.path(slot)
        directory = os.path.dirname(final)
        if directory not in self._dirs:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            self._dirs.add(directory)
        try:
            os.replace(temp_path, final)
        except FileNotFoundError:
            if not os.path.isdir(directory):  # removed behind our back: once more
                self._dirs.discard(directory)
                os.makedirs(directory, mode=0o700, exist_ok=True)
                os.replace(temp_path, final)
            else:
                raise
        return final

    def remove(self, slots: Iterable[str]) -> int:
        """Unlink the files of ``slots``; missing files are fine. Returns how many went."""
        removed = 0
        for slot in slots:
            try:
                os.unlink(self.path(slot))
                removed += 1
            except FileNotFoundError:
                pass
        return removed


def _sync_close(files: list[Any]) -> list[Optional[OSError]]:
    """In a thread: fsync and close each file; the error of each, or None."""
    results: list[Optional[OSError]] = []
    for fh in files:
        try:
            fh.flush()
            os.fsync(fh.fileno())
            results.append(None)
        except OSError as exc:
            results.append(exc)
        finally:
            try:
                fh.close()
            except OSError:
                pass
    return results


def new_body_file(directory: str) -> tuple[Any, str]:
    """A new private empty file in ``directory`` (random name), unbuffered:
    twisted.web hands it 16 KiB TLS records, a Python buffer would only
    copy them."""
    for _ in range(100):
        path = os.path.join(directory, f"body.{os.urandom(8).hex()}")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        except FileExistsError:
            continue
        return os.fdopen(fd, "w+b", buffering=0), path
    raise OSError("no unused temporary file name")


def _new_body_files(directory: str, count: int) -> list[tuple[Any, str]]:
    """In a thread: ``count`` new body files (fewer when the disk fails)."""
    made: list[tuple[Any, str]] = []
    try:
        for _ in range(count):
            made.append(new_body_file(directory))
    except OSError:
        pass  # the next take() makes one on the spot, and says why
    return made


#: empty body files kept ready for uploads
SPARE_BODIES = 16


class SpareBodyFiles:
    """Empty body files made ahead in a thread, handed out at once.

    Creating a file waits for the file system: 0.25-0.3 ms on the
    benchmark VM, on the reactor, about an eighth of a small upload's CPU
    there (bench/README.md, issue 12). ``take`` hands out a file made
    earlier and asks for more in the background; with none ready (a burst,
    or threadless tests) it makes one on the spot. At most ``spare`` files
    wait; :meth:`close` removes them.

    Args:
        run: runs ``fn(directory, count)`` in a thread, returns a Deferred of
            its result; None: no spares (every file made on the spot).
    """

    def __init__(self, directory: str, run: Optional[Callable[..., Deferred[Any]]],
                 spare: int = SPARE_BODIES) -> None:
        self.directory = directory
        self._run = run
        self.spare = spare
        self._ready: list[tuple[Any, str]] = []
        self._filling = False
        self._closed = False

    def take(self) -> tuple[Any, str]:
        item = self._ready.pop() if self._ready else new_body_file(self.directory)
        self._refill()
        return item

    def fill(self) -> None:
        """Make spare files now (in the background)."""
        self._refill()

    def _refill(self) -> None:
        want = self.spare - len(self._ready)
        if self._filling or self._closed or self._run is None or want <= 0:
            return
        self._filling = True
        try:
            d = self._run(_new_body_files, self.directory, want)
        except Exception:
            self._filling = False
            return
        d.addCallbacks(self._made, self._failed)

    def _made(self, made: list[tuple[Any, str]]) -> None:
        self._filling = False
        if self._closed:
            _discard(made)
        else:
            self._ready.extend(made)

    def _failed(self, failure: Any) -> None:
        self._filling = False

    def close(self) -> None:
        self._closed = True
        ready, self._ready = self._ready, []
        _discard(ready)


def _discard(files: list[tuple[Any, str]]) -> None:
    for fh, path in files:
        try:
            fh.close()
            os.unlink(path)
        except OSError:
            pass


#: fsync jobs running at once (threads of the upload sync pool)
SYNC_JOBS = 4
#: files one sync job takes at most, so a backlog is shared among the jobs
SYNC_CHUNK = 32


class FileSyncer:
    """Flushes finished upload files to disk (fsync, then close) off the reactor.

    An fsync waits for the disk: on the reactor it stalls every connection.
    Files queue here and are synced by up to ``jobs`` thread jobs at once,
    each taking its share of what is queued (``ceil(queued / jobs)``, at
    most :data:`SYNC_CHUNK`), so a burst costs a few thread hops, not one
    per file. Several fsyncs in flight matter: one thread syncing 200 files
    in turn took 0.1-0.5 s on the benchmark VM's disk and held every 201
    back meanwhile; four at once took 40 ms (bench/README.md, issue 12).

    Args:
        run: runs ``fn(files)`` in a thread and returns a Deferred of its
            result; None runs it at once (threadless tests).
        jobs: how many jobs may run at once (at least 1).
    """

    def __init__(self, run: Optional[Callable[..., Deferred[Any]]], jobs: int = SYNC_JOBS) -> None:
        self._run = run
        self._jobs = max(1, jobs)
        self._queue: list[tuple[Any, Deferred[None]]] = []
        #: jobs handed to ``run`` whose result has not come back
        self.running = 0

    def sync(self, fh: Any) -> Deferred[None]:
        """fsync and close ``fh``; fires when it is on disk (fails with the OSError)."""
        d: Deferred[None] = Deferred()
        self._queue.append((fh, d))
        if self.running < self._jobs:
            self._start()
        return d

    def _start(self) -> None:
        take = min(SYNC_CHUNK, -(-len(self._queue) // self._jobs))
        batch, self._queue = self._queue[:take], self._queue[take:]
        files = [fh for fh, _ in batch]
        if self._run is None:
            result: Deferred[Any] = defer.maybeDeferred(_sync_close, files)
        else:
            self.running += 1
            try:
                result = self._run(_sync_close, files)
            except Exception:
                result = defer.fail()
            result.addBoth(self._finished)
        result.addBoth(self._done, batch)

    def _finished(self, result: Any) -> Any:
        self.running -= 1
        return result

    def _done(self, result: Any, batch: list[tuple[Any, Deferred[None]]]) -> None:
        if not isinstance(result, list):  # the job never ran: the files are still open
            for fh, _ in batch:
                try:
                    fh.close()
                except OSError:
                    pass
        for i, (_, d) in enumerate(batch):
            if isinstance(result, list) and result[i] is None:
                d.callback(None)
            else:
                d.errback(result[i] if isinstance(result, list) else result)
        while self._queue and self.running < self._jobs:
            self._start()


class UploadStore:
    """Upload slots and files in the database.

    Completions (a PUT's body is on disk: mark its slot used) are batched:
    one transaction marks every slot that finished meanwhile, instead of a
    thread hop and a commit per upload.
    """

    def __init__(self, db: Database, clock: Any = None) -> None:
        self.db = db
        self._now = now_function(clock)
        self.completions: BatchWriter[tuple[str, float]] = BatchWriter(
            db, "upload.complete", complete_many_txn, clock, max_batch=500, delay=0.0)
        #: the fsync threads (their own pool: a slow disk must not hold the
        #: reactor's threads, which resolve names for federation)
        self._sync_pool: Optional[ThreadPool] = None
        self._closed = False
        self.syncer = FileSyncer(None if db.threadless else self._in_sync_pool)

    def in_thread(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run ``fn(*args)`` on the upload store's file threads (slow disk
        work that must not hold the reactor's threads either)."""
        return self._in_sync_pool(fn, *args)

    def _in_sync_pool(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        from twisted.internet import reactor

        if self._closed:
            return defer.fail(OSError("upload store closed"))
        pool = self._sync_pool
        if pool is None:
            pool = self._sync_pool = ThreadPool(minthreads=0, maxthreads=SYNC_JOBS,
                                                name="chatbx-upload-sync")
            pool.start()
            cast(Any, reactor).addSystemEventTrigger("during", "shutdown", self._stop_sync_pool)
        return threads.deferToThreadPool(reactor, pool, fn, *args)

    def _stop_sync_pool(self) -> None:
        pool, self._sync_pool = self._sync_pool, None
        if pool is not None and pool.started:
            pool.stop()  # waits for the fsyncs in progress

    def now(self) -> float:
        return self._now()

    def reserve(self, record: UploadRecord, daily_quota: int, total_quota: int
                ) -> Deferred[None]:
        return self.db.run("upload.reserve", reserve_txn, record, daily_quota, total_quota)

    def complete(self, slot: str) -> Deferred[bool]:
        """Mark a slot used in a transaction of its own; fires True after the
        commit, False when it was unknown or already used."""
        return self.db.run("upload.complete", complete_txn, slot, self._now())

    def complete_batched(self, slot: str) -> Deferred[bool]:
        """:meth:`complete` in a transaction shared with the other slots
        completed meanwhile (the HTTP PUTs)."""
        return self.completions.write((slot, self._now()))

    def close(self) -> Deferred[None]:
        """Commit the completions still queued and refuse further ones;
        later file syncs fail (their uploads get a 500)."""
        self._closed = True
        d = self.completions.close()

        def stop(result: Any) -> Any:
            self._stop_sync_pool()
            return result

        d.addBoth(stop)
        return d

    def get(self, slot: str) -> Deferred[Optional[UploadRecord]]:
        return self.db.run("upload.get", get_txn, slot)

    def usage(self, uploader: Optional[str] = None) -> Deferred[list[Usage]]:
        return self.db.run("upload.usage", usage_txn, uploader, self._now())

    def due(self, unused_before: float, limit: int) -> Deferred[list[str]]:
        return self.db.run("upload.due", due_txn, self._now(), unused_before, limit)

    def of_uploader(self, uploader: str, limit: int) -> Deferred[list[str]]:
        return self.db.run("upload.of_uploader", of_uploader_txn, uploader, limit)

    def delete(self, slots: list[str]) -> Deferred[int]:
        return self.db.run("upload.delete", delete_txn, slots)
