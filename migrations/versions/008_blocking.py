"""Block lists (XEP-0191) and the spam reports sent with them (XEP-0377).

Revision ID: 008
Revises: 007
Create Date: 2025-11-27

Written out table by table (not metadata.create_all) so this revision stays
what it is when schema.py changes later.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "008"
down_revision = "007"
branch_labels = None
depends_on = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "blocklist_items",
        sa.Column("user_id", sa.Integer, nullable=False,
                  comment="owning local account; rows go when the account is deleted"),
        sa.Column("jid", sa.String(3071), nullable=False,
                  comment="blocked JID as prepared: user@domain[/resource] or domain[/resource]"),
        sa.Column("created_at", sa.Double, nullable=False, comment="Unix time, seconds"),
        sa.PrimaryKeyConstraint("user_id", "jid", name="pk_blocklist_items"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE",
                                name="fk_blocklist_items_user_id_users"),
        comment="XEP-0191 block list: JIDs the user blocks communication with",
    )
    op.create_table(
        "spam_reports",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("reporter", sa.String(2047), nullable=False,
                  comment="bare JID of the local account that reported; kept when it is deleted"),
        sa.Column("jid", sa.String(3071), nullable=False,
                  comment="the reported (and blocked) JID"),
        sa.Column("reason", sa.String(1023), nullable=False,
                  comment="XEP-0377 reason URI, e.g. urn:xmpp:reporting:spam"),
        sa.Column("text", sa.Text, nullable=True, comment="the reporter's explanation, if any"),
        sa.Column("stanza_ids", sa.Text, nullable=False, server_default="[]",
                  comment="JSON list of [by, id] XEP-0359 stanza-ids the report points at"),
        sa.Column("created_at", sa.Double, nullable=False, comment="Unix time, seconds"),
        sa.PrimaryKeyConstraint("id", name="pk_spam_reports"),
        comment="XEP-0377 reports sent with a block, for operators (chatbxctl reports list)",
    )
    op.create_index("ix_spam_reports_created_at", "spam_reports", ["created_at"])
    op.create_index("ix_spam_reports_reporter", "spam_reports", ["reporter"])


def downgrade() -> None:
    op.drop_index("ix_spam_reports_reporter", table_name="spam_reports")
    op.drop_index("ix_spam_reports_created_at", table_name="spam_reports")
    op.drop_table("spam_reports")
    op.drop_table("blocklist_items")
