"""ArchiveStore (XEP-0313 archives, XEP-0441 prefs, XEP-0431 search), on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any, Optional

import pytest
import sqlalchemy as sa

from chatbx_server.storage import Stores
from chatbx_server.storage.archive import (ArchivePrefs, ArchiveQuery, UnknownArchiveId,
                                           append_txn, decode_uid, encode_uid, id_to_time,
                                           time_to_id, with_hash)
from chatbx_server.storage.errors import UnknownUser
from chatbx_server.storage.roster import RosterItem

ALICE, BOB, CAROL = "alice@example.org", "bob@example.org", "carol@example.org"
T0 = 1_700_000_000.0


@pytest.fixture
def archive(stores: Stores, result_of: Any, db_clock: Any) -> Any:
    result_of(stores.users.create_many([(ALICE, "p"), (BOB, "p"), (CAROL, "p")]))
    db_clock.advance(T0 - db_clock.seconds())
    return stores.archive


class Writer:
    """Appends messages the way the mam module does, one second apart."""

    def __init__(self, archive: Any, clock: Any, result_of: Any) -> None:
        self.archive, self.clock, self.result_of = archive, clock, result_of
        self.uids: dict[str, list[str]] = {}

    def add(self, owner: str, with_jid: str, body: Optional[str] = "hi",
            resource: Optional[str] = None, roster_check: bool = False, step: float = 1.0) -> str:
        self.clock.advance(step)
        ids = self.archive.ids
        archive_id, nonce = ids.next_id(), ids.nonce()
        xml = f"<message xmlns='jabber:client' id='m{archive_id}'><body>{body}</body></message>"
        d = self.archive.append((owner, archive_id, nonce, with_jid, resource, body, xml,
                                 roster_check))
        uid = encode_uid(archive_id, nonce)
        d.addCallback(lambda stored: self.uids.setdefault(owner, []).append(uid) if stored else None)
        return uid

    def flush(self) -> None:
        self.result_of(self.archive.flush())


@pytest.fixture
def writer(archive: Any, db_clock: Any, result_of: Any) -> Writer:
    return Writer(archive, db_clock, result_of)


def page(archive: Any, result_of: Any, owner: str = ALICE, **kw: Any) -> Any:
    kw.setdefault("limit", 50)
    return result_of(archive.query(owner, ArchiveQuery(**kw)))


def uids(p: Any) -> list[str]:
    return [m.uid for m in p.messages]


def test_ids_encode_time_order_and_a_random_part() -> None:
    """Public ids round-trip, carry the time, refuse anything not canonical, and
    the CRC index key is a signed 32-bit value."""
    uid = encode_uid(time_to_id(T0) + 5, -7)
    assert len(uid) == 16 and decode_uid(uid) == (time_to_id(T0) + 5, -7)
    assert id_to_time(time_to_id(T0) + 5) == T0
    assert decode_uid("x" * 15) is None and decode_uid("!" * 16) is None
    assert decode_uid(encode_uid(0, 1)) is None
    assert all(-(1 << 31) <= with_hash(j) < (1 << 31) for j in (ALICE, BOB, "x" * 3000))


def test_append_and_query_in_order(archive: Any, writer: Writer, result_of: Any) -> None:
    """Rows are committed by the batch writer; a query returns them oldest first with
    their XML and time, complete, with the count and index 0."""
    first = writer.add(ALICE, BOB, "one")
    second = writer.add(ALICE, CAROL, "two")
    writer.add(BOB, ALICE, "bob's")
    writer.flush()
    p = page(archive, result_of)
    assert uids(p) == [first, second]
    assert p.messages[0].stanza.endswith("<body>one</body></message>")
    assert p.messages[0].timestamp == T0 + 1 and p.messages[1].timestamp == T0 + 2
    assert p.complete and p.count == 2 and p.first_index == 0


def test_rows_of_unknown_accounts_are_skipped(archive: Any, db_clock: Any, result_of: Any) -> None:
    """append fires False for an owner without an account; the others are stored."""
    ids = archive.ids
    rows = [(owner, ids.next_id(), ids.nonce(), BOB, None, "x", "<message/>", False)
            for owner in ("ghost@example.org", ALICE, "not a jid")]
    ds = [archive.append(r) for r in rows]
    result_of(archive.flush())
    assert [result_of(d) for d in ds] == [False, True, False]


def test_roster_checked_rows_need_the_contact_in_the_roster(archive: Any, writer: Writer,
                                                             stores: Stores, result_of: Any) -> None:
    """A row asking for the roster check (XEP-0441 'roster') is kept only when the
    contact is a roster item of the owner."""
    result_of(stores.roster.set_item(ALICE, RosterItem(BOB, None, "both", False, False, ())))
    kept = writer.add(ALICE, BOB, roster_check=True)
    writer.add(ALICE, CAROL, roster_check=True)
    writer.flush()
    assert uids(page(archive, result_of)) == [kept]


def test_appending_twice_stores_once(archive: Any, database: Any, result_of: Any) -> None:
    """A batch re-run after a lost commit (the _txn rule) adds no duplicates."""
    ids = archive.ids
    rows = [(ALICE, ids.next_id(), ids.nonce(), BOB, None, "x", "<message/>", False)]
    assert result_of(database.run("t", append_txn, rows)) == [True]
    assert result_of(database.run("t", append_txn, rows)) == [True]
    assert page(archive, result_of).count == 1


def test_rows_keep_tabs_newlines_and_backslashes(archive: Any, database: Any,
                                                 result_of: Any) -> None:
    """Text with the characters PostgreSQL's COPY text format escapes comes
    back exactly, and a missing resource stays NULL (the with/resource
    filter still matches)."""
    ids = archive.ids
    body = "a\tb\nc\r\nd \\N \\. \\\\ é ✓"
    xml = f"<message xmlns='jabber:client'><body>{body}</body></message>"
    rows = [(ALICE, ids.next_id(), ids.nonce(), BOB, None, body, xml, False),
            (ALICE, ids.next_id(), ids.nonce(), BOB, "pc\t1", None, "<message/>", False)]
    assert result_of(database.run("t", append_txn, rows)) == [True, True]
    assert [m.stanza for m in page(archive, result_of).messages] == [xml, "<message/>"]
    assert page(archive, result_of, with_jid=BOB, with_resource="pc\t1").count == 1


def test_with_filter_bare_full_and_self(archive: Any, writer: Writer, result_of: Any) -> None:
    """'with' a bare JID matches every resource; a full JID only that resource; the
    account's own JID only messages to itself (XEP-0313 §4.1.1)."""
    a = writer.add(ALICE, BOB, resource="phone")
    b = writer.add(ALICE, BOB, resource="desk")
    writer.add(ALICE, CAROL)
    me = writer.add(ALICE, ALICE, resource="laptop")
    writer.flush()
    assert uids(page(archive, result_of, with_jid=BOB)) == [a, b]
    assert uids(page(archive, result_of, with_jid=BOB, with_resource="desk")) == [b]
    assert uids(page(archive, result_of, with_jid=ALICE)) == [me]
    assert page(archive, result_of, with_jid="nobody@example.org").messages == []


def test_with_hash_collision_keeps_rows_exact(archive: Any, writer: Writer, result_of: Any) -> None:
    """Two contacts whose CRC-32 index keys collide: pages hold only the asked
    conversation; only the count (taken on the index) includes the other one."""
    one, other = "c699378@example.org", "c18020006@example.org"
    assert with_hash(one) == with_hash(other)
    mine = writer.add(ALICE, one)
    writer.add(ALICE, other)
    writer.flush()
    p = page(archive, result_of, with_jid=one)
    assert uids(p) == [mine] and p.count == 2


def test_time_range_is_inclusive_in_whole_seconds(archive: Any, writer: Writer, result_of: Any) -> None:
    """start/end include messages of the boundary seconds (the precision clients see)."""
    got = [writer.add(ALICE, BOB, step=1.5) for _ in range(4)]  # T0+1.5, +3, +4.5, +6
    writer.flush()
    assert uids(page(archive, result_of, start=T0 + 3, end=T0 + 4)) == got[1:3]
    assert uids(page(archive, result_of, start=T0 + 4.9)) == got[2:]
    assert uids(page(archive, result_of, end=T0 + 1)) == got[:1]


def test_id_bounds_and_ids(archive: Any, writer: Writer, result_of: Any) -> None:
    """after-id/before-id are exclusive bounds; 'ids' picks messages."""
    got = [writer.add(ALICE, BOB) for _ in range(5)]
    writer.flush()
    assert uids(page(archive, result_of, after_id=got[0], before_id=got[4])) == got[1:4]
    assert uids(page(archive, result_of, ids=(got[3], got[1]))) == [got[1], got[3]]


def test_unknown_ids_are_not_found(archive: Any, writer: Writer, result_of: Any) -> None:
    """An id that is malformed, has the wrong random part, or belongs to another
    archive is not found (item-not-found), whatever field names it."""
    mine = writer.add(ALICE, BOB)
    bobs = writer.add(BOB, ALICE)
    writer.flush()
    archive_id, nonce = decode_uid(mine)  # type: ignore[misc]
    for bad in ("nonsense", encode_uid(archive_id, nonce + 1), bobs):
        for field in ("after_id", "before_id", "after", "before"):
            with pytest.raises(UnknownArchiveId):
                page(archive, result_of, **{field: bad})
        with pytest.raises(UnknownArchiveId):
            page(archive, result_of, ids=(mine, bad))


def test_paging_forwards_and_backwards(archive: Any, writer: Writer, result_of: Any) -> None:
    """RSM after pages forwards, before backwards, empty before gives the last page;
    complete is true exactly when the page reaches the end in its direction."""
    got = [writer.add(ALICE, BOB) for _ in range(7)]
    writer.flush()
    p1 = page(archive, result_of, limit=3)
    assert uids(p1) == got[:3] and not p1.complete and p1.count == 7 and p1.first_index == 0
    p2 = page(archive, result_of, limit=3, after=got[2])
    assert uids(p2) == got[3:6] and not p2.complete and p2.first_index is None
    p3 = page(archive, result_of, limit=3, after=got[5])
    assert uids(p3) == got[6:] and p3.complete
    last = page(archive, result_of, limit=3, before="")
    assert uids(last) == got[4:] and not last.complete and last.first_index == 4
    back = page(archive, result_of, limit=3, before=got[4])
    assert uids(back) == got[1:4] and not back.complete
    start = page(archive, result_of, limit=3, before=got[1])
    assert uids(start) == got[:1] and start.complete
    exact = page(archive, result_of, limit=7)
    assert uids(exact) == got and exact.complete


def test_count_only_and_without_count(archive: Any, writer: Writer, result_of: Any) -> None:
    """limit 0 returns only the count; count=False leaves it out."""
    for _ in range(3):
        writer.add(ALICE, BOB)
    writer.flush()
    only = page(archive, result_of, limit=0, count=False)
    assert only.messages == [] and only.count == 3 and not only.complete
    assert page(archive, result_of, count=False).count is None
    assert page(archive, result_of, owner=CAROL, limit=0).complete


def test_full_text_search_indexed_and_not_yet_indexed(archive: Any, writer: Writer,
                                                      result_of: Any) -> None:
    """Every word must occur, in any case; rows not yet indexed
    are found too; another archive's messages never are."""
    hit = writer.add(ALICE, BOB, "The quick brown Fox")
    writer.add(ALICE, BOB, "a slow brown dog")
    writer.add(BOB, ALICE, "the quick brown fox, too")
    writer.flush()
    assert uids(page(archive, result_of, fulltext="fox brown")) == [hit]
    result_of(archive.index(1000))  # now through the index (SQLite) as well
    late = writer.add(ALICE, CAROL, "another FOX, brown")  # not indexed yet
    writer.flush()
    assert uids(page(archive, result_of, fulltext="brown fox")) == [hit, late]
    assert uids(page(archive, result_of, fulltext="fox", with_jid=BOB)) == [hit]
    assert page(archive, result_of, fulltext="cat").messages == []
    empty = page(archive, result_of, fulltext="?! ...")
    assert empty.messages == [] and empty.complete
    assert uids(page(archive, result_of, fulltext="   ")) == uids(page(archive, result_of))


def test_indexing_follows_in_chunks(archive: Any, writer: Writer, result_of: Any,
                                    database: Any) -> None:
    """index(limit) looks at no more than limit rows a run and nothing twice."""
    for n in range(5):
        writer.add(ALICE, BOB, f"word{n}")
    writer.add(ALICE, BOB, None)
    writer.flush()
    runs = [result_of(archive.index(4)) for _ in range(3)]
    if database.dialect == "sqlite":
        assert runs == [4, 2, 0]
    else:
        assert runs == [0, 0, 0]  # the GIN index needs no help
    assert len(page(archive, result_of, fulltext="word3").messages) == 1


def test_expire_deletes_the_oldest_in_batches(archive: Any, writer: Writer, result_of: Any) -> None:
    """expire deletes at most `limit` rows older than the cut-off, oldest first, in
    every archive, and their full-text entries with them."""
    old = [writer.add(owner, BOB, "ancient") for owner in (ALICE, CAROL, ALICE)]
    writer.add(ALICE, BOB, "recent", step=100)
    writer.flush()
    result_of(archive.index(100))
    cut = T0 + 50
    assert result_of(archive.expire(cut, 2)) == 2
    assert uids(page(archive, result_of, fulltext="ancient")) == [old[2]]
    assert result_of(archive.expire(cut, 2)) == 1
    assert result_of(archive.expire(cut, 2)) == 0
    assert [m.stanza.count("recent") for m in page(archive, result_of).messages] == [1]
    assert page(archive, result_of, owner=CAROL).messages == []


def test_deleted_account_takes_its_archive(archive: Any, writer: Writer, stores: Stores,
                                           result_of: Any, database: Any) -> None:
    """Rows go with the account (ON DELETE CASCADE), full-text entries too."""
    writer.add(ALICE, BOB, "secret")
    writer.flush()
    result_of(archive.index(100))
    result_of(stores.users.delete(ALICE))
    with database.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM archive_messages")).scalar() == 0
        if database.dialect == "sqlite":
            assert conn.execute(sa.text("SELECT count(*) FROM archive_fts")).scalar() == 0


def test_metadata_first_and_last(archive: Any, writer: Writer, result_of: Any) -> None:
    """metadata gives the first and last message (id and time), None when empty."""
    assert result_of(archive.metadata(ALICE)) == (None, None)
    first = writer.add(ALICE, BOB)
    writer.add(ALICE, BOB)
    last = writer.add(ALICE, CAROL)
    writer.flush()
    assert result_of(archive.metadata(ALICE)) == ((first, T0 + 1), (last, T0 + 3))


def test_unknown_account_queries(archive: Any, result_of: Any) -> None:
    """Queries of a JID without an account fail with UnknownUser."""
    with pytest.raises(UnknownUser):
        page(archive, result_of, owner="ghost@example.org")


def test_preferences_round_trip(archive: Any, result_of: Any) -> None:
    """Preferences are stored per account, replaced on set, and all loaded at once."""
    assert result_of(archive.get_prefs(ALICE)) is None
    prefs = ArchivePrefs("roster", (BOB,), (CAROL, "dave@example.org/phone"))
    result_of(archive.set_prefs(ALICE, prefs))
    result_of(archive.set_prefs(BOB, ArchivePrefs("never")))
    result_of(archive.set_prefs(BOB, ArchivePrefs("always", (), (ALICE,))))
    assert result_of(archive.get_prefs(ALICE)) == prefs
    assert dict(result_of(archive.load_prefs())) == {
        ALICE: prefs, BOB: ArchivePrefs("always", (), (ALICE,))}


def test_max_id_and_id_source(archive: Any, writer: Writer, result_of: Any, db_clock: Any) -> None:
    """max_id is the newest stored id; an id source that observed it continues above,
    even when its clock is behind."""
    assert result_of(archive.max_id()) == 0
    uid = writer.add(ALICE, BOB)
    writer.flush()
    newest = decode_uid(uid)[0]  # type: ignore[index]
    assert result_of(archive.max_id()) == newest
    from chatbx_server.storage.archive import IdSource
    from twisted.internet.task import Clock

    behind = Clock()
    behind.advance(T0 - 3600)
    source = IdSource(behind)
    source.observe(newest)
    assert source.next_id() == newest + 1 < source.next_id()


def test_owner_and_roster_lookups_search_indexes(tmp_path: Any) -> None:
    """An archive batch looks its owners (and roster checks) up by index ranges, not
    by scanning every account: SQLite plans a row-value IN ((a, b), ...) as a scan
    (12 ms per batch with 100,000 accounts)."""
    from chatbx_server.storage import schema
    from chatbx_server.storage.archive import _in_roster_txn, _user_ids_txn
    from chatbx_server.storage.database import Database, default_sqlite_url

    db = Database(default_sqlite_url(tmp_path), threadless=True)
    db.start()
    schema.metadata.create_all(db.engine)
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, args[0]))

    try:
        with db.engine.begin() as conn:
            conn.execute(sa.insert(schema.users), [
                dict(username=f"u{i}", domain="example.org", created_at=1.0) for i in range(3)])
            sa.event.listen(conn, "before_cursor_execute", record)
            found = _user_ids_txn(conn, {"u1@example.org", "u2@example.org", "nobody@example.org"})
            _in_roster_txn(conn, {(found["u1@example.org"], "x@example.org")})
            sa.event.remove(conn, "before_cursor_execute", record)
            assert set(found) == {"u1@example.org", "u2@example.org"}
            assert len(statements) == 2
            for statement, params in statements:
                plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params).fetchall()
                details = " ".join(str(row[-1]) for row in plan)
                assert "SEARCH" in details and "SCAN users" not in details, details
                assert "SCAN roster_items" not in details, details
    finally:
        db.stop()
