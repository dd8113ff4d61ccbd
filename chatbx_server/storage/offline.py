"""Messages kept for users who are offline (XEP-0160, RFC 6121 §8.5.2.2).

The store is bounded per user: ``store`` refuses (returns False) once the
user holds ``limit`` messages, and the feature bounces the stanza. Messages
are returned oldest first (by id) and deleted only after delivery, so a
crash between the two re-delivers instead of losing anything.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from twisted.internet.defer import Deferred

from chatbx_server.storage.database import Database
from chatbx_server.storage.schema import offline_messages
from chatbx_server.storage.users import now_function, user_id_txn

__all__ = ["OfflineStore"]

# Keep IN (...) lists well below backend parameter limits.
_DELETE_CHUNK = 500


def store_txn(conn: Connection, user: str, stanza_xml: str, limit: int, now: float) -> bool:
    """Append a message unless the user already holds ``limit`` of them."""
    # Lock the account row so concurrent stores cannot both pass the check.
    user_id = user_id_txn(conn, user, for_update=True)
    held = conn.execute(
        sa.select(sa.func.count())
        .select_from(offline_messages)
        .where(offline_messages.c.user_id == user_id)
    ).scalar_one()
    if held >= limit:
        return False
    conn.execute(
        sa.insert(offline_messages).values(user_id=user_id, stanza=stanza_xml, created_at=now)
    )
    return True


def fetch_txn(conn: Connection, user: str) -> list[tuple[int, str, float]]:
    """All stored messages as (id, xml, unix time), oldest first."""
    user_id = user_id_txn(conn, user)
    rows = conn.execute(
        sa.select(offline_messages.c.id, offline_messages.c.stanza, offline_messages.c.created_at)
        .where(offline_messages.c.user_id == user_id)
        .order_by(offline_messages.c.id)
    )
    return [(int(r.id), r.stanza, float(r.created_at)) for r in rows]


def delete_txn(conn: Connection, user: str, ids: list[int]) -> int:
    """Delete the user's messages with these ids; returns how many went."""
    user_id = user_id_txn(conn, user)
    deleted = 0
    for start in range(0, len(ids), _DELETE_CHUNK):
        chunk = ids[start:start + _DELETE_CHUNK]
        result = conn.execute(
            sa.delete(offline_messages).where(
                offline_messages.c.user_id == user_id, offline_messages.c.id.in_(chunk)
            )
        )
        deleted += result.rowcount
    return deleted


def count_txn(conn: Connection, user: str) -> int:
    """How many messages the user holds."""
    user_id = user_id_txn(conn, user)
    return int(
        conn.execute(
            sa.select(sa.func.count())
            .select_from(offline_messages)
            .where(offline_messages.c.user_id == user_id)
        ).scalar_one()
    )


class OfflineStore:
    """Offline message storage. Every method fails with UnknownUser for a
    JID without a local account.

    Args:
        db: the Database.
        clock: an ``IReactorTime`` for the stored time (``time.time`` if None).
    """

    def __init__(self, db: Database, clock: Any = None) -> None:
        self.db = db
        self._now = now_function(clock)

    def store(self, user: str, stanza_xml: str, limit: int) -> Deferred[bool]:
        """Keep a serialized stanza; fires False (nothing stored) when full."""
        return self.db.run("offline.store", store_txn, user, stanza_xml, limit, self._now())

    def fetch(self, user: str) -> Deferred[list[tuple[int, str, float]]]:
        """(id, xml, unix time) oldest first; delete them after delivery."""
        return self.db.run("offline.fetch", fetch_txn, user)

    def delete(self, user: str, ids: list[int]) -> Deferred[int]:
        """Delete delivered messages; fires with the number deleted."""
        return self.db.run("offline.delete", delete_txn, user, list(ids))

    def count(self, user: str) -> Deferred[int]:
        """How many messages wait for the user."""
        return self.db.run("offline.count", count_txn, user)
