"""Committing a batch of prepared files: the one place that changes layout and index.

Order is what makes a crash harmless (see DESIGN.md, invariants 1 and 2):
  1. decide each file against the index: new, duplicate, conflict;
  2. quarantine entries (and superseded versions) are written whole;
  3. the journal of intended layout paths is written;
  4. the staged files and the journal are made durable (one syncfs for the
     batch where the kernel reports write-back errors through it; else the
     workers fsynced each file and the journal is fdatasynced), then the files
     are renamed into the layout, folders fsynced;
  5. index rows, change-feed rows, duplicate and quarantine rows commit in
     one transaction;
  6. only then are the drop files removed (or moved).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, update
from sqlalchemy.exc import SQLAlchemyError

from vna import digest
from vna.errors import TargetUnavailable
from vna.index import schema
from vna.index.engine import write_transaction
from vna.index.writer import (
    Existing,
    IndexWriter,
    InstanceRecord,
    append_changes,
    insert_ignoring_conflicts,
    lookup,
)
from vna.ingest import journal
from vna.ingest.prepare import Job, Prepared, Rejected, Result, Skipped
from vna.layout import Layout, makedirs_durable
from vna.quarantine import Entry, QuarantineStore, Reason
from vna.settings import Settings

logger = logging.getLogger("vna.ingest")


@dataclass(frozen=True)
class Outcome:
    """What became of one input file; one log line each."""

    source: str
    file: str
    outcome: str  # archived | replaced | duplicate | quarantined | deferred | vanished
    sop_uid: str | None = None
    reason: str | None = None
    detail: str | None = None
    study_uid: str | None = None
    path: str = ""  # absolute path of the input file

    def log(self) -> None:
        parts = [f"{self.outcome:<11}", f"source={self.source}", f"file={self.file}"]
        if self.sop_uid:
            parts.append(f"sop={self.sop_uid}")
        if self.study_uid:
            parts.append(f"study={self.study_uid}")
        if self.reason:
            parts.append(f"reason={self.reason}")
        if self.detail:
            parts.append(f"detail={self.detail!r}")
        level = logging.WARNING if self.outcome == "quarantined" else logging.INFO
        logger.log(level, " ".join(parts))


@dataclass
class _Batch:
    records: list[InstanceRecord]
    placements: list[tuple[Prepared, str]]
    replacing: dict[str, Existing]
    intents: list[journal.Intent]
    duplicates: list[dict[str, Any]]
    quarantined: list[tuple[Result, Entry]]
    released: list[Entry]
    finished: list[tuple[Result, str]]  # results whose input is done with, and their outcome
    outcomes: list[Outcome]


class Committer:
    """Owns the layout, the quarantine and the index writer of one ingest process."""

    def __init__(
        self, settings: Settings, engine: Engine, layout: Layout, quarantine: QuarantineStore
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.layout = layout
        self.quarantine = quarantine
        self.writer = IndexWriter()

    def recover(self) -> None:
        """Finish or roll back whatever a crashed run left: journals, staging, quarantine."""
        self.quarantine.clean_incoming()
        own = self.layout.staging_dir()
        journal.replay(own, self.engine, self.layout, self.quarantine)
        journal.prepare_file(own, self.settings.archive.fsync)
        for stale in self.layout.claim_stale_staging():
            journal.replay(stale, self.engine, self.layout, self.quarantine)
            self.layout.release_staging(stale)
        for leftover in own.iterdir():
            if leftover.name.endswith(".dcm"):
                leftover.unlink()

    def commit(self, results: Sequence[Result]) -> list[Outcome]:
        """Carry a batch of results into layout and index; see the module docstring."""
        batch = self._plan(results)
        staging = self.layout.staging_dir()
        durable = self.settings.archive.fsync
        if batch.intents:
            # The batch's syncfs, before the first rename, makes the journal durable too.
            covered = bool(batch.placements) and self.layout.batch_sync
            journal.write(staging, batch.intents, durable and not covered)
        dirs: set[str] = set()
        try:
            if batch.placements:
                self.layout.sync_staged()
            for prepared, relpath in batch.placements:
                dirs |= self.layout.place(prepared.staged, relpath)
            self.layout.sync_dirs(dirs)
            self._write_index(batch)
        except (SQLAlchemyError, OSError) as exc:
            self.writer.forget()
            for prepared, _ in batch.placements:
                prepared.job.discard_staged()
            journal.replay(staging, self.engine, self.layout, self.quarantine)
            raise TargetUnavailable(f"batch not committed, will retry: {exc}") from exc
        self.writer.commit_cache()
        journal.clear(staging)
        for entry in batch.released:
            self.quarantine.release(entry)
        for result, outcome in batch.finished:
            self._finish_input(result, outcome)
        return batch.outcomes

    def _plan(self, results: Sequence[Result]) -> _Batch:
        b = _Batch([], [], {}, [], [], [], [], [], [])
        prepared = [r for r in results if isinstance(r, Prepared)]
        with self.engine.connect() as conn:
            existing = lookup(conn, (p.record.sop_uid for p in prepared))
        in_batch: dict[str, Prepared] = {}
        for result in results:
            try:
                self._plan_one(b, result, existing, in_batch)
            except OSError as exc:
                if isinstance(result, Prepared):
                    result.job.discard_staged()
                b.outcomes.append(_outcome(result.job, "deferred", detail=str(exc)))
        return b

    def _plan_one(
        self,
        b: _Batch,
        result: Result,
        existing: dict[str, Existing],
        in_batch: dict[str, Prepared],
    ) -> None:
        """Decide one result: archive, duplicate, quarantine, replace or defer."""
        job = result.job
        if isinstance(result, Skipped):
            kind = "vanished" if result.vanished else "deferred"
            b.outcomes.append(_outcome(job, kind, detail=result.why))
            return
        if isinstance(result, Rejected):
            self._quarantine(
                b, result, result.reason, result.detail, result.digest, result.size, result.sop_uid
            )
            return
        rec = result.record
        sop = rec.sop_uid
        study = rec.attributes["study_uid"]
        earlier = in_batch.get(sop)
        prior = existing.get(sop)
        if earlier is not None and earlier.record.content_digest != rec.content_digest:
            # Two versions in one batch: decide this one against the index next batch.
            result.job.discard_staged()
            b.outcomes.append(
                _outcome(job, "deferred", sop, detail="another version in this batch")
            )
            return
        same = earlier is not None or (
            prior is not None
            and (prior.content_digest == rec.content_digest or prior.digest == rec.digest)
        )
        if same:
            result.job.discard_staged()
            first = earlier.record.digest if earlier else prior.digest if prior else rec.digest
            b.duplicates.append(
                dict(
                    source=job.source,
                    drop_path=job.relpath,
                    sop_uid=sop,
                    digest=first,
                    at=rec.received_at,
                )
            )
            b.finished.append((result, "duplicate"))
            b.outcomes.append(_outcome(job, "duplicate", sop, study_uid=study))
            return
        if prior is None:
            in_batch[sop] = result
            b.records.append(rec)
            b.placements.append((result, rec.path))
            b.intents.append(journal.Intent(rec.path, "created"))
            b.finished.append((result, "archived"))
            b.outcomes.append(_outcome(job, "archived", sop, study_uid=study))
            return
        if self._policy(job.source) == "quarantine":
            result.job.discard_staged()
            detail = (
                f"SOP Instance UID {sop} is archived already with different content "
                f"(archived digest {prior.digest} from source {prior.source})"
            )
            in_digest, in_size = _digest_and_size(Path(job.path))
            self._quarantine(b, result, Reason.DUPLICATE_CONFLICT, detail, in_digest, in_size, sop)
            return
        # Replace: the archived version goes to quarantine first, never deleted.
        old_entry = self.quarantine.put(
            prior.source,
            self.layout.path(prior.path),
            prior.path,
            Reason.SUPERSEDED,
            f"replaced by a newer version from source {job.source} ({job.relpath})",
            prior.digest,
            prior.size,
            sop,
        )
        b.quarantined.append((result, old_entry))
        in_batch[sop] = result
        b.replacing[sop] = prior
        b.records.append(rec)
        b.placements.append((result, rec.path))
        b.intents.append(
            journal.Intent(rec.path, "replaced", prior.digest, old_entry.source, old_entry.id)
        )
        b.finished.append((result, "replaced"))
        b.outcomes.append(_outcome(job, "replaced", sop, study_uid=study))

    def _quarantine(
        self,
        b: _Batch,
        result: Result,
        reason: Reason,
        detail: str,
        file_digest: str,
        size: int,
        sop: str | None,
    ) -> None:
        job = result.job
        if job.quarantine_id is not None:
            # A retry that failed again: the entry stays where it is, with the new reason.
            entry = self.quarantine.read(job.source, job.quarantine_id)
            entry = Entry(**{**entry.__dict__, "reason": reason.value, "detail": detail})
            self.quarantine.update_reason(entry)
        else:
            entry = self.quarantine.put(
                job.source, Path(job.path), job.relpath, reason, detail, file_digest, size, sop
            )
            b.finished.append((result, "quarantined"))
        b.quarantined.append((result, entry))
        b.outcomes.append(_outcome(job, "quarantined", sop, reason.value, detail))

    def _policy(self, source: str) -> str:
        for src in self.settings.sources:
            if src.name == source and src.duplicate_policy:
                return src.duplicate_policy
        return self.settings.ingest.duplicate_policy

    def _write_index(self, b: _Batch) -> None:
        with write_transaction(self.engine) as conn:
            changes = self.writer.add(conn, b.records, b.replacing) if b.records else []
            append_changes(conn, changes)
            if b.duplicates:
                conn.execute(schema.duplicates.insert(), b.duplicates)
            rows = [entry.to_row() for _, entry in b.quarantined]
            if rows:
                ids = [r["id"] for r in rows]
                q = schema.quarantine
                conn.execute(q.delete().where(q.c.id.in_(ids)))
                insert_ignoring_conflicts(conn, q, rows, ["id"])
            for result, outcome in b.finished:
                qid = result.job.quarantine_id
                if qid is not None and outcome != "quarantined":
                    conn.execute(
                        update(schema.quarantine)
                        .where(schema.quarantine.c.id == qid)
                        .values(state="released")
                    )
                    b.released.append(self.quarantine.read(result.job.source, qid))

    def _finish_input(self, result: Result, outcome: str) -> None:
        """The input's fate is durable: remove it from the drop folder (or move it aside)."""
        job = result.job
        if job.quarantine_id is not None:
            return  # a retried quarantine file: its entry is released (or kept) above
        path = job.path  # a plain string: this runs once per file taken in
        if isinstance(result, Prepared):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return
            if (st.st_size, st.st_mtime_ns) != result.stat:
                logger.warning(
                    "kept    source=%s file=%s: rewritten since it was read; taking it again",
                    job.source,
                    job.relpath,
                )
                return
        ingest = self.settings.ingest
        try:
            if ingest.after == "move" and outcome != "quarantined" and ingest.processed is not None:
                dest = ingest.processed / job.source / job.relpath
                makedirs_durable(dest.parent, self.settings.archive.fsync)
                shutil.move(path, dest)
            else:
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.error("cannot remove drop file %s after archiving it: %s", path, exc)


def _outcome(
    job: Job,
    outcome: str,
    sop_uid: str | None = None,
    reason: str | None = None,
    detail: str | None = None,
    study_uid: str | None = None,
) -> Outcome:
    return Outcome(job.source, job.relpath, outcome, sop_uid, reason, detail, study_uid, job.path)


def _digest_and_size(path: Path) -> tuple[str, int]:
    with path.open("rb") as fh:
        return digest.of_stream(fh), os.fstat(fh.fileno()).st_size


def received_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
