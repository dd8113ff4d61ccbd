"""Offline messages: the byte size of each stored stanza.

Revision ID: 002
Revises: 001
Create Date: 2025-12-01

The offline store is capped per account in bytes as well as in messages;
summing a stored size column keeps that check cheap (no stanza is read).
Rows already stored get their size computed from the stanza text: UTF-8
bytes, the same measure the store uses for new rows.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "002"
down_revision = "001"
branch_labels = None
depends_on = None

_COMMENT = "UTF-8 length of stanza; summed for the per-account byte cap"


def upgrade() -> None:
    op.add_column("offline_messages",
                  sa.Column("stanza_bytes", sa.Integer, nullable=True, comment=_COMMENT))
    if op.get_bind().dialect.name == "sqlite":
        # length() of a TEXT counts characters; of a BLOB, bytes (UTF-8 database).
        size = "length(CAST(stanza AS BLOB))"
    else:
        size = "octet_length(stanza)"
    op.execute(f"UPDATE offline_messages SET stanza_bytes = {size}")
    # SQLite cannot add NOT NULL to a column in place: batch mode copies the table.
    with op.batch_alter_table("offline_messages") as batch:
        batch.alter_column("stanza_bytes", existing_type=sa.Integer, nullable=False,
                           existing_comment=_COMMENT)


def downgrade() -> None:
    with op.batch_alter_table("offline_messages") as batch:
        batch.drop_column("stanza_bytes")
