"""The capacity report: what the archive holds, how fast it grows, when tier 0 fills.

Every figure comes from the index with aggregate queries (no file is opened),
so the report stays fast at millions of instances. Month keys are computed
in Python from per-day sums, so SQLite and PostgreSQL give the same answer.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, case, func, select

from vna.index import schema
from vna.settings import Settings

WINDOWS = (7, 30, 90)


@dataclass
class Share:
    instances: int = 0
    bytes: int = 0


@dataclass
class TargetFigures:
    name: str
    verified_instances: int = 0
    verified_bytes: int = 0
    backlog_instances: int = 0
    backlog_bytes: int = 0
    lag_seconds: float = 0.0
    monthly_verified_bytes: dict[str, int] = field(default_factory=dict)


@dataclass
class CapacityReport:
    generated_at: str
    instances: int
    bytes: int
    by_source: dict[str, Share]
    by_modality: dict[str, Share]
    by_month: dict[str, Share]  # month received, YYYY-MM
    intake_bytes_per_day: dict[str, float]  # over the last 7/30/90 days
    tier0_total_bytes: int
    tier0_free_bytes: int
    days_until_full: float | None  # at the 30-day intake rate
    projected_full_date: str | None
    targets: list[TargetFigures]
    quarantine_by_reason: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build(
    settings: Settings,
    engine: Engine,
    now: dt.datetime | None = None,
    disk: tuple[int, int] | None = None,
) -> CapacityReport:
    """Compute the report; `disk` = (total, free) overrides the filesystem (for tests)."""
    moment = now or dt.datetime.now(dt.UTC)
    i, se, q, r = schema.instances, schema.series, schema.quarantine, schema.replicas
    day = (
        func.date(i.c.received_at)
        if engine.dialect.name == "sqlite"
        else func.to_char(i.c.received_at, "YYYY-MM-DD")
    )
    with engine.connect() as conn:
        total_n, total_b = conn.execute(
            select(func.count(), func.coalesce(func.sum(i.c.size), 0))
        ).one()
        by_source = {
            s: Share(int(n), int(b))
            for s, n, b in conn.execute(
                select(i.c.source, func.count(), func.sum(i.c.size)).group_by(i.c.source)
            )
        }
        by_modality = {
            (m or "unknown"): Share(int(n), int(b))
            for m, n, b in conn.execute(
                select(se.c.modality, func.count(), func.sum(i.c.size))
                .join(se, i.c.series_pk == se.c.id)
                .group_by(se.c.modality)
            )
        }
        by_month: dict[str, Share] = defaultdict(Share)
        by_day: dict[str, int] = {}
        for d, n, b in conn.execute(select(day, func.count(), func.sum(i.c.size)).group_by(day)):
            key = str(d)
            by_month[key[:7]].instances += int(n)
            by_month[key[:7]].bytes += int(b)
            by_day[key] = int(b)
        quarantine = {
            reason: int(n)
            for reason, n in conn.execute(
                select(q.c.reason, func.count()).where(q.c.state == "held").group_by(q.c.reason)
            )
        }
        targets = []
        for t in settings.targets:
            fig = TargetFigures(t.name)
            verified = r.c.state == "verified"
            row = conn.execute(
                select(
                    func.sum(case((verified, 1), else_=0)),
                    func.sum(case((verified, r.c.size), else_=0)),
                    func.sum(case((verified, 0), else_=1)),
                    func.sum(case((verified, 0), else_=r.c.size)),
                    func.min(case((verified, None), else_=r.c.queued_at)),
                ).where(r.c.target == t.name)
            ).one()
            fig.verified_instances, fig.verified_bytes = int(row[0] or 0), int(row[1] or 0)
            fig.backlog_instances, fig.backlog_bytes = int(row[2] or 0), int(row[3] or 0)
            if row[4] is not None:
                oldest = row[4] if row[4].tzinfo else row[4].replace(tzinfo=dt.UTC)
                fig.lag_seconds = round((moment - oldest).total_seconds(), 1)
            vday = (
                func.date(r.c.verified_at)
                if engine.dialect.name == "sqlite"
                else func.to_char(r.c.verified_at, "YYYY-MM-DD")
            )
            monthly: dict[str, int] = defaultdict(int)
            for d, b in conn.execute(
                select(vday, func.sum(r.c.size))
                .where(r.c.target == t.name, verified)
                .group_by(vday)
            ):
                monthly[str(d)[:7]] += int(b or 0)
            fig.monthly_verified_bytes = dict(sorted(monthly.items()))
            targets.append(fig)
    intake = {}
    today = moment.date()
    for days in WINDOWS:
        since = (today - dt.timedelta(days=days - 1)).isoformat()
        intake[f"{days}d"] = sum(b for d, b in by_day.items() if d >= since) / days
    if disk is None:
        root = _existing(settings.archive.root)
        usage = shutil.disk_usage(root)
        disk = (usage.total, usage.free)
    rate = intake["30d"]
    days_left = disk[1] / rate if rate > 0 else None
    full = (
        (today + dt.timedelta(days=int(days_left))).isoformat()
        if days_left is not None and days_left < 365 * 100
        else None
    )
    return CapacityReport(
        generated_at=moment.isoformat(timespec="seconds"),
        instances=int(total_n),
        bytes=int(total_b),
        by_source=dict(sorted(by_source.items())),
        by_modality=dict(sorted(by_modality.items())),
        by_month=dict(sorted(by_month.items())),
        intake_bytes_per_day=intake,
        tier0_total_bytes=disk[0],
        tier0_free_bytes=disk[1],
        days_until_full=round(days_left, 1) if days_left is not None else None,
        projected_full_date=full,
        targets=targets,
        quarantine_by_reason=dict(sorted(quarantine.items())),
    )


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
