"""Push registrations (XEP-0357 §5, §6): the push services an account enabled.

One row per account, service JID and node (XEP-0357 §5: a service "MAY be
enabled multiple times for a user only if different node values are
provided"; enabling the same pair again replaces its publish options).
Bounded: at most ``max_per_user`` rows per account, the oldest go.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple, Optional

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from twisted.internet.defer import Deferred

from chatbx_server.storage.database import Database
from chatbx_server.storage.errors import UnknownUser
from chatbx_server.storage.schema import push_registrations
from chatbx_server.storage.users import now_function, user_id_txn

__all__ = ["PushRegistration", "PushStore"]

_t = push_registrations.c

#: a publish-options form as stored: (var, values) pairs, FORM_TYPE excluded
Fields = tuple[tuple[str, tuple[str, ...]], ...]


class PushRegistration(NamedTuple):
    """One enabled push service."""

    service: str
    node: str
    #: the resource that enabled it (the device), if known
    resource: Optional[str] = None
    #: publish options to send with every notification
    publish_options: Fields = ()
    include_body: bool = False


def _dump(fields: Fields) -> Optional[str]:
    return json.dumps([[var, list(values)] for var, values in fields]) if fields else None


def _load(text: Optional[str]) -> Fields:
    if not text:
        return ()
    return tuple((str(var), tuple(str(v) for v in values)) for var, values in json.loads(text))


def _row(r: Any) -> PushRegistration:
    return PushRegistration(r.service, r.node, r.resource, _load(r.publish_options),
                            bool(r.include_body))


def enable_txn(conn: Connection, user: str, reg: PushRegistration, now: float,
               max_per_user: int) -> None:
    user_id = user_id_txn(conn, user, for_update=True)
    conn.execute(sa.delete(push_registrations).where(
        _t.user_id == user_id, _t.service == reg.service, _t.node == reg.node))
    conn.execute(sa.insert(push_registrations).values(
        user_id=user_id, service=reg.service, node=reg.node, resource=reg.resource,
        publish_options=_dump(reg.publish_options), include_body=reg.include_body,
        created_at=now))
    rows = conn.execute(sa.select(_t.service, _t.node).where(_t.user_id == user_id)
                        .order_by(_t.created_at.desc(), _t.service, _t.node)).all()
    for old in rows[max_per_user:]:
        conn.execute(sa.delete(push_registrations).where(
            _t.user_id == user_id, _t.service == old.service, _t.node == old.node))


def disable_txn(conn: Connection, user: str, service: str, node: Optional[str]) -> int:
    """XEP-0357 §6: one node of a service, or every node of it when None."""
    try:
        user_id = user_id_txn(conn, user)
    except UnknownUser:
        return 0
    query = sa.delete(push_registrations).where(_t.user_id == user_id, _t.service == service)
    if node is not None:
        query = query.where(_t.node == node)
    return int(conn.execute(query).rowcount)


def list_txn(conn: Connection, user: str) -> list[PushRegistration]:
    try:
        user_id = user_id_txn(conn, user)
    except UnknownUser:
        return []
    rows = conn.execute(sa.select(_t.service, _t.node, _t.resource, _t.publish_options,
                                  _t.include_body)
                        .where(_t.user_id == user_id).order_by(_t.created_at, _t.service))
    return [_row(r) for r in rows]


class PushStore:
    """Push registrations per account.

    Args:
        db: the Database.
        clock: an ``IReactorTime`` for creation times (``time.time`` if None).
    """

    def __init__(self, db: Database, clock: Any = None) -> None:
        self.db = db
        self._now = now_function(clock)

    def enable(self, user: str, reg: PushRegistration, max_per_user: int) -> Deferred[None]:
        """Add (or replace) a registration; fails with UnknownUser."""
        return self.db.run("push.enable", enable_txn, user, reg, self._now(), max_per_user)

    def disable(self, user: str, service: str, node: Optional[str] = None) -> Deferred[int]:
        """Remove registrations; fires with how many went."""
        return self.db.run("push.disable", disable_txn, user, service, node)

    def list(self, user: str) -> Deferred[list[PushRegistration]]:
        """The account's registrations, oldest first (none for an unknown JID)."""
        return self.db.run("push.list", list_txn, user)
