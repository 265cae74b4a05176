"""The standard on-disk layout (tier 0, and the same relative paths on every replica).

    <root>/studies/<StudyInstanceUID>/series/<SeriesInstanceUID>/instances/<SOPInstanceUID>.dcm

A UID becomes part of a path only after `check_uid` accepted it, so nothing a
file or a request carries can name a path outside the layout. Files enter the
layout only by `place`, an atomic rename of a fully written, fsynced staging file
followed by an fsync of every folder the rename touched.
"""

from __future__ import annotations

import array
import fcntl
import functools
import os
import re
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vna.durability import batch_sync_available, syncfs
from vna.errors import InvalidInput

UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")
UID_MAX_LENGTH = 64
STUDIES = "studies"
STAGING = ".staging"
LOCK = "lock"
JOURNAL = "journal"  # the ingest's intent journal (vna.ingest.journal) in a staging folder
_SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class InvalidUID(InvalidInput):
    """A UID that may not become part of a path or a query."""

    reason = "invalid-uid"


def is_valid_uid(value: object) -> bool:
    """True for a UID of digits and dots, at most 64 characters (PS3.5 9.1)."""
    return (
        isinstance(value, str)
        and len(value) <= UID_MAX_LENGTH
        and UID_PATTERN.fullmatch(value) is not None
    )


def check_uid(value: object, what: str) -> str:
    """Return `value` if it may name a path component; else raise InvalidUID naming `what`."""
    if not is_valid_uid(value):
        shown = repr(value)[:80]
        raise InvalidUID(f"{what} {shown} is not a valid UID (digits and dots, at most 64)")
    assert isinstance(value, str)
    return value


def is_valid_source_name(name: str) -> bool:
    """Source names become folder names in quarantine, so they are kept plain."""
    return _SOURCE_NAME.fullmatch(name) is not None


def instance_relpath(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """The layout path of an instance, relative to the archive root, with '/' separators."""
    check_uid(study_uid, "StudyInstanceUID")
    check_uid(series_uid, "SeriesInstanceUID")
    check_uid(sop_uid, "SOPInstanceUID")
    return f"{STUDIES}/{study_uid}/series/{series_uid}/instances/{sop_uid}.dcm"


@dataclass(frozen=True)
class LayoutEntry:
    """A file found in the layout, with the UIDs its path claims."""

    relpath: str
    study_uid: str
    series_uid: str
    sop_uid: str


def parse_relpath(relpath: str) -> LayoutEntry | None:
    """The UIDs a layout path names, or None if the path is not a layout instance path."""
    parts = relpath.split("/")
    if len(parts) != 6 or parts[0] != STUDIES or parts[2] != "series" or parts[4] != "instances":
        return None
    if not parts[5].endswith(".dcm"):
        return None
    study, series, sop = parts[1], parts[3], parts[5][:-4]
    if not (is_valid_uid(study) and is_valid_uid(series) and is_valid_uid(sop)):
        return None
    return LayoutEntry(relpath, study, series, sop)


def fsync_dir(path: str | Path) -> None:
    """Make a folder's entries (a rename, a new child) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs_durable(path: Path, durable: bool = True) -> list[Path]:
    """Create `path` and its missing parents; return the parents whose entries changed."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    changed: list[Path] = []
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        changed.append(d.parent)
    if durable:
        for parent in changed:
            fsync_dir(parent)
    return changed


# From linux/fs.h: the inode flags ioctls, and the flag chattr +T sets.
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_TOPDIR_FL = 0x00020000


def spread_subfolders(folder: Path) -> bool:
    """Mark `folder` a top directory (chattr +T), so that ext4 places each folder made
    below it in a block group of its own choosing, as it does for /home. Best effort:
    False where the file system does not take the flag.

    Why staging wants it: ext4 without a journal skips, for every inode it allocates, each
    free inode of the block group that was deleted in the last minutes, scanning the group
    from its start. The ingest removes each drop file around the time it creates the staged
    file of the next; with both in one block group (a drop folder next to the archive),
    every new file scanned every drop file removed before it, and creating 1,000 files
    while removing 1,000 took 0.4 s of kernel time instead of 0.05 s. Files staged in a
    folder of another group are not slowed by the drop folder's removals.
    """
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        flags = array.array("i", [0])
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags)
        if not flags[0] & FS_TOPDIR_FL:
            flags[0] |= FS_TOPDIR_FL
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, flags)
        return True
    except OSError:  # not ext2/3/4 (ENOTTY, EOPNOTSUPP), or not ours to change (EPERM)
        return False
    finally:
        os.close(fd)


class Layout:
    """Tier 0 on a local (or mounted) filesystem."""

    def __init__(self, root: Path, durable: bool = True) -> None:
        self.root = root
        self._root = str(root)
        self.durable = durable
        self._staging: tuple[Path, int] | None = None
        self._claimed: dict[Path, int] = {}

    def path(self, relpath: str) -> Path:
        """Absolute path of a layout-relative path (which was built from checked UIDs)."""
        return self.root / relpath

    def staging_dir(self) -> Path:
        """This process's own staging folder, on the layout's filesystem, locked while alive.

        The lock (flock on a file inside) is what tells a later process that the
        owner is gone, robust against PID reuse.
        """
        if self._staging is None:
            base = self.root / STAGING
            base.mkdir(parents=True, exist_ok=True)
            spread_subfolders(base)
            d = base / f"{socket.gethostname()}-{os.getpid()}-{os.urandom(4).hex()}"
            d.mkdir(exist_ok=True)
            fd = os.open(d / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._staging = (d, fd)
        return self._staging[0]

    @functools.cached_property
    def batch_sync(self) -> bool:
        """Staged files are made durable a batch at a time (`sync_staged`), not one by one.
        Found out when first asked (only the ingest stages files), not for every Layout."""
        return self.durable and batch_sync_available(self.root)

    @property
    def fsync_each_staged(self) -> bool:
        """Whoever writes a staged file fsyncs it (no syncfs for the batch here)."""
        return self.durable and not self.batch_sync

    def sync_staged(self) -> None:
        """Make every file staged so far durable, before any of them is named in the layout.

        One syncfs of the layout's file system, through the staging lock's descriptor
        (open since start, so it sees every write-back error since); with `batch_sync`
        off, the staged files were fsynced one by one and there is nothing to do.

        A failure does not say whose write failed, and reporting it uses it up: it may
        have been a file of a later batch, staged already, which the next syncfs would
        then pass. So every staged file is discarded with the batch; results naming one
        fail at placement and are prepared again.
        """
        if not self.batch_sync:
            return
        folder = self.staging_dir()
        assert self._staging is not None
        try:
            syncfs(self._staging[1])
        except OSError:
            for staged in folder.glob("*.dcm"):
                staged.unlink(missing_ok=True)
            raise

    def claim_stale_staging(self) -> list[Path]:
        """Staging folders whose owner died; the caller replays and then `release_staging`s them."""
        base = self.root / STAGING
        claimed: list[Path] = []
        if not base.is_dir():
            return claimed
        own = self._staging[0] if self._staging else None
        for d in sorted(base.iterdir()):
            if d == own or not d.is_dir():
                continue
            try:
                fd = os.open(d / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._claimed[d] = fd
            claimed.append(d)
        return claimed

    def stale_staging_dirs(self) -> list[Path]:
        """Staging folders whose owner is gone, without claiming them (for `vna verify`)."""
        base = self.root / STAGING
        stale: list[Path] = []
        if not base.is_dir():
            return stale
        for d in sorted(base.iterdir()):
            if not d.is_dir() or (self._staging and d == self._staging[0]):
                continue
            try:
                fd = os.open(d / LOCK, os.O_RDONLY)
            except FileNotFoundError:
                stale.append(d)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                stale.append(d)
            except BlockingIOError:
                pass
            finally:
                os.close(fd)
        return stale

    def release_staging(self, d: Path) -> None:
        """Delete a claimed stale staging folder and everything in it."""
        for f in d.iterdir():
            if f.is_file():
                f.unlink()
        fd = self._claimed.pop(d, None)
        if fd is not None:
            os.close(fd)
        d.rmdir()

    def close(self) -> None:
        """Release this process's staging folder (it must be empty of work by then)."""
        if self._staging is not None:
            d, fd = self._staging
            self._staging = None
            for f in d.iterdir():
                f.unlink()
            os.close(fd)
            d.rmdir()

    def place(self, staged: str | Path, relpath: str) -> set[str]:
        """Rename a complete staged file into the layout; return folders to fsync.

        The rename is tried first and the folders made only when it finds them
        missing: most files go into a series folder that is there already, and a
        look for it (and the paths built for that) cost more than the rename.
        Plain strings, not Paths: this runs once per file archived.
        """
        dest = os.path.join(self._root, relpath)
        parent = os.path.dirname(dest)
        try:
            os.replace(staged, dest)
            return {parent}
        except FileNotFoundError:
            if not os.path.exists(staged):
                raise
        dirs = {str(d) for d in makedirs_durable(Path(parent), durable=False)}
        os.replace(staged, dest)
        dirs.add(parent)
        return dirs

    def sync_dirs(self, dirs: Iterable[str | Path]) -> None:
        """fsync every folder a batch of renames touched, deepest first."""
        if not self.durable:
            return
        unique = {os.path.normpath(d) for d in dirs}
        for d in sorted(unique, key=lambda p: p.count(os.sep), reverse=True):
            fsync_dir(d)

    def walk(self) -> Iterator[str]:
        """Every regular file below studies/, as a relative path, study by study, sorted."""
        studies = self.root / STUDIES
        if not studies.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(studies):
            dirnames.sort()
            rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            for name in sorted(filenames):
                yield f"{rel}/{name}"

    def study_dirs(self) -> list[str]:
        """Names of the study folders present, sorted."""
        studies = self.root / STUDIES
        if not studies.is_dir():
            return []
        return sorted(e.name for e in os.scandir(studies) if e.is_dir(follow_symlinks=False))

    def walk_study(self, study: str) -> Iterator[str]:
        """Every regular file below one study folder, as a relative path."""
        base = self.root / STUDIES / study
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            for name in sorted(filenames):
                yield f"{rel}/{name}"
