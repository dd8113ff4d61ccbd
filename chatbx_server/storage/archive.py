"""User message archives (XEP-0313 1.1) and archiving preferences (XEP-0441 0.2).

Rows and ids
------------
One row per message per archive (a message between two local accounts is
in both archives, XEP-0313 §3). The primary key ``id`` is assigned by the
server when the message is routed, not by the database, because the
delivered copy carries the archive id (``<stanza-id/>``, XEP-0359) before
the row is written (rows go through a :class:`~.batch.BatchWriter`):

- ``id = (Unix microseconds << 10) | sequence``: strictly increasing in
  the order the server handled the messages (the order XEP-0313 §3.1 asks
  for), and it *is* the archive time: no timestamp column and no time index;
  ``start``/``end`` filters become ranges of ``id``. When the clock stands
  still or steps back, ids keep increasing (their time runs ahead a little
  until the clock catches up). At start the source continues above the
  largest stored id.
- The public id is ``base64url(id, 8 bytes || nonce, 4 bytes)`` (16
  characters): the random ``nonce`` makes it unpredictable (§3) and a
  look-up checks both parts, so a guessed id is "not found".

A cluster would give each node its own share of the sequence bits; one
node is what runs today.

Indexes and the query plans they serve (bench/README.md has the figures):

- ``pk (id)``: expiry deletes the oldest rows in bounded batches by walking
  it from the start; rows are appended at its end.
- ``(user_id, id)``: a page of one archive, forwards or backwards, from a
  known id or a time (converted to an id); ``id`` look-ups of the public
  ids are checked within the account here too.
- ``(user_id, with_hash, id)``: a page of one conversation (``with``).
  ``with_hash`` is the CRC-32 of the bare JID (a 4-byte key instead of up
  to 2 KiB of text); ``with_jid`` is compared as well, so a collision only
  costs an extra row read.

Every page fetches ``limit + 1`` rows in the paging direction: the extra row
says whether the page reached the end (``<fin complete='true'/>``). The
total count (RSM ``<count/>``) is one COUNT over the same index range.

Full-text search (XEP-0431) uses the database's own engine: on PostgreSQL a
GIN index on ``to_tsvector('simple', body)`` matched with
``websearch_to_tsquery('simple', ...)`` ('simple': no language stemming,
since an archive mixes languages). On SQLite an FTS5 table of
``(owner token, body)`` with rowid = ``id``, searched with every word of the
query as a quoted term plus the owner token, so the index itself restricts
the search to one archive. Tokenizing costs more than the rest of an
insert, so rows are not indexed as they are written: :func:`index_txn`
follows the table in bounded chunks (the mam module runs it every second,
in larger chunks while the writer is idle) and records how far it got; a
search covers the indexed rows through FTS5 and the few rows above that
mark by matching every word with LIKE, so it always sees every row.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import itertools
import json
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple, Optional, Sequence, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from twisted.internet.defer import Deferred

from chatbx_server.storage.batch import BatchWriter
from chatbx_server.storage.database import Database, checks_own_references
from chatbx_server.storage.errors import StorageError
from chatbx_server.storage.schema import archive_messages, archive_prefs, roster_items, users
from chatbx_server.storage.users import now_function, split_jid, user_id_txn

__all__ = [
    "MAX_SEARCH_TERMS",
    "ArchivePage",
    "ArchivePrefs",
    "ArchiveQuery",
    "ArchiveRow",
    "ArchiveStore",
    "ArchivedMessage",
    "IdSource",
    "UnknownArchiveId",
    "decode_uid",
    "encode_uid",
    "id_to_time",
    "time_to_id",
    "with_hash",
]

#: low bits of an id that count messages within one microsecond
SEQ_BITS = 10
_UID = struct.Struct(">qi")
_NONCES = struct.Struct(">1024i")
#: rows per IN (...) list, well below every backend's parameter limit
_CHUNK = 500
#: a full-text query uses at most this many words
MAX_SEARCH_TERMS = 16

#: (owner bare JID, id, nonce, with bare JID, with resource, body, stanza XML,
#: check the roster): one row for :meth:`ArchiveStore.append`. The roster
#: flag asks the transaction to keep the row only if ``with`` is in the
#: owner's roster (XEP-0441 'roster' default when no roster was cached).
ArchiveRow = tuple[str, int, int, str, Optional[str], Optional[str], str, bool]


class UnknownArchiveId(StorageError):
    """An archive id given in a query is not in that archive (item-not-found)."""


# -- ids ------------------------------------------------------------------------

def time_to_id(seconds: float) -> int:
    """The smallest id of the given Unix time (microsecond precision)."""
    return int(seconds * 1_000_000) << SEQ_BITS


def id_to_time(archive_id: int) -> float:
    """The Unix time an id stands for."""
    return (archive_id >> SEQ_BITS) / 1_000_000


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def encode_uid(archive_id: int, nonce: int) -> str:
    """The public archive id (XEP-0313 UID, XEP-0359 stanza-id): URL-safe
    base64 of 12 bytes (made for every archived message: binascii directly,
    a third of ``base64.urlsafe_b64encode``'s time)."""
    return binascii.b2a_base64(_UID.pack(archive_id, nonce), newline=False).translate(
        _URLSAFE).decode("ascii")


def decode_uid(uid: str) -> Optional[tuple[int, int]]:
    """(id, nonce) of a public id, or None when it cannot be one of ours."""
    if len(uid) != 16:
        return None
    try:
        raw = base64.urlsafe_b64decode(uid.encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None
    if len(raw) != _UID.size:
        return None
    archive_id, nonce = _UID.unpack(raw)
    if archive_id <= 0 or encode_uid(archive_id, nonce) != uid:
        return None  # not the canonical spelling
    return archive_id, nonce


def with_hash(jid: str) -> int:
    """CRC-32 of a bare JID as a signed 32-bit integer (the index key)."""
    value = zlib.crc32(jid.encode("utf-8"))
    return value - (1 << 32) if value >= (1 << 31) else value


class IdSource:
    """Strictly increasing archive ids from a clock, and random nonces.

    Args:
        clock: an ``IReactorTime`` (``time.time`` when None).
    """

    def __init__(self, clock: Any = None) -> None:
        self._now = now_function(clock)
        #: the last id handed out (or seen stored)
        self.last = 0
        #: random nonces not handed out yet
        self._pool: list[int] = []

    def next_id(self) -> int:
        candidate = int(self._now() * 1_000_000) << SEQ_BITS
        following = self.last + 1
        new = candidate if candidate > following else following
        self.last = new
        return new

    def observe(self, archive_id: int) -> None:
        """Continue above ``archive_id`` (the largest stored one, at start)."""
        if archive_id > self.last:
            self.last = archive_id

    def nonce(self) -> int:
        """32 random bits, signed (os.urandom, read 4 KiB at a time)."""
        pool = self._pool
        if not pool:
            pool.extend(_NONCES.unpack(os.urandom(_NONCES.size)))
        return pool.pop()


# -- values ---------------------------------------------------------------------

@dataclass(frozen=True)
class ArchiveQuery:
    """What one archive query asks for (XEP-0313 §4 form fields and XEP-0059).

    Attributes:
        limit: rows in the page (0: only the count).
        with_jid, with_resource: the 'with' filter (bare JID, optional resource).
        start, end: Unix times, inclusive, compared in whole seconds (the
            precision of the delay stamps the client sees).
        after_id, before_id: 'after-id'/'before-id' (exclusive bounds).
        ids: the 'ids' field: only these messages.
        after: RSM ``<after/>``: page forwards from this id.
        before: RSM ``<before/>``: page backwards from this id; ``""`` (an
            empty ``<before/>``) asks for the last page.
        fulltext: XEP-0431 search text (None or blank: no search).
        count: include the size of the whole result set.
    """

    limit: int
    with_jid: Optional[str] = None
    with_resource: Optional[str] = None
    start: Optional[float] = None
    end: Optional[float] = None
    after_id: Optional[str] = None
    before_id: Optional[str] = None
    ids: tuple[str, ...] = ()
    after: Optional[str] = None
    before: Optional[str] = None
    fulltext: Optional[str] = None
    count: bool = True

    @property
    def backward(self) -> bool:
        return self.before is not None


class ArchivedMessage(NamedTuple):
    uid: str
    #: Unix time the server handled the message
    timestamp: float
    #: serialized XML as archived
    stanza: str


@dataclass(frozen=True)
class ArchivePage:
    """Messages in chronological order and what RSM reports about them."""

    messages: list[ArchivedMessage]
    #: the page reaches the end of the result set in the paging direction
    complete: bool
    count: Optional[int] = None
    #: position of the first message in the whole set, when known cheaply
    first_index: Optional[int] = None


@dataclass(frozen=True)
class ArchivePrefs:
    """XEP-0441 preferences: default policy and the per-JID lists."""

    default: str = "always"
    always: tuple[str, ...] = ()
    never: tuple[str, ...] = ()


# -- transactions -----------------------------------------------------------------

def _user_ids_txn(conn: Connection, owners: Iterable[str]) -> dict[str, int]:
    """Bare JID -> users.id for the owners that are local accounts."""
    pairs: dict[tuple[str, str], str] = {}
    for owner in owners:
        try:
            pairs[split_jid(owner)] = owner
        except ValueError:
            continue
    found: dict[str, int] = {}
    by_domain: dict[str, list[str]] = {}
    for username, domain in pairs:
        by_domain.setdefault(domain, []).append(username)
    # Per domain, "username IN (...)": an index range per name. SQLite
    # plans a row-value IN ((username, domain), ...) as a scan of every
    # account (12 ms per archive batch with 100,000 accounts).
    for domain, names in by_domain.items():
        for start in range(0, len(names), _CHUNK):
            rows = conn.execute(
                sa.select(users.c.id, users.c.username)
                .where(users.c.domain == domain, users.c.username.in_(names[start:start + _CHUNK])))
            for row in rows:
                found[pairs[(row.username, domain)]] = int(row.id)
    return found


def _in_roster_txn(conn: Connection, pairs: set[tuple[int, str]]) -> set[tuple[int, str]]:
    """The (user_id, contact) pairs that are roster items (per account,
    ``contact IN (...)``: index ranges, where SQLite plans a row-value IN as
    a scan of every roster item)."""
    found: set[tuple[int, str]] = set()
    by_user: dict[int, list[str]] = {}
    for user_id, contact in pairs:
        by_user.setdefault(user_id, []).append(contact)
    for user_id, contacts in by_user.items():
        for start in range(0, len(contacts), _CHUNK):
            rows = conn.execute(
                sa.select(roster_items.c.contact)
                .where(roster_items.c.user_id == user_id,
                       roster_items.c.contact.in_(contacts[start:start + _CHUNK])))
            found.update((user_id, r.contact) for r in rows)
    return found


_COLUMNS = ("id", "user_id", "nonce", "with_hash", "with_jid", "with_resource", "body", "stanza")
#: rows per SQLite INSERT statement (8 parameters each; the limit is 32766)
_SQLITE_ROWS_PER_INSERT = 100


@functools.lru_cache(maxsize=8)
def _sqlite_insert(rows: int) -> str:
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * rows)
    return f"INSERT OR IGNORE INTO archive_messages ({', '.join(_COLUMNS)}) VALUES {values}"


def _sqlite_insert_txn(conn: Connection, values: list[tuple[Any, ...]]) -> None:
    """Many rows per statement: the sqlite3 module lets go of the GIL for
    every statement step, and a step per row made the database thread and
    the reactor hand the GIL back and forth thousands of times a second."""
    step = _SQLITE_ROWS_PER_INSERT
    for start in range(0, len(values), step):
        chunk = values[start:start + step]
        conn.exec_driver_sql(_sqlite_insert(len(chunk)),
                             tuple(itertools.chain.from_iterable(chunk)))


_COLUMN_LIST = ", ".join(_COLUMNS)
#: rows are COPYed into a per-connection staging table, then moved with an
#: INSERT that ignores ids already stored (COPY itself cannot: a batch
#: retried after a lost commit must store nothing twice)
_POSTGRESQL_STAGING = (f"CREATE TEMPORARY TABLE IF NOT EXISTS archive_staging "
                       f"ON COMMIT DELETE ROWS AS SELECT {_COLUMN_LIST} FROM archive_messages "
                       f"WITH NO DATA")
_POSTGRESQL_COPY = f"COPY archive_staging ({_COLUMN_LIST}) FROM STDIN"
_POSTGRESQL_MOVE = (f"INSERT INTO archive_messages ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} "
                    f"FROM archive_staging ON CONFLICT (id) DO NOTHING")


def _copy_field(value: Optional[str]) -> str:
    """A text value in COPY's text format (PostgreSQL docs, COPY, "Text Format")."""
    if value is None:
        return "\\N"
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return (value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
                .replace("\r", "\\r"))
    return value


def _postgresql_insert_txn(conn: Connection, values: list[tuple[Any, ...]]) -> None:
    """COPY through a staging table, on the transaction's own DBAPI
    connection: per row, one line of text built here (the quoting and
    parsing happen in the server's process, not on the reactor's core).
    execute_values cost ~6 µs of Python per row, a Core insert 18 µs."""
    field = _copy_field
    text = "".join([
        f"{archive_id}\t{user_id}\t{nonce}\t{hash_}\t{field(with_jid)}\t{field(resource)}\t"
        f"{field(body)}\t{field(stanza)}\n"
        for archive_id, user_id, nonce, hash_, with_jid, resource, body, stanza in values])
    cursor = cast(Any, conn.connection.driver_connection).cursor()
    try:
        cursor.execute(_POSTGRESQL_STAGING)
        cursor.copy_expert(_POSTGRESQL_COPY, io.StringIO(text))
        cursor.execute(_POSTGRESQL_MOVE)
    finally:
        cursor.close()


@checks_own_references
def append_txn(conn: Connection, rows: list[ArchiveRow]) -> list[bool]:
    """Store a batch of rows; True for each row stored.

    A row is skipped (False) when its owner has no account or when it asks
    for a roster check that fails. Re-running after a lost commit stores
    nothing twice: ids are the primary key and duplicates are ignored.
    """
    user_ids = _user_ids_txn(conn, {row[0] for row in rows})
    checks = {(user_ids[row[0]], row[3]) for row in rows if row[7] and row[0] in user_ids}
    in_roster = _in_roster_txn(conn, checks) if checks else set()
    results: list[bool] = []
    values: list[tuple[Any, ...]] = []
    for owner, archive_id, nonce, with_jid, resource, body, stanza, check in rows:
        user_id = user_ids.get(owner)
        if user_id is None or (check and (user_id, with_jid) not in in_roster):
            results.append(False)
            continue
        values.append((archive_id, user_id, nonce, with_hash(with_jid), with_jid, resource,
                       body, stanza))
        results.append(True)
    if values:
        if conn.dialect.name == "sqlite":
            _sqlite_insert_txn(conn, values)
        else:
            _postgresql_insert_txn(conn, values)
    return results


def _like_pattern(word: str) -> str:
    escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _search_condition(conn: Connection, user_id: int, text: str) -> Optional[sa.ColumnElement[bool]]:
    """The full-text condition for ``text``, or None when it has no words
    (such a search matches nothing: the caller returns an empty page)."""
    words = [w for w in text.split() if any(c.isalnum() for c in w)][:MAX_SEARCH_TERMS]
    if not words:
        return None
    t = archive_messages
    if conn.dialect.name == "postgresql":
        simple: sa.ColumnElement[Any] = sa.literal_column("'simple'::regconfig")
        vector = sa.func.to_tsvector(simple, t.c.body)
        return vector.bool_op("@@")(sa.func.websearch_to_tsquery(simple, " ".join(words)))
    terms = " AND ".join('body:"%s"' % w.replace('"', '""') for w in words)
    match = f'owner:"u{user_id}" AND {terms}'
    indexed: sa.Select[Any] = (sa.select(sa.literal_column("rowid"))
                               .select_from(sa.table("archive_fts"))
                               .where(sa.text("archive_fts MATCH :fts_match")
                                      .bindparams(fts_match=match)))
    indexed_to = sa.select(sa.literal_column("indexed_to")).select_from(
        sa.table("archive_fts_state")).scalar_subquery()
    # Rows the indexer has not reached yet: every word as a substring.
    tail = sa.and_(t.c.id > indexed_to, t.c.body.is_not(None),
                   *[t.c.body.like(_like_pattern(w), escape="\\") for w in words])
    return sa.or_(t.c.id.in_(indexed), tail)


def _resolve_uids_txn(conn: Connection, user_id: int, uids: Sequence[str]) -> dict[str, int]:
    """Public id -> id for ids of this archive; UnknownArchiveId for any other."""
    decoded: dict[str, tuple[int, int]] = {}
    for uid in uids:
        parts = decode_uid(uid)
        if parts is None:
            raise UnknownArchiveId(uid)
        decoded[uid] = parts
    t = archive_messages
    stored: dict[int, int] = {}
    wanted = sorted({parts[0] for parts in decoded.values()})
    for start in range(0, len(wanted), _CHUNK):
        rows = conn.execute(sa.select(t.c.id, t.c.nonce).where(
            t.c.user_id == user_id, t.c.id.in_(wanted[start:start + _CHUNK])))
        stored.update((int(r.id), int(r.nonce)) for r in rows)
    for uid, (archive_id, nonce) in decoded.items():
        if stored.get(archive_id) != nonce:
            raise UnknownArchiveId(uid)
    return {uid: parts[0] for uid, parts in decoded.items()}


def query_txn(conn: Connection, owner: str, q: ArchiveQuery) -> ArchivePage:
    """One page of ``owner``'s archive (see :class:`ArchiveQuery`).

    Raises:
        UnknownUser: no such account.
        UnknownArchiveId: an id in the query is not in this archive
            (XEP-0313 §4.1.3, §4.3.2: item-not-found).
    """
    t = archive_messages
    user_id = user_id_txn(conn, owner)
    where: list[sa.ColumnElement[bool]] = [t.c.user_id == user_id]
    #: conditions the count leaves out (see below)
    exact: list[sa.ColumnElement[bool]] = []
    if q.with_jid is not None:
        where.append(t.c.with_hash == with_hash(q.with_jid))
        exact.append(t.c.with_jid == q.with_jid)
        if q.with_resource is not None:
            where.append(t.c.with_resource == q.with_resource)
    if q.start is not None:
        where.append(t.c.id >= time_to_id(int(q.start)))
    if q.end is not None:
        where.append(t.c.id < time_to_id(int(q.end) + 1))
    named = [u for u in (q.after_id, q.before_id, q.after, q.before) if u] + list(q.ids)
    known = _resolve_uids_txn(conn, user_id, named) if named else {}
    if q.after_id:
        where.append(t.c.id > known[q.after_id])
    if q.before_id:
        where.append(t.c.id < known[q.before_id])
    if q.ids:
        where.append(t.c.id.in_(sorted({known[u] for u in q.ids})))
    if q.fulltext is not None and q.fulltext.strip():
        search = _search_condition(conn, user_id, q.fulltext)
        if search is None:
            return ArchivePage([], True, 0 if q.count or q.limit == 0 else None,
                               None)
        where.append(search)

    count: Optional[int] = None
    if q.count or q.limit == 0:
        # Counted on the index alone: 'with' by its hash, without reading
        # every row to compare the JID. Only a CRC-32 collision between two
        # contacts of one account makes it larger (XEP-0059 §2.2 allows an
        # approximate count); the rows returned are always exact.
        count = int(conn.execute(sa.select(sa.func.count()).select_from(t).where(*where))
                    .scalar_one())
    if q.limit == 0:
        return ArchivePage([], count == 0, count, None)

    page = where + exact
    if q.after:
        page.append(t.c.id > known[q.after])
    if q.before:
        page.append(t.c.id < known[q.before])
    order = t.c.id.desc() if q.backward else t.c.id.asc()
    rows = list(conn.execute(sa.select(t.c.id, t.c.nonce, t.c.stanza).where(*page)
                             .order_by(order).limit(q.limit + 1)))
    complete = len(rows) <= q.limit
    rows = rows[:q.limit]
    if q.backward:
        rows.reverse()
    messages = [ArchivedMessage(encode_uid(int(r.id), int(r.nonce)), id_to_time(int(r.id)),
                                r.stanza) for r in rows]
    first_index: Optional[int] = None
    if messages:
        if not q.backward and not q.after:
            first_index = 0
        elif q.before == "" and count is not None:
            first_index = count - len(messages)
    return ArchivePage(messages, complete, count, first_index)


def metadata_txn(conn: Connection, owner: str
                 ) -> tuple[Optional[tuple[str, float]], Optional[tuple[str, float]]]:
    """(uid, time) of the first and of the last message of the archive."""
    t = archive_messages
    user_id = user_id_txn(conn, owner)
    ends = []
    for order in (t.c.id.asc(), t.c.id.desc()):
        row = conn.execute(sa.select(t.c.id, t.c.nonce).where(t.c.user_id == user_id)
                           .order_by(order).limit(1)).first()
        ends.append(None if row is None else
                    (encode_uid(int(row.id), int(row.nonce)), id_to_time(int(row.id))))
    return ends[0], ends[1]


def expire_txn(conn: Connection, before_id: int, limit: int) -> int:
    """Delete at most ``limit`` of the oldest rows with an id below ``before_id``."""
    t = archive_messages
    oldest = sa.select(t.c.id).where(t.c.id < before_id).order_by(t.c.id).limit(limit)
    result = conn.execute(sa.delete(t).where(t.c.id.in_(oldest.scalar_subquery())))
    return int(result.rowcount)


def index_txn(conn: Connection, limit: int) -> int:
    """SQLite: add up to ``limit`` rows above the indexed mark to the FTS5
    index and move the mark; returns how many rows it looked at (0 on
    PostgreSQL, whose GIN index is kept by the database)."""
    if conn.dialect.name != "sqlite":
        return 0
    indexed_to = conn.exec_driver_sql(
        "SELECT indexed_to FROM archive_fts_state WHERE id = 1").scalar_one()
    rows = conn.exec_driver_sql(
        "SELECT id, user_id, body FROM archive_messages WHERE id > ? ORDER BY id LIMIT ?",
        (indexed_to, limit)).all()
    if not rows:
        return 0
    values = [(r[0], f"u{r[1]}", r[2]) for r in rows if r[2] is not None]
    if values:
        conn.exec_driver_sql("INSERT INTO archive_fts (rowid, owner, body) VALUES (?, ?, ?)",
                             values)
    conn.exec_driver_sql("UPDATE archive_fts_state SET indexed_to = ? WHERE id = 1",
                         (rows[-1][0],))
    return len(rows)


def max_id_txn(conn: Connection) -> int:
    """The largest stored id (0 for an empty archive table)."""
    return int(conn.execute(sa.select(sa.func.max(archive_messages.c.id))).scalar() or 0)


def _prefs_of(row: Any) -> ArchivePrefs:
    return ArchivePrefs(row.default_policy, tuple(json.loads(row.always)),
                        tuple(json.loads(row.never)))


def get_prefs_txn(conn: Connection, owner: str) -> Optional[ArchivePrefs]:
    """The account's preferences; None when it never set any."""
    user_id = user_id_txn(conn, owner)
    row = conn.execute(sa.select(archive_prefs).where(archive_prefs.c.user_id == user_id)).first()
    return None if row is None else _prefs_of(row)


def set_prefs_txn(conn: Connection, owner: str, prefs: ArchivePrefs) -> None:
    """Replace the account's preferences."""
    user_id = user_id_txn(conn, owner)
    conn.execute(sa.delete(archive_prefs).where(archive_prefs.c.user_id == user_id))
    conn.execute(sa.insert(archive_prefs).values(
        user_id=user_id, default_policy=prefs.default, always=json.dumps(list(prefs.always)),
        never=json.dumps(list(prefs.never))))


def load_prefs_txn(conn: Connection) -> list[tuple[str, ArchivePrefs]]:
    """Every stored preference as (owner bare JID, prefs)."""
    rows = conn.execute(
        sa.select(users.c.username, users.c.domain, archive_prefs)
        .join(users, users.c.id == archive_prefs.c.user_id))
    return [(f"{r.username}@{r.domain}", _prefs_of(r)) for r in rows]


# -- the store --------------------------------------------------------------------

class ArchiveStore:
    """Message archives. Rows are written in batches (:class:`BatchWriter`);
    queries run :meth:`flush` first, so they see every row appended before.

    Args:
        db: the Database.
        clock: an ``IReactorTime`` for ids and the writer's timer.
        max_batch, delay, capacity: see :class:`BatchWriter`.
    """

    def __init__(self, db: Database, clock: Any = None, *, max_batch: int = 5000,
                 delay: float = 0.05, capacity: int = 50000) -> None:
        self.db = db
        self.ids = IdSource(clock)
        self.writer: BatchWriter[ArchiveRow] = BatchWriter(
            db, "archive.append", append_txn, clock, max_batch=max_batch, capacity=capacity,
            delay=delay)

    def append(self, row: ArchiveRow) -> Deferred[bool]:
        """Queue a row; fires True after the commit that stored it (False:
        skipped, see :func:`append_txn`)."""
        return self.writer.write(row)

    def submit(self, row: ArchiveRow) -> None:
        """Queue a row that nothing waits for (failures are logged)."""
        self.writer.submit(row)

    def index(self, limit: int) -> Deferred[int]:
        """Index up to ``limit`` rows for full-text search (SQLite); fires
        with how many rows it looked at."""
        return self.db.run("archive.index", index_txn, limit)

    def flush(self) -> Deferred[None]:
        """Fires when every row appended so far is committed (or failed)."""
        return self.writer.flush()

    def close(self) -> Deferred[None]:
        """Write what is queued and refuse further rows."""
        return self.writer.close()

    def query(self, owner: str, q: ArchiveQuery) -> Deferred[ArchivePage]:
        """One page; fails with UnknownArchiveId or UnknownUser."""
        return self.db.run("archive.query", query_txn, owner, q)

    def metadata(self, owner: str
                 ) -> Deferred[tuple[Optional[tuple[str, float]], Optional[tuple[str, float]]]]:
        """(uid, time) of the first and the last message, None when empty."""
        return self.db.run("archive.metadata", metadata_txn, owner)

    def expire(self, before: float, limit: int) -> Deferred[int]:
        """Delete up to ``limit`` of the oldest messages archived before
        Unix time ``before``; fires with how many went."""
        return self.db.run("archive.expire", expire_txn, time_to_id(before), limit)

    def max_id(self) -> Deferred[int]:
        return self.db.run("archive.max_id", max_id_txn)

    def get_prefs(self, owner: str) -> Deferred[Optional[ArchivePrefs]]:
        return self.db.run("archive.get_prefs", get_prefs_txn, owner)

    def set_prefs(self, owner: str, prefs: ArchivePrefs) -> Deferred[None]:
        return self.db.run("archive.set_prefs", set_prefs_txn, owner, prefs)

    def load_prefs(self) -> Deferred[list[tuple[str, ArchivePrefs]]]:
        """Every account's stored preferences (kept in memory by the module)."""
        return self.db.run("archive.load_prefs", load_prefs_txn)
