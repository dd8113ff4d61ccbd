"""Shared pytest fixtures: fresh databases on SQLite and PostgreSQL.

``db_url`` is parametrized over both backends and gives each test an empty
database of its own. PostgreSQL databases are throwaway databases
``chatbx_test_<random>`` created on the server named by
``CHATBX_TEST_DATABASE_URL`` (default postgresql://postgres@127.0.0.1:5432/test)
and dropped afterwards. When that server cannot be reached the PostgreSQL
cases are skipped, except under CI (``CI`` set) or with
``CHATBX_REQUIRE_POSTGRES=1``, where they fail: CI must not pass silently
without PostgreSQL.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _postgres_admin_url() -> str:
    return os.environ.get("CHATBX_TEST_DATABASE_URL") or DEFAULT_POSTGRES_URL


def _postgres_required() -> bool:
    return bool(os.environ.get("CI")) or os.environ.get("CHATBX_REQUIRE_POSTGRES") == "1"


@pytest.fixture(scope="session")
def postgres_admin_engine() -> Iterator[sa.Engine | str]:
    """An AUTOCOMMIT engine on the PostgreSQL test server, or the reason it
    is unreachable (a str), checked once per session."""
    from chatbx_server.storage.database import normalise_url

    engine = sa.create_engine(
        normalise_url(_postgres_admin_url()), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool,
        connect_args={"connect_timeout": 3},
    )
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means "unreachable"
        engine.dispose()
        yield f"PostgreSQL unreachable at {make_url(_postgres_admin_url()).render_as_string()}: " \
              f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
        return
    yield engine
    engine.dispose()


def _fresh_postgres(admin: sa.Engine | str) -> Iterator[str]:
    if isinstance(admin, str):
        if _postgres_required():
            pytest.fail(admin + " (required: CI or CHATBX_REQUIRE_POSTGRES=1)")
        pytest.skip(admin)
    name = f"chatbx_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = make_url(_postgres_admin_url()).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def postgres_url(postgres_admin_engine: sa.Engine | str) -> Iterator[str]:
    """The URL of a throwaway PostgreSQL database, dropped afterwards
    (skipped when PostgreSQL is unreachable, failed when it is required)."""
    yield from _fresh_postgres(postgres_admin_engine)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh, empty database (no tables) on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'chatbx.sqlite'}"
    else:
        yield request.getfixturevalue("postgres_url")


@pytest.fixture
def database(db_url: str) -> Iterator[Any]:
    """A threadless Database (run() is synchronous) on a fresh database
    migrated to head."""
    from chatbx_server.storage import migrate
    from chatbx_server.storage.database import Database

    migrate.upgrade(db_url)
    db = Database(db_url, threadless=True)
    db.start()
    try:
        yield db
    finally:
        db.stop()


@pytest.fixture
def memory_database() -> Iterator[Any]:
    """A threadless in-memory SQLite Database with the schema: the fastest
    real database, for unit tests of code that uses stores."""
    from chatbx_server.storage import migrate
    from chatbx_server.storage.database import Database

    db = Database.for_tests()
    migrate.upgrade(db.engine)
    db.start()
    try:
        yield db
    finally:
        db.stop()


@pytest.fixture
def db_clock() -> Any:
    """A twisted Clock at t=1000 for stored timestamps."""
    from twisted.internet.task import Clock

    clock = Clock()
    clock.advance(1000.0)
    return clock


@pytest.fixture
def stores(database: Any, db_clock: Any) -> Any:
    """chatbx_server.storage.Stores on the ``database`` fixture and ``db_clock``."""
    from chatbx_server.storage import Stores

    return Stores(database, db_clock)


@pytest.fixture
def result_of() -> Callable[[Deferred[Any]], Any]:
    """Return a function giving the result of an already-fired Deferred
    (raising its failure's exception), like trial's successResultOf."""

    def _result_of(d: Deferred[Any]) -> Any:
        results: list[Any] = []
        d.addBoth(results.append)
        assert results, "Deferred has not fired"
        result = results[0]
        if isinstance(result, Failure):
            result.raiseException()
        return result

    return _result_of
