"""Server secrets in the database (storage/secrets.py), on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from chatbx_server.storage.database import Database
from chatbx_server.storage.secrets import SECRET_LENGTH, ServerSecrets, get_or_create_secret_txn


def test_secret_generated_once_and_shared(database: Any, result_of: Any) -> None:
    """The first get creates random bytes; later gets, from this or another
    process's store, read the same; other names get other secrets."""
    first = result_of(ServerSecrets(database).get("scram-decoy"))
    assert isinstance(first, bytes) and len(first) == SECRET_LENGTH
    other_db = Database(database.url, threadless=True)
    try:
        assert result_of(ServerSecrets(other_db).get("scram-decoy")) == first
    finally:
        other_db.stop()
    assert result_of(ServerSecrets(database).get("other")) != first


def test_concurrent_creation_keeps_the_first(database: Any, result_of: Any) -> None:
    """When another process inserted the secret between our read and our
    insert, ours is dropped and theirs returned (INSERT ... ON CONFLICT DO
    NOTHING, then read back)."""
    import sqlalchemy as sa

    from chatbx_server.storage.schema import server_secrets

    def race(conn: Any) -> bytes:
        real_execute = conn.execute
        seen = []

        def execute(statement: Any, *args: Any, **kwargs: Any) -> Any:
            if not seen and getattr(statement, "is_insert", False):
                seen.append(True)
                real_execute(sa.insert(server_secrets).values(name="n", value=b"theirs"))
            return real_execute(statement, *args, **kwargs)

        conn.execute = execute
        return get_or_create_secret_txn(conn, "n")

    assert result_of(database.run("t", race)) == b"theirs"
    assert result_of(ServerSecrets(database).get("n")) == b"theirs"


def test_secrets_cached(database: Any, result_of: Any) -> None:
    """A store reads each secret from the database once."""
    secrets = ServerSecrets(database)
    value = result_of(secrets.get("x"))
    database.stop()  # a stopped database fails every run()
    assert result_of(secrets.get("x")) == value
