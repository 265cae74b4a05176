"""`vna reindex`: rebuild the index from the layout alone.

The layout is the source of truth (DESIGN.md): every archived file carries its
UIDs, its attributes and, in the archive's private provenance block, the
source it came from, when, and the digest of what was received. Quarantine
rows are rebuilt from the `reason.json` beside each quarantined file.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, delete

from vna import digest, part10
from vna.index import schema
from vna.index.writer import IndexWriter, InstanceRecord, append_changes, insert_ignoring_conflicts
from vna.ingest.coerce import read_provenance
from vna.ingest.prepare import extract
from vna.layout import STUDIES, Layout, parse_relpath
from vna.quarantine import REASON_FILE, Entry, QuarantineStore

logger = logging.getLogger(__name__)
BATCH = 500


@dataclass
class ReindexReport:
    instances: int = 0
    quarantined: int = 0
    problems: list[str] = field(default_factory=list)


def reindex(
    engine: Engine,
    layout: Layout,
    quarantine: QuarantineStore,
    progress: Callable[[int], None] | None = None,
) -> ReindexReport:
    """Replace the catalogue tables with what the layout holds; keep history tables.

    `progress` is called after each file with the files read so far (indexed
    or skipped), the unit `count_files` counts in.
    """
    report = ReindexReport()
    writer = IndexWriter()
    with engine.begin() as conn:
        for table in (schema.instances, schema.series, schema.studies, schema.patients):
            conn.execute(delete(table))
    batch: list[InstanceRecord] = []
    for done, rel in enumerate(layout.walk(), start=1):
        record = _checked_record(layout, rel, report.problems)
        if record is not None:
            batch.append(record)
        if len(batch) >= BATCH:
            _flush(engine, writer, batch)
            report.instances += len(batch)
            batch = []
        if progress:
            progress(done)
    if batch:
        _flush(engine, writer, batch)
        report.instances += len(batch)
    report.quarantined = _reindex_quarantine(engine, quarantine)
    return report


def count_files(layout: Layout) -> int:
    """The files `reindex` will read, counted first so its progress has a total.

    A walk that only lists folders costs little beside reading and hashing
    every file, which is what a reindex spends its time on.
    """
    return sum(len(files) for _, _, files in os.walk(layout.root / STUDIES))


def _checked_record(layout: Layout, rel: str, problems: list[str]) -> InstanceRecord | None:
    """The file's index record, or None and a line in `problems`.

    A file that fails a check is reported and left where it is: the layout is
    the source of truth, so what to do with it is a person's decision.
    """
    entry = parse_relpath(rel)
    if entry is None:
        problems.append(f"{rel}: not a layout instance path, left alone")
        return None
    try:
        record = _record(layout.path(rel), rel)
    except part10.DicomFileError as exc:
        problems.append(f"{rel}: {exc.reason}: {exc}")
        return None
    claimed = (entry.study_uid, entry.series_uid, entry.sop_uid)
    actual = (record.attributes["study_uid"], record.attributes["series_uid"], record.sop_uid)
    if claimed != actual:
        problems.append(f"{rel}: the file's UIDs {actual} do not match its path")
        return None
    return record


def _record(path: Path, rel: str) -> InstanceRecord:
    header = part10.read_header(path)
    ds = header.dataset
    prov = read_provenance(ds)
    file_digest = digest.of_file(path)
    received = prov.received or dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
    return InstanceRecord(
        attributes=extract(ds),
        path=rel,
        size=header.size,
        digest=file_digest,
        content_digest=prov.content_digest or file_digest,
        transfer_syntax_uid=str(header.transfer_syntax),
        source=prov.source or "unknown",
        received_at=received,
    )


def _flush(engine: Engine, writer: IndexWriter, batch: list[InstanceRecord]) -> None:
    with engine.begin() as conn:
        changes = writer.add(conn, batch, {})
        append_changes(conn, changes)
    writer.commit_cache()


def _reindex_quarantine(engine: Engine, quarantine: QuarantineStore) -> int:
    rows = []
    if quarantine.root.is_dir():
        for reason_file in sorted(quarantine.root.glob(f"*/*/{REASON_FILE}")):
            try:
                with reason_file.open(encoding="utf-8") as fh:
                    rows.append(Entry(**json.load(fh)).to_row())
            except (ValueError, TypeError) as exc:
                logger.warning("unreadable quarantine reason %s: %s", reason_file, exc)
    with engine.begin() as conn:
        conn.execute(delete(schema.quarantine).where(schema.quarantine.c.state == "held"))
        for i in range(0, len(rows), BATCH):
            insert_ignoring_conflicts(conn, schema.quarantine, rows[i : i + BATCH], ["id"])
    return len(rows)
