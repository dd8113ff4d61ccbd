"""vcard-temp storage (XEP-0054): one serialized ``<vCard/>`` per account."""

from __future__ import annotations

from typing import Any, Optional

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from twisted.internet.defer import Deferred

from chatbx_server.storage.database import Database
from chatbx_server.storage.schema import vcards
from chatbx_server.storage.users import user_id_txn

__all__ = ["VCardStore"]


def get_txn(conn: Connection, user: str) -> Optional[str]:
    user_id = user_id_txn(conn, user)
    value = conn.execute(sa.select(vcards.c.vcard).where(vcards.c.user_id == user_id)).scalar()
    return str(value) if value is not None else None


def set_txn(conn: Connection, user: str, xml: Optional[str]) -> None:
    user_id = user_id_txn(conn, user, for_update=True)
    conn.execute(sa.delete(vcards).where(vcards.c.user_id == user_id))
    if xml is not None:
        conn.execute(sa.insert(vcards).values(user_id=user_id, vcard=xml,
                                              vcard_bytes=len(xml.encode("utf-8"))))


class VCardStore:
    """Fails with UnknownUser for a JID without an account."""

    def __init__(self, db: Database, clock: Any = None) -> None:
        self.db = db

    def get(self, user: str) -> Deferred[Optional[str]]:
        return self.db.run("vcard.get", get_txn, user)

    def set(self, user: str, xml: Optional[str]) -> Deferred[None]:
        """Store the vCard; None deletes it."""
        return self.db.run("vcard.set", set_txn, user, xml)
