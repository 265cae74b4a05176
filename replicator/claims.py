"""Claiming copies from the index, and recording how they ended.

Workers on several machines share one PostgreSQL index: a claim takes rows with
`FOR UPDATE SKIP LOCKED` and leases them for `lease_seconds`, so two workers
never take the same copy, and the copies of a worker that died are taken over
once its lease ran out. On SQLite the claim runs in a write transaction (one
writer at a time), which gives the same guarantee on one machine.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, and_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from vna.index import schema
from vna.index.engine import write_transaction


@dataclass(frozen=True)
class Copy:
    """One claimed copy: put this instance's file on this target."""

    id: int
    target: str
    sop_uid: str
    path: str
    digest: str
    size: int
    attempts: int


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def enqueue(conn: Connection, target: str, rows: Sequence[Any], note: str | None = None) -> None:
    """Queue copies of `rows` (sop_uid, path, digest, size, queued_at) for `target`.

    Without a `note` (the change feed), a copy already verified with the same
    digest is left alone; with one (reconciliation found the copy missing or
    wrong), every row is queued again and the note says why.
    """
    if not rows:
        return
    r = schema.replicas
    moment = now()
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    values = [
        dict(
            target=target,
            sop_uid=row.sop_uid,
            path=row.path,
            digest=row.digest,
            size=row.size,
            state="pending",
            attempts=0,
            next_attempt_at=moment,
            queued_at=getattr(row, "queued_at", moment),
            last_error=note,
        )
        for row in rows
    ]
    stmt = dialect.insert(r)
    upsert = stmt.on_conflict_do_update(
        index_elements=["target", "sop_uid"],
        set_={
            "path": stmt.excluded.path,
            "digest": stmt.excluded.digest,
            "size": stmt.excluded.size,
            "state": "pending",
            "attempts": 0,
            "last_error": stmt.excluded.last_error,
            "next_attempt_at": stmt.excluded.next_attempt_at,
            "queued_at": stmt.excluded.queued_at,
            "verified_at": None,
        },
        where=None if note else (r.c.digest != stmt.excluded.digest) | (r.c.state != "verified"),
    )
    conn.execute(upsert, values)


def claim(engine: Engine, target: str, worker: str, limit: int, lease_seconds: float) -> list[Copy]:
    """Lease up to `limit` copies that are due on `target`."""
    r = schema.replicas
    moment = now()
    cols = (r.c.id, r.c.sop_uid, r.c.path, r.c.digest, r.c.size, r.c.attempts)
    # Two queries rather than one OR: each is an index range on (target, state, ...), so an
    # archive of millions of verified copies costs nothing to poll.
    due = and_(
        r.c.target == target, r.c.state.in_(("pending", "failed")), r.c.next_attempt_at <= moment
    )
    orphaned = and_(r.c.target == target, r.c.state == "copying", r.c.claimed_until < moment)
    with write_transaction(engine) as conn:
        rows = list(
            conn.execute(
                select(*cols).where(orphaned).limit(limit).with_for_update(skip_locked=True)
            ).all()
        )
        if len(rows) < limit:
            rows += conn.execute(
                select(*cols)
                .where(due)
                .order_by(r.c.next_attempt_at, r.c.id)
                .limit(limit - len(rows))
                .with_for_update(skip_locked=True)
            ).all()
        if not rows:
            return []
        conn.execute(
            update(r)
            .where(r.c.id.in_([row.id for row in rows]))
            .values(
                state="copying",
                claimed_by=worker,
                claimed_until=moment + dt.timedelta(seconds=lease_seconds),
            )
        )
    return [
        Copy(row.id, target, row.sop_uid, row.path, row.digest, row.size, row.attempts)
        for row in rows
    ]


@dataclass(frozen=True)
class Result:
    copy: Copy
    state: str  # verified | failed | skipped
    uploaded: bool = False
    error: str | None = None
    retry_in: float = 0.0


def record(engine: Engine, worker: str, results: list[Result]) -> None:
    """Write how copies ended; a copy re-queued meanwhile (new digest) is left alone."""
    if not results:
        return
    r = schema.replicas
    moment = now()
    with write_transaction(engine) as conn:
        for res in results:
            values: dict[str, object] = {
                "state": res.state,
                "claimed_by": None,
                "claimed_until": None,
                "attempts": res.copy.attempts + 1,
                "last_error": res.error,
            }
            if res.state == "verified":
                values["verified_at"] = moment
                values["attempts"] = 0
                if res.uploaded:
                    values["uploaded_at"] = moment
            else:
                values["next_attempt_at"] = moment + dt.timedelta(seconds=res.retry_in)
            conn.execute(
                update(r)
                .where(
                    r.c.id == res.copy.id,
                    r.c.digest == res.copy.digest,
                    r.c.claimed_by == worker,
                )
                .values(**values)
            )


def release(engine: Engine, worker: str) -> None:
    """Give back every copy this worker still holds (a clean stop)."""
    r = schema.replicas
    with write_transaction(engine) as conn:
        conn.execute(
            update(r)
            .where(r.c.claimed_by == worker, r.c.state == "copying")
            .values(state="pending", claimed_by=None, claimed_until=None)
        )
