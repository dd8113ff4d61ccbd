"""Tests for OfflineStore (XEP-0160), on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from twisted.internet.defer import gatherResults

from chatbx_server.storage import Stores, migrate
from chatbx_server.storage.database import Database
from chatbx_server.storage.errors import UnknownUser

ALICE = "alice@example.org"
BOB = "bob@example.org"


@pytest.fixture
def offline(stores: Stores, result_of: Any) -> Any:
    result_of(stores.users.create_many([(ALICE, "p"), (BOB, "p")]))
    return stores.offline


def test_store_and_fetch_oldest_first(offline: Any, db_clock: Any, result_of: Any) -> None:
    """Messages come back oldest first with their XML and acceptance time."""
    assert result_of(offline.store(ALICE, "<message id='1'/>", 10)) is True
    db_clock.advance(2.5)
    assert result_of(offline.store(ALICE, "<message id='2'>\u00e9</message>", 10)) is True
    fetched = result_of(offline.fetch(ALICE))
    assert [(xml, ts) for _, xml, ts in fetched] == [
        ("<message id='1'/>", 1000.0), ("<message id='2'>\u00e9</message>", 1002.5)]
    assert fetched[0][0] < fetched[1][0]
    assert result_of(offline.count(ALICE)) == 2
    assert result_of(offline.fetch(BOB)) == []


def test_limit_is_enforced(offline: Any, result_of: Any) -> None:
    """Once a user holds `limit` messages, store returns False and stores nothing."""
    assert result_of(offline.store(ALICE, "<a/>", 2)) is True
    assert result_of(offline.store(ALICE, "<b/>", 2)) is True
    assert result_of(offline.store(ALICE, "<c/>", 2)) is False
    assert [xml for _, xml, _ in result_of(offline.fetch(ALICE))] == ["<a/>", "<b/>"]
    assert result_of(offline.store(BOB, "<c/>", 2)) is True  # the limit is per user


def test_delete_only_own_given_ids(offline: Any, result_of: Any) -> None:
    """delete removes the listed ids of that user only and counts them."""
    for xml in ("<a/>", "<b/>", "<c/>"):
        result_of(offline.store(ALICE, xml, 10))
    result_of(offline.store(BOB, "<bob/>", 10))
    ids = [i for i, _, _ in result_of(offline.fetch(ALICE))]
    bob_ids = [i for i, _, _ in result_of(offline.fetch(BOB))]
    assert result_of(offline.delete(ALICE, [ids[0], ids[2]] + bob_ids)) == 2
    assert [xml for _, xml, _ in result_of(offline.fetch(ALICE))] == ["<b/>"]
    assert result_of(offline.count(BOB)) == 1
    assert result_of(offline.delete(ALICE, [])) == 0
    assert result_of(offline.delete(ALICE, [ids[0]])) == 0


def test_delete_many_ids(offline: Any, stores: Stores, result_of: Any) -> None:
    """More ids than one IN-list chunk are all deleted."""
    for n in range(1201):
        result_of(offline.store(ALICE, f"<m n='{n}'/>", 5000))
    ids = [i for i, _, _ in result_of(offline.fetch(ALICE, max_messages=5000))]
    assert result_of(offline.delete(ALICE, ids)) == 1201
    assert result_of(offline.count(ALICE)) == 0


def test_unknown_user(offline: Any, result_of: Any) -> None:
    """Every method refuses a JID without a local account."""
    for d in (offline.store("eve@remote.org", "<m/>", 10), offline.fetch("eve@remote.org"),
              offline.delete("eve@remote.org", [1]), offline.count("eve@remote.org"),
              offline.usage("eve@remote.org")):
        with pytest.raises(UnknownUser):
            result_of(d)


def test_byte_bound_is_enforced(offline: Any, result_of: Any) -> None:
    """store refuses a message that would take the user past max_bytes (UTF-8 bytes of
    the XML), stores nothing then, and still takes one that fits exactly."""
    def xml(size: int) -> str:
        return "<m>" + "x" * (size - 7) + "</m>"

    assert result_of(offline.store(ALICE, xml(100), 10, max_bytes=250)) is True
    assert result_of(offline.usage(ALICE)) == (1, 100)
    assert result_of(offline.store(ALICE, xml(151), 10, max_bytes=250)) is False
    assert result_of(offline.usage(ALICE)) == (1, 100)
    assert result_of(offline.store(BOB, xml(151), 10, max_bytes=250)) is True  # per user
    assert result_of(offline.store(ALICE, xml(150), 10, max_bytes=250)) is True
    assert result_of(offline.store(ALICE, xml(8), 10, max_bytes=250)) is False
    assert result_of(offline.store(ALICE, xml(8), 10)) is True  # None: no byte bound
    assert result_of(offline.usage(ALICE)) == (3, 258)
    assert [len(m.xml) for m in result_of(offline.fetch(ALICE))] == [100, 150, 8]


def test_sizes_count_utf8_bytes(offline: Any, result_of: Any) -> None:
    """A non-ASCII character counts as its UTF-8 length, on every backend."""
    assert result_of(offline.store(ALICE, "<m>\u00e9\u20ac\U0001f600</m>", 10, 1000)) is True
    assert result_of(offline.usage(ALICE)) == (1, 7 + 2 + 3 + 4)
    assert result_of(offline.usage(BOB)) == (0, 0)


def test_fetch_in_pages(offline: Any, result_of: Any) -> None:
    """fetch returns the oldest messages after an id, at most max_messages of them and
    no more than max_bytes of XML, except that a bigger message goes alone."""
    sizes = [20, 20, 20, 60, 20, 20]
    for n, size in enumerate(sizes):
        xml = f"<m n='{n}'>".ljust(size - 4, "x") + "</m>"
        assert len(xml) == size
        result_of(offline.store(ALICE, xml, 100))
    result_of(offline.store(BOB, "<bob/>", 100))

    def page(after: int, max_messages: int, max_bytes: int) -> list[int]:
        rows = result_of(offline.fetch(ALICE, after=after, max_messages=max_messages,
                                       max_bytes=max_bytes))
        return [ids.index(row.id) for row in rows]

    ids = [m.id for m in result_of(offline.fetch(ALICE))]
    assert len(ids) == 6
    assert page(0, 2, 1000) == [0, 1]
    assert page(ids[1], 2, 1000) == [2, 3]
    assert page(0, 100, 60) == [0, 1, 2]
    assert page(0, 100, 59) == [0, 1]
    assert page(ids[2], 100, 50) == [3]  # 60 bytes: alone, not never
    assert page(ids[3], 100, 60) == [4, 5]
    assert page(ids[5], 100, 60) == []
    first = result_of(offline.fetch(ALICE, max_messages=1))[0]
    assert first.id == ids[0] and first.xml.startswith("<m n='0'>") and first.created_at == 1000.0
    with pytest.raises(ValueError):
        offline.fetch(ALICE, max_messages=0)


class ImmediateReactor:
    """Runs callFromThread calls at once, so no reactor has to run."""

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N802
        f(*args, **kwargs)


def _wait_for(d: Any, timeout: float = 30.0) -> Any:
    done = threading.Event()
    box: list[Any] = []
    d.addBoth(lambda r: (box.append(r), done.set()))
    assert done.wait(timeout), "database call did not finish"
    if hasattr(box[0], "raiseException"):
        box[0].raiseException()
    return box[0]


def test_concurrent_stores_respect_the_byte_bound(db_url: str) -> None:
    """Stores running at once on a thread pool never pass the byte bound together
    (the check and the insert are one transaction with the account row locked)."""
    migrate.upgrade(db_url)
    db = Database(db_url, ImmediateReactor(), pool_size=5)
    db.start()
    try:
        stores = Stores(db)
        _wait_for(stores.users.create(ALICE, "p"))
        xml = "<m>" + "x" * 93 + "</m>"  # 100 bytes
        results = _wait_for(gatherResults([
            stores.offline.store(ALICE, xml, 1000, max_bytes=550) for _ in range(20)
        ]))
        assert results.count(True) == 5
        assert _wait_for(stores.offline.usage(ALICE)) == (5, 500)
    finally:
        db.stop()
