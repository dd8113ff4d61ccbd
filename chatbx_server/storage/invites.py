"""Invites (XEP-0401 Easy User Onboarding, XEP-0379 pre-authenticated
roster subscription) and CAPTCHA challenges (XEP-0158).

Both are short-lived secrets kept in the database so that any node (and
the web sign-up page) can check them. Invites are single use: the
registration transaction deletes the invite it consumes
(storage/accounts.py), so two simultaneous sign-ups cannot both use one.
Expired rows are purged when new ones are written, which bounds the tables
by what is created within one lifetime.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Optional

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from twisted.internet.defer import Deferred

from chatbx_server.storage.database import Database
from chatbx_server.storage.schema import captcha_challenges, invites, users
from chatbx_server.storage.users import now_function, user_id_txn

__all__ = ["Invite", "InviteStore", "new_token"]

KINDS = ("account", "contact")


def new_token() -> str:
    """A URL-safe random secret (128 bits) that does not start with "-":
    one in 64 did, and ``chatbxctl invite revoke TOKEN`` then took the
    token for an option (argparse) and refused to run."""
    while True:
        token = secrets.token_urlsafe(16)
        if not token.startswith("-"):
            return token


@dataclass(frozen=True)
class Invite:
    """One invite as stored."""

    token: str
    domain: str
    kind: str
    #: bare JID of the inviting account; None for operator invites
    creator: Optional[str]
    #: the only localpart it may register; None = any
    username: Optional[str]
    register: bool
    admin: bool
    created_at: float
    expires_at: float


def _select() -> Any:
    return (sa.select(invites, users.c.username.label("creator_user"),
                      users.c.domain.label("creator_domain"))
            .select_from(invites.outerjoin(users, invites.c.creator_id == users.c.id)))


def _row_to_invite(row: Any) -> Invite:
    creator = (f"{row.creator_user}@{row.creator_domain}"
               if row.creator_user is not None else None)
    return Invite(row.token, row.domain, row.kind, creator, row.username, bool(row.register),
                  bool(row.admin), float(row.created_at), float(row.expires_at))


def create_txn(conn: Connection, invite: Invite) -> None:
    """Store ``invite`` (purging expired ones first). Raises UnknownUser for a missing creator."""
    conn.execute(sa.delete(invites).where(invites.c.expires_at < invite.created_at))
    creator_id = user_id_txn(conn, invite.creator) if invite.creator else None
    conn.execute(sa.insert(invites).values(
        token=invite.token, domain=invite.domain, kind=invite.kind, creator_id=creator_id,
        username=invite.username, register=invite.register, admin=invite.admin,
        created_at=invite.created_at, expires_at=invite.expires_at))


def get_txn(conn: Connection, token: str, now: float) -> Optional[Invite]:
    """The invite, unless it is unknown or expired."""
    row = conn.execute(_select().where(invites.c.token == token,
                                       invites.c.expires_at >= now)).first()
    return _row_to_invite(row) if row is not None else None


def list_txn(conn: Connection, domain: Optional[str], now: float) -> list[Invite]:
    """Unexpired invites, oldest first."""
    query = _select().where(invites.c.expires_at >= now)
    if domain is not None:
        query = query.where(invites.c.domain == domain)
    return [_row_to_invite(r) for r in conn.execute(query.order_by(invites.c.created_at))]


def delete_txn(conn: Connection, token: str) -> bool:
    """Revoke an invite; False when there was none."""
    return bool(conn.execute(sa.delete(invites).where(invites.c.token == token)).rowcount)


def add_challenge_txn(conn: Connection, challenge_id: str, answer: str, now: float,
                      expires_at: float) -> None:
    conn.execute(sa.delete(captcha_challenges).where(captcha_challenges.c.expires_at < now))
    conn.execute(sa.insert(captcha_challenges).values(id=challenge_id, answer=answer,
                                                      expires_at=expires_at))


def check_challenge_txn(conn: Connection, challenge_id: str, answer: str, now: float) -> bool:
    """Whether ``answer`` solves the challenge; the challenge is used up either way
    (one guess per image)."""
    row = conn.execute(sa.select(captcha_challenges.c.answer, captcha_challenges.c.expires_at)
                       .where(captcha_challenges.c.id == challenge_id)).first()
    if row is None:
        return False
    conn.execute(sa.delete(captcha_challenges).where(captcha_challenges.c.id == challenge_id))
    return row.expires_at >= now and secrets.compare_digest(
        row.answer.lower(), answer.strip().lower())


def challenge_answer_txn(conn: Connection, challenge_id: str, now: float) -> Optional[str]:
    """The answer of a pending challenge (to speak it), without using it up."""
    row = conn.execute(sa.select(captcha_challenges.c.answer).where(
        captcha_challenges.c.id == challenge_id, captcha_challenges.c.expires_at >= now)).first()
    return str(row.answer) if row is not None else None


class InviteStore:
    """Invites and CAPTCHA challenges.

    Args:
        db: the Database.
        clock: an ``IReactorTime`` (wall clock if None).
    """

    def __init__(self, db: Database, clock: Any = None) -> None:
        self.db = db
        self.now = now_function(clock)

    def create(self, domain: str, kind: str, lifetime: float, *, creator: Optional[str] = None,
               username: Optional[str] = None, register: bool = True,
               admin: bool = False) -> Deferred[Invite]:
        """A new invite valid for ``lifetime`` seconds."""
        if kind not in KINDS:
            raise ValueError(f"unknown invite kind {kind!r}")
        now = self.now()
        invite = Invite(new_token(), domain, kind, creator, username, register, admin, now,
                        now + lifetime)
        d = self.db.run("invites.create", create_txn, invite)
        return d.addCallback(lambda _: invite)

    def get(self, token: str) -> Deferred[Optional[Invite]]:
        return self.db.run("invites.get", get_txn, token, self.now())

    def list(self, domain: Optional[str] = None) -> Deferred[list[Invite]]:
        return self.db.run("invites.list", list_txn, domain, self.now())

    def delete(self, token: str) -> Deferred[bool]:
        return self.db.run("invites.delete", delete_txn, token)

    def add_challenge(self, challenge_id: str, answer: str, lifetime: float) -> Deferred[None]:
        now = self.now()
        return self.db.run("captcha.add", add_challenge_txn, challenge_id, answer, now,
                           now + lifetime)

    def check_challenge(self, challenge_id: str, answer: str) -> Deferred[bool]:
        return self.db.run("captcha.check", check_challenge_txn, challenge_id, answer,
                           self.now())

    def challenge_answer(self, challenge_id: str) -> Deferred[Optional[str]]:
        return self.db.run("captcha.answer", challenge_answer_txn, challenge_id, self.now())
