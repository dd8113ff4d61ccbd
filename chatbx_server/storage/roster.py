"""Roster items, roster versions and pending inbound subscription requests.

RFC 6121 §2 (roster), §3.1.3 (an inbound request is kept until the user
answers, and delivered at each login), XEP-0237 (roster versioning: one
counter per user, bumped on every change).

Only local accounts have rosters: every method fails with UnknownUser for a
JID that is not in ``users``, so nothing is stored for remote JIDs.

Limits (``max_items``, ``max_requests``) are checked in the transaction
that inserts, after the per-user row lock, so they hold exactly even when
several processes change one roster; the roster feature checks its cached
copy first and this is the backstop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from twisted.internet.defer import Deferred

from chatbx_server.storage.database import Database
from chatbx_server.storage.errors import StorageError
from chatbx_server.storage.schema import roster_items, roster_versions, subscription_requests
from chatbx_server.storage.users import now_function, user_id_txn

__all__ = ["RosterItem", "RosterLimitReached", "RosterStore", "SUBSCRIPTIONS"]

SUBSCRIPTIONS = frozenset({"none", "to", "from", "both"})


@dataclass(frozen=True)
class RosterItem:
    """One contact on a user's roster (RFC 6121 §2.1.2)."""

    jid: str
    name: str | None = None
    subscription: str = "none"
    ask: bool = False
    approved: bool = False
    groups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.subscription not in SUBSCRIPTIONS:
            raise ValueError(f"bad subscription state: {self.subscription!r}")


class RosterLimitReached(StorageError):
    """Inserting would pass ``limit`` ("max_items" or "max_requests"); nothing changed."""

    def __init__(self, user: str, limit: str) -> None:
        super().__init__(f"{limit} reached for {user}")
        self.user = user
        self.limit = limit


def _count_txn(conn: Connection, table: sa.Table, user_id: int) -> int:
    return int(conn.execute(
        sa.select(sa.func.count()).select_from(table).where(table.c.user_id == user_id)
    ).scalar() or 0)


def _row_to_item(row: Any) -> RosterItem:
    return RosterItem(
        jid=row.contact,
        name=row.name,
        subscription=row.subscription,
        ask=bool(row.ask),
        approved=bool(row.approved),
        groups=tuple(json.loads(row.groups)),
    )


def _bump_version_txn(conn: Connection, user_id: int) -> int:
    """Increment the user's roster version and return the new value.

    The UPDATE also locks the row, serializing concurrent roster changes of
    one user on PostgreSQL.
    """
    result = conn.execute(
        sa.update(roster_versions)
        .where(roster_versions.c.user_id == user_id)
        .values(version=roster_versions.c.version + 1)
    )
    if not result.rowcount:
        conn.execute(sa.insert(roster_versions).values(user_id=user_id, version=1))
        return 1
    return get_version_by_id_txn(conn, user_id)


def get_version_by_id_txn(conn: Connection, user_id: int) -> int:
    """The current roster version; 0 when never changed."""
    version = conn.execute(
        sa.select(roster_versions.c.version).where(roster_versions.c.user_id == user_id)
    ).scalar()
    return int(version or 0)


def get_version_txn(conn: Connection, user: str) -> int:
    """The current roster version of a local user."""
    return get_version_by_id_txn(conn, user_id_txn(conn, user))


_ITEM_COLUMNS = (
    roster_items.c.contact,
    roster_items.c.name,
    roster_items.c.subscription,
    roster_items.c.ask,
    roster_items.c.approved,
    roster_items.c.groups,
)


#: what every login reads, built once (values bound per call)
_ITEMS_OF = sa.select(*_ITEM_COLUMNS).where(roster_items.c.user_id == sa.bindparam("user_id"))
_VERSION_OF = sa.select(roster_versions.c.version).where(
    roster_versions.c.user_id == sa.bindparam("user_id"))
_REQUESTS_OF = (
    sa.select(subscription_requests.c.contact, subscription_requests.c.status)
    .where(subscription_requests.c.user_id == sa.bindparam("user_id"))
    .order_by(subscription_requests.c.created_at, subscription_requests.c.contact)
)


def get_roster_txn(conn: Connection, user: str) -> tuple[int, list[RosterItem]]:
    """(version, items sorted by JID)."""
    return _roster_by_id_txn(conn, user_id_txn(conn, user))


def _roster_by_id_txn(conn: Connection, user_id: int) -> tuple[int, list[RosterItem]]:
    params = {"user_id": user_id}
    rows = conn.execute(_ITEMS_OF, params)
    items = sorted((_row_to_item(r) for r in rows), key=lambda i: i.jid)
    version = conn.execute(_VERSION_OF, params).scalar()
    return int(version or 0), items


def _requests_by_id_txn(conn: Connection, user_id: int) -> list[tuple[str, str | None]]:
    return [(r.contact, r.status) for r in conn.execute(_REQUESTS_OF, {"user_id": user_id})]


def get_item_txn(conn: Connection, user: str, contact: str) -> RosterItem | None:
    """One roster item, or None."""
    user_id = user_id_txn(conn, user)
    row = conn.execute(
        sa.select(*_ITEM_COLUMNS).where(
            roster_items.c.user_id == user_id, roster_items.c.contact == contact
        )
    ).first()
    return None if row is None else _row_to_item(row)


def set_item_txn(conn: Connection, user: str, item: RosterItem,
                 max_items: int | None = None) -> int:
    """Insert or replace an item; returns the new roster version.

    Raises:
        RosterLimitReached: a new contact would make more than ``max_items``.
    """
    user_id = user_id_txn(conn, user)
    version = _bump_version_txn(conn, user_id)  # also the per-user lock
    values = {
        "name": item.name,
        "subscription": item.subscription,
        "ask": item.ask,
        "approved": item.approved,
        "groups": json.dumps(list(item.groups)),
    }
    updated = conn.execute(
        sa.update(roster_items)
        .where(roster_items.c.user_id == user_id, roster_items.c.contact == item.jid)
        .values(**values)
    )
    if not updated.rowcount:
        if max_items is not None and _count_txn(conn, roster_items, user_id) >= max_items:
            raise RosterLimitReached(user, "max_items")  # rolls the version back too
        conn.execute(sa.insert(roster_items).values(user_id=user_id, contact=item.jid, **values))
    return version


def remove_item_txn(conn: Connection, user: str, contact: str) -> int:
    """Remove an item; returns the new version (unchanged if nothing was removed)."""
    user_id = user_id_txn(conn, user)
    deleted = conn.execute(
        sa.delete(roster_items).where(
            roster_items.c.user_id == user_id, roster_items.c.contact == contact
        )
    )
    if not deleted.rowcount:
        return get_version_by_id_txn(conn, user_id)
    return _bump_version_txn(conn, user_id)


def add_request_txn(
    conn: Connection, user: str, contact: str, status: str | None, now: float,
    max_requests: int | None = None,
) -> None:
    """Remember an inbound request; a repeated one updates the status text.

    Raises:
        RosterLimitReached: a new contact would make more than ``max_requests``.
    """
    user_id = user_id_txn(conn, user, for_update=True)
    updated = conn.execute(
        sa.update(subscription_requests)
        .where(
            subscription_requests.c.user_id == user_id,
            subscription_requests.c.contact == contact,
        )
        .values(status=status)
    )
    if not updated.rowcount:
        if (max_requests is not None
                and _count_txn(conn, subscription_requests, user_id) >= max_requests):
            raise RosterLimitReached(user, "max_requests")
        conn.execute(
            sa.insert(subscription_requests).values(
                user_id=user_id, contact=contact, status=status, created_at=now
            )
        )


def remove_request_txn(conn: Connection, user: str, contact: str) -> bool:
    """Forget an inbound request (approved or denied); True if there was one."""
    user_id = user_id_txn(conn, user)
    deleted = conn.execute(
        sa.delete(subscription_requests).where(
            subscription_requests.c.user_id == user_id,
            subscription_requests.c.contact == contact,
        )
    )
    return bool(deleted.rowcount)


def list_requests_txn(conn: Connection, user: str) -> list[tuple[str, str | None]]:
    """Pending inbound requests (contact, status), oldest first."""
    return _requests_by_id_txn(conn, user_id_txn(conn, user))


def load_txn(conn: Connection, user: str
             ) -> tuple[int, list[RosterItem], list[tuple[str, str | None]]]:
    """(version, items, pending requests) in one transaction.

    What the roster cache needs at login: one round trip instead of two,
    and one account lookup for both.
    """
    user_id = user_id_txn(conn, user)
    version, items = _roster_by_id_txn(conn, user_id)
    return version, items, _requests_by_id_txn(conn, user_id)


class RosterStore:
    """Roster storage for the roster and presence features.

    Args:
        db: the Database.
        clock: an ``IReactorTime`` for request times (``time.time`` if None).
    """

    def __init__(self, db: Database, clock: Any = None) -> None:
        self.db = db
        self._now = now_function(clock)

    def get_roster(self, user: str) -> Deferred[tuple[int, list[RosterItem]]]:
        """(version, items sorted by JID). Fails with UnknownUser."""
        return self.db.run("roster.get_roster", get_roster_txn, user)

    def load(self, user: str
             ) -> Deferred[tuple[int, list[RosterItem], list[tuple[str, str | None]]]]:
        """(version, items, pending requests), consistent with each other."""
        return self.db.run("roster.load", load_txn, user)

    def get_item(self, user: str, contact: str) -> Deferred[RosterItem | None]:
        """One item or None."""
        return self.db.run("roster.get_item", get_item_txn, user, contact)

    def set_item(self, user: str, item: RosterItem,
                 max_items: int | None = None) -> Deferred[int]:
        """Insert or replace an item; fires with the new version.

        Fails with RosterLimitReached when a new contact would pass ``max_items``.
        """
        return self.db.run("roster.set_item", set_item_txn, user, item, max_items)

    def remove_item(self, user: str, contact: str) -> Deferred[int]:
        """Remove an item; fires with the (possibly unchanged) version."""
        return self.db.run("roster.remove_item", remove_item_txn, user, contact)

    def get_version(self, user: str) -> Deferred[int]:
        """The current XEP-0237 version."""
        return self.db.run("roster.get_version", get_version_txn, user)

    def add_request(self, user: str, contact: str, status: str | None,
                    max_requests: int | None = None) -> Deferred[None]:
        """Store an inbound subscription request for delivery at login.

        Fails with RosterLimitReached when a new contact would pass ``max_requests``.
        """
        return self.db.run("roster.add_request", add_request_txn, user, contact, status,
                           self._now(), max_requests)

    def remove_request(self, user: str, contact: str) -> Deferred[bool]:
        """Drop an inbound request; fires True if one was stored."""
        return self.db.run("roster.remove_request", remove_request_txn, user, contact)

    def list_requests(self, user: str) -> Deferred[list[tuple[str, str | None]]]:
        """Pending inbound requests (contact, status), oldest first."""
        return self.db.run("roster.list_requests", list_requests_txn, user)
