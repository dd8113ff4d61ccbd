"""Publish-Subscribe and PEP nodes, items, affiliations, subscriptions; entity
capabilities; vcard-temp; private XML storage.

Revision ID: 007
Revises: 006
Create Date: 2025-12-05

XEP-0060 / XEP-0163 (pubsub_*), XEP-0115 (entity_caps), XEP-0054 (vcards),
XEP-0049 (private_storage). Every account-owned row goes with its account
(ON DELETE CASCADE on users.id).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "007"
down_revision = "006"
branch_labels = None
depends_on = None

BARE_JID_LENGTH = 2047
PART_LENGTH = 1023
BigIntId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "pubsub_nodes",
        sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
        sa.Column("service", sa.String(BARE_JID_LENGTH), nullable=False,
                  comment="PEP: the owner's bare JID; pubsub service: its domain"),
        sa.Column("name", sa.String(PART_LENGTH), nullable=False, comment="the NodeID"),
        sa.Column("user_id", sa.Integer, nullable=True,
                  comment="owning (PEP) or creating (service) local account; its nodes go with it"),
        sa.Column("config", sa.Text, nullable=False, comment="JSON of the node configuration"),
        sa.Column("created_at", sa.Double, nullable=False, comment="Unix time, seconds"),
        sa.PrimaryKeyConstraint("id", name="pk_pubsub_nodes"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE",
                                name="fk_pubsub_nodes_user_id_users"),
        sa.UniqueConstraint("service", "name", name="uq_pubsub_nodes_service_name"),
    )
    op.create_index("ix_pubsub_nodes_user_id", "pubsub_nodes", ["user_id"])
    op.create_table(
        "pubsub_items",
        sa.Column("id", BigIntId, primary_key=True, autoincrement=True,
                  comment="publication order: a re-published item gets a new id"),
        sa.Column("node_id", BigIntId, nullable=False),
        sa.Column("item_id", sa.String(PART_LENGTH), nullable=False, comment="the ItemID"),
        sa.Column("publisher", sa.String(BARE_JID_LENGTH), nullable=False,
                  comment="bare JID that published it"),
        sa.Column("payload", sa.Text, nullable=False,
                  comment="serialized XML of the payload ('' for none)"),
        sa.Column("payload_bytes", sa.Integer, nullable=False, comment="UTF-8 length of payload"),
        sa.Column("published_at", sa.Double, nullable=False, comment="Unix time, seconds"),
        sa.PrimaryKeyConstraint("id", name="pk_pubsub_items"),
        sa.ForeignKeyConstraint(["node_id"], ["pubsub_nodes.id"], ondelete="CASCADE",
                                name="fk_pubsub_items_node_id_pubsub_nodes"),
        sa.UniqueConstraint("node_id", "item_id", name="uq_pubsub_items_node_id_item_id"),
    )
    op.create_table(
        "pubsub_affiliations",
        sa.Column("node_id", BigIntId, nullable=False),
        sa.Column("jid", sa.String(BARE_JID_LENGTH), nullable=False, comment="bare JID"),
        sa.Column("affiliation", sa.String(16), nullable=False,
                  comment="XEP-0060 §4.1: owner | publisher | publish-only | member | outcast"),
        sa.PrimaryKeyConstraint("node_id", "jid", name="pk_pubsub_affiliations"),
        sa.ForeignKeyConstraint(["node_id"], ["pubsub_nodes.id"], ondelete="CASCADE",
                                name="fk_pubsub_affiliations_node_id_pubsub_nodes"),
    )
    op.create_table(
        "pubsub_subscriptions",
        sa.Column("node_id", BigIntId, nullable=False),
        sa.Column("jid", sa.String(BARE_JID_LENGTH + 1 + PART_LENGTH), nullable=False,
                  comment="subscriber JID (bare or full) as it subscribed"),
        sa.Column("subid", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("node_id", "jid", name="pk_pubsub_subscriptions"),
        sa.ForeignKeyConstraint(["node_id"], ["pubsub_nodes.id"], ondelete="CASCADE",
                                name="fk_pubsub_subscriptions_node_id_pubsub_nodes"),
    )
    op.create_table(
        "entity_caps",
        sa.Column("ver", sa.String(255), nullable=False,
                  comment="XEP-0115 'hash:ver' string, verified before it is stored"),
        sa.Column("features", sa.Text, nullable=False, comment="JSON list of disco#info features"),
        sa.Column("seen_at", sa.Double, nullable=False, comment="Unix time it was last stored"),
        sa.PrimaryKeyConstraint("ver", name="pk_entity_caps"),
        comment="entity capabilities shared by every account (XEP-0115 §5.4 caching)",
    )
    op.create_table(
        "vcards",
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("vcard", sa.Text, nullable=False,
                  comment="serialized vcard-temp <vCard/> (XEP-0054)"),
        sa.Column("vcard_bytes", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("user_id", name="pk_vcards"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE",
                                name="fk_vcards_user_id_users"),
    )
    op.create_table(
        "private_storage",
        sa.Column("user_id", sa.Integer, nullable=False,
                  comment="owning local account; rows go when the account is deleted"),
        sa.Column("key", sa.String(PART_LENGTH), nullable=False,
                  comment="'{namespace}name' of the stored element (XEP-0049)"),
        sa.Column("xml", sa.Text, nullable=False, comment="the serialized element"),
        sa.Column("xml_bytes", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("user_id", "key", name="pk_private_storage"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE",
                                name="fk_private_storage_user_id_users"),
    )


def downgrade() -> None:
    for table in ("private_storage", "vcards", "entity_caps", "pubsub_subscriptions",
                  "pubsub_affiliations", "pubsub_items"):
        op.drop_table(table)
    op.drop_index("ix_pubsub_nodes_user_id", "pubsub_nodes")
    op.drop_table("pubsub_nodes")
