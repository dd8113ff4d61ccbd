"""Tests for the Alembic revisions and chatbx_server.storage.migrate."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from chatbx_server.storage import migrate
from chatbx_server.storage.database import Database, make_engine
from chatbx_server.storage.schema import SEARCH_OBJECTS, include_object, metadata


def _diff(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            # The archive's full-text index is DDL, not metadata (schema.py).
            ctx = MigrationContext.configure(conn, opts={"compare_type": True,
                                                         "compare_server_default": True,
                                                         "include_object": include_object})
            return compare_metadata(ctx, metadata)
    finally:
        engine.dispose()


def test_script_location_finds_the_revisions() -> None:
    """script_location points at a folder with env.py and the revisions."""
    location = Path(migrate.script_location())
    assert (location / "env.py").is_file()
    assert (location / "versions" / "001_initial.py").is_file()


def test_revisions_are_linear_and_numbered() -> None:
    """One head, and every revision file is NNN_what.py with revision id NNN."""
    script = ScriptDirectory.from_config(migrate._config())
    assert len(script.get_heads()) == 1
    assert migrate.head() == script.get_current_head()
    for rev in script.walk_revisions():
        assert Path(rev.path).name.startswith(rev.revision + "_")


def test_all_revisions_give_the_schema(db_url: str) -> None:
    """Every revision run on an empty database yields exactly schema.metadata."""
    migrate.upgrade(db_url)
    assert _diff(db_url) == []
    engine = make_engine(db_url)
    try:
        names = set(sa.inspect(engine).get_table_names())
        assert names - SEARCH_OBJECTS == set(metadata.tables) | {"alembic_version"}
    finally:
        engine.dispose()


def test_full_text_objects_exist_and_match_create_all(db_url: str) -> None:
    """The archive's full-text index (FTS5 table and triggers on SQLite, GIN
    index on PostgreSQL), which the comparison above leaves out, is created by
    the migration exactly as metadata.create_all creates it."""
    def search_objects(engine: sa.Engine) -> set[str]:
        with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                rows = conn.exec_driver_sql(
                    "SELECT name FROM sqlite_master WHERE name LIKE 'archive_fts%'")
            else:
                rows = conn.exec_driver_sql(
                    "SELECT indexname FROM pg_indexes WHERE indexname = 'ix_archive_messages_fulltext'")
            return {r[0] for r in rows}

    migrate.upgrade(db_url)
    engine = make_engine(db_url)
    try:
        migrated = search_objects(engine)
        if engine.dialect.name == "sqlite":
            assert {"archive_fts", "archive_fts_state", "archive_fts_delete"} <= migrated
        else:
            assert migrated == {"ix_archive_messages_fulltext"}
        with engine.begin() as conn:
            metadata.drop_all(conn)
            conn.exec_driver_sql("DROP TABLE alembic_version")
        assert search_objects(engine) == set()
        with engine.begin() as conn:
            metadata.create_all(conn)
        assert search_objects(engine) == migrated
    finally:
        engine.dispose()


def test_check_states(db_url: str) -> None:
    """check() reports empty, then current after upgrade, behind at an older
    revision, and ahead when alembic_version names a revision it does not know."""
    assert migrate.check(db_url) == migrate.SchemaState.EMPTY
    assert migrate.current(db_url) is None
    migrate.upgrade(db_url)
    assert migrate.check(db_url) == "current"
    assert migrate.current(db_url) == migrate.head()

    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = 'f00dfeed'"))
        assert migrate.check(db_url) == migrate.SchemaState.AHEAD
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = :v"),
                         {"v": migrate.head()})
    finally:
        engine.dispose()
    assert migrate.check(db_url) == migrate.SchemaState.CURRENT


def test_check_behind(db_url: str, monkeypatch) -> None:
    """A database at an older revision than head is reported behind."""
    migrate.upgrade(db_url)
    # Pretend this code knows a newer revision than the database holds.
    monkeypatch.setattr(ScriptDirectory, "get_current_head", lambda self: "999")
    assert migrate.check(db_url) == migrate.SchemaState.BEHIND


def test_downgrade_to_base_and_back(db_url: str) -> None:
    """Every revision's downgrade undoes it: base leaves only alembic_version."""
    from alembic import command

    migrate.upgrade(db_url)
    with migrate._connect(db_url) as conn:
        with conn.begin():
            command.downgrade(migrate._config(conn), "base")
    engine = make_engine(db_url)
    try:
        assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    migrate.upgrade(db_url)
    assert _diff(db_url) == []


def test_upgrade_in_memory_engine_keeps_foreign_keys() -> None:
    """Upgrading the engine of an in-memory test Database works, and foreign
    keys are on again afterwards."""
    db = Database.for_tests()
    migrate.upgrade(db.engine)
    assert migrate.check(db.engine) == migrate.SchemaState.CURRENT
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    db.stop()


def test_url_with_percent_survives_the_config() -> None:
    """A URL containing '%' (a quoted password) reaches env.py unchanged."""
    url = "postgresql://chatbx:p%40ss%25@127.0.0.1/chatbx"
    assert migrate._config(url=url).get_main_option("sqlalchemy.url") == url
