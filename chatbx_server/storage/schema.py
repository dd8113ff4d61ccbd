"""Every table chatbx stores, in SQLAlchemy Core.

This is the target the Alembic revisions in ``migrations/versions`` must
produce (a test compares them). Types are portable between SQLite and
PostgreSQL; timestamps are Unix seconds in a double so both backends store
them the same way. Constraint names come from the naming convention so later
batch migrations on SQLite can refer to them.

RFC 6121 (roster, subscriptions), XEP-0237 (roster versioning), XEP-0160
(offline messages), RFC 5802 / RFC 7677 (SCRAM credentials), XEP-0363 (uploads),
XEP-0401 (invites), XEP-0158 (CAPTCHA challenges).
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = [
    "metadata",
    "offline_messages",
    "roster_items",
    "roster_versions",
    "scram_credentials",
    "server_secrets",
    "subscription_requests",
    "uploads",
    "captcha_challenges",
    "invites",
    "tombstones",
    "users",
]

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

# Bare JID: localpart (1023 bytes) + '@' + domainpart (1023 bytes), RFC 7622 §3.
BARE_JID_LENGTH = 2047
PART_LENGTH = 1023

#: 64-bit ids on PostgreSQL; SQLite only auto-increments INTEGER PRIMARY KEY.
BigIntId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _user_fk() -> sa.Column:
    return sa.Column(
        "user_id",
        sa.Integer,
        sa.ForeignKey("users.id", ondelete="CASCADE"),
        nullable=False,
        comment="owning local account; rows go when the account is deleted",
    )


users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("username", sa.String(PART_LENGTH), nullable=False,
              comment="PRECIS-prepared localpart"),
    sa.Column("domain", sa.String(PART_LENGTH), nullable=False,
              comment="hosted domain the account belongs to"),
    sa.Column("created_at", sa.Double, nullable=False, comment="Unix time, seconds"),
    sa.Column("disabled_at", sa.Double, nullable=True,
              comment="Unix time the account was disabled; NULL = enabled"),
    sa.Column("last_login", sa.Double, nullable=True,
              comment="Unix time of the last successful SASL login"),
    sa.Column("delete_at", sa.Double, nullable=True,
              comment="removal requested: the data goes at this Unix time unless the "
                      "user logs in before (grace period); NULL = none"),
    sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false(),
              comment="made an admin by an admin invite (besides config 'admins')"),
    sa.Column("self_registered", sa.Boolean, nullable=False, server_default=sa.false(),
              comment="created by its user (in-band or web sign-up), not by an operator: "
                      "the new-account limits apply"),
    sa.UniqueConstraint("username", "domain"),
    sa.Index("ix_users_disabled_at", "disabled_at"),
    sa.Index("ix_users_delete_at", "delete_at"),
)

scram_credentials = sa.Table(
    "scram_credentials",
    metadata,
    _user_fk(),
    sa.Column("mechanism", sa.String(16), nullable=False,
              comment="hash function: 'SHA-1' or 'SHA-256'"),
    sa.Column("salt", sa.LargeBinary, nullable=False),
    sa.Column("iterations", sa.Integer, nullable=False, comment="PBKDF2 iteration count"),
    sa.Column("stored_key", sa.LargeBinary, nullable=False,
              comment="H(ClientKey), RFC 5802; the password is never stored"),
    sa.Column("server_key", sa.LargeBinary, nullable=False,
              comment="HMAC(SaltedPassword, 'Server Key'), RFC 5802"),
    sa.PrimaryKeyConstraint("user_id", "mechanism"),
    sa.CheckConstraint("mechanism IN ('SHA-1', 'SHA-256')", name="mechanism"),
)

roster_items = sa.Table(
    "roster_items",
    metadata,
    _user_fk(),
    sa.Column("contact", sa.String(BARE_JID_LENGTH), nullable=False,
              comment="the contact's bare JID"),
    sa.Column("name", sa.String(PART_LENGTH), nullable=True,
              comment="handle the user gave the contact"),
    sa.Column("subscription", sa.String(4), nullable=False, server_default="none",
              comment="RFC 6121 state: none | to | from | both"),
    sa.Column("ask", sa.Boolean, nullable=False, server_default=sa.false(),
              comment="outbound subscription request pending (ask='subscribe')"),
    sa.Column("approved", sa.Boolean, nullable=False, server_default=sa.false(),
              comment="inbound subscription pre-approved, RFC 6121 §3.4"),
    sa.Column("groups", sa.Text, nullable=False, server_default="[]",
              comment="JSON list of group names"),
    sa.PrimaryKeyConstraint("user_id", "contact"),
    sa.CheckConstraint("subscription IN ('none', 'to', 'from', 'both')", name="subscription"),
)

roster_versions = sa.Table(
    "roster_versions",
    metadata,
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("version", sa.Integer, nullable=False, server_default="0",
              comment="XEP-0237 version; bumped on every roster change"),
)

subscription_requests = sa.Table(
    "subscription_requests",
    metadata,
    _user_fk(),
    sa.Column("contact", sa.String(BARE_JID_LENGTH), nullable=False,
              comment="bare JID that asked to subscribe to the user"),
    sa.Column("status", sa.Text, nullable=True,
              comment="the <status/> text of the request, if any"),
    sa.Column("created_at", sa.Double, nullable=False, comment="Unix time, seconds"),
    sa.PrimaryKeyConstraint("user_id", "contact"),
    comment="inbound subscription requests awaiting the user (RFC 6121 §3.1.3)",
)

offline_messages = sa.Table(
    "offline_messages",
    metadata,
    sa.Column("id", BigIntId, primary_key=True, autoincrement=True,
              comment="also the delivery order"),
    _user_fk(),
    sa.Column("stanza", sa.Text, nullable=False, comment="serialized XML of the stanza"),
    sa.Column("created_at", sa.Double, nullable=False,
              comment="Unix time the server accepted it (for XEP-0203 delay)"),
    sa.Column("stanza_bytes", sa.Integer, nullable=False,
              comment="UTF-8 length of stanza; summed for the per-account byte cap"),
    sa.Index("ix_offline_messages_user_id", "user_id"),
)

server_secrets = sa.Table(
    "server_secrets",
    metadata,
    sa.Column("name", sa.String(64), nullable=False,
              comment="what the secret is for, e.g. 'scram-decoy'"),
    sa.Column("value", sa.LargeBinary, nullable=False,
              comment="random bytes, generated once and shared by every node"),
    sa.PrimaryKeyConstraint("name"),
    comment="per-installation secrets (storage/secrets.py)",
)

uploads = sa.Table(
    "uploads",
    metadata,
    sa.Column("slot", sa.String(32), nullable=False,
              comment="random hex id: the file's URL path and on-disk name"),
    sa.Column("uploader", sa.String(BARE_JID_LENGTH), nullable=False,
              comment="bare JID that requested the slot (no FK: files outlive accounts "
                      "until they expire)"),
    sa.Column("filename", sa.String(255), nullable=False,
              comment="the name the client gave, shown in the URL and Content-Disposition"),
    sa.Column("size", sa.BigInteger, nullable=False, comment="bytes, fixed at slot request"),
    sa.Column("content_type", sa.String(255), nullable=False,
              comment="MIME type served on GET"),
    sa.Column("created_at", sa.Double, nullable=False,
              comment="Unix time of the slot request (daily quota)"),
    sa.Column("completed_at", sa.Double, nullable=True,
              comment="Unix time the PUT finished; NULL = slot not used (yet)"),
    sa.Column("expires_at", sa.Double, nullable=True,
              comment="Unix time the file is deleted; NULL = kept"),
    sa.PrimaryKeyConstraint("slot"),
    sa.Index("ix_uploads_uploader_created_at", "uploader", "created_at"),
    sa.Index("ix_uploads_expires_at", "expires_at"),
    comment="HTTP File Upload (XEP-0363) slots and files (storage/upload.py)",
)

tombstones = sa.Table(
    "tombstones",
    metadata,
    sa.Column("username", sa.String(PART_LENGTH), nullable=False,
              comment="localpart of a deleted account"),
    sa.Column("domain", sa.String(PART_LENGTH), nullable=False),
    sa.Column("deleted_at", sa.Double, nullable=False,
              comment="Unix time the account was deleted (nodes close its sessions)"),
    sa.Column("reserved_until", sa.Double, nullable=False,
              comment="nobody may register the name before this Unix time"),
    sa.PrimaryKeyConstraint("username", "domain"),
    sa.Index("ix_tombstones_deleted_at", "deleted_at"),
    comment="deleted accounts whose address may not be taken over yet (storage/accounts.py)",
)

invites = sa.Table(
    "invites",
    metadata,
    sa.Column("token", sa.String(64), nullable=False,
              comment="random URL-safe secret; the invite link carries it"),
    sa.Column("domain", sa.String(PART_LENGTH), nullable=False,
              comment="hosted domain the invite creates an account on"),
    sa.Column("kind", sa.String(16), nullable=False,
              comment="'account' (operator/admin) or 'contact' (a user's, XEP-0379)"),
    sa.Column("creator_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
              nullable=True,
              comment="inviting account, added to the new account's roster; NULL = operator"),
    sa.Column("username", sa.String(PART_LENGTH), nullable=True,
              comment="the only localpart the invite may register; NULL = any"),
    sa.Column("register", sa.Boolean, nullable=False, server_default=sa.true(),
              comment="the invite may create an account (contact invites may not)"),
    sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false(),
              comment="the account it creates is an admin"),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False, comment="Unix time it stops working"),
    sa.PrimaryKeyConstraint("token"),
    sa.Index("ix_invites_expires_at", "expires_at"),
    sa.Index("ix_invites_creator_id", "creator_id"),
    sa.CheckConstraint("kind IN ('account', 'contact')", name="kind"),
    comment="XEP-0401 invites; single use: a used invite is deleted (storage/invites.py)",
)

captcha_challenges = sa.Table(
    "captcha_challenges",
    metadata,
    sa.Column("id", sa.String(32), nullable=False, comment="random hex; the form's challenge"),
    sa.Column("answer", sa.String(16), nullable=False, comment="the expected text (lower case)"),
    sa.Column("expires_at", sa.Double, nullable=False, comment="Unix time it stops working"),
    sa.PrimaryKeyConstraint("id"),
    sa.Index("ix_captcha_challenges_expires_at", "expires_at"),
    comment="XEP-0158 CAPTCHAs shown and not yet answered; in the database so any node "
            "checks the answer (storage/invites.py)",
)
