"""Quarantine: bad input kept aside, never deleted, with a reason beside it.

    <quarantine>/<source>/<id>/<original file name>
    <quarantine>/<source>/<id>/reason.json

The id is derived from the source, the file's path in the drop folder and its
content, so quarantining the same file twice (after a crash, say) lands in the
same place. An entry is assembled under `.incoming/` and renamed into place
whole, so a half-written entry is never seen.
"""

from __future__ import annotations

import datetime as dt
import enum
import errno
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import xxhash

from vna.layout import fsync_dir, makedirs_durable

REASON_FILE = "reason.json"
INCOMING = ".incoming"


class Reason(enum.Enum):
    """Why a file is in quarantine. Values are written to disk and never change."""

    EMPTY_FILE = "empty-file"
    NOT_DICOM = "not-dicom"
    TRUNCATED = "truncated"
    UNREADABLE = "unreadable"
    DICOMDIR = "dicomdir"
    MISSING_UID = "missing-uid"
    INVALID_UID = "invalid-uid"
    COERCION_FAILED = "coercion-failed"
    DUPLICATE_CONFLICT = "duplicate-conflict"
    SUPERSEDED = "superseded"
    UNKNOWN_SOURCE = "unknown-source"


@dataclass(frozen=True)
class Entry:
    """One quarantined file, as written to reason.json and the index."""

    id: str
    source: str
    reason: str
    detail: str
    drop_path: str
    stored_path: str
    sop_uid: str | None
    digest: str
    size: int
    at: str

    def to_row(self) -> dict[str, object]:
        row: dict[str, object] = asdict(self)
        row["at"] = dt.datetime.fromisoformat(self.at)
        row["state"] = "held"
        return row


def entry_id(source: str, drop_relpath: str, digest: str) -> str:
    """Deterministic id: the same file from the same place always maps to one entry."""
    return xxhash.xxh3_128_hexdigest(f"{source}\0{drop_relpath}\0{digest}".encode())


class QuarantineStore:
    """The quarantine folder of one archive."""

    def __init__(self, root: Path, durable: bool = True) -> None:
        self.root = root
        self.durable = durable

    def entry_dir(self, source: str, eid: str) -> Path:
        return self.root / source / eid

    def put(
        self,
        source: str,
        file: Path,
        drop_relpath: str,
        reason: Reason,
        detail: str,
        digest: str,
        size: int,
        sop_uid: str | None = None,
    ) -> Entry:
        """Copy (hard-link where possible) `file` into quarantine with its reason.

        The caller removes the original only after the entry's index row committed.
        """
        eid = entry_id(source, drop_relpath, digest)
        final = self.entry_dir(source, eid)
        name = Path(drop_relpath).name or "file"
        if name == REASON_FILE:
            name = "_" + name
        entry = Entry(
            id=eid,
            source=source,
            reason=reason.value,
            detail=detail,
            drop_path=drop_relpath,
            stored_path=f"{source}/{eid}/{name}",
            sop_uid=sop_uid,
            digest=digest,
            size=size,
            at=dt.datetime.now(dt.UTC).isoformat(),
        )
        if final.is_dir() and (final / name).exists():
            self._write_reason(final, entry)
            return entry
        incoming = self.root / INCOMING / eid
        if incoming.exists():
            shutil.rmtree(incoming)
        makedirs_durable(incoming, self.durable)
        _link_or_copy(file, incoming / name, self.durable)
        self._write_reason(incoming, entry)
        makedirs_durable(final.parent, self.durable)
        if final.exists():
            shutil.rmtree(final)
        os.rename(incoming, final)
        if self.durable:
            fsync_dir(final.parent)
            fsync_dir(incoming.parent)
        return entry

    def update_reason(self, entry: Entry) -> None:
        """Rewrite the reason of an entry already in place (a retry that failed again)."""
        self._write_reason(self.entry_dir(entry.source, entry.id), entry)

    def _write_reason(self, folder: Path, entry: Entry) -> None:
        tmp = folder / (REASON_FILE + ".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(asdict(entry), fh, indent=2, ensure_ascii=False)
            fh.write("\n")
            if self.durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, folder / REASON_FILE)
        if self.durable:
            fsync_dir(folder)

    def read(self, source: str, eid: str) -> Entry:
        with (self.entry_dir(source, eid) / REASON_FILE).open(encoding="utf-8") as fh:
            return Entry(**json.load(fh))

    def stored_file(self, entry: Entry) -> Path:
        return self.root / entry.stored_path

    def release(self, entry: Entry) -> None:
        """Remove an entry whose file was archived after all."""
        self.release_dir(self.entry_dir(entry.source, entry.id))

    def release_dir(self, folder: Path) -> None:
        """Remove one entry folder (its index row is gone or never committed)."""
        if folder.exists():
            shutil.rmtree(folder)
            if self.durable:
                fsync_dir(folder.parent)

    def clean_incoming(self) -> None:
        """Drop half-assembled entries left by a crash (their originals are still in place)."""
        incoming = self.root / INCOMING
        if incoming.is_dir():
            for d in incoming.iterdir():
                shutil.rmtree(d, ignore_errors=True)


def _link_or_copy(src: Path, dest: Path, durable: bool) -> None:
    try:
        os.link(src, dest)
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
    shutil.copyfile(src, dest)
    if durable:
        with dest.open("rb") as fh:
            os.fsync(fh.fileno())
