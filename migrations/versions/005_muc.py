"""Group chat (XEP-0045): rooms, affiliations and the room archive.

Revision ID: 005
Revises: 004
Create Date: 2026-01-10

Persistent rooms keep their configuration (JSON), subject and avatar in
``muc_rooms``; owner/admin/member/outcast lists in ``muc_affiliations``;
messages (XEP-0313 on the room JID) in ``muc_archive``. Occupants are
in memory only: they are joined sessions, not durable state.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "005"
down_revision = "004"
branch_labels = None
depends_on = None

BARE_JID_LENGTH = 2047
PART_LENGTH = 1023
BigIntId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "muc_rooms",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("jid", sa.String(BARE_JID_LENGTH), nullable=False,
                  comment="the room's bare JID (room@conference.domain)"),
        sa.Column("config", sa.Text, nullable=False,
                  comment="JSON of the room configuration (muc/config.py RoomConfig)"),
        sa.Column("subject", sa.Text, nullable=True, comment="current subject, XEP-0045 §8.1"),
        sa.Column("subject_nick", sa.String(PART_LENGTH), nullable=True,
                  comment="nick that set the subject (the 'from' of the subject message)"),
        sa.Column("creator", sa.String(BARE_JID_LENGTH), nullable=True,
                  comment="bare JID that created the room (rooms-per-user limit)"),
        sa.Column("vcard", sa.Text, nullable=True,
                  comment="the room's vcard-temp XML (avatar), set by owners"),
        sa.Column("avatar_hash", sa.String(64), nullable=True,
                  comment="SHA-1 hex of the avatar image, XEP-0153"),
        sa.Column("created_at", sa.Double, nullable=False, comment="Unix time, seconds"),
        sa.PrimaryKeyConstraint("id", name="pk_muc_rooms"),
        sa.UniqueConstraint("jid", name="uq_muc_rooms_jid"),
        comment="persistent group chat rooms (XEP-0045 §10.1)",
    )
    op.create_table(
        "muc_affiliations",
        sa.Column("room_id", sa.Integer, nullable=False),
        sa.Column("jid", sa.String(BARE_JID_LENGTH), nullable=False,
                  comment="bare JID (or domain) the affiliation is for"),
        sa.Column("affiliation", sa.String(8), nullable=False,
                  comment="owner | admin | member | outcast"),
        sa.Column("nick", sa.String(PART_LENGTH), nullable=True,
                  comment="nick reserved for this member, if any"),
        sa.Column("reason", sa.Text, nullable=True, comment="reason given with the change"),
        sa.PrimaryKeyConstraint("room_id", "jid", name="pk_muc_affiliations"),
        sa.ForeignKeyConstraint(["room_id"], ["muc_rooms.id"], ondelete="CASCADE",
                                name="fk_muc_affiliations_room_id_muc_rooms"),
        sa.CheckConstraint("affiliation IN ('owner', 'admin', 'member', 'outcast')",
                           name="ck_muc_affiliations_affiliation"),
    )
    op.create_table(
        "muc_archive",
        sa.Column("id", BigIntId, primary_key=True, autoincrement=True, comment="archive order"),
        sa.Column("room_id", sa.Integer, nullable=False),
        sa.Column("stanza_id", sa.String(64), nullable=False,
                  comment="XEP-0359 stanza-id the room gave the message (MAM id)"),
        sa.Column("created_at", sa.Double, nullable=False, comment="Unix time, seconds"),
        sa.Column("nick", sa.String(PART_LENGTH), nullable=False, comment="sender's nick"),
        sa.Column("occupant_id", sa.String(64), nullable=True, comment="XEP-0421 occupant id"),
        sa.Column("sender", sa.String(BARE_JID_LENGTH), nullable=True,
                  comment="sender's real bare JID (who may retract it)"),
        sa.Column("stanza", sa.Text, nullable=False,
                  comment="serialized message as broadcast (no 'to'); a tombstone once retracted"),
        sa.Column("retracted", sa.Boolean, nullable=False, server_default=sa.false(),
                  comment="retracted (XEP-0424) or moderated (XEP-0425)"),
        sa.PrimaryKeyConstraint("id", name="pk_muc_archive"),
        sa.ForeignKeyConstraint(["room_id"], ["muc_rooms.id"], ondelete="CASCADE",
                                name="fk_muc_archive_room_id_muc_rooms"),
        sa.UniqueConstraint("room_id", "stanza_id", name="uq_muc_archive_room_id_stanza_id"),
        comment="group chat archive (XEP-0313 on the room JID)",
    )
    op.create_index("ix_muc_archive_room_id_created_at", "muc_archive",
                    ["room_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_muc_archive_room_id_created_at", table_name="muc_archive")
    op.drop_table("muc_archive")
    op.drop_table("muc_affiliations")
    op.drop_table("muc_rooms")
