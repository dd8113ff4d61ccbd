"""Tests for RosterStore: items, XEP-0237 versions and inbound subscription
requests (RFC 6121), on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from chatbx_server.storage import Stores
from chatbx_server.storage.errors import UnknownUser
from chatbx_server.storage.roster import RosterItem, RosterLimitReached

ALICE = "alice@example.org"


@pytest.fixture
def roster(stores: Stores, result_of: Any) -> Any:
    result_of(stores.users.create(ALICE, "p"))
    return stores.roster


def test_empty_roster(roster: Any, result_of: Any) -> None:
    """A new account has version 0 and no items."""
    assert result_of(roster.get_roster(ALICE)) == (0, [])
    assert result_of(roster.get_version(ALICE)) == 0
    assert result_of(roster.get_item(ALICE, "bob@example.org")) is None


def test_set_item_round_trips_every_field(roster: Any, result_of: Any) -> None:
    """Every RosterItem field, groups included (order kept), is stored."""
    item = RosterItem("bob@example.org", name="Bob \u00e9", subscription="both", ask=True,
                      approved=True, groups=("Friends", "Work"))
    assert result_of(roster.set_item(ALICE, item)) == 1
    assert result_of(roster.get_item(ALICE, "bob@example.org")) == item
    assert result_of(roster.get_roster(ALICE)) == (1, [item])


def test_set_item_upserts_and_bumps_version(roster: Any, result_of: Any) -> None:
    """Setting an existing contact replaces it; each change bumps the version."""
    result_of(roster.set_item(ALICE, RosterItem("bob@example.org", name="B")))
    version = result_of(roster.set_item(
        ALICE, RosterItem("bob@example.org", subscription="to", groups=("G",))))
    assert version == 2
    assert result_of(roster.get_roster(ALICE)) == (
        2, [RosterItem("bob@example.org", subscription="to", groups=("G",))])


def test_roster_sorted_by_jid(roster: Any, result_of: Any) -> None:
    """get_roster lists items sorted by JID whatever the insertion order."""
    for jid in ("zoe@b.org", "amy@c.org", "bob@a.org"):
        result_of(roster.set_item(ALICE, RosterItem(jid)))
    version, items = result_of(roster.get_roster(ALICE))
    assert version == 3
    assert [i.jid for i in items] == ["amy@c.org", "bob@a.org", "zoe@b.org"]


def test_remove_item(roster: Any, result_of: Any) -> None:
    """Removing bumps the version; removing a missing item keeps it."""
    result_of(roster.set_item(ALICE, RosterItem("bob@example.org")))
    assert result_of(roster.remove_item(ALICE, "bob@example.org")) == 2
    assert result_of(roster.get_item(ALICE, "bob@example.org")) is None
    assert result_of(roster.remove_item(ALICE, "bob@example.org")) == 2
    assert result_of(roster.get_version(ALICE)) == 2


def test_rosters_are_per_user(stores: Stores, roster: Any, result_of: Any) -> None:
    """One user's items and version do not show on another's roster."""
    result_of(stores.users.create("bob@example.org", "p"))
    result_of(roster.set_item(ALICE, RosterItem("carol@example.org")))
    assert result_of(roster.get_roster("bob@example.org")) == (0, [])


def test_bad_subscription_state_refused() -> None:
    """RosterItem only accepts RFC 6121 subscription states."""
    with pytest.raises(ValueError):
        RosterItem("bob@example.org", subscription="pending")


def test_unknown_user_raises(roster: Any, result_of: Any) -> None:
    """Every method refuses JIDs without a local account (nothing stored for remotes)."""
    remote = "eve@remote.org"
    calls = [
        roster.get_roster(remote), roster.get_item(remote, ALICE),
        roster.set_item(remote, RosterItem(ALICE)), roster.remove_item(remote, ALICE),
        roster.get_version(remote), roster.add_request(remote, ALICE, None),
        roster.remove_request(remote, ALICE), roster.list_requests(remote),
    ]
    for d in calls:
        with pytest.raises(UnknownUser):
            result_of(d)


def test_subscription_requests(roster: Any, db_clock: Any, result_of: Any) -> None:
    """Requests list oldest first with their status; a repeat updates the
    status but keeps its place; removal reports whether one existed."""
    result_of(roster.add_request(ALICE, "zoe@b.org", "hi, it's Zoe"))
    db_clock.advance(1)
    result_of(roster.add_request(ALICE, "amy@b.org", None))
    db_clock.advance(1)
    result_of(roster.add_request(ALICE, "zoe@b.org", "again"))
    assert result_of(roster.list_requests(ALICE)) == [("zoe@b.org", "again"), ("amy@b.org", None)]
    assert result_of(roster.remove_request(ALICE, "zoe@b.org")) is True
    assert result_of(roster.remove_request(ALICE, "zoe@b.org")) is False
    assert result_of(roster.list_requests(ALICE)) == [("amy@b.org", None)]
    assert result_of(roster.get_version(ALICE)) == 0  # requests are not roster changes


def test_load_returns_version_items_and_requests(roster: Any, result_of: Any) -> None:
    """load() gives what get_roster() and list_requests() give, in one transaction."""
    item = RosterItem("bob@example.org", subscription="to")
    result_of(roster.set_item(ALICE, item))
    result_of(roster.add_request(ALICE, "zoe@b.org", "hi"))
    assert result_of(roster.load(ALICE)) == (1, [item], [("zoe@b.org", "hi")])
    with pytest.raises(UnknownUser):
        result_of(roster.load("nobody@example.org"))


def test_set_item_max_items(roster: Any, result_of: Any) -> None:
    """Past max_items a new contact is refused and nothing changes (not even the version);
    existing items are still updated."""
    for jid in ("amy@b.org", "bob@b.org"):
        result_of(roster.set_item(ALICE, RosterItem(jid), max_items=2))
    with pytest.raises(RosterLimitReached) as refused:
        result_of(roster.set_item(ALICE, RosterItem("zoe@b.org"), max_items=2))
    assert refused.value.limit == "max_items"
    assert result_of(roster.get_roster(ALICE)) == (2, [RosterItem("amy@b.org"), RosterItem("bob@b.org")])
    assert result_of(roster.set_item(ALICE, RosterItem("amy@b.org", name="A"), max_items=2)) == 3


def test_add_request_max_requests(roster: Any, result_of: Any) -> None:
    """Past max_requests a new request is refused; a repeated one still updates its status."""
    result_of(roster.add_request(ALICE, "amy@b.org", None, max_requests=1))
    with pytest.raises(RosterLimitReached) as refused:
        result_of(roster.add_request(ALICE, "zoe@b.org", None, max_requests=1))
    assert refused.value.limit == "max_requests"
    result_of(roster.add_request(ALICE, "amy@b.org", "again", max_requests=1))
    assert result_of(roster.list_requests(ALICE)) == [("amy@b.org", "again")]
