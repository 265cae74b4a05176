"""patient name index: QIDO-RS name searches use an index, not a scan of every study

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 12:00:00

Person names are matched on `patient_name_folded` (casefolded) with LIKE, wildcards
or not. An index serves a LIKE with a fixed prefix only if it orders the column the
way LIKE compares: on SQLite, whose LIKE ignores ASCII case, an index in the NOCASE
collation; on PostgreSQL, whatever the database's collation, one with the
text_pattern_ops operator class.
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

NAME = "ix_patients_patient_name_folded"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(f"CREATE INDEX {NAME} ON patients (patient_name_folded COLLATE NOCASE)")
    else:
        op.create_index(
            NAME,
            "patients",
            ["patient_name_folded"],
            postgresql_ops={"patient_name_folded": "text_pattern_ops"},
        )


def downgrade() -> None:
    op.drop_index(NAME, table_name="patients")
