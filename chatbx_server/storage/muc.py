"""Group chat storage: persistent rooms, affiliations and the room archive.

XEP-0045 §10.1 (persistent rooms), §9-§10 (affiliation lists), XEP-0313 on
the room JID. Occupants are not stored: they are joined sessions.

Archive rows are written by a small grouping writer (``ArchiveWriter``):
the messages of one reactor turn go in one transaction, so a busy room does
not cost a transaction per message. Nothing acknowledges a groupchat
message on the promise that it is stored, so the writer does not make
anybody wait; rows are kept (never dropped) until their batch commits.
"""

from __future__ import annotations

import json
from typing import Any, Callable, NamedTuple, Optional, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatbx_server.logs import log_observer
from chatbx_server.storage.database import Database
from chatbx_server.storage.schema import muc_affiliations, muc_archive, muc_rooms
from chatbx_server.storage.users import now_function

__all__ = ["ArchiveRow", "ArchiveWriter", "MucStore", "RoomRecord"]

log = Logger(observer=log_observer)
T = TypeVar("T")

_r = muc_rooms.c
_a = muc_affiliations.c
_m = muc_archive.c

#: rows written per transaction at most by the archive writer
WRITE_BATCH = 500


class RoomRecord(NamedTuple):
    """A stored room, as loaded at start."""

    id: int
    jid: str
    config: dict[str, Any]
    subject: Optional[str]
    subject_nick: Optional[str]
    creator: Optional[str]
    vcard: Optional[str]
    avatar_hash: Optional[str]
    created_at: float
    #: bare JID -> (affiliation, reserved nick, reason)
    affiliations: dict[str, tuple[str, Optional[str], Optional[str]]]


class ArchiveRow(NamedTuple):
    """One archived message."""

    id: int
    stanza_id: str
    created_at: float
    nick: str
    occupant_id: Optional[str]
    sender: Optional[str]
    stanza: str
    retracted: bool


# --- rooms -------------------------------------------------------------------

def load_rooms_txn(conn: Connection, services: list[str]) -> list[RoomRecord]:
    """Every stored room of the given service domains, with its affiliations."""
    rooms: dict[int, RoomRecord] = {}
    for row in conn.execute(sa.select(muc_rooms)):
        if row.jid.partition("@")[2] not in services:
            continue
        rooms[row.id] = RoomRecord(row.id, row.jid, json.loads(row.config), row.subject,
                                   row.subject_nick, row.creator, row.vcard, row.avatar_hash,
                                   float(row.created_at), {})
    for row in conn.execute(sa.select(muc_affiliations)):
        room = rooms.get(row.room_id)
        if room is not None:
            room.affiliations[row.jid] = (row.affiliation, row.nick, row.reason)
    return list(rooms.values())


def save_room_txn(conn: Connection, jid: str, config: dict[str, Any], subject: Optional[str],
                  subject_nick: Optional[str], creator: Optional[str],
                  affiliations: dict[str, tuple[str, Optional[str], Optional[str]]],
                  now: float) -> int:
    """Create or update a room and replace its affiliations; returns its id."""
    found = conn.execute(sa.select(_r.id).where(_r.jid == jid)).scalar()
    values = {"config": json.dumps(config, sort_keys=True), "subject": subject,
              "subject_nick": subject_nick}
    if found is None:
        key = conn.execute(sa.insert(muc_rooms).values(
            jid=jid, creator=creator, created_at=now, **values)).inserted_primary_key
        assert key is not None
        room_id = int(key[0])
    else:
        room_id = int(found)
        conn.execute(sa.update(muc_rooms).where(_r.id == room_id).values(**values))
    conn.execute(sa.delete(muc_affiliations).where(_a.room_id == room_id))
    if affiliations:
        conn.execute(sa.insert(muc_affiliations), [
            {"room_id": room_id, "jid": who, "affiliation": aff, "nick": nick, "reason": reason}
            for who, (aff, nick, reason) in affiliations.items()])
    return int(room_id)


def update_room_txn(conn: Connection, jid: str, values: dict[str, Any]) -> bool:
    """Update some columns of a stored room (subject, config, vcard ...)."""
    if "config" in values:
        values = dict(values, config=json.dumps(values["config"], sort_keys=True))
    return conn.execute(sa.update(muc_rooms).where(_r.jid == jid).values(**values)).rowcount > 0


def set_affiliation_txn(conn: Connection, jid: str, who: str, affiliation: Optional[str],
                        nick: Optional[str], reason: Optional[str]) -> bool:
    """Set (or, with None, remove) one affiliation of a stored room."""
    room_id = conn.execute(sa.select(_r.id).where(_r.jid == jid)).scalar()
    if room_id is None:
        return False
    conn.execute(sa.delete(muc_affiliations).where(_a.room_id == room_id, _a.jid == who))
    if affiliation is not None:
        conn.execute(sa.insert(muc_affiliations).values(
            room_id=room_id, jid=who, affiliation=affiliation, nick=nick, reason=reason))
    return True


def delete_room_txn(conn: Connection, jid: str) -> bool:
    """Delete a room with its affiliations and archive."""
    room_id = conn.execute(sa.select(_r.id).where(_r.jid == jid)).scalar()
    if room_id is None:
        return False
    # Explicit deletes: SQLite connections made without foreign_keys=ON
    # (chatbxctl on an old file) must not leave orphans either.
    conn.execute(sa.delete(muc_archive).where(_m.room_id == room_id))
    conn.execute(sa.delete(muc_affiliations).where(_a.room_id == room_id))
    conn.execute(sa.delete(muc_rooms).where(_r.id == room_id))
    return True


def rooms_created_by_txn(conn: Connection, creator: str) -> int:
    return int(conn.execute(
        sa.select(sa.func.count()).select_from(muc_rooms).where(_r.creator == creator)).scalar_one())


def list_rooms_txn(conn: Connection) -> list[dict[str, Any]]:
    """Every stored room with counts, for chatbxctl."""
    counts = {int(r[0]): int(r[1]) for r in conn.execute(
        sa.select(_m.room_id, sa.func.count()).group_by(_m.room_id))}
    affs = {int(r[0]): int(r[1]) for r in conn.execute(
        sa.select(_a.room_id, sa.func.count()).group_by(_a.room_id))}
    out = []
    for row in conn.execute(sa.select(muc_rooms).order_by(_r.jid)):
        out.append({"jid": row.jid, "config": json.loads(row.config), "subject": row.subject,
                    "creator": row.creator, "created_at": float(row.created_at),
                    "messages": int(counts.get(row.id, 0)),
                    "affiliations": int(affs.get(row.id, 0))})
    return out


def room_affiliations_txn(conn: Connection, jid: str) -> list[tuple[str, str]]:
    room_id = conn.execute(sa.select(_r.id).where(_r.jid == jid)).scalar()
    if room_id is None:
        return []
    return [(r.jid, r.affiliation) for r in conn.execute(
        sa.select(_a.jid, _a.affiliation).where(_a.room_id == room_id).order_by(_a.jid))]


# --- archive -------------------------------------------------------------------

def _room_id_txn(conn: Connection, jid: str) -> Optional[int]:
    found = conn.execute(sa.select(_r.id).where(_r.jid == jid)).scalar()
    return None if found is None else int(found)


def archive_insert_txn(conn: Connection, rows: list[dict[str, Any]]) -> int:
    """Insert archive rows (each names its room by ``room`` JID)."""
    ids: dict[str, Optional[int]] = {}
    values = []
    for row in rows:
        room = row["room"]
        if room not in ids:
            ids[room] = _room_id_txn(conn, room)
        room_id = ids[room]
        if room_id is None:
            continue  # destroyed meanwhile
        values.append({k: v for k, v in row.items() if k != "room"} | {"room_id": room_id})
    if values:
        conn.execute(sa.insert(muc_archive), values)
    return len(values)


def _to_row(r: Any) -> ArchiveRow:
    return ArchiveRow(int(r.id), r.stanza_id, float(r.created_at), r.nick, r.occupant_id,
                      r.sender, r.stanza, bool(r.retracted))


def archive_query_txn(conn: Connection, room: str, *, start: Optional[float] = None,
                      end: Optional[float] = None, after: Optional[str] = None,
                      before: Optional[str] = None, last: bool = False,
                      limit: int = 50) -> tuple[list[ArchiveRow], bool, int]:
    """One page of a room's archive, oldest first.

    Args:
        after / before: stanza ids (RSM ``after``/``before``, XEP-0059); an
            unknown id raises KeyError (item-not-found).
        last: the page at the end (RSM ``<before/>`` empty).
        limit: rows per page.

    Returns:
        (rows, complete, count): complete is True when the page reaches the
        end of the archive in the paging direction; count is the size of
        the whole result set.
    """
    room_id = _room_id_txn(conn, room)
    if room_id is None:
        return [], True, 0
    where = [_m.room_id == room_id]
    if start is not None:
        where.append(_m.created_at >= start)
    if end is not None:
        where.append(_m.created_at <= end)
    count = int(conn.execute(sa.select(sa.func.count()).select_from(muc_archive)
                             .where(*where)).scalar_one())
    for ref, op in ((after, "gt"), (before, "lt")):
        if ref is None:
            continue
        ref_id = conn.execute(sa.select(_m.id).where(_m.room_id == room_id,
                                                    _m.stanza_id == ref)).scalar()
        if ref_id is None:
            raise KeyError(ref)
        where.append(_m.id > ref_id if op == "gt" else _m.id < ref_id)
    backwards = last or before is not None
    order = _m.id.desc() if backwards else _m.id
    rows = [_to_row(r) for r in conn.execute(
        sa.select(muc_archive).where(*where).order_by(order).limit(limit + 1))]
    complete = len(rows) <= limit
    rows = rows[:limit]
    if backwards:
        rows.reverse()
    return rows, complete, count


def archive_recent_txn(conn: Connection, room: str, limit: int) -> list[ArchiveRow]:
    """The last ``limit`` messages of a room, oldest first (history on load)."""
    rows, _, _ = archive_query_txn(conn, room, last=True, limit=limit)
    return rows


def archive_get_txn(conn: Connection, room: str, stanza_id: str) -> Optional[ArchiveRow]:
    room_id = _room_id_txn(conn, room)
    if room_id is None:
        return None
    r = conn.execute(sa.select(muc_archive).where(
        _m.room_id == room_id, _m.stanza_id == stanza_id)).first()
    return None if r is None else _to_row(r)


def archive_retract_txn(conn: Connection, room: str, stanza_id: str, tombstone: str) -> bool:
    """Replace an archived message with its tombstone (XEP-0424 §5, XEP-0425)."""
    room_id = _room_id_txn(conn, room)
    if room_id is None:
        return False
    return conn.execute(sa.update(muc_archive).where(
        _m.room_id == room_id, _m.stanza_id == stanza_id).values(
        stanza=tombstone, retracted=True)).rowcount > 0


class ArchiveWriter:
    """Groups archive inserts: rows queued in one reactor turn share a transaction.

    ``flushed()`` fires once everything queued so far is committed (tests,
    shutdown, and readers that must see their own writes).
    """

    def __init__(self, db: Database, clock: Any) -> None:
        self.db = db
        self.clock = clock
        self._queue: list[dict[str, Any]] = []
        self._call: Any = None
        self._running: Optional[defer.Deferred[Any]] = None
        self._waiters: list[defer.Deferred[None]] = []

    def add(self, row: dict[str, Any]) -> None:
        self._queue.append(row)
        if self._call is None and self._running is None:
            self._call = self.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._call = None
        batch, self._queue = self._queue[:WRITE_BATCH], self._queue[WRITE_BATCH:]
        if not batch:
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                w.callback(None)
            return
        d = self.db.run("muc.archive.insert", archive_insert_txn, batch)
        self._running = d

        def done(result: Any) -> None:
            self._running = None
            if isinstance(result, Failure):
                # Kept, not dropped: retried with the next batch.
                log.failure("muc archive write failed; retrying", result)
                self._queue[:0] = batch
                self._call = self.clock.callLater(1.0, self._flush)
                return
            self._flush()

        d.addBoth(done)

    def flushed(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        if not self._queue and self._running is None and self._call is None:
            d.callback(None)
        else:
            self._waiters.append(d)
        return d


class MucStore:
    """Rooms, affiliations and the room archive.

    Args:
        db: the Database.
        clock: an ``IReactorTime`` (timestamps, the archive writer's turns).
    """

    def __init__(self, db: Database, clock: Any = None) -> None:
        self.db = db
        self._now = now_function(clock)
        if clock is None:
            from twisted.internet import reactor as clock
        self.writer = ArchiveWriter(db, clock)
        #: room -> fires when the last write queued for it has finished
        self._tails: dict[str, defer.Deferred[None]] = {}

    def _in_order(self, room: str, desc: str, fn: Callable[..., T], *args: Any,
                  wait: Optional[defer.Deferred[Any]] = None) -> defer.Deferred[T]:
        """Run a write for ``room`` after the previous one for it finished
        (and after ``wait``, when given).

        PostgreSQL's pool runs transactions side by side: two saves of one
        room (password set, then cleared) could commit in either order and
        leave the older state in the database for the next start. The
        room's place in line is taken now, so a read asked for after this
        call (:meth:`_after_writes`) sees the write."""
        previous = self._tails.get(room)
        gates = [g for g in (previous, wait) if g is not None]
        d: defer.Deferred[T]
        if not gates:
            d = self.db.run(desc, fn, *args)
        else:
            d = defer.Deferred()

            def start(_: Any) -> None:
                self.db.run(desc, fn, *args).chainDeferred(d)

            gate = gates[0] if len(gates) == 1 else defer.DeferredList(gates, consumeErrors=True)
            gate.addBoth(start)
        done: defer.Deferred[None] = defer.Deferred()
        self._tails[room] = done

        def finished(result: Any) -> Any:
            if self._tails.get(room) is done:
                del self._tails[room]
            done.callback(None)
            return result

        d.addBoth(finished)
        return d

    def _after_writes(self, room: str) -> defer.Deferred[None]:
        """Fires once the writes queued for ``room`` so far have finished
        and the archive's queued rows are written: a read after a
        moderation must find the tombstone (XEP-0425), not the message."""
        flushed = self.flushed()
        tail = self._tails.get(room)
        if tail is None:
            return flushed
        d: defer.Deferred[None] = defer.Deferred()
        both = defer.DeferredList([flushed, tail], consumeErrors=True)
        both.addBoth(lambda _: d.callback(None))
        return d

    def load_rooms(self, services: list[str]) -> defer.Deferred[list[RoomRecord]]:
        return self.db.run("muc.load", load_rooms_txn, list(services))

    def save_room(self, jid: str, config: dict[str, Any], subject: Optional[str],
                  subject_nick: Optional[str], creator: Optional[str],
                  affiliations: dict[str, tuple[str, Optional[str], Optional[str]]]
                  ) -> defer.Deferred[int]:
        """Store a room as it is now (made persistent, or reconfigured)."""
        return self._in_order(jid, "muc.save", save_room_txn, jid, dict(config), subject,
                              subject_nick, creator, dict(affiliations), self._now())

    def update_room(self, jid: str, **values: Any) -> defer.Deferred[bool]:
        return self._in_order(jid, "muc.update", update_room_txn, jid, values)

    def set_affiliation(self, jid: str, who: str, affiliation: Optional[str],
                        nick: Optional[str] = None, reason: Optional[str] = None
                        ) -> defer.Deferred[bool]:
        return self._in_order(jid, "muc.affiliation", set_affiliation_txn, jid, who, affiliation,
                              nick, reason)

    def delete_room(self, jid: str) -> defer.Deferred[bool]:
        return self._in_order(jid, "muc.delete", delete_room_txn, jid)

    def rooms_created_by(self, creator: str) -> defer.Deferred[int]:
        return self.db.run("muc.count", rooms_created_by_txn, creator)

    def list_rooms(self) -> defer.Deferred[list[dict[str, Any]]]:
        return self.db.run("muc.list", list_rooms_txn)

    def affiliations(self, jid: str) -> defer.Deferred[list[tuple[str, str]]]:
        return self.db.run("muc.affiliations", room_affiliations_txn, jid)

    # -- archive --
    def archive(self, room: str, stanza_id: str, nick: str, occupant_id: Optional[str],
                sender: Optional[str], stanza: str, created_at: Optional[float] = None) -> None:
        """Queue one message for the archive (committed with its reactor turn's batch)."""
        self.writer.add({"room": room, "stanza_id": stanza_id, "nick": nick,
                         "occupant_id": occupant_id, "sender": sender, "stanza": stanza,
                         "created_at": self._now() if created_at is None else created_at})

    def flushed(self) -> defer.Deferred[None]:
        return self.writer.flushed()

    def query(self, room: str, **kwargs: Any) -> defer.Deferred[tuple[list[ArchiveRow], bool, int]]:
        """One page (archive_query_txn), after the queued rows and the
        room's pending writes (a retraction) are done."""
        d: defer.Deferred[Any] = self._after_writes(room)
        d.addCallback(lambda _: self.db.run("muc.archive.query", _query, room, kwargs))
        return d

    def recent(self, room: str, limit: int) -> defer.Deferred[list[ArchiveRow]]:
        return self.db.run("muc.archive.recent", archive_recent_txn, room, limit)

    def get(self, room: str, stanza_id: str) -> defer.Deferred[Optional[ArchiveRow]]:
        d: defer.Deferred[Any] = self._after_writes(room)
        d.addCallback(lambda _: self.db.run("muc.archive.get", archive_get_txn, room, stanza_id))
        return d

    def retract(self, room: str, stanza_id: str, tombstone: str) -> defer.Deferred[bool]:
        """Replace a message by its tombstone, after the queued rows (it may
        be among them) and in line with the room's other writes."""
        return self._in_order(room, "muc.archive.retract", archive_retract_txn, room, stanza_id,
                              tombstone, wait=self.flushed())


def _query(conn: Connection, room: str, kwargs: dict[str, Any]) -> tuple[list[ArchiveRow], bool, int]:
    return archive_query_txn(conn, room, **kwargs)
