"""FAST tokens (XEP-0484): two slots per account and device.

XEP-0484 §5.1 ("Server-side handling of multiple active tokens"): a newly
issued token goes into the 'new' slot, replacing any unused one; when a
client authenticates with the token in 'new', it moves to 'current'
(replacing the older token there). So at most two tokens per device are
ever valid, and an older token stops working as soon as a newer one is
used.

A row keeps a random nonce, not the token: the token is derived from the
nonce with a key that is not in the database (see ``c2s/fast.py``), so a
dump of the database alone yields no usable token. Rows are bounded: at
most ``max_devices`` devices per account (the least recently issued go),
and expired rows of the account are dropped whenever a token is issued.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from twisted.internet.defer import Deferred

from chatbx_server.storage.database import Database
from chatbx_server.storage.schema import fast_tokens, users
from chatbx_server.storage.users import now_function, split_jid, user_id_txn

__all__ = ["FastStore", "FastToken", "NEW", "CURRENT"]

NEW = "new"
CURRENT = "current"

_t = fast_tokens.c


class FastToken(NamedTuple):
    """One stored token (its nonce; the token itself is derived)."""

    device: str
    slot: str
    mechanism: str
    nonce: bytes
    label: Optional[str]
    issued_at: float
    expires_at: float


def _row(r: Any) -> FastToken:
    return FastToken(r.device, r.slot, r.mechanism, bytes(r.nonce), r.label,
                     float(r.issued_at), float(r.expires_at))


_COLUMNS = (_t.device, _t.slot, _t.mechanism, _t.nonce, _t.label, _t.issued_at, _t.expires_at)


#: read at every FAST login: one statement (the account by name, joined),
#: built once; values bound per call
_DEVICE_TOKENS = (
    sa.select(*_COLUMNS).select_from(fast_tokens.join(users, users.c.id == _t.user_id))
    .where(users.c.username == sa.bindparam("username"), users.c.domain == sa.bindparam("domain"),
           _t.device == sa.bindparam("device"))
)


def tokens_txn(conn: Connection, user: str, device: str) -> list[FastToken]:
    """The device's tokens, 'new' first (XEP-0484 §5.1 checks it first);
    none for an unknown account."""
    try:
        username, domain = split_jid(user)
    except ValueError:
        return []
    rows = conn.execute(_DEVICE_TOKENS, {"username": username, "domain": domain,
                                         "device": device})
    return sorted((_row(r) for r in rows), key=lambda t: t.slot != NEW)


def issue_txn(conn: Connection, user: str, device: str, label: Optional[str], mechanism: str,
              nonce: bytes, now: float, lifetime: float, max_devices: int) -> FastToken:
    """Put a token into the device's 'new' slot (an unused one there goes)."""
    user_id = user_id_txn(conn, user, for_update=True)
    conn.execute(sa.delete(fast_tokens).where(_t.user_id == user_id, _t.expires_at <= now))
    conn.execute(sa.delete(fast_tokens).where(_t.user_id == user_id, _t.device == device,
                                              _t.slot == NEW))
    token = FastToken(device, NEW, mechanism, nonce, label, now, now + lifetime)
    conn.execute(sa.insert(fast_tokens).values(user_id=user_id, **token._asdict()))
    # Bounded per account: a client inventing a new id at every login
    # pushes out the devices issued longest ago.
    devices = conn.execute(
        sa.select(_t.device, sa.func.max(_t.issued_at).label("last"))
        .where(_t.user_id == user_id).group_by(_t.device)
        .order_by(sa.desc("last"), _t.device)
    ).all()
    stale = [r.device for r in devices[max_devices:] if r.device != device]
    if stale:
        conn.execute(sa.delete(fast_tokens).where(_t.user_id == user_id, _t.device.in_(stale)))
    return token


def promote_txn(conn: Connection, user: str, device: str, nonce: bytes) -> bool:
    """The token in 'new' with this nonce was used: it becomes 'current'."""
    user_id = user_id_txn(conn, user, for_update=True)
    found = conn.execute(sa.select(_t.nonce).where(
        _t.user_id == user_id, _t.device == device, _t.slot == NEW)).scalar()
    if found is None or bytes(found) != nonce:
        return False  # already promoted, or replaced meanwhile
    conn.execute(sa.delete(fast_tokens).where(_t.user_id == user_id, _t.device == device,
                                              _t.slot == CURRENT))
    conn.execute(sa.update(fast_tokens).where(_t.user_id == user_id, _t.device == device,
                                              _t.slot == NEW).values(slot=CURRENT))
    return True


def revoke_txn(conn: Connection, user: str, device: Optional[str]) -> int:
    """Delete the tokens of one device (or of every device); returns rows deleted."""
    user_id = user_id_txn(conn, user)
    query = sa.delete(fast_tokens).where(_t.user_id == user_id)
    if device is not None:
        query = query.where(_t.device == device)
    return int(conn.execute(query).rowcount)


def list_txn(conn: Connection, user: str) -> list[FastToken]:
    user_id = user_id_txn(conn, user)
    rows = conn.execute(sa.select(*_COLUMNS).where(_t.user_id == user_id)
                        .order_by(_t.device, _t.slot))
    return [_row(r) for r in rows]


class FastStore:
    """FAST token rows. Methods taking an account fail with UnknownUser for
    a JID without a local account, except :meth:`tokens` (no tokens).

    Args:
        db: the Database.
        clock: an ``IReactorTime`` for issue times (``time.time`` if None).
    """

    def __init__(self, db: Database, clock: Any = None) -> None:
        self.db = db
        self._now = now_function(clock)

    def tokens(self, user: str, device: str) -> Deferred[list[FastToken]]:
        """The device's valid-or-expired tokens, the 'new' slot first."""
        return self.db.run("fast.tokens", tokens_txn, user, device)

    def issue(self, user: str, device: str, label: Optional[str], mechanism: str, nonce: bytes,
              lifetime: float, max_devices: int) -> Deferred[FastToken]:
        """Store a new token (its nonce) in the device's 'new' slot."""
        return self.db.run("fast.issue", issue_txn, user, device, label, mechanism, nonce,
                           self._now(), lifetime, max_devices)

    def promote(self, user: str, device: str, nonce: bytes) -> Deferred[bool]:
        """Move the used 'new' token to 'current'; False when it is not there."""
        return self.db.run("fast.promote", promote_txn, user, device, nonce)

    def revoke(self, user: str, device: Optional[str] = None) -> Deferred[int]:
        """Invalidate the tokens of ``device``, or of all the account's devices."""
        return self.db.run("fast.revoke", revoke_txn, user, device)

    def list(self, user: str) -> Deferred[list[FastToken]]:
        """Every token row of the account, by device."""
        return self.db.run("fast.list", list_txn, user)
