"""Finding drop files: full scans of a source's folder, and the settle rule.

A scan at start-up and a periodic rescan make sure nothing dropped while the
daemon was down, or missed by file-system events (NFS and SMB shares raise
none), is left behind. A file is taken only once the daemon has seen its size
and modification time unchanged for `settle_seconds`, by its own clock, so a
file still being written is never taken; the worker checks again that size and
mtime did not change while it read. The mtime alone is not judged against the
clock: on a share whose server's clock runs behind, a file being written would
look old at once, and one whose clock runs ahead would wait until the clocks
meet.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Candidate:
    """A drop file the daemon knows of and has not finished with."""

    source: str
    path: str
    relpath: str
    mtime: float
    size: int
    seen_at: float = 0.0  # monotonic time (size, mtime) were first seen as they are now
    not_before: float = 0.0  # monotonic time before which it is not tried again
    attempts: int = 0  # times a worker died with this file alone in the pool
    suspect: bool = False  # in flight when a worker died: tried again on its own

    def changed(self, size: int, mtime: float, now: float) -> bool:
        """A new look at the file; True (and its settle clock restarted at `now`) if it
        changed."""
        if (size, mtime) == (self.size, self.mtime):
            return False
        self.size, self.mtime, self.seen_at = size, mtime, now
        return True


def ignored(name: str, patterns: Sequence[str]) -> bool:
    """True when a file or folder name matches one of the ignore patterns."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def below(root: Path) -> str:
    """`root` as the prefix of the paths below it (the drop folders are normalized absolute
    paths, and so are the paths of their entries and events)."""
    return os.path.join(str(root), "")


def scan(
    source: str, root: Path, patterns: Sequence[str], start: Path | None = None
) -> Iterator[Candidate]:
    """Every file below `start` (default: the whole drop folder), skipping ignored names."""
    cut = len(below(root))
    stack = [start or root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            continue
        except PermissionError:
            continue
        for entry in entries:
            if ignored(entry.name, patterns):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    rel = entry.path[cut:].replace(os.sep, "/")
                    yield Candidate(source, entry.path, rel, st.st_mtime, st.st_size)
            except FileNotFoundError:
                continue
