"""FAST tokens (XEP-0484) and push registrations (XEP-0357).

Revision ID: 010
Revises: 009
Create Date: 2026-01-20

``fast_tokens``: per account and device (XEP-0388 user-agent id) two
slots, 'new' and 'current' (XEP-0484 §5.1); a row holds a random nonce,
not the token: the token derives from it with a key kept in data_dir
(chatbx_server/c2s/fast.py). ``push_registrations``: the push services
(JID and node, with their publish options) an account enabled.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "010"
down_revision = "009"
branch_labels = None
depends_on = None

FULL_JID_LENGTH = 3071
PART_LENGTH = 1023


def _user_id() -> sa.Column:
    return sa.Column("user_id", sa.Integer, nullable=False,
                     comment="owning local account; rows go when the account is deleted")


def _user_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE",
                                   name=f"fk_{table}_user_id_users")


def upgrade() -> None:
    op.create_table(
        "fast_tokens",
        _user_id(),
        sa.Column("device", sa.String(128), nullable=False,
                  comment="the client's XEP-0388 user-agent id: tokens are per device"),
        sa.Column("slot", sa.String(8), nullable=False,
                  comment="'new' (issued, not used yet) or 'current' (used); XEP-0484 §5.1"),
        sa.Column("mechanism", sa.String(32), nullable=False,
                  comment="the HT-* mechanism the token is bound to (XEP-0484 §3.4)"),
        sa.Column("nonce", sa.LargeBinary, nullable=False,
                  comment="random bytes the token is derived from with a key kept outside "
                          "the database (c2s/fast.py): the token itself is not stored"),
        sa.Column("label", sa.String(255), nullable=True,
                  comment="the user-agent's software and device names, for listing"),
        sa.Column("issued_at", sa.Double, nullable=False, comment="Unix time, seconds"),
        sa.Column("expires_at", sa.Double, nullable=False, comment="Unix time, seconds"),
        sa.PrimaryKeyConstraint("user_id", "device", "slot", name="pk_fast_tokens"),
        sa.CheckConstraint("slot IN ('new', 'current')", name="ck_fast_tokens_slot"),
        _user_fk("fast_tokens"),
        comment="FAST authentication tokens (XEP-0484), two slots per account and device",
    )
    op.create_table(
        "push_registrations",
        _user_id(),
        sa.Column("service", sa.String(FULL_JID_LENGTH), nullable=False,
                  comment="the XMPP Push Service's JID (XEP-0357 'jid')"),
        sa.Column("node", sa.String(PART_LENGTH), nullable=False,
                  comment="the node on the push service ('' when the client gave none)"),
        sa.Column("resource", sa.String(PART_LENGTH), nullable=True,
                  comment="resource of the session that enabled it: the device"),
        sa.Column("publish_options", sa.Text, nullable=True,
                  comment="JSON [[var, [values]], ...] of the publish-options form, sent back "
                          "with every publish (the app server's secret)"),
        sa.Column("include_body", sa.Boolean, nullable=False, server_default=sa.false(),
                  comment="the client asked for message bodies in notifications"),
        sa.Column("created_at", sa.Double, nullable=False, comment="Unix time, seconds"),
        sa.PrimaryKeyConstraint("user_id", "service", "node", name="pk_push_registrations"),
        _user_fk("push_registrations"),
        comment="push notification registrations (XEP-0357 §5)",
    )


def downgrade() -> None:
    op.drop_table("push_registrations")
    op.drop_table("fast_tokens")
