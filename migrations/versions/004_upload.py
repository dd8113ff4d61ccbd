"""HTTP File Upload (XEP-0363): slots and files.

Revision ID: 004
Revises: 003
Create Date: 2025-12-10

One row per upload slot; the file itself lives under the upload store
directory, named by the slot (chatbx_server/storage/upload.py).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "004"
down_revision = "003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "uploads",
        sa.Column("slot", sa.String(32), nullable=False,
                  comment="random hex id: the file's URL path and on-disk name"),
        sa.Column("uploader", sa.String(2047), nullable=False,
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
        sa.PrimaryKeyConstraint("slot", name="pk_uploads"),
        comment="HTTP File Upload (XEP-0363) slots and files (storage/upload.py)",
    )
    op.create_index("ix_uploads_uploader_created_at", "uploads", ["uploader", "created_at"])
    op.create_index("ix_uploads_expires_at", "uploads", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_uploads_expires_at", table_name="uploads")
    op.drop_index("ix_uploads_uploader_created_at", table_name="uploads")
    op.drop_table("uploads")
