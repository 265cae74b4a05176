"""The replicator's scheduled jobs (entry point group `vna.jobs`).

Per target: `reconcile:NAME` compares the target with the index and queues
what is missing or wrong; and, for a target with a replication window,
`replicate:NAME` runs a replication pass each hour the window is open, so a
site that runs no continuous replicator still gets its copy made in the quiet
hours. Both share work safely with a running replicator (claims are row locks).
"""

from __future__ import annotations

import threading

from sqlalchemy import Engine

from replicator.daemon import Replicator, unverified
from replicator.reconcile import indexed_instances, reconcile, reset_skipped
from vna.cron import CronWindow
from vna.progress import Progress
from vna.scheduler.jobs import JobBody, JobFailed, JobSpec
from vna.settings import Settings


def jobs(settings: Settings) -> list[JobSpec]:
    specs = []
    for t in settings.targets:
        when = t.reconcile or settings.scheduler.reconcile
        if when:
            specs.append(
                JobSpec(
                    f"reconcile:{t.name}",
                    when,
                    _reconciler(t.name),
                    f"compare {t.url} with the index and queue what is missing or wrong",
                )
            )
        if t.window:
            # Windows are whole hours (the minute field means nothing there): a pass at
            # the start of each hour the window is open, in the zone the replicator reads
            # windows in.
            specs.append(
                JobSpec(
                    f"replicate:{t.name}",
                    "0 " + t.window.split(maxsplit=1)[1],
                    _replicator(t.name),
                    f"replicate to {t.url} while its window is open",
                    machine_time=True,
                )
            )
    return specs


def _reconciler(name: str) -> JobBody:
    def body(settings: Settings, engine: Engine, stop: threading.Event) -> str:
        target = settings.target(name)
        with Progress(f"reconcile {name}", indexed_instances(engine), "instances", bar=False) as p:
            drift = reconcile(engine, target, progress=p.advance_to)
        reset_skipped(engine, name)
        summary = drift.summary()
        if drift.delete_refused:
            raise JobFailed(f"{summary}; delete refused: {drift.delete_refused}")
        return summary if drift.clean else f"drift found and queued for repair: {summary}"

    return body


def _replicator(name: str) -> JobBody:
    def body(settings: Settings, engine: Engine, stop: threading.Event) -> str:
        replicator = Replicator(settings, engine, targets=[name])
        replicator.stop_event = stop
        if replicator.run(once=True):
            return f"target {name} fully verified"
        left = unverified(engine, name)
        window = settings.target(name).window
        if stop.is_set() or (window and not CronWindow(window).is_open()):
            why = "the scheduler stopped" if stop.is_set() else "the window closed"
            return f"{why} with {left} instance(s) still to copy to {name}; the next pass goes on"
        raise JobFailed(
            f"{left} instance(s) not verified on {name} after this pass with the window open: "
            "copies are failing (see `vna replicate status`)"
        )

    return body
