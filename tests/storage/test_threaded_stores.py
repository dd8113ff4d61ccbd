"""The stores on a real threaded Database (ThreadPool), on SQLite and PostgreSQL:
results cross threads, and concurrent writers respect per-user bounds."""

from __future__ import annotations

import threading
from typing import Any

from twisted.internet.defer import gatherResults

from chatbx_server.storage import Stores, migrate
from chatbx_server.storage.database import Database
from chatbx_server.storage.roster import RosterItem


class ImmediateReactor:
    """Runs callFromThread calls at once, so no reactor has to run."""

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N802
        f(*args, **kwargs)


def wait_for(d: Any, timeout: float = 30.0) -> Any:
    """Block on a threading.Event until the Deferred fires; return or raise."""
    done = threading.Event()
    box: list[Any] = []
    d.addBoth(lambda r: (box.append(r), done.set()))
    assert done.wait(timeout), "database call did not finish"
    if hasattr(box[0], "raiseException"):
        box[0].raiseException()
    return box[0]


def test_stores_on_thread_pool(db_url: str) -> None:
    """Concurrent offline stores never exceed the limit; concurrent roster
    changes each get their own version."""
    migrate.upgrade(db_url)
    db = Database(db_url, ImmediateReactor(), pool_size=5)
    db.start()
    try:
        stores = Stores(db)
        wait_for(stores.users.create("alice@example.org", "p"))
        assert wait_for(stores.users.check_password("alice@example.org", "p")) is True

        results = wait_for(gatherResults([
            stores.offline.store("alice@example.org", f"<m n='{n}'/>", 5) for n in range(20)
        ]))
        assert results.count(True) == 5
        assert wait_for(stores.offline.count("alice@example.org")) == 5

        versions = wait_for(gatherResults([
            stores.roster.set_item("alice@example.org", RosterItem(f"c{n}@example.org"))
            for n in range(10)
        ]))
        assert sorted(versions) == list(range(1, 11))
        version, items = wait_for(stores.roster.get_roster("alice@example.org"))
        assert version == 10 and len(items) == 10
    finally:
        db.stop()


def test_drain_waits_for_work_chained_on_running_transactions(db_url: str) -> None:
    """A stopping server drains the database: drain() fires only once no
    transaction runs and the callbacks of the last one started none (here a
    write chained on a read, as an offline message waits for a lookup)."""
    from twisted.internet.task import Clock

    from chatbx_server.storage.database import DRAIN_POLL

    migrate.upgrade(db_url)
    db = Database(db_url, ImmediateReactor(), pool_size=2)
    db.start()
    clock = Clock()
    gate = threading.Event()
    try:
        stores = Stores(db)
        wait_for(stores.users.create("bob@example.org", "p"))

        def lookup(conn: Any) -> int:
            assert gate.wait(30)
            return 1

        chained: list[Any] = []
        first = db.run("test.lookup", lookup)
        first.addCallback(lambda _: chained.append(
            stores.offline.store("bob@example.org", "<m/>", 5)))
        drained: list[bool] = []
        db.drain(clock, timeout=60).addCallback(drained.append)
        for _ in range(5):
            clock.advance(DRAIN_POLL)
        assert drained == [] and db.in_flight == 1
        gate.set()
        wait_for(first)
        assert wait_for(chained[0]) is True
        for _ in range(5):
            clock.advance(DRAIN_POLL)
        assert drained == [True]
        assert wait_for(stores.offline.count("bob@example.org")) == 1
    finally:
        gate.set()
        db.stop()
