"""One flush for a batch of files: syncfs(2), where the kernel reports what it failed to write.

An fsync per file has the disk flush once per file. The ingest writes a batch of
staged files without it and makes them durable with one syncfs of their file
system before any of them is named in the layout: one flush per batch (about a
fifth of ingest's time per file on the disk this was measured on). syncfs reports
write-back errors only since Linux 5.8 (before, it returned 0 even when a write
had failed), so on older kernels, and off Linux, each file is fsynced as before.

syncfs reports every write-back error on the file system since the descriptor it
is given last saw one, whoever's file it was: a batch is then not taken as
durable, and is retried. Each staged file's write-back is started as soon as it
is written (sync_file_range), so that syncfs finds most of a batch on disk.

Only local file systems known to report write-back errors through syncfs get it
(`BATCH_SYNC_FILE_SYSTEMS`); on others (NFS and SMB, whose errors come back per
file; overlayfs, which passed them up only in later kernels) every file is
fsynced.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

MINIMUM_KERNEL = (5, 8)
BATCH_SYNC_FILE_SYSTEMS = frozenset({"ext4", "xfs", "btrfs"})
SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _libc(name: str, *argtypes: type[ctypes._SimpleCData[Any]]) -> Callable[..., int] | None:
    """A libc function on Linux (calls release the GIL), else None. Looked up on first use,
    in the symbols the process already has, so importing this module costs nothing."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    call.argtypes = list(argtypes)
    call.restype = ctypes.c_int
    return call  # type: ignore[no-any-return]


def _kernel_reports_errors() -> bool:
    try:
        major, minor = (int(part) for part in platform.release().split("-")[0].split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= MINIMUM_KERNEL


def _syncfs() -> Callable[..., int] | None:
    return _libc("syncfs", ctypes.c_int) if _kernel_reports_errors() else None


def batch_sync_available(path: Path) -> bool:
    """Whether the files below `path` can be made durable a batch at a time."""
    return _syncfs() is not None and file_system_type(path) in BATCH_SYNC_FILE_SYSTEMS


def file_system_type(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> str | None:
    """The type of the file system `path` is on, from the mount that holds it (the longest
    mount point above it), or None where that cannot be told."""
    resolved = path.resolve()  # symlinks of the part that exists; the rest need not yet
    best: tuple[int, str] | None = None
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields, sep, rest = line.partition(" - ")
        parts = fields.split()
        if not sep or len(parts) < 5 or not rest:
            continue
        point = Path(parts[4].replace("\\040", " "))
        if (resolved == point or point in resolved.parents) and (
            best is None or len(point.parts) >= best[0]
        ):
            best = (len(point.parts), rest.split()[0])
    return best[1] if best else None


def syncfs(fd: int) -> None:
    """Flush the file system holding `fd`; OSError if anything on it failed to be written."""
    call = _syncfs()
    if call is None:
        raise OSError(errno.ENOSYS, "syncfs with write-back errors needs Linux 5.8 or later")
    if call(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def start_writeback(fd: int) -> None:
    """Have the kernel start writing `fd`'s dirty pages now, without waiting for them, so a
    later syncfs finds most of the batch on disk already. Best effort: a no-op elsewhere."""
    call = _libc("sync_file_range", ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    if call is not None:
        call(fd, 0, 0, SYNC_FILE_RANGE_WRITE)
