"""Accounts: registration, invites (XEP-0401), CAPTCHAs (XEP-0158), tombstones,
disabled accounts, last login, removal grace period and admin accounts.

Revision ID: 009
Revises: 008
Create Date: 2026-12-02

``users`` gains nullable columns (and one with a server default), which
SQLite adds with a plain ALTER TABLE; the new tables are chatbx_server/
storage/schema.py's ``tombstones``, ``invites`` and ``captcha_challenges``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "009"
down_revision = "008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("disabled_at", sa.Double, nullable=True,
                                     comment="Unix time the account was disabled; NULL = enabled"))
    op.add_column("users", sa.Column("last_login", sa.Double, nullable=True,
                                     comment="Unix time of the last successful SASL login"))
    op.add_column("users", sa.Column(
        "delete_at", sa.Double, nullable=True,
        comment="removal requested: the data goes at this Unix time unless the "
                "user logs in before (grace period); NULL = none"))
    op.add_column("users", sa.Column(
        "admin", sa.Boolean, nullable=False, server_default=sa.false(),
        comment="made an admin by an admin invite (besides config 'admins')"))
    op.add_column("users", sa.Column(
        "self_registered", sa.Boolean, nullable=False, server_default=sa.false(),
        comment="created by its user (in-band or web sign-up), not by an operator: "
                "the new-account limits apply"))
    op.create_index("ix_users_disabled_at", "users", ["disabled_at"])
    op.create_index("ix_users_delete_at", "users", ["delete_at"])
    op.create_table(
        "tombstones",
        sa.Column("username", sa.String(1023), nullable=False,
                  comment="localpart of a deleted account"),
        sa.Column("domain", sa.String(1023), nullable=False),
        sa.Column("deleted_at", sa.Double, nullable=False,
                  comment="Unix time the account was deleted (nodes close its sessions)"),
        sa.Column("reserved_until", sa.Double, nullable=False,
                  comment="nobody may register the name before this Unix time"),
        sa.PrimaryKeyConstraint("username", "domain", name="pk_tombstones"),
        comment="deleted accounts whose address may not be taken over yet (storage/accounts.py)",
    )
    op.create_index("ix_tombstones_deleted_at", "tombstones", ["deleted_at"])
    op.create_table(
        "invites",
        sa.Column("token", sa.String(64), nullable=False,
                  comment="random URL-safe secret; the invite link carries it"),
        sa.Column("domain", sa.String(1023), nullable=False,
                  comment="hosted domain the invite creates an account on"),
        sa.Column("kind", sa.String(16), nullable=False,
                  comment="'account' (operator/admin) or 'contact' (a user's, XEP-0379)"),
        sa.Column("creator_id", sa.Integer, nullable=True,
                  comment="inviting account, added to the new account's roster; NULL = operator"),
        sa.Column("username", sa.String(1023), nullable=True,
                  comment="the only localpart the invite may register; NULL = any"),
        sa.Column("register", sa.Boolean, nullable=False, server_default=sa.true(),
                  comment="the invite may create an account (contact invites may not)"),
        sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false(),
                  comment="the account it creates is an admin"),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False, comment="Unix time it stops working"),
        sa.PrimaryKeyConstraint("token", name="pk_invites"),
        sa.ForeignKeyConstraint(["creator_id"], ["users.id"], ondelete="CASCADE",
                                name="fk_invites_creator_id_users"),
        sa.CheckConstraint("kind IN ('account', 'contact')", name="ck_invites_kind"),
        comment="XEP-0401 invites; single use: a used invite is deleted (storage/invites.py)",
    )
    op.create_index("ix_invites_expires_at", "invites", ["expires_at"])
    op.create_index("ix_invites_creator_id", "invites", ["creator_id"])
    op.create_table(
        "captcha_challenges",
        sa.Column("id", sa.String(32), nullable=False, comment="random hex; the form's challenge"),
        sa.Column("answer", sa.String(16), nullable=False,
                  comment="the expected text (lower case)"),
        sa.Column("expires_at", sa.Double, nullable=False, comment="Unix time it stops working"),
        sa.PrimaryKeyConstraint("id", name="pk_captcha_challenges"),
        comment="XEP-0158 CAPTCHAs shown and not yet answered; in the database so any node "
                "checks the answer (storage/invites.py)",
    )
    op.create_index("ix_captcha_challenges_expires_at", "captcha_challenges", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_captcha_challenges_expires_at", table_name="captcha_challenges")
    op.drop_table("captcha_challenges")
    op.drop_index("ix_invites_creator_id", table_name="invites")
    op.drop_index("ix_invites_expires_at", table_name="invites")
    op.drop_table("invites")
    op.drop_index("ix_tombstones_deleted_at", table_name="tombstones")
    op.drop_table("tombstones")
    with op.batch_alter_table("users") as batch:
        batch.drop_index("ix_users_delete_at")
        batch.drop_index("ix_users_disabled_at")
        batch.drop_column("self_registered")
        batch.drop_column("admin")
        batch.drop_column("delete_at")
        batch.drop_column("last_login")
        batch.drop_column("disabled_at")
