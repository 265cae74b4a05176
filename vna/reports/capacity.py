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

from sqlalchemy import Connection, Engine, case, func, select

from vna.index import schema
from vna.index.timestamps import aware, day_bucket
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
    i, se, q = schema.instances, schema.series, schema.quarantine
    day = day_bucket(i.c.received_at, engine.dialect.name)
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
        targets = _target_figures(conn, settings, engine.dialect.name, moment)
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


def _target_figures(
    conn: Connection, settings: Settings, dialect: str, moment: dt.datetime
) -> list[TargetFigures]:
    """Every target's figures from one scan of `replicas`, grouped by target and day
    verified (unverified rows fall in one group per target), so a site with many
    targets does not pay one pass per target."""
    r = schema.replicas
    verified = r.c.state == "verified"
    day = case((verified, day_bucket(r.c.verified_at, dialect)), else_=None)
    figures = {t.name: TargetFigures(t.name) for t in settings.targets}
    monthly: dict[str, dict[str, int]] = {t.name: defaultdict(int) for t in settings.targets}
    rows = conn.execute(
        select(r.c.target, day, func.count(), func.sum(r.c.size), func.min(r.c.queued_at))
        .where(r.c.target.in_(list(figures)))
        .group_by(r.c.target, day)
    )
    for target, d, n, b, oldest in rows:
        fig = figures[target]
        if d is None:  # not (yet) verified: the backlog
            fig.backlog_instances += int(n)
            fig.backlog_bytes += int(b or 0)
            lag = round((moment - aware(oldest)).total_seconds(), 1)
            fig.lag_seconds = max(fig.lag_seconds, lag)
        else:
            fig.verified_instances += int(n)
            fig.verified_bytes += int(b or 0)
            monthly[target][str(d)[:7]] += int(b or 0)
    for name, fig in figures.items():
        fig.monthly_verified_bytes = dict(sorted(monthly[name].items()))
    return list(figures.values())


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
