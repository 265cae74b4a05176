"""What can be scheduled: the jobs the configuration asks for, by name.

`vna` contributes the verification of tier 0 and the capacity report; other
packages add theirs (the replicator: reconciliation and replication windows
per target) through the `vna.jobs` entry point, a module with a
`jobs(settings) -> list[JobSpec]` function. A job's name is its identity in
the job store, in `job_runs` and on the command line.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, select

from vna import plugins
from vna.errors import VnaError
from vna.index import schema
from vna.index.engine import write_transaction
from vna.layout import Layout
from vna.reports import files
from vna.reports.capacity import build
from vna.settings import Settings
from vna.status import human_bytes
from vna.verify import verify_share

logger = logging.getLogger("vna.scheduler")


class JobFailed(VnaError):
    """A job ran to its end and found something an admin must act on."""


# A job's body: does the work, returns a one-line summary for `job_runs`, raises if it failed.
# A long job stops early (and says so) once the event is set: the scheduler is shutting down.
JobBody = Callable[[Settings, Engine, threading.Event], str]


@dataclass(frozen=True)
class JobSpec:
    name: str
    cron: str  # crontab(5) expression, in the scheduler's time zone
    body: JobBody
    description: str
    # Fire in the machine's time zone rather than [scheduler] timezone: for jobs tied to a
    # replication window, which the replicator reads in the machine's zone.
    machine_time: bool = False


def configured(settings: Settings) -> dict[str, JobSpec]:
    """Every job the configuration schedules, by name."""
    specs = list(vna_jobs(settings))
    for module in plugins.load("vna.jobs"):
        specs.extend(module.jobs(settings))
    return {spec.name: spec for spec in specs}


def vna_jobs(settings: Settings) -> list[JobSpec]:
    sched = settings.scheduler
    specs = []
    if sched.verify:
        specs.append(
            JobSpec(
                "verify",
                sched.verify,
                verify_tier0,
                f"re-hash 1/{sched.verify_days} of tier 0 against the index",
            )
        )
    if sched.report:
        specs.append(
            JobSpec(
                "report:capacity",
                sched.report,
                capacity_report,
                f"write the capacity report to {sched.reports}",
            )
        )
    return specs


VERIFY_CURSOR = "verify:after"


def verify_tier0(settings: Settings, engine: Engine, stop: threading.Event) -> str:
    """The nightly share of tier 0, continuing where the last run stopped."""
    state = schema.job_state
    with engine.connect() as conn:
        stored = conn.execute(
            select(state.c.value).where(state.c.name == VERIFY_CURSOR)
        ).scalar_one_or_none()
    after = int(json.loads(stored)["after"]) if stored else 0
    layout = Layout(settings.archive.root, settings.archive.fsync)
    result = verify_share(engine, layout, after, settings.scheduler.verify_days, stop=stop)
    save_state(engine, VERIFY_CURSOR, json.dumps({"after": result.next_after}))
    summary = (
        f"re-hashed {result.checked} of {result.total} instances "
        f"(1/{settings.scheduler.verify_days} per run)"
        + ("; stopped early, the next run goes on from here" if stop.is_set() else "")
    )
    if result.problems:
        listed = "; ".join(str(p) for p in result.problems[:20])
        more = result.problem_count - min(20, len(result.problems))
        raise JobFailed(
            f"{summary}: {result.problem_count} problem(s): {listed}"
            + (f"; and {more} more" if more > 0 else "")
        )
    return summary


def capacity_report(settings: Settings, engine: Engine, stop: threading.Event) -> str:
    now = dt.datetime.now(dt.UTC)
    report = build(settings, engine, now=now)
    written = files.write(report, settings.scheduler.reports, now, settings.scheduler.keep_reports)
    return (
        f"{report.instances} instances, {human_bytes(report.bytes)}; "
        f"wrote {', '.join(p.name for p in written)}"
    )


def save_state(engine: Engine, name: str, value: str) -> None:
    """Keep what a job carries to its next run (an upsert both databases understand)."""
    state = schema.job_state
    now = dt.datetime.now(dt.UTC)
    with write_transaction(engine) as conn:
        done = conn.execute(
            state.update().where(state.c.name == name).values(value=value, updated_at=now)
        )
        if done.rowcount == 0:
            conn.execute(state.insert().values(name=name, value=value, updated_at=now))
