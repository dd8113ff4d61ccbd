"""Tests for AccountStore and InviteStore (registration, invites, CAPTCHAs,
disabled accounts, removal with tombstones), on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from chatbx_server.storage import Stores, schema
from chatbx_server.storage.accounts import InviteInvalid, NameReserved
from chatbx_server.storage.errors import UnknownUser, UserExists
from chatbx_server.storage.roster import RosterItem
from chatbx_server.storage.upload import UploadRecord
from chatbx_server.storage.users import derive_credentials

CREDS = derive_credentials("pw-secret")


def register(stores: Stores, result_of: Any, jid: str, token: str | None = None) -> Any:
    result_of(stores.accounts.check_registration(jid, token))
    return result_of(stores.accounts.register(jid, CREDS, token))


def test_register_without_invite(stores: Stores, result_of: Any) -> None:
    """register creates an account whose password works; a second time is UserExists."""
    reg = register(stores, result_of, "new@x.org")
    assert reg.jid == "new@x.org" and reg.inviter is None and not reg.admin
    assert result_of(stores.accounts.info("new@x.org")).self_registered
    assert result_of(stores.users.check_password("new@x.org", "pw-secret"))
    with pytest.raises(UserExists):
        result_of(stores.accounts.check_registration("new@x.org"))
    with pytest.raises(UserExists):
        result_of(stores.accounts.register("new@x.org", CREDS))


def test_account_invite_is_single_use_and_bound(stores: Stores, result_of: Any,
                                                db_clock: Any) -> None:
    """An operator invite creates one account on its domain (and name, when
    it names one); then it is gone. An expired one is refused."""
    inv = result_of(stores.invites.create("x.org", "account", 100.0, username="fixed"))
    with pytest.raises(InviteInvalid):
        result_of(stores.accounts.check_registration("other@x.org", inv.token))
    with pytest.raises(InviteInvalid):
        result_of(stores.accounts.check_registration("fixed@y.org", inv.token))
    register(stores, result_of, "fixed@x.org", inv.token)
    assert result_of(stores.invites.get(inv.token)) is None
    with pytest.raises(InviteInvalid):
        result_of(stores.accounts.register("again@x.org", CREDS, inv.token))
    late = result_of(stores.invites.create("x.org", "account", 100.0, admin=True))
    db_clock.advance(101)
    with pytest.raises(InviteInvalid):
        result_of(stores.accounts.check_registration("late@x.org", late.token))
    assert result_of(stores.invites.list()) == []


def test_admin_invite_makes_an_admin(stores: Stores, result_of: Any) -> None:
    """An admin invite's account is an admin; others are not."""
    inv = result_of(stores.invites.create("x.org", "account", 100.0, admin=True))
    assert register(stores, result_of, "boss@x.org", inv.token).admin
    assert result_of(stores.accounts.is_admin("boss@x.org")) is True
    register(stores, result_of, "plain@x.org")
    assert result_of(stores.accounts.is_admin("plain@x.org")) is False


def test_contact_invite_makes_mutual_contacts(stores: Stores, result_of: Any) -> None:
    """A user's invite puts inviter and invitee on each other's rosters ('both')
    and bumps both roster versions."""
    result_of(stores.users.create("inviter@x.org", "p"))
    before = result_of(stores.roster.get_version("inviter@x.org"))
    inv = result_of(stores.invites.create("x.org", "contact", 100.0, creator="inviter@x.org"))
    assert result_of(stores.invites.get(inv.token)).creator == "inviter@x.org"
    reg = register(stores, result_of, "friend@x.org", inv.token)
    assert reg.inviter == "inviter@x.org"
    assert result_of(stores.roster.get_roster("friend@x.org"))[1] == [
        RosterItem("inviter@x.org", subscription="both")]
    version, items = result_of(stores.roster.get_roster("inviter@x.org"))
    assert items == [RosterItem("friend@x.org", subscription="both")] and version > before


def test_contact_invite_without_registration(stores: Stores, result_of: Any) -> None:
    """A contact invite with register=False cannot create an account."""
    result_of(stores.users.create("inviter@x.org", "p"))
    inv = result_of(stores.invites.create("x.org", "contact", 100.0, creator="inviter@x.org",
                                          register=False))
    with pytest.raises(InviteInvalid):
        result_of(stores.accounts.check_registration("friend@x.org", inv.token))


def test_login_disabled_and_grace(stores: Stores, result_of: Any, db_clock: Any) -> None:
    """login records the time and cancels a scheduled removal; a disabled
    account answers 'disabled' until enabled; unknown accounts 'unknown'."""
    result_of(stores.users.create("a@x.org", "p"))
    assert result_of(stores.accounts.login("nobody@x.org")) == "unknown"
    result_of(stores.accounts.schedule_deletion("a@x.org", 2000.0))
    assert result_of(stores.accounts.login("a@x.org")) == "ok"
    info = result_of(stores.accounts.info("a@x.org"))
    assert info.last_login == 1000.0 and info.delete_at is None and info.disabled_at is None
    assert not info.self_registered
    result_of(stores.accounts.set_disabled("a@x.org", True))
    assert result_of(stores.accounts.login("a@x.org")) == "disabled"
    assert result_of(stores.accounts.changes_since(1000.0)) == (["a@x.org"], [])
    result_of(stores.accounts.set_disabled("a@x.org", False))
    assert result_of(stores.accounts.login("a@x.org")) == "ok"
    with pytest.raises(UnknownUser):
        result_of(stores.accounts.set_disabled("nobody@x.org", True))


def test_due_deletions(stores: Stores, result_of: Any, db_clock: Any) -> None:
    """Accounts whose removal time has come are listed, the others not."""
    result_of(stores.users.create_many([("a@x.org", "p"), ("b@x.org", "p")]))
    result_of(stores.accounts.schedule_deletion("a@x.org", 1500.0))
    result_of(stores.accounts.schedule_deletion("b@x.org", 3000.0))
    assert result_of(stores.accounts.due_deletions()) == []
    db_clock.advance(600)
    assert result_of(stores.accounts.due_deletions()) == ["a@x.org"]


def test_delete_removes_everything_and_leaves_a_tombstone(stores: Stores, result_of: Any,
                                                          db_clock: Any) -> None:
    """Removal takes the account's rows, its uploads, its invites, other local
    rosters' items and requests naming it; the name stays reserved for the
    tombstone period, then may be registered again."""
    result_of(stores.users.create_many([("gone@x.org", "p"), ("bob@x.org", "p"),
                                        ("carol@x.org", "p")]))
    result_of(stores.roster.set_item("gone@x.org", RosterItem("bob@x.org", subscription="both")))
    result_of(stores.roster.set_item("bob@x.org", RosterItem("gone@x.org", subscription="both")))
    result_of(stores.roster.set_item("bob@x.org", RosterItem("carol@x.org")))
    result_of(stores.roster.add_request("carol@x.org", "gone@x.org", None))
    result_of(stores.offline.store("gone@x.org", "<message/>", 10))
    result_of(stores.invites.create("x.org", "contact", 100.0, creator="gone@x.org"))
    slot = "a" * 32
    result_of(stores.upload.reserve(UploadRecord(slot, "gone@x.org", "f.jpg", 1, "image/jpeg",
                                                 1000.0, None, None), 0, 0))
    bob_version = result_of(stores.roster.get_version("bob@x.org"))
    deleted = result_of(stores.accounts.delete("gone@x.org", tombstone_for=500.0))
    assert deleted.upload_slots == (slot,)
    assert deleted.local_contacts == ("bob@x.org",)
    assert result_of(stores.accounts.delete("gone@x.org")) is None
    assert result_of(stores.roster.get_roster("bob@x.org")) == (
        bob_version + 1, [RosterItem("carol@x.org")])
    assert result_of(stores.roster.list_requests("carol@x.org")) == []

    def counts(conn: Any) -> dict[str, int]:
        return {t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar()
                for t in schema.metadata.sorted_tables}

    got = result_of(stores.db.run("t", counts))
    assert got["users"] == 2 and got["uploads"] == 0 and got["invites"] == 0
    assert got["offline_messages"] == 0 and got["tombstones"] == 1
    assert result_of(stores.accounts.changes_since(1000.0)) == ([], ["gone@x.org"])
    with pytest.raises(NameReserved):
        result_of(stores.accounts.check_registration("gone@x.org"))
    db_clock.advance(501)
    assert result_of(stores.accounts.purge_tombstones()) == 1
    register(stores, result_of, "gone@x.org")


def test_captcha_challenge_one_guess(stores: Stores, result_of: Any, db_clock: Any) -> None:
    """A challenge accepts its answer (any case) once; a wrong guess uses it up;
    an expired one fails."""
    inv = stores.invites
    result_of(inv.add_challenge("c1", "abc12", 60.0))
    assert result_of(inv.check_challenge("c1", " ABC12 ")) is True
    assert result_of(inv.check_challenge("c1", "abc12")) is False
    result_of(inv.add_challenge("c2", "abc12", 60.0))
    assert result_of(inv.check_challenge("c2", "wrong")) is False
    assert result_of(inv.check_challenge("c2", "abc12")) is False
    result_of(inv.add_challenge("c3", "zz", 60.0))
    db_clock.advance(61)
    assert result_of(inv.check_challenge("c3", "zz")) is False
