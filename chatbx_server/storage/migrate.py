"""Alembic glue: find the revisions, apply them, and tell where a database stands.

Used by ``chatbxctl db upgrade`` and by the server at start (a database
behind or ahead of the code refuses to start). Everything here is
synchronous: the CLI calls it directly, the server before the reactor runs
or in a thread. The Alembic Config is built here, so no alembic.ini is
needed at run time.
"""

from __future__ import annotations

import contextlib
import enum
from pathlib import Path
from typing import Any, Iterator, cast

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

import chatbx_server
from chatbx_server.storage.database import make_engine

__all__ = ["SchemaState", "check", "current", "head", "script_location", "upgrade"]


class SchemaState(str, enum.Enum):
    """Where a database's schema stands relative to this code."""

    CURRENT = "current"
    BEHIND = "behind"    # upgrade with `chatbxctl db upgrade`
    AHEAD = "ahead"      # written by a newer chatbx: this code must not touch it
    EMPTY = "empty"      # no alembic_version: a new database

    def __str__(self) -> str:
        return self.value


def script_location() -> str:
    """The folder holding env.py and versions/.

    A wheel install copies ``migrations`` into the package; a source checkout
    or editable install has it beside the package.
    """
    package_dir = Path(chatbx_server.__file__).resolve().parent
    inside = package_dir / "migrations"
    if (inside / "env.py").exists():
        return str(inside)
    return str(package_dir.parent / "migrations")


def _config(connection: Connection | None = None, url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", script_location())
    if url is not None:
        # ConfigParser interpolation: a literal '%' (quoted passwords) doubles.
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@contextlib.contextmanager
def _connect(target: str | Engine) -> Iterator[Connection]:
    """A connection for migrating, with SQLite foreign keys off.

    Batch migrations on SQLite copy and drop tables; with foreign keys on,
    dropping a parent table would cascade-delete the children's rows. An
    Engine may be passed (an in-memory test database lives in one); a URL
    gets a short-lived engine of its own.
    """
    engine = make_engine(target, foreign_keys=False) if isinstance(target, str) else target
    try:
        with engine.connect() as conn:
            sqlite = conn.dialect.name == "sqlite"
            if sqlite:
                # Outside any transaction, or SQLite ignores the pragma.
                # driver_connection is None only for a closed connection.
                cast(Any, conn.connection.driver_connection).execute("PRAGMA foreign_keys=OFF")
            try:
                yield conn
            finally:
                if sqlite and not isinstance(target, str):
                    conn.rollback()
                    cast(Any, conn.connection.driver_connection).execute("PRAGMA foreign_keys=ON")
    finally:
        if isinstance(target, str):
            engine.dispose()


def upgrade(url: str | Engine, revision: str = "head") -> None:
    """Apply revisions up to ``revision`` (all of them by default)."""
    with _connect(url) as conn:
        with conn.begin():
            command.upgrade(_config(conn), revision)


def current(url: str | Engine) -> str | None:
    """The revision recorded in the database, None for a new database."""
    with _connect(url) as conn:
        with conn.begin():
            return MigrationContext.configure(conn).get_current_revision()


def head() -> str:
    """The newest revision this code knows."""
    rev = ScriptDirectory.from_config(_config()).get_current_head()
    assert rev is not None, "no migrations found"
    return rev


def check(url: str | Engine) -> SchemaState:
    """Compare the database with this code's revisions (see SchemaState)."""
    rev = current(url)
    if rev is None:
        return SchemaState.EMPTY
    script = ScriptDirectory.from_config(_config())
    if rev == script.get_current_head():
        return SchemaState.CURRENT
    known = {s.revision for s in script.walk_revisions()}
    if rev not in known:
        return SchemaState.AHEAD
    return SchemaState.BEHIND
