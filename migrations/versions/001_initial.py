"""Initial schema: accounts, SCRAM credentials, rosters, subscription requests,
offline messages.

Revision ID: 001
Revises:
Create Date: 2025-11-26

Written out table by table (not metadata.create_all) so this revision stays
what it is when schema.py changes later.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "001"
down_revision = None
branch_labels = None
depends_on = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _user_fk(table: str) -> list:
    return [
        sa.Column("user_id", sa.Integer, nullable=False,
                  comment="owning local account; rows go when the account is deleted"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE",
                                name=f"fk_{table}_user_id_users"),
    ]


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("username", sa.String(1023), nullable=False,
                  comment="PRECIS-prepared localpart"),
        sa.Column("domain", sa.String(1023), nullable=False,
                  comment="hosted domain the account belongs to"),
        sa.Column("created_at", sa.Double, nullable=False, comment="Unix time, seconds"),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("username", "domain", name="uq_users_username_domain"),
    )
    op.create_table(
        "scram_credentials",
        *_user_fk("scram_credentials"),
        sa.Column("mechanism", sa.String(16), nullable=False,
                  comment="hash function: 'SHA-1' or 'SHA-256'"),
        sa.Column("salt", sa.LargeBinary, nullable=False),
        sa.Column("iterations", sa.Integer, nullable=False, comment="PBKDF2 iteration count"),
        sa.Column("stored_key", sa.LargeBinary, nullable=False,
                  comment="H(ClientKey), RFC 5802; the password is never stored"),
        sa.Column("server_key", sa.LargeBinary, nullable=False,
                  comment="HMAC(SaltedPassword, 'Server Key'), RFC 5802"),
        sa.PrimaryKeyConstraint("user_id", "mechanism", name="pk_scram_credentials"),
        sa.CheckConstraint("mechanism IN ('SHA-1', 'SHA-256')",
                           name="ck_scram_credentials_mechanism"),
    )
    op.create_table(
        "roster_items",
        *_user_fk("roster_items"),
        sa.Column("contact", sa.String(2047), nullable=False,
                  comment="the contact's bare JID"),
        sa.Column("name", sa.String(1023), nullable=True,
                  comment="handle the user gave the contact"),
        sa.Column("subscription", sa.String(4), nullable=False, server_default="none",
                  comment="RFC 6121 state: none | to | from | both"),
        sa.Column("ask", sa.Boolean, nullable=False, server_default=sa.false(),
                  comment="outbound subscription request pending (ask='subscribe')"),
        sa.Column("approved", sa.Boolean, nullable=False, server_default=sa.false(),
                  comment="inbound subscription pre-approved, RFC 6121 §3.4"),
        sa.Column("groups", sa.Text, nullable=False, server_default="[]",
                  comment="JSON list of group names"),
        sa.PrimaryKeyConstraint("user_id", "contact", name="pk_roster_items"),
        sa.CheckConstraint("subscription IN ('none', 'to', 'from', 'both')",
                           name="ck_roster_items_subscription"),
    )
    op.create_table(
        "roster_versions",
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("version", sa.Integer, nullable=False, server_default="0",
                  comment="XEP-0237 version; bumped on every roster change"),
        sa.PrimaryKeyConstraint("user_id", name="pk_roster_versions"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE",
                                name="fk_roster_versions_user_id_users"),
    )
    op.create_table(
        "subscription_requests",
        *_user_fk("subscription_requests"),
        sa.Column("contact", sa.String(2047), nullable=False,
                  comment="bare JID that asked to subscribe to the user"),
        sa.Column("status", sa.Text, nullable=True,
                  comment="the <status/> text of the request, if any"),
        sa.Column("created_at", sa.Double, nullable=False, comment="Unix time, seconds"),
        sa.PrimaryKeyConstraint("user_id", "contact", name="pk_subscription_requests"),
        comment="inbound subscription requests awaiting the user (RFC 6121 §3.1.3)",
    )
    op.create_table(
        "offline_messages",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False,
                  comment="also the delivery order"),
        *_user_fk("offline_messages"),
        sa.Column("stanza", sa.Text, nullable=False, comment="serialized XML of the stanza"),
        sa.Column("created_at", sa.Double, nullable=False,
                  comment="Unix time the server accepted it (for XEP-0203 delay)"),
        sa.PrimaryKeyConstraint("id", name="pk_offline_messages"),
    )
    op.create_index("ix_offline_messages_user_id", "offline_messages", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_offline_messages_user_id", table_name="offline_messages")
    for table in ("offline_messages", "subscription_requests", "roster_versions",
                  "roster_items", "scram_credentials", "users"):
        op.drop_table(table)
