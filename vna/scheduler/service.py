"""The scheduler process: APScheduler with its job store in the index.

Runs from `vna scheduler`, or as a service of `vna run` (entry point group
`vna.services`). Only the holder of the scheduler lease fires jobs; another
scheduler on the same index stands by and takes over when the lease lapses.
Jobs from the configuration are written to the store at start: an unchanged
job keeps its stored next run time, so a run that fell due while no scheduler
was running happens at start-up (within `misfire_grace_seconds`, once however
many were missed) or is recorded as missed.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
import weakref
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass

from apscheduler.events import EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from sqlalchemy import Engine

from vna.cron import cron_trigger
from vna.errors import VnaError
from vna.scheduler import lease, runs
from vna.scheduler.jobs import JobSpec, configured
from vna.settings import Settings

NAME = "scheduler"
STORE_TABLE = "scheduler_jobs"
logger = logging.getLogger("vna.scheduler")

# The schedulers of this process, for `fire`: the job store keeps a job's callable by
# reference (module:function), so it cannot hold the settings or the engine itself.
# Of those, the one holding the lease fires.
_running: weakref.WeakSet[Scheduler] = weakref.WeakSet()


@dataclass(frozen=True)
class Outcome:
    outcome: str  # ok | failed
    detail: str
    seconds: float


def execute(
    settings: Settings, engine: Engine, spec: JobSpec, trigger: str, stop: threading.Event
) -> Outcome:
    """Run one job now and record it; a failure is recorded, never raised."""
    run_id = runs.start(engine, spec.name, trigger)
    started = time.monotonic()
    logger.info("job %s started (%s)", spec.name, trigger)
    try:
        detail = spec.body(settings, engine, stop)
        outcome = "ok"
    except VnaError as exc:
        outcome, detail = "failed", str(exc)
    except Exception as exc:  # a broken job must not take the scheduler or the others down
        logger.exception("job %s crashed", spec.name)
        outcome, detail = "failed", f"{type(exc).__name__}: {exc}"
    seconds = time.monotonic() - started
    runs.finish(engine, run_id, outcome, detail)
    log = logger.info if outcome == "ok" else logger.error
    log("job %s %s in %.1f s: %s", spec.name, outcome, seconds, detail)
    return Outcome(outcome, detail, seconds)


def fire(name: str) -> None:
    """What APScheduler calls when a job falls due."""
    for scheduler in list(_running):
        if scheduler.leading:
            scheduler.fire(name)
            return
    logger.error("job %s fell due but this process leads no scheduler", name)


def zone_of(settings: Settings) -> dt.tzinfo | None:
    tz = settings.scheduler.timezone
    return zoneinfo.ZoneInfo(tz) if tz else None


class Scheduler:
    """`trigger` turns a job into its APScheduler trigger; the default reads its crontab
    expression (tests pass second-granular triggers to watch many runs in little time)."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        lease_seconds: float = 60.0,
        trigger: Callable[[JobSpec, dt.tzinfo | None], BaseTrigger] | None = None,
        reload: Callable[[], Settings] | None = None,
    ) -> None:
        self.settings = settings
        self._reload = reload
        self.engine = engine
        self.specs = configured(settings)
        self._trigger = trigger or (
            lambda spec, zone: cron_trigger(spec.cron, None if spec.machine_time else zone)
        )
        self.lease_seconds = lease_seconds
        self.holder = f"{runs.me()}:{uuid.uuid4().hex[:8]}"
        self.zone = zone_of(settings)
        self._aps: BackgroundScheduler | None = None
        self._halt = threading.Event()  # set when this scheduler stops leading

    @property
    def leading(self) -> bool:
        return self._aps is not None

    def run(self, stop: threading.Event) -> None:
        """Schedule while holding the lease, stand by otherwise, until `stop` is set."""
        _running.add(self)
        logger.info(
            "scheduler %s: %d job(s): %s",
            self.holder,
            len(self.specs),
            ", ".join(f"{s.name} [{s.cron}]" for s in self.specs.values()) or "none",
        )
        try:
            while not stop.is_set():
                try:
                    self._round()
                except Exception:  # the index away, a bad job time: retry, never die
                    logger.exception("scheduler round failed; standing by and retrying")
                    self._shutdown()
                stop.wait(self.lease_seconds / 3)
        finally:
            self._shutdown()
            try:
                lease.release(self.engine, self.holder)
            except Exception:  # it lapses on its own
                logger.warning("could not release the scheduler lease", exc_info=True)
            _running.discard(self)

    def _round(self) -> None:
        self._maybe_reload()
        if lease.acquire(self.engine, self.holder, self.lease_seconds):
            if self._aps is None:
                self._start()
        elif self._aps is not None:
            logger.warning("scheduler lease lost; standing by")
            self._shutdown()

    def _maybe_reload(self) -> None:
        """Pick up edited job times and targets without a restart; a broken file changes
        nothing (and is reported) until it is fixed."""
        if self._reload is None:
            return
        try:
            fresh = self._reload()
            specs = configured(fresh)
        except VnaError as exc:
            logger.error("configuration not reloaded, keeping the jobs as they are: %s", exc)
            return
        before = {n: s.cron for n, s in self.specs.items()}
        if {n: s.cron for n, s in specs.items()} == before and zone_of(fresh) == self.zone:
            self.settings = fresh
            return
        logger.info("configuration changed: jobs now %s", ", ".join(sorted(specs)) or "none")
        self.settings, self.specs, self.zone = fresh, specs, zone_of(fresh)
        if self._aps is not None:
            self._sync(self._aps)

    def fire(self, name: str) -> None:
        spec = self.specs.get(name)
        if spec is None:
            logger.error("job %s fell due but is no longer configured", name)
            return
        execute(self.settings, self.engine, spec, "schedule", self._halt)

    def _start(self) -> None:
        stale = runs.interrupt_stale(self.engine)
        if stale:
            logger.warning("%d job run(s) of a previous scheduler marked interrupted", stale)
        aps = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=self.engine, tablename=STORE_TABLE)},
            # A thread per job: a job queued behind others would count as late, even missed.
            executors={"default": ThreadPoolExecutor(max(1, len(self.specs)))},
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": max(1, int(self.settings.scheduler.misfire_grace_seconds)),
            },
            timezone=self.zone,
        )
        self._halt = threading.Event()
        aps.add_listener(self._missed, EVENT_JOB_MISSED)
        aps.start(paused=True)
        self._aps = aps  # from here on, _shutdown stops it whatever happens next
        self._sync(aps)
        aps.resume()
        logger.info("scheduler %s took the lease and is scheduling", self.holder)

    def _sync(self, aps: BackgroundScheduler) -> None:
        """Bring the store in line with the configuration, keeping unchanged jobs' times."""
        stored = {job.id: job for job in aps.get_jobs()}
        for name in sorted(stored.keys() - self.specs.keys()):
            logger.info("job %s is no longer configured: removed", name)
            aps.remove_job(name)
        for name, spec in self.specs.items():
            signature = f"{name} [{spec.cron}, {self.zone or 'local time'}]"
            old = stored.get(name)
            if old is not None and old.name == signature:
                continue
            aps.add_job(
                fire,
                trigger=self._trigger(spec, self.zone),
                args=[name],
                id=name,
                name=signature,
                replace_existing=True,
            )

    def _missed(self, event: JobExecutionEvent) -> None:
        runs.missed(self.engine, event.job_id, event.scheduled_run_time.astimezone(dt.UTC))
        logger.warning(
            "job %s due at %s was missed (scheduler down longer than the grace time)",
            event.job_id,
            event.scheduled_run_time,
        )

    def _shutdown(self) -> None:
        if self._aps is None:
            return
        self._halt.set()  # running jobs wind down; shutdown waits for them
        # Keep the lease while they do, so no standby starts the same jobs meanwhile.
        drained = threading.Event()
        keeper = threading.Thread(target=self._keep_lease, args=(drained,), daemon=True)
        keeper.start()
        try:
            self._aps.shutdown(wait=True)
        finally:
            drained.set()
            keeper.join()
            self._aps = None

    def _keep_lease(self, drained: threading.Event) -> None:
        while not drained.wait(self.lease_seconds / 3):
            try:
                lease.acquire(self.engine, self.holder, self.lease_seconds)
            except Exception:
                logger.warning("could not renew the scheduler lease", exc_info=True)


def serve(settings: Settings, engine: Engine, stop: threading.Event) -> None:
    """Run the scheduler until `stop` is set (the `vna run` service)."""
    if not settings.scheduler.enabled:
        logger.info("scheduler.enabled = false: `vna run` schedules nothing")
        return
    Scheduler(settings, engine).run(stop)
