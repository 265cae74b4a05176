"""From the change feed to per-target work: replica rows, by cursor.

An idle archive costs one indexed query per target per poll: the cursor says
where this target's work stands in the feed, so nothing is ever listed to find
out what changed. Feeding and advancing the cursor happen in one transaction;
on PostgreSQL the cursor row is locked, so several replicators feed once.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.dialects import postgresql, sqlite

from vna.index import schema

FEED_BATCH = 5000


def feed(engine: Engine, target: str, limit: int = FEED_BATCH) -> int:
    """Turn the next change-feed rows into this target's replica rows; return how many."""
    c, r, ch = schema.replication_cursors, schema.replicas, schema.changes
    now = dt.datetime.now(dt.UTC)
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    with engine.connect() as conn:
        conn.info["write"] = True
        try:
            with conn.begin():
                conn.execute(
                    dialect.insert(c)
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
                upserts = [
                    dict(
                        target=target,
                        sop_uid=row.sop_uid,
                        path=row.path,
                        digest=row.digest,
                        size=row.size,
                        state="pending",
                        attempts=0,
                        next_attempt_at=now,
                        queued_at=row.at,
                    )
                    for row in latest.values()
                    if row.kind in ("created", "replaced") and row.digest
                ]
                if upserts:
                    stmt = dialect.insert(r)
                    conn.execute(
                        stmt.on_conflict_do_update(
                            index_elements=["target", "sop_uid"],
                            set_={
                                "path": stmt.excluded.path,
                                "digest": stmt.excluded.digest,
                                "size": stmt.excluded.size,
                                "state": "pending",
                                "attempts": 0,
                                "last_error": None,
                                "next_attempt_at": stmt.excluded.next_attempt_at,
                                "queued_at": stmt.excluded.queued_at,
                                "verified_at": None,
                            },
                            where=(r.c.digest != stmt.excluded.digest) | (r.c.state != "verified"),
                        ),
                        upserts,
                    )
                conn.execute(
                    update(c).where(c.c.target == target).values(seq=rows[-1].seq, updated_at=now)
                )
                return len(rows)
        finally:
            conn.info.pop("write", None)
