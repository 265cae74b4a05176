"""prepared metadata

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 12:06:47.027082
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "instance_metadata",
        sa.Column("sop_uid", sa.String(length=64), nullable=False),
        sa.Column("digest", sa.String(length=32), nullable=False),
        sa.Column("json", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("sop_uid", name=op.f("pk_instance_metadata")),
    )


def downgrade() -> None:

    op.drop_table("instance_metadata")
