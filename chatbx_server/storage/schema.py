"""Every table chatbx stores, in SQLAlchemy Core.

This is the target the Alembic revisions in ``migrations/versions`` must
produce (a test compares them). Types are portable between SQLite and
PostgreSQL; timestamps are Unix seconds in a double so both backends store
them the same way. Constraint names come from the naming convention so later
batch migrations on SQLite can refer to them.

RFC 6121 (roster, subscriptions), XEP-0237 (roster versioning), XEP-0160
(offline messages), RFC 5802 / RFC 7677 (SCRAM credentials).
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
    "users",
    "pubsub_nodes",
    "pubsub_items",
    "pubsub_affiliations",
    "pubsub_subscriptions",
    "entity_caps",
    "vcards",
    "private_storage",
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

# -- Publish-Subscribe (XEP-0060), PEP (XEP-0163), profiles, private storage --

pubsub_nodes = sa.Table(
    "pubsub_nodes",
    metadata,
    sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
    sa.Column("service", sa.String(BARE_JID_LENGTH), nullable=False,
              comment="PEP: the owner's bare JID; pubsub service: its domain"),
    sa.Column("name", sa.String(PART_LENGTH), nullable=False, comment="the NodeID"),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=True,
              comment="owning (PEP) or creating (service) local account; its nodes go with it"),
    sa.Column("config", sa.Text, nullable=False, comment="JSON of the node configuration"),
    sa.Column("created_at", sa.Double, nullable=False, comment="Unix time, seconds"),
    sa.UniqueConstraint("service", "name"),
    sa.Index("ix_pubsub_nodes_user_id", "user_id"),
)

pubsub_items = sa.Table(
    "pubsub_items",
    metadata,
    sa.Column("id", BigIntId, primary_key=True, autoincrement=True,
              comment="publication order: a re-published item gets a new id"),
    sa.Column("node_id", BigIntId,
              sa.ForeignKey("pubsub_nodes.id", ondelete="CASCADE"), nullable=False),
    sa.Column("item_id", sa.String(PART_LENGTH), nullable=False, comment="the ItemID"),
    sa.Column("publisher", sa.String(BARE_JID_LENGTH), nullable=False,
              comment="bare JID that published it"),
    sa.Column("payload", sa.Text, nullable=False, comment="serialized XML of the payload ('' for none)"),
    sa.Column("payload_bytes", sa.Integer, nullable=False, comment="UTF-8 length of payload"),
    sa.Column("published_at", sa.Double, nullable=False, comment="Unix time, seconds"),
    sa.UniqueConstraint("node_id", "item_id"),
)

pubsub_affiliations = sa.Table(
    "pubsub_affiliations",
    metadata,
    sa.Column("node_id", BigIntId,
              sa.ForeignKey("pubsub_nodes.id", ondelete="CASCADE"), nullable=False),
    sa.Column("jid", sa.String(BARE_JID_LENGTH), nullable=False, comment="bare JID"),
    sa.Column("affiliation", sa.String(16), nullable=False,
              comment="XEP-0060 §4.1: owner | publisher | publish-only | member | outcast"),
    sa.PrimaryKeyConstraint("node_id", "jid"),
)

pubsub_subscriptions = sa.Table(
    "pubsub_subscriptions",
    metadata,
    sa.Column("node_id", BigIntId,
              sa.ForeignKey("pubsub_nodes.id", ondelete="CASCADE"), nullable=False),
    sa.Column("jid", sa.String(BARE_JID_LENGTH + 1 + PART_LENGTH), nullable=False,
              comment="subscriber JID (bare or full) as it subscribed"),
    sa.Column("subid", sa.String(64), nullable=False),
    sa.PrimaryKeyConstraint("node_id", "jid"),
)

entity_caps = sa.Table(
    "entity_caps",
    metadata,
    sa.Column("ver", sa.String(255), nullable=False,
              comment="XEP-0115 'hash:ver' string, verified before it is stored"),
    sa.Column("features", sa.Text, nullable=False, comment="JSON list of disco#info features"),
    sa.Column("seen_at", sa.Double, nullable=False, comment="Unix time it was last stored"),
    sa.PrimaryKeyConstraint("ver"),
    comment="entity capabilities shared by every account (XEP-0115 §5.4 caching)",
)

vcards = sa.Table(
    "vcards",
    metadata,
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("vcard", sa.Text, nullable=False, comment="serialized vcard-temp <vCard/> (XEP-0054)"),
    sa.Column("vcard_bytes", sa.Integer, nullable=False),
)

private_storage = sa.Table(
    "private_storage",
    metadata,
    _user_fk(),
    sa.Column("key", sa.String(PART_LENGTH), nullable=False,
              comment="'{namespace}name' of the stored element (XEP-0049)"),
    sa.Column("xml", sa.Text, nullable=False, comment="the serialized element"),
    sa.Column("xml_bytes", sa.Integer, nullable=False),
    sa.PrimaryKeyConstraint("user_id", "key"),
)
