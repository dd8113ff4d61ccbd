"""Tests for UploadStore and UploadFiles (XEP-0363), on SQLite and PostgreSQL."""

from __future__ import annotations

import os
from typing import Any

import pytest

from chatbx_server.storage.upload import (DAY, QuotaExceeded, UploadFiles, UploadRecord,
                                          is_slot)

ALICE = "alice@example.org"
BOB = "bob@example.org"


def rec(slot: str, size: int, now: float, uploader: str = ALICE,
        expires: float | None = None) -> UploadRecord:
    return UploadRecord(slot.ljust(32, "0"), uploader, "photo.jpg", size, "image/jpeg", now,
                        None, expires)


def test_reserve_complete_get(stores: Any, result_of: Any) -> None:
    """A reserved slot is pending until completed once; get returns what was stored."""
    up = stores.upload
    result_of(up.reserve(rec("a1", 10, 1000.0), 0, 0))
    got = result_of(up.get("a1".ljust(32, "0")))
    assert got.size == 10 and got.completed_at is None and got.content_type == "image/jpeg"
    assert result_of(up.complete("a1".ljust(32, "0"))) is True
    assert result_of(up.complete("a1".ljust(32, "0"))) is False  # a slot is used once
    assert result_of(up.get("a1".ljust(32, "0"))).completed_at == 1000.0
    assert result_of(up.get("f" * 32)) is None


def test_complete_batched_one_transaction(stores: Any, result_of: Any, db_clock: Any) -> None:
    """Completions queued together commit in one batch; each gets its own
    answer (a slot used twice in the batch: the second is refused)."""
    up = stores.upload
    for name in ("b1", "b2"):
        result_of(up.reserve(rec(name, 10, 1000.0), 0, 0))
    batches = up.completions.batches
    ds = [up.complete_batched(s.ljust(32, "0")) for s in ("b1", "b2", "b1", "ff")]
    db_clock.advance(0)
    assert [result_of(d) for d in ds] == [True, True, False, False]
    assert up.completions.batches == batches + 1
    assert result_of(up.get("b2".ljust(32, "0"))).completed_at == 1000.0


def test_complete_many_keeps_each_rows_time_and_answer(stores: Any, result_of: Any) -> None:
    """A batch of completions (one SELECT, one executemany UPDATE) stamps
    each slot with its own time and answers like one UPDATE a row: unknown
    and already used slots False, a repeat in the batch False."""
    from chatbx_server.storage.upload import complete_many_txn

    up = stores.upload
    slots = [s.ljust(32, "0") for s in ("c1", "c2", "c3")]
    for slot in slots:
        result_of(up.reserve(rec(slot, 10, 1000.0), 0, 0))
    assert result_of(up.complete(slots[2])) is True
    rows = [(slots[0], 1001.0), (slots[1], 1002.0), (slots[0], 1003.0), (slots[2], 1004.0),
            ("f" * 32, 1005.0)]
    assert result_of(stores.db.run("t", complete_many_txn, rows)) == [True, True, False, False, False]
    assert [result_of(up.get(s)).completed_at for s in slots] == [1001.0, 1002.0, 1000.0]


def test_quotas(stores: Any, result_of: Any, db_clock: Any) -> None:
    """Total and daily quotas count reservations; the daily one forgets after a day;
    other uploaders are not counted."""
    up = stores.upload
    result_of(up.reserve(rec("b1", 60, db_clock.seconds()), 100, 150))
    with pytest.raises(QuotaExceeded) as info:
        result_of(up.reserve(rec("b2", 41, db_clock.seconds()), 100, 150))
    assert (info.value.which, info.value.limit, info.value.used) == ("daily", 100, 60)
    result_of(up.reserve(rec("b3", 40, db_clock.seconds(), uploader=BOB), 100, 150))
    db_clock.advance(DAY + 1)
    result_of(up.reserve(rec("b4", 60, db_clock.seconds()), 100, 150))
    with pytest.raises(QuotaExceeded) as info:
        result_of(up.reserve(rec("b5", 31, db_clock.seconds()), 100, 150))
    assert (info.value.which, info.value.used) == ("total", 120)
    usage = {u.uploader: u for u in result_of(up.usage())}
    assert usage[ALICE].bytes_today == 60 and usage[ALICE].files == 0
    assert result_of(up.usage(BOB))[0].bytes_today == 0


def test_due_and_delete_in_batches(stores: Any, result_of: Any) -> None:
    """due() names expired files and stale unused slots, at most `limit` per call."""
    up = stores.upload
    for i in range(5):
        result_of(up.reserve(rec(f"c{i}", 1, 900.0 + i, expires=999.0), 0, 0))
        result_of(up.complete(f"c{i}".ljust(32, "0")))
    result_of(up.reserve(rec("d0", 1, 990.0, expires=5000.0), 0, 0))   # unused, stale
    result_of(up.reserve(rec("d1", 1, 999.5, expires=5000.0), 0, 0))   # unused, recent
    first = result_of(up.due(995.0, 4))
    assert len(first) == 4
    assert result_of(up.delete(first)) == 4
    rest = result_of(up.due(995.0, 100))
    assert sorted(rest) == sorted(["c4".ljust(32, "0"), "d0".ljust(32, "0")])
    assert result_of(up.delete(rest)) == 2
    assert result_of(up.due(995.0, 100)) == []
    assert [u.bytes for u in result_of(up.usage())] == [0]


def test_files_atomic_install_and_safe_names(tmp_path: Any) -> None:
    """Files are renamed into place by slot id; anything else is not a path."""
    files = UploadFiles(str(tmp_path / "up"))
    files.ensure()
    temp = os.path.join(files.tmp, "x")
    with open(temp, "wb") as fh:
        fh.write(b"data")
    slot = "ab" + "0" * 30
    final = files.install(temp, slot)
    assert open(final, "rb").read() == b"data" and not os.path.exists(temp)
    assert files.remove([slot, "cd" + "0" * 30]) == 1
    for bad in ("../etc/passwd", "AB" + "0" * 30, "0" * 31, ""):
        assert not is_slot(bad)
        with pytest.raises(ValueError):
            files.path(bad)
