"""Message archives (XEP-0313) with preferences (XEP-0441) and full-text search
(XEP-0431).

Revision ID: 006
Revises: 005
Create Date: 2025-11-27

Written out (not taken from schema.py) so this revision stays what it is.
The full-text index is DDL of its own: an FTS5 table, the row recording how
far an indexer has filled it and a trigger for deletions on SQLite, a GIN
expression index on PostgreSQL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "006"
down_revision = "005"
branch_labels = None
depends_on = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

_SQLITE_FTS = (
    "CREATE VIRTUAL TABLE archive_fts USING fts5("
    "owner, body, tokenize='unicode61 remove_diacritics 2')",
    "CREATE TABLE archive_fts_state ("
    "id INTEGER PRIMARY KEY CHECK (id = 1), indexed_to INTEGER NOT NULL)",
    "INSERT INTO archive_fts_state (id, indexed_to) VALUES (1, 0)",
    "CREATE TRIGGER archive_fts_delete AFTER DELETE ON archive_messages "
    "WHEN old.body IS NOT NULL BEGIN "
    "DELETE FROM archive_fts WHERE rowid = old.id; "
    "END",
)
_POSTGRESQL_FTS = (
    "CREATE INDEX ix_archive_messages_fulltext ON archive_messages "
    "USING gin (to_tsvector('simple'::regconfig, body))",
)


def upgrade() -> None:
    op.create_table(
        "archive_messages",
        sa.Column("id", _BIG_ID, autoincrement=False, nullable=False,
                  comment="order and time in one: (Unix microseconds << 10) | sequence, "
                          "assigned by the server; see storage/archive.py"),
        sa.Column("user_id", sa.Integer, nullable=False,
                  comment="owning local account; rows go when the account is deleted"),
        sa.Column("nonce", sa.Integer, nullable=False,
                  comment="random 32 bits of the public archive id (XEP-0359 stanza-id)"),
        sa.Column("with_hash", sa.Integer, nullable=False,
                  comment="CRC-32 of with_jid as a signed 32-bit integer: a small index key"),
        sa.Column("with_jid", sa.String(2047), nullable=False,
                  comment="bare JID of the other party: 'to' of outgoing, 'from' of incoming"),
        sa.Column("with_resource", sa.String(1023), nullable=True,
                  comment="resource of that JID, when the stanza named one"),
        sa.Column("body", sa.Text, nullable=True,
                  comment="text of <body/>, for full-text search (XEP-0431); NULL without one"),
        sa.Column("stanza", sa.Text, nullable=False,
                  comment="serialized XML of the archived message"),
        sa.PrimaryKeyConstraint("id", name="pk_archive_messages"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE",
                                name="fk_archive_messages_user_id_users"),
        comment="user message archives (XEP-0313): one row per message per archive",
    )
    op.create_index("ix_archive_messages_user_id_id", "archive_messages", ["user_id", "id"])
    op.create_index("ix_archive_messages_user_id_with_hash_id", "archive_messages",
                    ["user_id", "with_hash", "id"])
    op.create_table(
        "archive_prefs",
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("default_policy", sa.String(6), nullable=False,
                  comment="XEP-0441 default: always | never | roster"),
        sa.Column("always", sa.Text, nullable=False, server_default="[]",
                  comment="JSON list of JIDs whose messages are always archived"),
        sa.Column("never", sa.Text, nullable=False, server_default="[]",
                  comment="JSON list of JIDs whose messages are never archived"),
        sa.PrimaryKeyConstraint("user_id", name="pk_archive_prefs"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE",
                                name="fk_archive_prefs_user_id_users"),
        sa.CheckConstraint("default_policy IN ('always', 'never', 'roster')",
                           name="ck_archive_prefs_default_policy"),
        comment="archiving preferences (XEP-0441) of accounts that set them",
    )
    dialect = op.get_bind().dialect.name
    for statement in _SQLITE_FTS if dialect == "sqlite" else _POSTGRESQL_FTS:
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for statement in ("DROP TRIGGER IF EXISTS archive_fts_delete",
                          "DROP TABLE IF EXISTS archive_fts_state",
                          "DROP TABLE IF EXISTS archive_fts"):
            op.execute(statement)
    else:
        op.execute("DROP INDEX IF EXISTS ix_archive_messages_fulltext")
    op.drop_table("archive_prefs")
    op.drop_index("ix_archive_messages_user_id_with_hash_id", table_name="archive_messages")
    op.drop_index("ix_archive_messages_user_id_id", table_name="archive_messages")
    op.drop_table("archive_messages")
