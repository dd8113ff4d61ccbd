"""Account life cycle: registration with invites, login bookkeeping, disabled
accounts, removal (in one transaction, with a tombstone) and its grace period.

Account removal happens here and nowhere else. Tables that belong to an
account reference ``users.id`` with ON DELETE CASCADE and go with the row;
what is keyed by JID instead (uploads, other users' roster items and
requests naming the account) is deleted explicitly below, and features
that keep data outside the database (upload files, caches) listen for the
``user/deleted`` event (chatbx_server/accounts.py). A store added later
joins by either means: a cascading foreign key, or a line in
:func:`delete_account_txn`.

A tombstone keeps a deleted localpart reserved for a while, so that nobody
can register it and receive what was meant for the previous owner
(messages from contacts who have not noticed, password resets elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from twisted.internet.defer import Deferred

from chatbx_server.storage.database import Database
from chatbx_server.storage.errors import StorageError, UnknownUser
from chatbx_server.storage.invites import Invite, get_txn as get_invite_txn
from chatbx_server.storage.roster import _bump_version_txn
from chatbx_server.storage.schema import (invites, roster_items, subscription_requests,
                                          tombstones, uploads, users)
from chatbx_server.storage.users import (ScramCredentials, check_new_users_txn,
                                         create_users_txn, now_function, split_jid, user_id_txn)

__all__ = ["AccountInfo", "AccountStore", "DeletedAccount", "InviteInvalid", "NameReserved",
           "Registered"]


class NameReserved(StorageError):
    """The localpart belonged to a deleted account and is still reserved."""

    def __init__(self, jid: str) -> None:
        super().__init__(f"reserved: {jid}")
        self.jid = jid


class InviteInvalid(StorageError):
    """The invite is unknown, expired, used, for another domain or name, or
    does not allow creating an account."""


@dataclass(frozen=True)
class Registered:
    """What a registration did besides creating the account."""

    jid: str
    #: the inviting account now on the new account's roster (and vice versa)
    inviter: Optional[str] = None
    #: the new account is an admin (admin invite)
    admin: bool = False


@dataclass(frozen=True)
class DeletedAccount:
    """What went with an account besides its own rows."""

    jid: str
    #: upload slots whose files must be removed from disk
    upload_slots: tuple[str, ...]
    #: local accounts whose rosters named the deleted account (they get pushes)
    local_contacts: tuple[str, ...]


@dataclass(frozen=True)
class AccountInfo:
    jid: str
    created_at: float
    last_login: Optional[float]
    disabled_at: Optional[float]
    delete_at: Optional[float]
    admin: bool
    #: created by its user, not an operator (the new-account limits apply)
    self_registered: bool = False


def _where(jid: str) -> Any:
    username, domain = split_jid(jid)
    return sa.and_(users.c.username == username, users.c.domain == domain)


def reserved_txn(conn: Connection, jid: str, now: float) -> bool:
    """Whether a tombstone still reserves ``jid``."""
    username, domain = split_jid(jid)
    row = conn.execute(sa.select(tombstones.c.reserved_until).where(
        tombstones.c.username == username, tombstones.c.domain == domain)).first()
    return row is not None and row.reserved_until > now


def _valid_invite_txn(conn: Connection, jid: str, token: str, now: float) -> Invite:
    invite = get_invite_txn(conn, token, now)
    username, domain = split_jid(jid)
    if (invite is None or invite.domain != domain or not invite.register
            or (invite.username is not None and invite.username != username)):
        raise InviteInvalid(token)
    return invite


def check_registration_txn(conn: Connection, jid: str, token: Optional[str], now: float) -> None:
    """Refuse before hashing: an existing or reserved name, an unusable invite.

    Raises:
        UserExists, NameReserved, InviteInvalid.
    """
    check_new_users_txn(conn, [jid])
    if reserved_txn(conn, jid, now):
        raise NameReserved(jid)
    if token is not None:
        _valid_invite_txn(conn, jid, token, now)


def register_txn(conn: Connection, jid: str, creds: dict[str, ScramCredentials],
                 token: Optional[str], now: float) -> Registered:
    """Create the account, consuming the invite, in one transaction.

    A contact invite (one with a creator) makes the two accounts mutual
    contacts (XEP-0379 §3: the invitee's subscription is pre-approved, and
    the inviter asked for it by inviting): 'both' on each side.
    """
    invite = None
    if token is not None:
        invite = _valid_invite_txn(conn, jid, token, now)
        # Single use; the row lock (PostgreSQL) makes a second user wait and fail.
        if not conn.execute(sa.delete(invites).where(invites.c.token == token)).rowcount:
            raise InviteInvalid(token)
    if reserved_txn(conn, jid, now):
        raise NameReserved(jid)
    username, domain = split_jid(jid)
    conn.execute(sa.delete(tombstones).where(tombstones.c.username == username,
                                             tombstones.c.domain == domain))
    create_users_txn(conn, [(jid, creds)], now)
    admin = bool(invite is not None and invite.admin)
    conn.execute(sa.update(users).where(_where(jid)).values(admin=admin, self_registered=True))
    inviter = invite.creator if invite is not None else None
    if inviter is not None:
        try:
            inviter_id = user_id_txn(conn, inviter, for_update=True)
        except UnknownUser:
            inviter = None
        else:
            new_id = user_id_txn(conn, jid)
            for owner, contact in ((new_id, inviter), (inviter_id, jid)):
                conn.execute(sa.delete(roster_items).where(roster_items.c.user_id == owner,
                                                           roster_items.c.contact == contact))
                conn.execute(sa.insert(roster_items).values(
                    user_id=owner, contact=contact, subscription="both", ask=False,
                    approved=False, groups="[]"))
                _bump_version_txn(conn, owner)
    return Registered(jid, inviter, admin)


def login_txn(conn: Connection, jid: str, now: float) -> str:
    """Record a successful password check: 'ok' (last login set, a pending
    removal cancelled), 'disabled', or 'unknown'."""
    return login_info_txn(conn, jid, now)[0]


#: the hot login statements, built once (building a select costs more than
#: running it on SQLite); the values are bound per call
_LOGIN_ROW = sa.select(users).where(users.c.username == sa.bindparam("username"),
                                    users.c.domain == sa.bindparam("domain"))
_LOGIN_SET = (sa.update(users).where(users.c.id == sa.bindparam("user_id"))
              .values(last_login=sa.bindparam("now"), delete_at=None))


def login_info_txn(conn: Connection, jid: str, now: float
                   ) -> tuple[str, Optional[AccountInfo]]:
    """:func:`login_txn` that also returns the account's row as it was
    before the login (what ``info`` reads), so that a login needs one
    transaction for both: features that look at the account when its
    session is bound (antispam: its age) take it from the login."""
    username, domain = split_jid(jid)
    row = conn.execute(_LOGIN_ROW, {"username": username, "domain": domain}).first()
    if row is None:
        return "unknown", None
    info = _info(jid, row)
    if row.disabled_at is not None:
        return "disabled", info
    conn.execute(_LOGIN_SET, {"user_id": row.id, "now": now})
    return "ok", info


def set_disabled_txn(conn: Connection, jid: str, disabled: bool, now: float) -> None:
    """Disable (or enable) an account. Raises UnknownUser."""
    result = conn.execute(sa.update(users).where(_where(jid))
                          .values(disabled_at=now if disabled else None))
    if not result.rowcount:
        raise UnknownUser(jid)


def schedule_deletion_txn(conn: Connection, jid: str, at: Optional[float]) -> None:
    """Set (or clear, None) when the account's data goes. Raises UnknownUser."""
    result = conn.execute(sa.update(users).where(_where(jid)).values(delete_at=at))
    if not result.rowcount:
        raise UnknownUser(jid)


def due_deletions_txn(conn: Connection, now: float, limit: int) -> list[str]:
    """Accounts whose grace period is over, at most ``limit``."""
    rows = conn.execute(sa.select(users.c.username, users.c.domain)
                        .where(users.c.delete_at.is_not(None), users.c.delete_at <= now)
                        .order_by(users.c.delete_at).limit(limit))
    return [f"{r.username}@{r.domain}" for r in rows]


def info_txn(conn: Connection, jid: str) -> Optional[AccountInfo]:
    row = conn.execute(sa.select(users).where(_where(jid))).first()
    if row is None:
        return None
    return _info(jid, row)


def _info(jid: str, row: Any) -> AccountInfo:
    return AccountInfo(jid, float(row.created_at), row.last_login, row.disabled_at,
                       row.delete_at, bool(row.admin), bool(row.self_registered))


def delete_account_txn(conn: Connection, jid: str, now: float,
                       reserved_until: Optional[float]) -> Optional[DeletedAccount]:
    """Remove the account and everything of it; None when there was none.

    Own rows go by ON DELETE CASCADE (credentials, roster, requests,
    offline messages, invites it created, and whatever later stores hang
    off ``users.id``). Rows keyed by JID go here: its uploads, and other
    local accounts' roster items and pending requests naming it (their
    roster versions are bumped: XEP-0237, every change counts).
    """
    try:
        user_id = user_id_txn(conn, jid, for_update=True)
    except UnknownUser:
        return None
    slots = tuple(r.slot for r in conn.execute(
        sa.select(uploads.c.slot).where(uploads.c.uploader == jid)))
    conn.execute(sa.delete(uploads).where(uploads.c.uploader == jid))
    holders = {int(r.user_id) for r in conn.execute(
        sa.select(roster_items.c.user_id).where(roster_items.c.contact == jid,
                                                roster_items.c.user_id != user_id))}
    conn.execute(sa.delete(roster_items).where(roster_items.c.contact == jid))
    conn.execute(sa.delete(subscription_requests).where(subscription_requests.c.contact == jid))
    for holder in sorted(holders):
        _bump_version_txn(conn, holder)
    contacts: list[str] = []
    if holders:
        contacts = sorted(f"{r.username}@{r.domain}" for r in conn.execute(
            sa.select(users.c.username, users.c.domain).where(users.c.id.in_(holders))))
    conn.execute(sa.delete(users).where(users.c.id == user_id))
    if reserved_until is not None:
        username, domain = split_jid(jid)
        conn.execute(sa.delete(tombstones).where(tombstones.c.username == username,
                                                 tombstones.c.domain == domain))
        conn.execute(sa.insert(tombstones).values(username=username, domain=domain,
                                                  deleted_at=now, reserved_until=reserved_until))
    return DeletedAccount(jid, slots, tuple(contacts))


def changes_since_txn(conn: Connection, since: float) -> tuple[list[str], list[str]]:
    """(disabled, deleted) accounts since ``since``: another process (chatbxctl,
    another node) changed them, and this node closes their sessions."""
    disabled = [f"{r.username}@{r.domain}" for r in conn.execute(
        sa.select(users.c.username, users.c.domain).where(users.c.disabled_at >= since))]
    deleted = [f"{r.username}@{r.domain}" for r in conn.execute(
        sa.select(tombstones.c.username, tombstones.c.domain)
        .where(tombstones.c.deleted_at >= since))]
    return disabled, deleted


def purge_tombstones_txn(conn: Connection, now: float) -> int:
    return int(conn.execute(sa.delete(tombstones)
                            .where(tombstones.c.reserved_until <= now)).rowcount or 0)


def is_admin_txn(conn: Connection, jid: str) -> bool:
    try:
        row = conn.execute(sa.select(users.c.admin).where(_where(jid))).first()
    except ValueError:
        return False
    return bool(row is not None and row.admin)


class AccountStore:
    """Account life cycle beyond credentials (those are UserStore's).

    Args:
        db: the Database.
        clock: an ``IReactorTime`` (wall clock if None).
    """

    def __init__(self, db: Database, clock: Any = None) -> None:
        self.db = db
        self.now = now_function(clock)

    def check_registration(self, jid: str, token: Optional[str] = None) -> Deferred[None]:
        return self.db.run("accounts.check_registration", check_registration_txn, jid, token,
                           self.now())

    def register(self, jid: str, creds: dict[str, ScramCredentials],
                 token: Optional[str] = None) -> Deferred[Registered]:
        return self.db.run("accounts.register", register_txn, jid, creds, token, self.now())

    def login(self, jid: str) -> Deferred[str]:
        return self.login_info(jid).addCallback(lambda result: result[0])

    def login_info(self, jid: str) -> Deferred[tuple[str, Optional[AccountInfo]]]:
        """Record a login ('ok', 'disabled', 'unknown') and read the
        account (as ``info``) in the same transaction."""
        return self.db.run("accounts.login", login_info_txn, jid, self.now())

    def set_disabled(self, jid: str, disabled: bool) -> Deferred[None]:
        return self.db.run("accounts.set_disabled", set_disabled_txn, jid, disabled, self.now())

    def schedule_deletion(self, jid: str, at: Optional[float]) -> Deferred[None]:
        return self.db.run("accounts.schedule_deletion", schedule_deletion_txn, jid, at)

    def due_deletions(self, limit: int = 100) -> Deferred[list[str]]:
        return self.db.run("accounts.due_deletions", due_deletions_txn, self.now(), limit)

    def info(self, jid: str) -> Deferred[Optional[AccountInfo]]:
        return self.db.run("accounts.info", info_txn, jid)

    def delete(self, jid: str, tombstone_for: float = 0.0) -> Deferred[Optional[DeletedAccount]]:
        """Delete the account; keep its name reserved ``tombstone_for`` seconds (0: not)."""
        now = self.now()
        until = now + tombstone_for if tombstone_for > 0 else None
        return self.db.run("accounts.delete", delete_account_txn, jid, now, until)

    def changes_since(self, since: float) -> Deferred[tuple[list[str], list[str]]]:
        return self.db.run("accounts.changes_since", changes_since_txn, since)

    def purge_tombstones(self) -> Deferred[int]:
        return self.db.run("accounts.purge_tombstones", purge_tombstones_txn, self.now())

    def is_admin(self, jid: str) -> Deferred[bool]:
        return self.db.run("accounts.is_admin", is_admin_txn, jid)
