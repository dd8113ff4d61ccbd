"""Messages kept for users who are offline (XEP-0160, RFC 6121 §8.5.2.2).

The store is bounded per user in messages and in bytes (UTF-8 length of
the stored XML, kept in a column so the check reads no stanza): ``store``
refuses (returns False) when one more message would pass either bound, and
the feature bounces the stanza. The check and the insert run in one
transaction with the account row locked, so concurrent stores cannot
overshoot.

Messages are read in pages, oldest first (by id), bounded in count and in
bytes, and deleted only after delivery, so a crash between the two
re-delivers instead of losing anything.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from twisted.internet.defer import Deferred

from chatbx_server.storage.database import Database
from chatbx_server.storage.schema import offline_messages
from chatbx_server.storage.users import now_function, user_id_txn

__all__ = ["PAGE_BYTES", "PAGE_MESSAGES", "OfflineStore", "StoredMessage", "stanza_bytes"]

# Keep IN (...) lists well below backend parameter limits.
_DELETE_CHUNK = 500

#: default bounds of one ``fetch`` page: what one query loads into memory
PAGE_MESSAGES = 100
PAGE_BYTES = 1024 * 1024

_t = offline_messages.c


class StoredMessage(NamedTuple):
    """One stored message, as ``fetch`` returns it."""

    id: int
    #: the serialized stanza (with its XEP-0203 delay stamp)
    xml: str
    #: Unix time the server accepted it
    created_at: float


def stanza_bytes(stanza_xml: str) -> int:
    """The size the byte cap counts: the UTF-8 length of the stored XML."""
    return len(stanza_xml.encode("utf-8"))


def store_txn(conn: Connection, user: str, stanza_xml: str, max_messages: int,
              max_bytes: int | None, now: float) -> bool:
    """Append a message unless it would take the user past either bound."""
    size = stanza_bytes(stanza_xml)
    # Lock the account row so concurrent stores cannot both pass the check.
    user_id = user_id_txn(conn, user, for_update=True)
    held, held_bytes = _usage_txn(conn, user_id)
    if held >= max_messages:
        return False
    if max_bytes is not None and held_bytes + size > max_bytes:
        return False
    conn.execute(sa.insert(offline_messages).values(
        user_id=user_id, stanza=stanza_xml, created_at=now, stanza_bytes=size))
    return True


def _usage_txn(conn: Connection, user_id: int) -> tuple[int, int]:
    row = conn.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(_t.stanza_bytes), 0))
        .where(_t.user_id == user_id)
    ).one()
    return int(row[0]), int(row[1])


#: the first query of every login's delivery (usually finding nothing),
#: built once; values bound per call
_PAGE_SIZES = (sa.select(_t.id, _t.stanza_bytes)
               .where(_t.user_id == sa.bindparam("user_id"), _t.id > sa.bindparam("after"))
               .order_by(_t.id).limit(sa.bindparam("limit")))


def fetch_txn(conn: Connection, user: str, after: int, max_messages: int,
              max_bytes: int) -> list[StoredMessage]:
    """The oldest messages with an id above ``after``: at most ``max_messages``,
    and no more than ``max_bytes`` of XML unless one message alone is bigger
    (a page always holds at least one message, or none is ever delivered)."""
    user_id = user_id_txn(conn, user)
    sizes = conn.execute(_PAGE_SIZES, {"user_id": user_id, "after": after,
                                       "limit": max_messages}).all()
    if not sizes:
        return []
    window = (_t.user_id == user_id, _t.id > after)
    last: int | None = None
    total = 0
    for row in sizes:
        total += int(row.stanza_bytes)
        if last is not None and total > max_bytes:
            break
        last = int(row.id)
    rows = conn.execute(
        sa.select(_t.id, _t.stanza, _t.created_at)
        .where(*window, _t.id <= last)
        .order_by(_t.id)
    )
    return [StoredMessage(int(r.id), r.stanza, float(r.created_at)) for r in rows]


def delete_txn(conn: Connection, user: str, ids: list[int]) -> int:
    """Delete the user's messages with these ids; returns how many went."""
    user_id = user_id_txn(conn, user)
    deleted = 0
    for start in range(0, len(ids), _DELETE_CHUNK):
        chunk = ids[start:start + _DELETE_CHUNK]
        result = conn.execute(
            sa.delete(offline_messages).where(_t.user_id == user_id, _t.id.in_(chunk))
        )
        deleted += result.rowcount
    return deleted


def usage_txn(conn: Connection, user: str) -> tuple[int, int]:
    """(messages, bytes) the user holds."""
    return _usage_txn(conn, user_id_txn(conn, user))


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

    def store(self, user: str, stanza_xml: str, max_messages: int,
              max_bytes: int | None = None) -> Deferred[bool]:
        """Keep a serialized stanza; fires False (nothing stored) when the
        user already holds ``max_messages``, or when it would take what the
        user holds past ``max_bytes`` (None: no byte bound)."""
        return self.db.run("offline.store", store_txn, user, stanza_xml, max_messages,
                           max_bytes, self._now())

    def fetch(self, user: str, *, after: int = 0, max_messages: int = PAGE_MESSAGES,
              max_bytes: int = PAGE_BYTES) -> Deferred[list[StoredMessage]]:
        """One page of messages oldest first, those with an id above ``after``
        (pass the last id of the previous page); delete them after delivery."""
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("a page holds at least one message and one byte")
        return self.db.run("offline.fetch", fetch_txn, user, after, max_messages, max_bytes)

    def delete(self, user: str, ids: list[int]) -> Deferred[int]:
        """Delete delivered messages; fires with the number deleted."""
        return self.db.run("offline.delete", delete_txn, user, list(ids))

    def count(self, user: str) -> Deferred[int]:
        """How many messages wait for the user."""
        return self.usage(user).addCallback(lambda usage: usage[0])

    def usage(self, user: str) -> Deferred[tuple[int, int]]:
        """(messages, bytes) the user holds, as the bounds count them."""
        return self.db.run("offline.usage", usage_txn, user)
