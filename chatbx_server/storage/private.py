"""Private XML storage (XEP-0049): one element per account and
``{namespace}name`` key, bounded in bytes per account."""

from __future__ import annotations

from typing import Any, Optional

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from twisted.internet.defer import Deferred

from chatbx_server.storage.database import Database
from chatbx_server.storage.schema import private_storage
from chatbx_server.storage.users import user_id_txn

__all__ = ["PrivateStore"]

_p = private_storage.c


def get_txn(conn: Connection, user: str, key: str) -> Optional[str]:
    user_id = user_id_txn(conn, user)
    value = conn.execute(sa.select(_p.xml).where(_p.user_id == user_id, _p.key == key)).scalar()
    return str(value) if value is not None else None


def set_txn(conn: Connection, user: str, key: str, xml: Optional[str], max_bytes: int) -> bool:
    """Store (or with None delete) one element; False when it would take the
    account past ``max_bytes`` (nothing changes then)."""
    user_id = user_id_txn(conn, user, for_update=True)
    size = len(xml.encode("utf-8")) if xml is not None else 0
    others = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(_p.xml_bytes), 0)).where(
        _p.user_id == user_id, _p.key != key)).scalar() or 0
    if xml is not None and int(others) + size > max_bytes:
        return False
    conn.execute(sa.delete(private_storage).where(_p.user_id == user_id, _p.key == key))
    if xml is not None:
        conn.execute(sa.insert(private_storage).values(user_id=user_id, key=key, xml=xml,
                                                       xml_bytes=size))
    return True


class PrivateStore:
    """Fails with UnknownUser for a JID without an account."""

    def __init__(self, db: Database, clock: Any = None) -> None:
        self.db = db

    def get(self, user: str, key: str) -> Deferred[Optional[str]]:
        return self.db.run("private.get", get_txn, user, key)

    def set(self, user: str, key: str, xml: Optional[str], max_bytes: int) -> Deferred[bool]:
        return self.db.run("private.set", set_txn, user, key, xml, max_bytes)
