"""Claiming copies from the index, and recording how they ended.

Workers on several machines share one PostgreSQL index: a claim takes rows with
`FOR UPDATE SKIP LOCKED` and leases them for `lease_seconds`, so two workers
never take the same copy, and the copies of a worker that died are taken over
once its lease ran out (at once by a worker started after it on the same
machine, which can see its process is gone: `owners`). On SQLite the claim
runs in a write transaction (one writer at a time), which gives the same
guarantee on one machine.

Claims and results are committed without waiting for the disk: a power cut may
roll back the last of them, which only means a lease runs out again or a copy
is checked again (found on the target and verified, not uploaded twice). A copy
never counts as verified before it was (DESIGN.md, invariant 4).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    String,
    Update,
    and_,
    bindparam,
    func,
    select,
    type_coerce,
    update,
)

from replicator.owners import is_gone
from vna.index import schema
from vna.index.dialect import native_insert
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
    interrupted: bool = False  # taken over from a worker that died: a partial upload may be left
    tried: bool = True  # copied or attempted before: the target may already hold it


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
    stmt = native_insert(conn, r)
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


def _claiming(which: ColumnElement[bool]) -> Update:
    """Lease the first `b_limit` copies matching `which` and return them, in one statement
    built once: WITH chosen AS MATERIALIZED (SELECT ... FOR UPDATE SKIP LOCKED LIMIT n)
    UPDATE ... WHERE id IN (SELECT id FROM chosen) RETURNING ...

    Materialized, the choice is made once. As a plain IN (subquery), PostgreSQL may join
    it as the inner side of a nested loop and run it again per row, each run skipping the
    rows just taken and taking n more: a claim of far more than n.
    """
    r = schema.replicas
    chosen = (
        select(r.c.id)
        .where(which)
        .order_by(r.c.next_attempt_at, r.c.id)
        .limit(bindparam("b_limit"))
        .with_for_update(skip_locked=True)
        .cte("chosen")
        .prefix_with("MATERIALIZED")
    )
    # Whether it was tried is read from plain columns: SQLite 3.40 evaluates IS [NOT] NULL
    # in RETURNING wrongly (a NOT NULL primary key makes it constant). The two times come
    # as one, unparsed on SQLite, as only whether either is set matters.
    stamped = type_coerce(func.coalesce(r.c.uploaded_at, r.c.verified_at), String)
    return (
        update(r)
        .where(r.c.id.in_(select(chosen.c.id)))
        .values(
            state="copying", claimed_by=bindparam("b_worker"), claimed_until=bindparam("b_until")
        )
        .returning(
            *(r.c.id, r.c.sop_uid, r.c.path, r.c.digest, r.c.size, r.c.attempts, r.c.last_error),
            stamped.label("stamped"),
        )
    )


_r = schema.replicas
# A dead worker's copies, whose lease ran out: a partial upload may be left of them.
_ORPHANED = _claiming(
    and_(
        _r.c.target == bindparam("b_target"),
        _r.c.state == "copying",
        _r.c.claimed_until < bindparam("b_moment"),
    )
)
_DUE = _claiming(
    and_(
        _r.c.target == bindparam("b_target"),
        _r.c.state.in_(("pending", "failed")),
        _r.c.next_attempt_at <= bindparam("b_moment"),
    )
)


def claim(engine: Engine, target: str, worker: str, limit: int, lease_seconds: float) -> list[Copy]:
    """Lease up to `limit` copies on `target`: a dead worker's first, then the oldest due;
    returned in id order (a series' copies together).

    Each statement is an index range on (target, state, ...), so an archive of millions
    of verified copies costs nothing to poll.
    """
    moment = now()
    params: dict[str, Any] = {
        "b_target": target,
        "b_moment": moment,
        "b_worker": worker,
        "b_until": moment + dt.timedelta(seconds=lease_seconds),
    }
    copies: list[Copy] = []
    with write_transaction(engine, durable=False) as conn:
        for stmt, interrupted in ((_ORPHANED, True), (_DUE, False)):
            if len(copies) >= limit:
                break
            rows = conn.execute(stmt, {**params, "b_limit": limit - len(copies)}).all()
            copies += (
                Copy(
                    row.id,
                    target,
                    row.sop_uid,
                    row.path,
                    row.digest,
                    row.size,
                    row.attempts,
                    interrupted=interrupted,
                    tried=bool(row.attempts or row.stamped or row.last_error),
                )
                for row in rows
            )
    copies.sort(key=lambda c: c.id)  # RETURNING has no order
    return copies


def renew(engine: Engine, target: str, worker: str, lease_seconds: float) -> None:
    """Extend the lease of every copy to `target` this worker holds. A copy slower than its
    lease (a large file under a bandwidth cap) would otherwise be taken over while it runs,
    by another worker or by this one: sent twice, its upload cleaned up under it."""
    r = schema.replicas
    with write_transaction(engine, durable=False) as conn:
        conn.execute(
            update(r)
            .where(r.c.target == target, r.c.state == "copying", r.c.claimed_by == worker)
            .values(claimed_until=now() + dt.timedelta(seconds=lease_seconds))
        )


@dataclass(frozen=True)
class Result:
    copy: Copy
    state: str  # verified | failed | skipped
    uploaded: bool = False
    error: str | None = None
    retry_in: float = 0.0


def _ending(*stamps: str) -> Update:
    """How a batch of copies ended, as one statement run once per copy (executemany):
    SQLAlchemy builds and compiles it once, not once per copy."""
    r = schema.replicas
    return (
        update(r)
        .where(
            r.c.id == bindparam("b_id"),
            r.c.digest == bindparam("b_digest"),
            r.c.claimed_by == bindparam("b_worker"),
        )
        .values(
            state=bindparam("b_state"),
            claimed_by=None,
            claimed_until=None,
            attempts=bindparam("b_attempts"),
            last_error=bindparam("b_error"),
            **{stamp: bindparam("b_moment") for stamp in stamps},
        )
    )


_UPLOADED = _ending("verified_at", "uploaded_at")
_PRESENT = _ending("verified_at")
_FAILED = _ending("next_attempt_at")


def record(engine: Engine, worker: str, results: list[Result]) -> None:
    """Write how copies ended; a copy re-queued meanwhile (new digest) is left alone."""
    if not results:
        return
    moment = now()
    batches: dict[Update, list[dict[str, Any]]] = {_UPLOADED: [], _PRESENT: [], _FAILED: []}
    for res in results:
        verified = res.state == "verified"
        stmt = (_UPLOADED if res.uploaded else _PRESENT) if verified else _FAILED
        batches[stmt].append(
            {
                "b_id": res.copy.id,
                "b_digest": res.copy.digest,
                "b_worker": worker,
                "b_state": res.state,
                "b_attempts": 0 if verified else res.copy.attempts + 1,
                "b_error": res.error,
                "b_moment": moment if verified else moment + dt.timedelta(seconds=res.retry_in),
            }
        )
    with write_transaction(engine, durable=False) as conn:
        for stmt, params in batches.items():
            if params:
                conn.execute(stmt, params)


def expire_gone(engine: Engine, target: str) -> dict[str, int]:
    """End the leases of the copies to `target` held by workers of this machine whose
    process is gone: the next claim takes them over (as interrupted), now, not once the
    lease ran out. Returns how many copies each such worker held."""
    r = schema.replicas
    holding = (r.c.target == target) & (r.c.state == "copying")
    with engine.connect() as conn:  # the few copies in flight, by the work index
        holders = conn.execute(select(r.c.claimed_by).where(holding).distinct()).scalars()
        gone = [w for w in holders if w is not None and is_gone(w)]
    if not gone:
        return {}
    ended = now() - dt.timedelta(seconds=1)
    taken: dict[str, int] = {}
    with write_transaction(engine, durable=False) as conn:
        for worker in gone:
            taken[worker] = conn.execute(
                update(r).where(holding, r.c.claimed_by == worker).values(claimed_until=ended)
            ).rowcount
    return taken


def release(engine: Engine, worker: str) -> None:
    """Give back every copy this worker still holds (a clean stop)."""
    r = schema.replicas
    with write_transaction(engine, durable=False) as conn:
        conn.execute(
            update(r)
            .where(r.c.claimed_by == worker, r.c.state == "copying")
            .values(state="pending", claimed_by=None, claimed_until=None)
        )
