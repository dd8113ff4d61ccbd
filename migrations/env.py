"""Alembic environment for chatbx.

The URL comes from ``config.attributes['connection']`` (an open Connection,
as ``chatbx_server.storage.migrate`` passes it) or from the
``sqlalchemy.url`` option (the ``alembic`` command line with alembic.ini).
The target is ``chatbx_server.storage.schema.metadata``. Nothing here
depends on where this folder sits relative to the project.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from chatbx_server.storage.database import normalise_url
from chatbx_server.storage.schema import include_object, metadata

config = context.config
target_metadata = metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: Alembic's batch mode copies the table.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        # The archive's full-text index is DDL, not metadata (schema.py).
        include_object=include_object,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    """Emit SQL to stdout (``alembic upgrade --sql``)."""
    url = config.get_main_option("sqlalchemy.url")
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=bool(url and url.startswith("sqlite")),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database: set sqlalchemy.url or pass a connection")
    # hide_parameters: errors must not carry row values into logs.
    engine = create_engine(normalise_url(url), poolclass=NullPool, hide_parameters=True)
    try:
        with engine.connect() as conn:
            _configure(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
