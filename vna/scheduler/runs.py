"""The record of job runs: one row per run, written when it starts and when it ends.

A run is visible as `running` while it works, so the status page shows what is
in progress; a scheduler that dies leaves such rows behind, and the next one to
take the lease marks them `interrupted` rather than leaving them running forever.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, func, insert, select, update

from vna.index import schema
from vna.index.timestamps import aware

OUTCOMES = ("running", "ok", "failed", "missed", "interrupted")
DETAIL_MAX = 4000


@dataclass(frozen=True)
class Run:
    id: int
    job: str
    trigger: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    outcome: str
    detail: str
    host: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "job": self.job,
            "trigger": self.trigger,
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "finished_at": (
                self.finished_at.isoformat(timespec="seconds") if self.finished_at else None
            ),
            "seconds": (
                round((self.finished_at - self.started_at).total_seconds(), 1)
                if self.finished_at
                else None
            ),
            "outcome": self.outcome,
            "detail": self.detail,
            "host": self.host,
        }


def me() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def start(engine: Engine, job: str, trigger: str) -> int:
    """Record that `job` started now; the id to `finish` it with."""
    with engine.begin() as conn:
        result = conn.execute(
            insert(schema.job_runs).values(
                job=job,
                trigger=trigger,
                started_at=dt.datetime.now(dt.UTC),
                outcome="running",
                host=me(),
            )
        )
        return int(result.inserted_primary_key[0])  # type: ignore[index]


def finish(engine: Engine, run_id: int, outcome: str, detail: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(schema.job_runs)
            .where(schema.job_runs.c.id == run_id, schema.job_runs.c.outcome == "running")
            .values(
                finished_at=dt.datetime.now(dt.UTC), outcome=outcome, detail=detail[:DETAIL_MAX]
            )
        )


def missed(engine: Engine, job: str, due: dt.datetime) -> None:
    """A run that did not happen (the scheduler was down for longer than the grace time)."""
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(schema.job_runs).values(
                job=job,
                trigger="schedule",
                started_at=due,
                finished_at=now,
                outcome="missed",
                detail=f"due at {due.isoformat(timespec='seconds')}; the scheduler was not running",
                host=me(),
            )
        )


def interrupt_stale(engine: Engine) -> int:
    """Scheduled runs still `running` when a scheduler takes over were cut off."""
    with engine.begin() as conn:
        result = conn.execute(
            update(schema.job_runs)
            .where(schema.job_runs.c.outcome == "running", schema.job_runs.c.trigger == "schedule")
            .values(
                outcome="interrupted",
                finished_at=dt.datetime.now(dt.UTC),
                detail="the scheduler running it stopped before the job finished",
            )
        )
        return int(result.rowcount)


def history(
    engine: Engine,
    job: str | None = None,
    limit: int = 20,
    outcomes: tuple[str, ...] | None = None,
) -> list[Run]:
    """The newest runs first, of one job or of all, and only those `outcomes` if given."""
    jr = schema.job_runs
    query = select(jr).order_by(jr.c.started_at.desc(), jr.c.id.desc()).limit(limit)
    if job is not None:
        query = query.where(jr.c.job == job)
    if outcomes is not None:
        query = query.where(jr.c.outcome.in_(outcomes))
    with engine.connect() as conn:
        return [_run(row) for row in conn.execute(query)]


def latest(engine: Engine) -> dict[str, Run]:
    """Each job's newest run."""
    jr = schema.job_runs
    newest = select(jr.c.job, func.max(jr.c.id).label("id")).group_by(jr.c.job).subquery("newest")
    with engine.connect() as conn:
        rows = conn.execute(
            select(jr).join(newest, and_(jr.c.job == newest.c.job, jr.c.id == newest.c.id))
        )
        return {row.job: _run(row) for row in rows}


def _run(row: Any) -> Run:
    return Run(
        id=int(row.id),
        job=row.job,
        trigger=row.trigger,
        started_at=aware(row.started_at),
        finished_at=aware(row.finished_at) if row.finished_at else None,
        outcome=row.outcome,
        detail=row.detail or "",
        host=row.host or "",
    )
