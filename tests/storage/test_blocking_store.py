"""Tests for BlockingStore (XEP-0191 block lists, XEP-0377 reports), on
SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from chatbx_server.storage import Stores
from chatbx_server.storage.blocking import SpamReport
from chatbx_server.storage.errors import UnknownUser

ALICE = "alice@example.org"
BOB = "bob@example.org"


@pytest.fixture
def blocking(stores: Stores, result_of: Any) -> Any:
    result_of(stores.users.create_many([(ALICE, "p"), (BOB, "p")]))
    return stores.blocking


def test_new_account_blocks_nothing(blocking: Any, result_of: Any) -> None:
    """A new account's block list is empty."""
    assert result_of(blocking.load(ALICE)) == []


def test_block_adds_and_keeps_existing(blocking: Any, result_of: Any) -> None:
    """Blocking returns the whole sorted list; blocking a JID twice keeps one row;
    lists are per account."""
    assert result_of(blocking.block(ALICE, ["spam.example", "eve@evil.example/phone"])) == [
        "eve@evil.example/phone", "spam.example"]
    assert result_of(blocking.block(ALICE, ["spam.example", "mallory@evil.example"])) == [
        "eve@evil.example/phone", "mallory@evil.example", "spam.example"]
    assert result_of(blocking.load(ALICE)) == [
        "eve@evil.example/phone", "mallory@evil.example", "spam.example"]
    assert result_of(blocking.load(BOB)) == []


def test_limit_refuses_whole_block(blocking: Any, result_of: Any) -> None:
    """A block that would exceed the limit writes nothing, not even its reports;
    re-blocking held JIDs does not count against the limit."""
    assert result_of(blocking.block(ALICE, ["a.example", "b.example"], limit=2)) == [
        "a.example", "b.example"]
    report = SpamReport(ALICE, "c.example", "urn:xmpp:reporting:spam")
    assert result_of(blocking.block(ALICE, ["c.example"], [report], limit=2)) is None
    assert result_of(blocking.load(ALICE)) == ["a.example", "b.example"]
    assert result_of(blocking.list_reports()) == []
    assert result_of(blocking.block(ALICE, ["a.example"], limit=2)) == ["a.example", "b.example"]


def test_unblock_some_and_all(blocking: Any, result_of: Any) -> None:
    """Unblocking removes the named JIDs (unknown ones are ignored); None removes
    every JID of that account only."""
    result_of(blocking.block(ALICE, ["a.example", "b.example", "c@d.example"]))
    result_of(blocking.block(BOB, ["a.example"]))
    assert result_of(blocking.unblock(ALICE, ["a.example", "nobody.example"])) == [
        "b.example", "c@d.example"]
    assert result_of(blocking.unblock(ALICE, None)) == []
    assert result_of(blocking.load(ALICE)) == []
    assert result_of(blocking.load(BOB)) == ["a.example"]


def test_many_jids_in_one_change(blocking: Any, result_of: Any) -> None:
    """More JIDs than one IN-list chunk are blocked and unblocked together."""
    jids = [f"u{n}@spam.example" for n in range(1201)]
    assert len(result_of(blocking.block(ALICE, jids, limit=2000))) == 1201
    assert result_of(blocking.unblock(ALICE, jids[:1200])) == ["u1200@spam.example"]


def test_reports_are_stored_and_listed_newest_first(blocking: Any, db_clock: Any,
                                                    result_of: Any) -> None:
    """Reports keep reporter, JID, reason, text and stanza-ids; listing is newest
    first, bounded, and can be narrowed to one reporter."""
    first = SpamReport(ALICE, "eve@evil.example", "urn:xmpp:reporting:spam", "buy now \u20ac",
                       (("eve@evil.example", "id-1"), ("eve@evil.example", "id-2")))
    result_of(blocking.block(ALICE, ["eve@evil.example"], [first]))
    db_clock.advance(10)
    second = SpamReport(BOB, "spam.example", "urn:xmpp:reporting:abuse")
    result_of(blocking.block(BOB, ["spam.example"], [second]))
    reports = result_of(blocking.list_reports())
    assert [(r.reporter, r.jid, r.reason, r.text, r.stanza_ids, r.created_at) for r in reports] == [
        (BOB, "spam.example", "urn:xmpp:reporting:abuse", None, (), 1010.0),
        (ALICE, "eve@evil.example", "urn:xmpp:reporting:spam", "buy now \u20ac",
         (("eve@evil.example", "id-1"), ("eve@evil.example", "id-2")), 1000.0)]
    assert [r.reporter for r in result_of(blocking.list_reports(limit=1))] == [BOB]
    assert [r.reporter for r in result_of(blocking.list_reports(reporter=ALICE))] == [ALICE]


def test_reports_outlive_the_reporter(blocking: Any, stores: Stores, result_of: Any) -> None:
    """Deleting the reporting account removes its block list but keeps its reports."""
    report = SpamReport(ALICE, "eve@evil.example", "urn:xmpp:reporting:spam")
    result_of(blocking.block(ALICE, ["eve@evil.example"], [report]))
    assert result_of(stores.users.delete(ALICE)) is True
    assert [r.jid for r in result_of(blocking.list_reports())] == ["eve@evil.example"]
    result_of(stores.users.create(ALICE, "p"))
    assert result_of(blocking.load(ALICE)) == []


def test_unknown_user(blocking: Any, result_of: Any) -> None:
    """Block list methods fail with UnknownUser for a JID without an account."""
    for d in (blocking.load("nobody@example.org"),
              blocking.block("nobody@example.org", ["a.example"]),
              blocking.unblock("nobody@example.org", None)):
        with pytest.raises(UnknownUser):
            result_of(d)


def test_reports_are_bounded_per_reporter(blocking: Any, result_of: Any) -> None:
    """Past report_limit stored reports of one reporter, further reports are
    dropped while the block itself still applies; other reporters are unaffected."""
    spam = [SpamReport(ALICE, f"s{n}.example", "urn:xmpp:reporting:spam") for n in range(3)]
    result_of(blocking.block(ALICE, ["s0.example", "s1.example"], spam[:2], report_limit=2))
    assert result_of(blocking.block(ALICE, ["s2.example"], spam[2:], report_limit=2)) == [
        "s0.example", "s1.example", "s2.example"]
    assert sorted(r.jid for r in result_of(blocking.list_reports())) == ["s0.example", "s1.example"]
    result_of(blocking.block(BOB, ["s0.example"], [SpamReport(BOB, "s0.example", "urn:xmpp:reporting:spam")],
                             report_limit=2))
    assert len(result_of(blocking.list_reports(reporter=BOB))) == 1
