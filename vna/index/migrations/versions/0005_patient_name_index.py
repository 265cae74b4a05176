"""patient name index: QIDO-RS name searches use an index, not a scan of every study

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 12:00:00

Person names are matched on `patient_name_folded` (casefolded). On SQLite a name is
matched by equality, or by a range of its fixed start (and GLOB past it), which a
plain index serves. On PostgreSQL by LIKE, which an index serves, whatever the
database's collation, if it has the text_pattern_ops operator class (which serves
equality too).
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

NAME = "ix_patients_patient_name_folded"


def upgrade() -> None:
    op.create_index(
        NAME,
        "patients",
        ["patient_name_folded"],
        postgresql_ops={"patient_name_folded": "text_pattern_ops"},
    )


def downgrade() -> None:
    op.drop_index(NAME, table_name="patients")
