"""Server secrets kept in the database (table ``server_secrets``).

A secret that shapes what clients see must be the same in every process
that serves them and across restarts: decoy SCRAM credentials for unknown
accounts derive from one (RFC 5802 §5.1 leaves the server free to invent
a salt; a salt that changed with each restart would tell unknown accounts
from real ones). In the database, cluster nodes share it too.

Each secret is generated once: the first process inserts random bytes with
INSERT ... ON CONFLICT DO NOTHING and everybody, that process included,
reads back the row that won.
"""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from twisted.internet import defer

from chatbx_server.storage.database import Database
from chatbx_server.storage.schema import server_secrets

__all__ = ["SECRET_LENGTH", "ServerSecrets", "get_or_create_secret_txn"]

#: bytes of a new secret
SECRET_LENGTH = 32


def get_or_create_secret_txn(conn: Connection, name: str, length: int = SECRET_LENGTH) -> bytes:
    """The secret called ``name``, created with ``length`` random bytes if absent.

    Safe against another process creating it at the same moment: the insert
    does nothing on conflict and the stored value is what is returned.
    """
    query = sa.select(server_secrets.c.value).where(server_secrets.c.name == name)
    found = conn.execute(query).scalar()
    if found is not None:
        return bytes(found)
    values = {"name": name, "value": os.urandom(length)}
    insert: Any
    if conn.dialect.name == "postgresql":
        insert = postgresql.insert(server_secrets).values(**values).on_conflict_do_nothing()
    elif conn.dialect.name == "sqlite":
        insert = sqlite.insert(server_secrets).values(**values).on_conflict_do_nothing()
    else:  # pragma: no cover - chatbx supports the two above
        insert = sa.insert(server_secrets).values(**values)
    conn.execute(insert)
    return bytes(conn.execute(query).scalar_one())


class ServerSecrets:
    """Read-once cache of the database's server secrets."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._cache: dict[str, bytes] = {}

    def get(self, name: str) -> defer.Deferred[bytes]:
        """The secret ``name`` (generated on first use), from the cache when known."""
        cached = self._cache.get(name)
        if cached is not None:
            return defer.succeed(cached)

        def remember(value: bytes) -> bytes:
            self._cache[name] = value
            return value

        d = self.db.run("secrets.get", get_or_create_secret_txn, name)
        return d.addCallback(remember)
