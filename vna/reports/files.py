"""The folder of scheduled reports: dated files written atomically, old ones pruned.

A report is written under a temporary name and renamed, so the status page
never links a half-written file; names carry the date (and time, when several
are written a day), so a storage admin can compare months side by side.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from pathlib import Path

from vna.reports import render
from vna.reports.capacity import CapacityReport

_NAME = re.compile(r"^(?P<kind>[a-z]+)-(?P<stamp>\d{8}T\d{6}Z)\.(?P<ext>html|csv|json)$")


@dataclass(frozen=True)
class ReportFile:
    kind: str
    written: dt.datetime
    format: str
    path: Path

    @property
    def name(self) -> str:
        return self.path.name


def write(report: CapacityReport, folder: Path, when: dt.datetime, keep: int) -> list[Path]:
    """Write the report in every format; keep the newest `keep` of each format."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = when.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    written = []
    for ext, renderer in render.FORMATS.items():
        final = folder / f"capacity-{stamp}.{ext}"
        partial = folder / f".{final.name}.partial"
        with partial.open("w", encoding="utf-8") as fh:
            fh.write(renderer(report))
            fh.flush()
            os.fsync(fh.fileno())
        partial.replace(final)
        written.append(final)
    for ext in render.FORMATS:
        for old in [f for f in listing(folder) if f.format == ext][keep:]:
            old.path.unlink(missing_ok=True)
    return written


def listing(folder: Path) -> list[ReportFile]:
    """Reports in the folder, newest first; anything else there is ignored."""
    found = []
    try:
        entries = list(folder.iterdir())
    except FileNotFoundError:
        return []
    for path in entries:
        m = _NAME.fullmatch(path.name)
        if m:
            when = dt.datetime.strptime(m["stamp"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
            found.append(ReportFile(m["kind"], when, m["ext"], path))
    return sorted(found, key=lambda f: (f.written, f.format), reverse=True)


def find(folder: Path, name: str) -> Path | None:
    """The report called `name`, only if it is one (never a path outside the folder)."""
    if not _NAME.fullmatch(name):
        return None
    path = folder / name
    return path if path.is_file() else None
