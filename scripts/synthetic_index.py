"""Fill an index with synthetic rows, to measure behaviour at archive scale.

Rows only, no files: patients, studies, series and instances shaped like a
CT-heavy archive (500 instances per series, 2 series per study), with change
feed rows, so benchmarks can show that ingest, replication and reports do not
slow down as the index grows. Usable as a module or from the command line:

    .venv/bin/python scripts/synthetic_index.py --url sqlite:///var/big.db --instances 1000000

By default instances arrive one a minute up to now (so a million span ~23 months).
Options for benchmarks that read history (the capacity report): `spread_days`
spreads the arrivals evenly over that many days instead; `targets` adds a replica
row per instance and target (mostly verified when received, the newest few still
pending, more of them on each further target); `quarantined` adds quarantine
records with a mix of reasons, most held, some released.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import Engine, case, func, insert, literal, null, select, text

from vna.index import schema
from vna.index.engine import open_index
from vna.quarantine import Reason

CHUNK = 20000
#: Share of the newest instances still pending on the first target (twice that on the second...).
PENDING_SHARE = 0.02
#: Quarantine reasons of the synthetic records, each with its weight (most frequent first).
QUARANTINE_MIX = (
    (Reason.NOT_DICOM, 5),
    (Reason.TRUNCATED, 4),
    (Reason.MISSING_UID, 3),
    (Reason.DUPLICATE_CONFLICT, 2),
    (Reason.COERCION_FAILED, 1),
)


def fill(
    engine: Engine,
    instances: int,
    per_series: int = 500,
    series_per_study: int = 2,
    prefix: str = "2.25.9",
    *,
    spread_days: float | None = None,
    targets: Sequence[str] = (),
    quarantined: int = 0,
) -> float:
    """Append `instances` synthetic instances (and their parents); return seconds taken.

    `spread_days`, `targets` and `quarantined` are described in the module docstring;
    their defaults add what this function always added, so older callers see no change.
    """
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
        base_inst = int(
            conn.execute(select(func.coalesce(func.max(schema.instances.c.id), 0))).scalar_one()
        )
    run = f"{prefix}.{int(time.time())}"
    now = dt.datetime.now(dt.UTC)
    n_series = -(-instances // per_series)
    n_studies = -(-n_series // series_per_study)
    # Time between two arrivals; the last instance arrives now.
    if spread_days is None:
        step = dt.timedelta(minutes=1)
    else:
        step = dt.timedelta(days=spread_days) / max(instances, 1)
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
                    received_at=now - step * (instances - i),
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
    for k, target in enumerate(targets):
        add_replicas(engine, target, base_inst, instances, PENDING_SHARE * (k + 1))
    if quarantined:
        add_quarantine(engine, quarantined, run, now, spread_days or 365)
    return time.perf_counter() - started


def add_replicas(engine: Engine, target: str, after_id: int, count: int, pending: float) -> None:
    """A replica row on `target` for each of the `count` instances above id `after_id`.

    One INSERT ... SELECT, so the rows never travel through Python. A copy is
    queued and verified the moment its instance arrived (so verified_at spans the
    same months as received_at), except the newest `pending` share, still queued.
    """
    i, r = schema.instances, schema.replicas
    with engine.connect() as conn:
        # PostgreSQL's ids need not start right above `after_id` (a sequence skips on rollback).
        first = conn.execute(select(func.min(i.c.id)).where(i.c.id > after_id)).scalar_one()
    if first is None:
        return
    waiting = i.c.id >= int(first) + round(count * (1 - pending))
    rows = select(
        literal(target), i.c.sop_uid, i.c.path, i.c.digest, i.c.size,
        case((waiting, "pending"), else_="verified"), literal(0),
        i.c.received_at, i.c.received_at,
        case((waiting, null()), else_=i.c.received_at),
        case((waiting, null()), else_=i.c.received_at),
    ).where(i.c.id > after_id)  # fmt: skip
    columns = [
        "target", "sop_uid", "path", "digest", "size", "state", "attempts",
        "next_attempt_at", "queued_at", "uploaded_at", "verified_at",
    ]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(insert(r).from_select([r.c[name] for name in columns], rows))


def add_quarantine(engine: Engine, count: int, run: str, now: dt.datetime, days: float) -> None:
    """`count` quarantine records over the last `days` days: reasons skewed, 1 in 10 released."""
    reasons = [reason for reason, weight in QUARANTINE_MIX for _ in range(weight)]
    rows: list[dict[str, Any]] = []
    with engine.begin() as conn:
        for k in range(count):
            reason = reasons[k % len(reasons)]
            source = ("pacs-a", "pacs-b", "pacs-c")[k % 3]
            key = hashlib.sha256(f"{run}.q.{k}".encode()).hexdigest()[:32]
            rows.append(
                dict(
                    id=key,
                    source=source,
                    reason=reason.value,
                    detail="synthetic quarantine record",
                    drop_path=f"drop/{source}/synthetic-{k}.dcm",
                    stored_path=f"quarantine/{source}/{key}",
                    sop_uid=None,
                    digest=f"{k:032x}",
                    size=525_000,
                    state="released" if k % 10 == 9 else "held",
                    at=now - dt.timedelta(days=days) * (count - k) / count,
                )
            )
            if len(rows) >= CHUNK:
                conn.execute(schema.quarantine.insert(), rows)
                rows = []
        if rows:
            conn.execute(schema.quarantine.insert(), rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", required=True, help="index URL (sqlite:///... or postgresql+psycopg://...)"
    )
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument(
        "--spread-days", type=float, help="spread arrivals over this many days (default: 1/min)"
    )
    parser.add_argument(
        "--targets", default="", help="comma-separated target names to add replica rows for"
    )
    parser.add_argument("--quarantined", type=int, default=0, help="quarantine records to add")
    args = parser.parse_args()
    engine = open_index(args.url)
    targets = [t for t in args.targets.split(",") if t]
    seconds = fill(
        engine,
        args.instances,
        spread_days=args.spread_days,
        targets=targets,
        quarantined=args.quarantined,
    )
    print(f"added {args.instances} synthetic instances in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
