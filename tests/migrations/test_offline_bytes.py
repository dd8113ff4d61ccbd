"""Revision 002 fills offline_messages.stanza_bytes for rows stored before it."""

from __future__ import annotations

import sqlalchemy as sa

from chatbx_server.storage import migrate
from chatbx_server.storage.database import make_engine

STANZAS = ["<message id='1'><body>hi</body></message>",
           "<message id='2'><body>\u00e9\u20ac\U0001f600</body></message>"]


def test_existing_offline_rows_get_their_utf8_size(db_url: str) -> None:
    """Rows stored under revision 001 keep their text and get their UTF-8 byte
    length after the upgrade; a downgrade back to 001 keeps the rows."""
    migrate.upgrade(db_url, "001")
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO users (id, username, domain, created_at) "
                                 "VALUES (1, 'alice', 'example.org', 0)"))
            for n, xml in enumerate(STANZAS):
                conn.execute(sa.text("INSERT INTO offline_messages (user_id, stanza, created_at) "
                                     "VALUES (1, :xml, :n)"), {"xml": xml, "n": n})
        migrate.upgrade(db_url)
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT stanza, stanza_bytes FROM offline_messages ORDER BY id")).all()
        assert [(r.stanza, r.stanza_bytes) for r in rows] == [
            (xml, len(xml.encode("utf-8"))) for xml in STANZAS]
        assert rows[1].stanza_bytes == len(rows[1].stanza) + 1 + 2 + 3

        migrate.upgrade(db_url)  # already at head: nothing to do
        from alembic import command

        with migrate._connect(db_url) as conn:
            with conn.begin():
                command.downgrade(migrate._config(conn), "001")
        with engine.connect() as conn:
            assert conn.execute(sa.text(
                "SELECT stanza FROM offline_messages ORDER BY id")).scalars().all() == STANZAS
    finally:
        engine.dispose()
