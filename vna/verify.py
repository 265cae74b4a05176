"""`vna verify`: do layout, index and digests agree?

Walks study by study, so memory stays bounded by the largest study rather
than the archive: the study folders in the layout and the studies in the index
are merged as two sorted lists, and each study's files are compared with its
index rows.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, func, select

from vna import digest
from vna.index import schema
from vna.layout import JOURNAL, LOCK, STAGING, Layout, parse_relpath


@dataclass(frozen=True)
class Problem:
    """One disagreement, named so an admin knows what to look at."""

    # missing-file | orphan-file | stray-file | size-mismatch | digest-mismatch | unreadable
    # | stale-staging
    kind: str
    path: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind}: {self.path}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class Summary:
    files: int = 0
    rows: int = 0
    hashed: int = 0


def verify(
    engine: Engine, layout: Layout, digests: bool = True, summary: Summary | None = None
) -> Iterator[Problem]:
    """Yield every disagreement between layout and index."""
    summary = summary if summary is not None else Summary()
    yield from _staging_leftovers(layout)
    studies_t, series_t, inst = schema.studies, schema.series, schema.instances
    with engine.connect() as conn:
        indexed = [
            r[0]
            for r in conn.execute(select(studies_t.c.study_uid).order_by(studies_t.c.study_uid))
        ]
        on_disk = layout.study_dirs()
        for study in sorted(set(indexed) | set(on_disk)):
            rows = {
                r.path: r
                for r in conn.execute(
                    select(inst.c.path, inst.c.size, inst.c.digest)
                    .join(series_t, inst.c.series_pk == series_t.c.id)
                    .join(studies_t, series_t.c.study_pk == studies_t.c.id)
                    .where(studies_t.c.study_uid == study)
                )
            }
            summary.rows += len(rows)
            files = (
                list(layout.walk_study(study))
                if study in on_disk or Path(layout.root, "studies", study).is_dir()
                else []
            )
            summary.files += len(files)
            for rel in files:
                row = rows.pop(rel, None)
                if row is None:
                    kind = "orphan-file" if parse_relpath(rel) else "stray-file"
                    yield Problem(kind, rel, "in the layout, not in the index")
                    continue
                summary.hashed += digests
                problem = _check_file(layout, rel, row.size, row.digest if digests else None)
                if problem is not None:
                    yield problem
            for rel in sorted(rows):
                yield Problem("missing-file", rel, "in the index, not in the layout")


def _staging_leftovers(layout: Layout) -> Iterator[Problem]:
    """Files in staging folders of ingest processes that are gone (the next start cleans them)."""
    for d in layout.stale_staging_dirs():
        for f in sorted(d.iterdir()):
            if f.name == LOCK or (f.name == JOURNAL and f.stat().st_size == 0):
                continue
            yield Problem(
                "stale-staging", f"{STAGING}/{d.name}/{f.name}", "left by an interrupted ingest"
            )


@dataclass
class ShareResult:
    """What one nightly share of tier 0 covered, and where the next one starts."""

    checked: int
    total: int
    next_after: int  # the instance id the next share starts after (0: from the beginning)
    problems: list[Problem]  # the first `limit_problems`
    problem_count: int


def verify_share(
    engine: Engine,
    layout: Layout,
    after: int,
    share_of: int,
    limit_problems: int = 100,
    stop: threading.Event | None = None,
) -> ShareResult:
    """Re-hash the next 1/`share_of` of the archive's instances, in index order after `after`.

    Going round by instance id (not by date or study) means every instance is
    checked once per `share_of` runs however the archive grows, and a share
    that reaches the end carries on from the beginning.
    """
    inst = schema.instances
    with engine.connect() as conn:
        total = int(conn.execute(select(func.count()).select_from(inst)).scalar_one())
    quota = -(-total // share_of)  # ceiling: never fall behind
    checked, cursor = 0, after
    problems: list[Problem] = []
    count = 0
    wrapped = False
    while checked < quota and not (stop and stop.is_set()):
        with engine.connect() as conn:
            rows = conn.execute(
                select(inst.c.id, inst.c.path, inst.c.size, inst.c.digest)
                .where(inst.c.id > cursor)
                .order_by(inst.c.id)
                .limit(min(500, quota - checked))
            ).all()
        if not rows:
            if wrapped or cursor == 0:
                break
            cursor, wrapped = 0, True
            continue
        for row in rows:
            checked += 1
            cursor = row.id
            problem = _check_file(layout, row.path, row.size, row.digest)
            if problem is not None:
                count += 1
                if len(problems) < limit_problems:
                    problems.append(problem)
    return ShareResult(checked, total, cursor, problems, count)


def _check_file(layout: Layout, rel: str, size: int, expected: str | None) -> Problem | None:
    """Presence and size, and the digest unless `expected` is None (a fast check)."""
    path = layout.path(rel)
    try:
        actual_size = path.stat().st_size
    except FileNotFoundError:
        return Problem("missing-file", rel, "in the index, not in the layout")
    except OSError as exc:  # permissions, a bad sector: exactly what a check must report
        return Problem("unreadable", rel, exc.strerror or str(exc))
    if actual_size != size:
        return Problem("size-mismatch", rel, f"index {size} bytes, file {actual_size} bytes")
    if expected is None:
        return None
    try:
        actual = digest.of_file(path)
    except OSError as exc:
        return Problem("unreadable", rel, exc.strerror or str(exc))
    if actual != expected:
        return Problem("digest-mismatch", rel, f"index {expected}, file {actual}")
    return None
