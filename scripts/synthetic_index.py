"""Fill an index with synthetic rows, to measure behaviour at archive scale.

Rows only, no files: patients, studies, series and instances shaped like a
CT-heavy archive (500 instances per series, 2 series per study), with change
feed rows, so benchmarks can show that ingest, replication and reports do not
slow down as the index grows. Usable as a module or from the command line:

    .venv/bin/python scripts/synthetic_index.py --url sqlite:///var/big.db --instances 1000000
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import Engine, func, select, text

from vna.index import schema
from vna.index.engine import open_index

CHUNK = 20000


def fill(
    engine: Engine,
    instances: int,
    per_series: int = 500,
    series_per_study: int = 2,
    prefix: str = "2.25.9",
) -> float:
    """Append `instances` synthetic instances (and their parents); return seconds taken."""
    started = time.perf_counter()
    with engine.connect() as conn:
        base_pat = int(
            conn.execute(select(func.coalesce(func.max(schema.patients.c.id), 0))).scalar_one()
        )
        base_st = int(
            conn.execute(select(func.coalesce(func.max(schema.studies.c.id), 0))).scalar_one()
        )
        base_se = int(
            conn.execute(select(func.coalesce(func.max(schema.series.c.id), 0))).scalar_one()
        )
    run = f"{prefix}.{int(time.time())}"
    now = dt.datetime.now(dt.UTC)
    n_series = -(-instances // per_series)
    n_studies = -(-n_series // series_per_study)
    with engine.begin() as conn:
        rows: list[dict[str, Any]] = []
        for s in range(n_studies):
            rows.append(
                dict(
                    id=base_pat + s + 1,
                    patient_id=f"SYN{run[-6:]}{s}",
                    issuer_of_patient_id="SYNTHETIC",
                    patient_name=f"Synthetic^{s}",
                )
            )
            if len(rows) >= CHUNK:
                conn.execute(schema.patients.insert(), rows)
                rows = []
        if rows:
            conn.execute(schema.patients.insert(), rows)
        rows = []
        for s in range(n_studies):
            day = dt.date(2020, 1, 1) + dt.timedelta(days=s % 2000)
            rows.append(
                dict(
                    id=base_st + s + 1,
                    study_uid=f"{run}.1.{s}",
                    patient_pk=base_pat + s + 1,
                    study_date=day.strftime("%Y%m%d"),
                    accession_number=f"SYN{s}",
                    study_description="SYNTHETIC CT",
                    created_at=now,
                )
            )
            if len(rows) >= CHUNK:
                conn.execute(schema.studies.insert(), rows)
                rows = []
        if rows:
            conn.execute(schema.studies.insert(), rows)
        rows = []
        for se in range(n_series):
            rows.append(
                dict(
                    id=base_se + se + 1,
                    series_uid=f"{run}.2.{se}",
                    study_pk=base_st + se // series_per_study + 1,
                    modality=("CT", "MR", "CR", "US")[se % 4],
                    series_number=se % series_per_study + 1,
                    created_at=now,
                )
            )
            if len(rows) >= CHUNK:
                conn.execute(schema.series.insert(), rows)
                rows = []
        if rows:
            conn.execute(schema.series.insert(), rows)
        rows, changes = [], []
        for i in range(instances):
            se = i // per_series
            study = se // series_per_study
            sop = f"{run}.3.{i}"
            path = f"studies/{run}.1.{study}/series/{run}.2.{se}/instances/{sop}.dcm"
            rows.append(
                dict(
                    sop_uid=sop,
                    series_pk=base_se + se + 1,
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    instance_number=i % per_series + 1,
                    rows=512,
                    columns=512,
                    bits_allocated=16,
                    path=path,
                    size=525_000,
                    digest=f"{i:032x}",
                    content_digest=f"{i:032x}",
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    source=("pacs-a", "pacs-b", "pacs-c")[study % 3],
                    received_at=now - dt.timedelta(minutes=instances - i),
                )
            )
            changes.append(
                dict(
                    kind="created",
                    sop_uid=sop,
                    study_uid=f"{run}.1.{study}",
                    series_uid=f"{run}.2.{se}",
                    path=path,
                    digest=f"{i:032x}",
                    size=525_000,
                    at=now,
                )
            )
            if len(rows) >= CHUNK:
                conn.execute(schema.instances.insert(), rows)
                conn.execute(schema.changes.insert(), changes)
                rows, changes = [], []
        if rows:
            conn.execute(schema.instances.insert(), rows)
            conn.execute(schema.changes.insert(), changes)
        if conn.dialect.name == "postgresql":
            # Explicit ids do not advance PostgreSQL's sequences; later inserts must not collide.
            for table in ("patients", "studies", "series"):
                seq = f"pg_get_serial_sequence('{table}', 'id')"
                conn.execute(text(f"SELECT setval({seq}, (SELECT max(id) FROM {table}))"))
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", required=True, help="index URL (sqlite:///... or postgresql+psycopg://...)"
    )
    parser.add_argument("--instances", type=int, default=1_000_000)
    args = parser.parse_args()
    engine = open_index(args.url)
    seconds = fill(engine, args.instances)
    print(f"added {args.instances} synthetic instances in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
