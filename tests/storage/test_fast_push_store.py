"""FastStore (XEP-0484 token slots) and PushStore (XEP-0357 registrations),
on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from chatbx_server.storage.errors import UnknownUser
from chatbx_server.storage.fast import CURRENT, NEW
from chatbx_server.storage.push import PushRegistration

ALICE = "alice@example.org"
BOB = "bob@example.org"


@pytest.fixture
def accounts(stores: Any, result_of: Any) -> None:
    result_of(stores.users.create_many([(ALICE, "p"), (BOB, "p")]))


def test_issue_then_promote_keeps_two_slots(stores: Any, result_of: Any, db_clock: Any,
                                            accounts: None) -> None:
    """A token goes into 'new' (replacing an unused one); using it moves it
    to 'current' (replacing the older); the 'new' slot is read first."""
    fast = stores.fast
    result_of(fast.issue(ALICE, "dev1", "App on Phone", "HT-SHA-256-NONE", b"n1", 100.0, 10))
    result_of(fast.issue(ALICE, "dev1", "App on Phone", "HT-SHA-256-NONE", b"n2", 100.0, 10))
    assert [(t.slot, t.nonce) for t in result_of(fast.tokens(ALICE, "dev1"))] == [(NEW, b"n2")]
    assert result_of(fast.promote(ALICE, "dev1", b"n1")) is False  # replaced before use
    assert result_of(fast.promote(ALICE, "dev1", b"n2")) is True
    result_of(fast.issue(ALICE, "dev1", None, "HT-SHA-256-EXPR", b"n3", 100.0, 10))
    got = result_of(fast.tokens(ALICE, "dev1"))
    assert [(t.slot, t.nonce, t.mechanism) for t in got] == [
        (NEW, b"n3", "HT-SHA-256-EXPR"), (CURRENT, b"n2", "HT-SHA-256-NONE")]
    assert got[0].expires_at == got[0].issued_at + 100.0 == db_clock.seconds() + 100.0
    assert result_of(fast.promote(ALICE, "dev1", b"n3")) is True
    assert [(t.slot, t.nonce) for t in result_of(fast.tokens(ALICE, "dev1"))] == [(CURRENT, b"n3")]
    assert result_of(fast.tokens(BOB, "dev1")) == []
    assert result_of(fast.tokens("nobody@example.org", "dev1")) == []


def test_revoke_one_device_or_all(stores: Any, result_of: Any, accounts: None) -> None:
    """revoke(device) removes that device's tokens only; revoke() all of the
    account's; other accounts keep theirs."""
    fast = stores.fast
    for user in (ALICE, BOB):
        for dev in ("d1", "d2"):
            result_of(fast.issue(user, dev, None, "HT-SHA-256-NONE", b"x", 100.0, 10))
    assert result_of(fast.revoke(ALICE, "d1")) == 1
    assert {t.device for t in result_of(fast.list(ALICE))} == {"d2"}
    assert result_of(fast.revoke(ALICE)) == 1
    assert result_of(fast.list(ALICE)) == []
    assert len(result_of(fast.list(BOB))) == 2
    with pytest.raises(UnknownUser):
        result_of(fast.revoke("nobody@example.org"))


def test_devices_and_expired_rows_are_bounded(stores: Any, result_of: Any, db_clock: Any,
                                              accounts: None) -> None:
    """At most max_devices devices per account (the least recently issued go),
    and expired rows go when a token is issued."""
    fast = stores.fast
    for i in range(4):
        result_of(fast.issue(ALICE, f"d{i}", None, "HT-SHA-256-NONE", b"x", 1000.0, 3))
        db_clock.advance(1)
    assert {t.device for t in result_of(fast.list(ALICE))} == {"d1", "d2", "d3"}
    result_of(fast.issue(ALICE, "short", None, "HT-SHA-256-NONE", b"x", 5.0, 10))
    db_clock.advance(10)
    result_of(fast.issue(ALICE, "d9", None, "HT-SHA-256-NONE", b"x", 1000.0, 10))
    assert "short" not in {t.device for t in result_of(fast.list(ALICE))}


def test_account_deletion_removes_tokens_and_registrations(stores: Any, result_of: Any,
                                                           accounts: None) -> None:
    """Both tables cascade with the account row."""
    result_of(stores.fast.issue(ALICE, "d", None, "HT-SHA-256-NONE", b"x", 100.0, 10))
    result_of(stores.push.enable(ALICE, PushRegistration("push.example", "n"), 10))
    result_of(stores.users.delete(ALICE))
    result_of(stores.users.create(ALICE, "p"))
    assert result_of(stores.fast.list(ALICE)) == []
    assert result_of(stores.push.list(ALICE)) == []


def test_push_enable_replaces_the_same_service_and_node(stores: Any, result_of: Any,
                                                        db_clock: Any, accounts: None) -> None:
    """XEP-0357 §5: enabling a (jid, node) pair again keeps the last publish
    options; other nodes of the same service are separate registrations."""
    push = stores.push
    opts = (("secret", ("s1",)),)
    result_of(push.enable(ALICE, PushRegistration("push.example", "n1", "phone", opts), 10))
    db_clock.advance(1)
    result_of(push.enable(ALICE, PushRegistration("push.example", "n1", "phone",
                                                  (("secret", ("s2",)),), True), 10))
    db_clock.advance(1)
    result_of(push.enable(ALICE, PushRegistration("push.example", "n2"), 10))
    got = result_of(push.list(ALICE))
    assert got == [PushRegistration("push.example", "n1", "phone", (("secret", ("s2",)),), True),
                   PushRegistration("push.example", "n2", None, (), False)]
    assert result_of(push.list(BOB)) == []


def test_push_disable_one_node_or_the_whole_service(stores: Any, result_of: Any,
                                                    db_clock: Any, accounts: None) -> None:
    """XEP-0357 §6: with a node only that pair goes; without, every node of the service."""
    push = stores.push
    for svc, node in (("a.example", "1"), ("a.example", "2"), ("b.example", "1")):
        result_of(push.enable(ALICE, PushRegistration(svc, node), 10))
        db_clock.advance(1)
    assert result_of(push.disable(ALICE, "a.example", "1")) == 1
    assert [(r.service, r.node) for r in result_of(push.list(ALICE))] == [
        ("a.example", "2"), ("b.example", "1")]
    assert result_of(push.disable(ALICE, "a.example")) == 1
    assert [r.service for r in result_of(push.list(ALICE))] == ["b.example"]
    assert result_of(push.disable("nobody@example.org", "b.example")) == 0


def test_push_registrations_are_bounded(stores: Any, result_of: Any, db_clock: Any,
                                        accounts: None) -> None:
    """Past max_per_user the oldest registration goes."""
    for i in range(4):
        result_of(stores.push.enable(ALICE, PushRegistration("push.example", str(i)), 3))
        db_clock.advance(1)
    assert [r.node for r in result_of(stores.push.list(ALICE))] == ["1", "2", "3"]
