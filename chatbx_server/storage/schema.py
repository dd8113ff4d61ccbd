"""Every table chatbx stores, in SQLAlchemy Core.

This is the target the Alembic revisions in ``migrations/versions`` must
produce (a test compares them). Types are portable between SQLite and
PostgreSQL; timestamps are Unix seconds in a double so both backends store
them the same way. Constraint names come from the naming convention so later
batch migrations on SQLite can refer to them.

RFC 6121 (roster, subscriptions), XEP-0237 (roster versioning), XEP-0160
(offline messages), RFC 5802 / RFC 7677 (SCRAM credentials), XEP-0191
(block lists), XEP-0377 (spam reports).
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = [
    "blocklist_items",
    "metadata",
    "offline_messages",
    "roster_items",
    "roster_versions",
    "scram_credentials",
    "spam_reports",
    "subscription_requests",
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
# Full JID: bare JID + '/' + resourcepart (1023 bytes).
FULL_JID_LENGTH = 3071

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
    sa.UniqueConstraint("username", "domain"),
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
    sa.Index("ix_offline_messages_user_id", "user_id"),
)

blocklist_items = sa.Table(
    "blocklist_items",
    metadata,
    _user_fk(),
    sa.Column("jid", sa.String(FULL_JID_LENGTH), nullable=False,
              comment="blocked JID as prepared: user@domain[/resource] or domain[/resource]"),
    sa.Column("created_at", sa.Double, nullable=False, comment="Unix time, seconds"),
    sa.PrimaryKeyConstraint("user_id", "jid"),
    comment="XEP-0191 block list: JIDs the user blocks communication with",
)

spam_reports = sa.Table(
    "spam_reports",
    metadata,
    sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
    sa.Column("reporter", sa.String(BARE_JID_LENGTH), nullable=False,
              comment="bare JID of the local account that reported; kept when it is deleted"),
    sa.Column("jid", sa.String(FULL_JID_LENGTH), nullable=False,
              comment="the reported (and blocked) JID"),
    sa.Column("reason", sa.String(PART_LENGTH), nullable=False,
              comment="XEP-0377 reason URI, e.g. urn:xmpp:reporting:spam"),
    sa.Column("text", sa.Text, nullable=True, comment="the reporter's explanation, if any"),
    sa.Column("stanza_ids", sa.Text, nullable=False, server_default="[]",
              comment="JSON list of [by, id] XEP-0359 stanza-ids the report points at"),
    sa.Column("created_at", sa.Double, nullable=False, comment="Unix time, seconds"),
    sa.Index("ix_spam_reports_created_at", "created_at"),
    sa.Index("ix_spam_reports_reporter", "reporter"),
    comment="XEP-0377 reports sent with a block, for operators (chatbxctl reports list)",
)
