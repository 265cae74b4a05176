"""One scheduler at a time per index: a lease row, taken and renewed in the index.

APScheduler does not share a job store between schedulers (each would run every
job), yet a site may start `vna run` on one machine and `vna scheduler` on
another, or two for failover. Whoever holds the unexpired lease schedules; the
others wait and take over when it lapses.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from vna.index import schema
from vna.index.engine import write_transaction
from vna.index.timestamps import aware

NAME = "scheduler"


def acquire(engine: Engine, holder: str, seconds: float) -> bool:
    """Take or renew the lease for `seconds`; False while someone else holds it."""
    now = dt.datetime.now(dt.UTC)
    until = now + dt.timedelta(seconds=seconds)
    lease = schema.scheduler_lease
    try:
        with write_transaction(engine) as conn:
            row = conn.execute(
                select(lease.c.holder, lease.c.expires_at)
                .where(lease.c.name == NAME)
                .with_for_update()
            ).first()
            if row is None:
                conn.execute(insert(lease).values(name=NAME, holder=holder, expires_at=until))
                return True
            if row.holder != holder and aware(row.expires_at) > now:
                return False
            conn.execute(
                update(lease).where(lease.c.name == NAME).values(holder=holder, expires_at=until)
            )
            return True
    except IntegrityError:  # another scheduler inserted the row first
        return False


def holder(engine: Engine) -> tuple[str, dt.datetime] | None:
    """Who holds the lease and until when (None if nobody ever did)."""
    lease = schema.scheduler_lease
    with engine.connect() as conn:
        row = conn.execute(
            select(lease.c.holder, lease.c.expires_at).where(lease.c.name == NAME)
        ).first()
    return (row.holder, aware(row.expires_at)) if row else None


def release(engine: Engine, holder: str) -> None:
    lease = schema.scheduler_lease
    with write_transaction(engine) as conn:
        conn.execute(delete(lease).where(lease.c.name == NAME, lease.c.holder == holder))
