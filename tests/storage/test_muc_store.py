"""Group chat storage (storage/muc.py) on SQLite and PostgreSQL: rooms with
their affiliations, the grouped archive writer, archive paging and
tombstones, deletion."""

from __future__ import annotations

from typing import Any

import pytest

ROOM = "room@conference.localhost"


def _save(stores: Any, result_of: Any, **config: Any) -> int:
    return result_of(stores.muc.save_room(
        ROOM, {"persistent": True, **config}, "Topic", "Alice", "alice@localhost",
        {"alice@localhost": ("owner", None, None), "bob@localhost": ("member", "Bob", "ok")}))


def test_room_round_trip(stores: Any, result_of: Any) -> None:
    """A saved room loads back with config, subject, creator and affiliations;
    saving again updates it in place; single affiliations change and go."""
    first = _save(stores, result_of, name="Team")
    assert _save(stores, result_of, name="Team 2") == first
    result_of(stores.muc.set_affiliation(ROOM, "carol@localhost", "outcast", None, "spam"))
    result_of(stores.muc.set_affiliation(ROOM, "bob@localhost", None))
    result_of(stores.muc.update_room(ROOM, subject="New", vcard="<vCard/>", avatar_hash="ab"))
    [room] = result_of(stores.muc.load_rooms(["conference.localhost"]))
    assert room.config == {"persistent": True, "name": "Team 2"}
    assert (room.subject, room.subject_nick, room.creator) == ("New", "Alice", "alice@localhost")
    assert room.vcard == "<vCard/>" and room.avatar_hash == "ab"
    assert room.affiliations == {"alice@localhost": ("owner", None, None),
                                 "carol@localhost": ("outcast", None, "spam")}
    assert result_of(stores.muc.load_rooms(["conference.other"])) == []
    assert result_of(stores.muc.rooms_created_by("alice@localhost")) == 1


def _archive(stores: Any, db_clock: Any, n: int) -> None:
    for i in range(n):
        stores.muc.archive(ROOM, f"s{i}", "Alice", "oid", "alice@localhost",
                           f"<message><body>m{i}</body></message>", 1000.0 + i)
    db_clock.advance(0)


def test_archive_paging(stores: Any, result_of: Any, db_clock: Any) -> None:
    """Pages oldest first with after/before/last, a count and 'complete';
    an unknown reference id is a KeyError; time bounds apply."""
    _save(stores, result_of)
    _archive(stores, db_clock, 5)
    rows, complete, count = result_of(stores.muc.query(ROOM, limit=2))
    assert [r.stanza_id for r in rows] == ["s0", "s1"] and not complete and count == 5
    rows, complete, _ = result_of(stores.muc.query(ROOM, after="s1", limit=10))
    assert [r.stanza_id for r in rows] == ["s2", "s3", "s4"] and complete
    rows, complete, _ = result_of(stores.muc.query(ROOM, last=True, limit=2))
    assert [r.stanza_id for r in rows] == ["s3", "s4"] and not complete
    rows, _, _ = result_of(stores.muc.query(ROOM, before="s3", limit=2))
    assert [r.stanza_id for r in rows] == ["s1", "s2"]
    rows, _, count = result_of(stores.muc.query(ROOM, start=1001.0, end=1002.0, limit=10))
    assert [r.stanza_id for r in rows] == ["s1", "s2"] and count == 2
    d = stores.muc.query(ROOM, after="nope", limit=2)
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(KeyError)
    assert [r.stanza_id for r in result_of(stores.muc.recent(ROOM, 2))] == ["s3", "s4"]


def test_tombstone_and_delete(stores: Any, result_of: Any, db_clock: Any) -> None:
    """A retraction replaces the stored message and marks it; deleting the
    room removes its affiliations and archive."""
    _save(stores, result_of)
    _archive(stores, db_clock, 2)
    assert result_of(stores.muc.retract(ROOM, "s0", "<message><retracted/></message>"))
    row = result_of(stores.muc.get(ROOM, "s0"))
    assert row.retracted and "m0" not in row.stanza
    assert [r["messages"] for r in result_of(stores.muc.list_rooms())] == [2]
    assert result_of(stores.muc.delete_room(ROOM))
    assert result_of(stores.muc.load_rooms(["conference.localhost"])) == []
    assert result_of(stores.muc.get(ROOM, "s1")) is None
    assert not result_of(stores.muc.delete_room(ROOM))


def test_writer_groups_rows(stores: Any, result_of: Any, db_clock: Any) -> None:
    """Rows queued in one reactor turn are written in one transaction; rows of
    a room that does not exist (destroyed meanwhile) are skipped."""
    _save(stores, result_of)
    runs: list[str] = []
    real_run = stores.db.run

    def run(desc: str, *args: Any, **kwargs: Any) -> Any:
        runs.append(desc)
        return real_run(desc, *args, **kwargs)

    stores.db.run = run
    stores.muc.archive("gone@conference.localhost", "g", "x", None, None, "<message/>")
    _archive(stores, db_clock, 3)
    assert runs.count("muc.archive.insert") == 1
    rows, _, count = result_of(stores.muc.query(ROOM, limit=10))
    assert count == 3


class PendingDatabase:
    """A Database stand-in whose transactions finish when the test says so."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, Any]] = []

    def run(self, desc: str, fn: Any, *args: Any) -> Any:
        from twisted.internet import defer

        d: Any = defer.Deferred()
        self.calls.append((desc, args, d))
        return d


def test_writes_for_one_room_run_one_after_another() -> None:
    """Two saves of a room (password set, then cleared) never run side by
    side: on PostgreSQL's pool they could commit in either order and the
    next start would load the older one. Another room's write is not held."""
    from twisted.internet import defer
    from twisted.internet.task import Clock

    from chatbx_server.storage.muc import MucStore

    db = PendingDatabase()
    store = MucStore(db, Clock())  # type: ignore[arg-type]
    owners = {"alice@localhost": ("owner", None, None)}
    first = store.save_room(ROOM, {"password": "pw"}, None, None, "alice@localhost", owners)
    second = store.save_room(ROOM, {"password": ""}, None, None, "alice@localhost", owners)
    third = store.set_affiliation(ROOM, "bob@localhost", "member")
    other = store.update_room("other@conference.localhost", subject="hi")
    assert [(c[0], c[1][0]) for c in db.calls] == [("muc.save", ROOM),
                                                   ("muc.update", "other@conference.localhost")]
    db.calls[0][2].callback(1)
    assert [c[1][1] for c in db.calls if c[0] == "muc.save"] == [{"password": "pw"}, {"password": ""}]
    db.calls[2][2].callback(1)
    assert db.calls[3][0] == "muc.affiliation"
    db.calls[3][2].callback(True)
    db.calls[1][2].callback(True)
    got: list[Any] = []
    defer.gatherResults([first, second, third, other]).addCallback(got.append)
    assert got == [[1, 1, True, True]]
    assert store._tails == {}


def test_a_read_after_a_retraction_waits_for_it() -> None:
    """A MAM query (or a lookup) asked for after a moderation runs after the
    tombstone is written: on PostgreSQL's pool the two would otherwise run
    side by side and the query could still return the retracted message."""
    from twisted.internet import defer
    from twisted.internet.task import Clock

    from chatbx_server.storage.muc import MucStore

    db = PendingDatabase()
    store = MucStore(db, Clock())  # type: ignore[arg-type]
    retracted = store.retract(ROOM, "sid1", "<message/>")
    page = store.query(ROOM, limit=1, last=True)
    found = store.get(ROOM, "sid1")
    other = store.query("other@conference.localhost", limit=1, last=True)
    assert [c[0] for c in db.calls] == ["muc.archive.retract", "muc.archive.query"]
    assert db.calls[1][1][0] == "other@conference.localhost"  # another room is not held
    db.calls[0][2].callback(True)
    assert [c[0] for c in db.calls[2:]] == ["muc.archive.query", "muc.archive.get"]
    for call in db.calls[1:]:
        call[2].callback(None)
    got: list[Any] = []
    defer.gatherResults([retracted, page, found, other]).addCallback(got.append)
    assert got and got[0][0] is True
    assert store._tails == {}
