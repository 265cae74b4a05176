"""The index schema (SQLAlchemy Core), shared by SQLite and PostgreSQL.

The columns holding DICOM attributes are generated from `vna.attributes`, so the
schema, extraction at ingest and query matching never disagree. The layout is
the source of truth; everything here except the history tables can be rebuilt
from it (`vna reindex`). Changes go through Alembic migrations in
`vna/index/migrations`.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from vna.attributes import Level, Match, at_level

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)

# SQLite only auto-increments an INTEGER PRIMARY KEY; BigInteger elsewhere.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def _attribute_columns(level: Level, skip: set[str]) -> list[Column[object]]:
    cols: list[Column[object]] = []
    for attr in at_level(level):
        if attr.column in skip:
            continue
        if attr.match is Match.INTEGER:
            cols.append(Column(attr.column, Integer, nullable=True))
        else:
            cols.append(Column(attr.column, String(attr.length), nullable=True))
    return cols


sources = Table(
    "sources",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("issuer_of_patient_id", String(64), nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

patients = Table(
    "patients",
    metadata,
    Column("id", BigId, primary_key=True),
    # Empty string, not NULL, for a missing ID or issuer, so the unique key holds.
    Column("patient_id", String(64), nullable=False),
    Column("issuer_of_patient_id", String(64), nullable=False),
    *_attribute_columns(Level.PATIENT, {"patient_id", "issuer_of_patient_id"}),
    # Indexed by migration 0005 (text_pattern_ops on PostgreSQL, for LIKE).
    Column("patient_name_folded", String(324), nullable=True),
    UniqueConstraint("patient_id", "issuer_of_patient_id", name="uq_patients_identity"),
)

studies = Table(
    "studies",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("study_uid", String(64), nullable=False, unique=True),
    Column("patient_pk", BigId, ForeignKey("patients.id"), nullable=False, index=True),
    *_attribute_columns(Level.STUDY, {"study_uid"}),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_studies_study_date", "study_date"),
    Index("ix_studies_accession_number", "accession_number"),
)

series = Table(
    "series",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("series_uid", String(64), nullable=False, unique=True),
    Column("study_pk", BigId, ForeignKey("studies.id"), nullable=False, index=True),
    *_attribute_columns(Level.SERIES, {"series_uid"}),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_series_modality", "modality"),
)

instances = Table(
    "instances",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("sop_uid", String(64), nullable=False, unique=True),
    Column("series_pk", BigId, ForeignKey("series.id"), nullable=False, index=True),
    *_attribute_columns(Level.INSTANCE, {"sop_uid"}),
    Column("path", String(300), nullable=False, unique=True),
    Column("size", BigInteger, nullable=False),
    Column("digest", String(32), nullable=False),
    Column("content_digest", String(32), nullable=False),
    Column("transfer_syntax_uid", String(64), nullable=False),
    Column("source", String(64), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Index("ix_instances_received_at", "received_at"),
    Index("ix_instances_source", "source"),
)

changes = Table(
    "changes",
    metadata,
    Column("seq", BigId, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),  # created | replaced | deleted
    Column("sop_uid", String(64), nullable=False),
    Column("study_uid", String(64), nullable=False),
    Column("series_uid", String(64), nullable=False),
    Column("path", String(300), nullable=False),
    Column("digest", String(32), nullable=True),
    Column("size", BigInteger, nullable=True),
    Column("at", DateTime(timezone=True), nullable=False),
)

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", String(32), primary_key=True),  # deterministic: source, drop path, content
    Column("source", String(64), nullable=False),
    Column("reason", String(32), nullable=False),
    Column("detail", Text, nullable=False),
    Column("drop_path", Text, nullable=False),
    Column("stored_path", Text, nullable=False),
    Column("sop_uid", String(64), nullable=True),
    Column("digest", String(32), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),  # held | released
    Column("at", DateTime(timezone=True), nullable=False),
    Index("ix_quarantine_source_reason", "source", "reason"),
)

duplicates = Table(
    "duplicates",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("source", String(64), nullable=False),
    Column("drop_path", Text, nullable=False),
    Column("sop_uid", String(64), nullable=False),
    Column("digest", String(32), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Index("ix_duplicates_source", "source"),
)

# Replication (written by the replicator; vna reads them for status and reports).
replicas = Table(
    "replicas",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("target", String(64), nullable=False),
    Column("sop_uid", String(64), nullable=False),
    Column("path", String(300), nullable=False),
    Column("digest", String(32), nullable=False),  # the digest the copy must have
    Column("size", BigInteger, nullable=False),
    # pending | copying | verified | failed | gone (the instance left the archive)
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=True),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("claimed_by", String(128), nullable=True),
    Column("claimed_until", DateTime(timezone=True), nullable=True),
    Column("queued_at", DateTime(timezone=True), nullable=False),  # when the change arrived
    Column("uploaded_at", DateTime(timezone=True), nullable=True),
    Column("verified_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("target", "sop_uid", name="uq_replicas_target_sop"),
    Index("ix_replicas_work", "target", "state", "next_attempt_at"),
    Index("ix_replicas_verified", "target", "verified_at"),
)

replication_cursors = Table(
    "replication_cursors",
    metadata,
    Column("target", String(64), primary_key=True),
    Column("seq", BigInteger, nullable=False),  # last change-feed row turned into replica rows
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# WADO-RS metadata prepared once per instance (by the gateway, from the change feed), so a
# metadata request never parses files. JSON (zlib) with BulkDataURIs relative to a placeholder.
instance_metadata = Table(
    "instance_metadata",
    metadata,
    Column("sop_uid", String(64), primary_key=True),
    Column("digest", String(32), nullable=False),  # of the file it was prepared from
    Column("json", LargeBinary, nullable=False),
)

# Scheduled jobs (vna.scheduler). APScheduler keeps its job store in `scheduler_jobs`
# (its own layout, declared here so Alembic owns every table); each run's outcome goes
# to `job_runs`; `job_state` holds what a job carries from run to run (the verification
# cursor); `scheduler_lease` lets one scheduler run at a time on an index.
scheduler_jobs = Table(
    "scheduler_jobs",
    metadata,
    Column("id", String(191), primary_key=True),
    Column("next_run_time", Float(25), index=True),
    Column("job_state", LargeBinary, nullable=False),
)

job_runs = Table(
    "job_runs",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("job", String(128), nullable=False),
    Column("trigger", String(16), nullable=False),  # schedule | manual
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("outcome", String(16), nullable=False),  # running | ok | failed | missed
    Column("detail", Text, nullable=True),
    Column("host", String(255), nullable=True),
    Index("ix_job_runs_job", "job", "started_at"),
)

job_state = Table(
    "job_state",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

scheduler_lease = Table(
    "scheduler_lease",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(255), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)
