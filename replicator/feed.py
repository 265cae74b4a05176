"""From the change feed to per-target work: replica rows, by cursor.

An idle archive costs one indexed query per target per poll: the cursor says
where this target's work stands in the feed, so nothing is ever listed to find
out what changed. Feeding and advancing the cursor happen in one transaction;
on PostgreSQL the cursor row is locked, so several replicators feed once. The
commit does not wait for the disk: a power cut that rolls it back rolls back
the cursor with it, and the same changes are fed again.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select, update

from replicator.claims import enqueue
from vna.index import schema
from vna.index.dialect import native_insert
from vna.index.engine import write_transaction

FEED_BATCH = 5000


@dataclass(frozen=True)
class _Queued:
    sop_uid: str
    path: str
    digest: str
    size: int
    queued_at: dt.datetime


def feed(engine: Engine, target: str, limit: int = FEED_BATCH) -> int:
    """Turn the next change-feed rows into this target's replica rows; return how many."""
    c, ch = schema.replication_cursors, schema.changes
    now = dt.datetime.now(dt.UTC)
    with write_transaction(engine, durable=False) as conn:
        conn.execute(
            native_insert(conn, c)
            .values(target=target, seq=0, updated_at=now)
            .on_conflict_do_nothing(index_elements=["target"])
        )
        cursor = conn.execute(
            select(c.c.seq).where(c.c.target == target).with_for_update()
        ).scalar_one()
        rows = conn.execute(
            select(ch).where(ch.c.seq > cursor).order_by(ch.c.seq).limit(limit)
        ).all()
        if not rows:
            return 0
        latest: dict[str, Any] = {}
        for row in rows:  # the last change of an instance wins
            latest[row.sop_uid] = row
        queued = [
            _Queued(row.sop_uid, row.path, row.digest, row.size, row.at)
            for row in latest.values()
            if row.kind in ("created", "replaced") and row.digest
        ]
        enqueue(conn, target, queued)
        conn.execute(update(c).where(c.c.target == target).values(seq=rows[-1].seq, updated_at=now))
        return len(rows)
