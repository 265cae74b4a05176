"""Taking quarantined files in again, after a site fixed what put them there.

A retried file goes through the same prepare and commit steps as a drop file
of its source; if it is archived its quarantine entry is released, otherwise
it stays where it is with the new reason.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine, select

from vna.index import schema
from vna.ingest.commit import Committer, Outcome, received_now
from vna.ingest.daemon import rules_for
from vna.ingest.prepare import Job, init_worker, prepare
from vna.layout import Layout
from vna.quarantine import Entry, QuarantineStore
from vna.settings import Settings


def held(
    engine: Engine, ids: Sequence[str] = (), source: str | None = None, reason: str | None = None
) -> list[Entry]:
    """Quarantine entries still held, filtered by id, source or reason."""
    q = schema.quarantine
    stmt = select(q).where(q.c.state == "held").order_by(q.c.at)
    if ids:
        stmt = stmt.where(q.c.id.in_(list(ids)))
    if source:
        stmt = stmt.where(q.c.source == source)
    if reason:
        stmt = stmt.where(q.c.reason == reason)
    with engine.connect() as conn:
        return [
            Entry(
                id=r.id,
                source=r.source,
                reason=r.reason,
                detail=r.detail,
                drop_path=r.drop_path,
                stored_path=r.stored_path,
                sop_uid=r.sop_uid,
                digest=r.digest,
                size=r.size,
                at=r.at.isoformat(),
            )
            for r in conn.execute(stmt)
        ]


def retry(settings: Settings, engine: Engine, entries: Sequence[Entry]) -> list[Outcome]:
    """Run each entry's file through ingest again; return what became of each."""
    layout = Layout(settings.archive.root, settings.archive.fsync)
    store = QuarantineStore(settings.archive.quarantine, settings.archive.fsync)
    committer = Committer(settings, engine, layout, store)
    committer.recover()
    init_worker()
    outcomes: list[Outcome] = []
    try:
        staging = str(layout.staging_dir())
        for entry in entries:
            try:
                src = settings.source(entry.source)
            except Exception:
                outcomes.append(
                    Outcome(
                        entry.source,
                        entry.drop_path,
                        "quarantined",
                        entry.sop_uid,
                        "unknown-source",
                        "the source is no longer configured",
                    )
                )
                continue
            job = Job(
                source=entry.source,
                path=str(store.stored_file(entry)),
                relpath=entry.drop_path,
                rules=rules_for(src),
                staging=staging,
                durable=layout.fsync_each_staged,
                received=received_now(),
                quarantine_id=entry.id,
            )
            outcomes.extend(committer.commit([prepare(job)]))
    finally:
        layout.close()
    return outcomes
