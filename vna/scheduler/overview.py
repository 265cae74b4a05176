"""The jobs at a glance: schedule, next run, last outcome; for `vna jobs list` and the
status page. Next run times are read from the job store's own column, so this works
from any process, whether or not a scheduler is running."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Engine, select

from vna.cron import cron_trigger
from vna.index import schema
from vna.scheduler import lease, runs
from vna.scheduler.jobs import configured
from vna.scheduler.service import zone_of
from vna.settings import Settings


def jobs(settings: Settings, engine: Engine) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    specs = configured(settings)
    store = schema.scheduler_jobs
    with engine.connect() as conn:
        stored = {
            row.id: row.next_run_time
            for row in conn.execute(select(store.c.id, store.c.next_run_time))
        }
    last = runs.latest(engine)
    held = lease.holder(engine)
    active = held is not None and held[1] > now
    listed = []
    for name, spec in sorted(specs.items()):
        if name in stored and stored[name] is not None:
            next_run = dt.datetime.fromtimestamp(stored[name], dt.UTC)
        else:
            next_run = cron_trigger(spec.cron, zone_of(settings)).get_next_fire_time(None, now)
        run = last.get(name)
        listed.append(
            {
                "name": name,
                "schedule": spec.cron,
                "description": spec.description,
                "next_run": next_run.isoformat(timespec="seconds") if next_run else None,
                "last_run": run.to_dict() if run else None,
            }
        )
    return {
        "scheduler": {
            "running": active,
            "holder": held[0] if active and held else None,
            "lease_until": held[1].isoformat(timespec="seconds") if active and held else None,
        },
        "jobs": listed,
    }
