"""Tests for OfflineStore (XEP-0160), on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from chatbx_server.storage import Stores
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
    ids = [i for i, _, _ in result_of(offline.fetch(ALICE))]
    assert result_of(offline.delete(ALICE, ids)) == 1201
    assert result_of(offline.count(ALICE)) == 0


def test_unknown_user(offline: Any, result_of: Any) -> None:
    """Every method refuses a JID without a local account."""
    for d in (offline.store("eve@remote.org", "<m/>", 10), offline.fetch("eve@remote.org"),
              offline.delete("eve@remote.org", [1]), offline.count("eve@remote.org")):
        with pytest.raises(UnknownUser):
            result_of(d)
