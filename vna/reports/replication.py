"""Per-target replication figures for storage admins: lag, backlog, throughput, errors.

Read from the index alone, so `vna replicate status`, the status page and the
reports share them without the gateway depending on the replicator.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Engine, func, select

from vna.cron import CronWindow
from vna.index import schema
from vna.index.timestamps import aware
from vna.settings import Settings

THROUGHPUT_WINDOW = dt.timedelta(minutes=5)


def collect(settings: Settings, engine: Engine, now: dt.datetime | None = None) -> dict[str, Any]:
    """What `vna replicate status` shows, as a plain dict (also its --json)."""
    moment = now or dt.datetime.now(dt.UTC)
    r, ch, cur = schema.replicas, schema.changes, schema.replication_cursors
    out: dict[str, Any] = {}
    with engine.connect() as conn:
        head = int(conn.execute(select(func.coalesce(func.max(ch.c.seq), 0))).scalar_one())
        # One scan of the replicas for every target's states, not one per target.
        by_target: dict[str, dict[str, tuple[int, int]]] = {t.name: {} for t in settings.targets}
        for target, state, n, size in conn.execute(
            select(r.c.target, r.c.state, func.count(), func.sum(r.c.size))
            .where(r.c.target.in_(list(by_target)))
            .group_by(r.c.target, r.c.state)
        ):
            by_target[target][state] = (int(n), int(size or 0))
        for t in settings.targets:
            states = by_target[t.name]
            cursor = (
                conn.execute(select(cur.c.seq).where(cur.c.target == t.name)).scalar_one_or_none()
                or 0
            )
            unfed = conn.execute(
                select(
                    func.count(), func.coalesce(func.sum(ch.c.size), 0), func.min(ch.c.at)
                ).where(ch.c.seq > cursor)
            ).one()
            oldest_open = conn.execute(
                select(func.min(r.c.queued_at)).where(
                    r.c.target == t.name, r.c.state.in_(("pending", "copying", "failed", "skipped"))
                )
            ).scalar_one()
            candidates = [d for d in (oldest_open, unfed[2]) if d is not None]
            oldest = min(aware(d) for d in candidates) if candidates else None
            since = moment - THROUGHPUT_WINDOW
            recent = conn.execute(
                select(func.count(), func.coalesce(func.sum(r.c.size), 0)).where(
                    r.c.target == t.name, r.c.verified_at >= since
                )
            ).one()
            errors = [
                {
                    "path": row.path,
                    "state": row.state,
                    "error": row.last_error,
                    "attempts": row.attempts,
                }
                for row in conn.execute(
                    select(r.c.path, r.c.state, r.c.last_error, r.c.attempts)
                    .where(r.c.target == t.name, r.c.state.in_(("failed", "skipped")))
                    .order_by(r.c.next_attempt_at.desc())
                    .limit(5)
                )
            ]
            backlog_count = sum(n for s, (n, _) in states.items() if s != "verified") + int(
                unfed[0]
            )
            backlog_bytes = sum(b for s, (_, b) in states.items() if s != "verified") + int(
                unfed[1]
            )
            seconds = THROUGHPUT_WINDOW.total_seconds()
            out[t.name] = {
                "url": t.url,
                "verified": states.get("verified", (0, 0))[0],
                "verified_bytes": states.get("verified", (0, 0))[1],
                "states": {s: n for s, (n, _) in sorted(states.items())},
                "backlog": backlog_count,
                "backlog_bytes": backlog_bytes,
                "lag_seconds": round((moment - oldest).total_seconds(), 1) if oldest else 0.0,
                "feed_behind": head - cursor,
                "throughput_files_per_s": round(int(recent[0]) / seconds, 2),
                "throughput_bytes_per_s": round(int(recent[1]) / seconds, 1),
                "window": t.window or "always",
                "window_open": CronWindow(t.window).is_open(moment) if t.window else True,
                "recent_errors": errors,
            }
    return out
