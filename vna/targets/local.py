"""A target that is a folder: local disk or a mounted NFS/SMB share.

Written like tier 0 itself: temp name in the destination folder, fsync, rename,
so a partial file is never visible under its real name; `settle` then fsyncs
each folder renamed into once, so the finished files survive a power cut (one
flush per folder per batch of copies, not per file). The digest travels in an extended
attribute where the filesystem keeps them (many NFS/SMB mounts do not: then
verification reads the file back).
"""

from __future__ import annotations

import errno
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from vna.layout import STUDIES, fsync_dir, makedirs_durable
from vna.targets.faults import Kind, TargetError, classify
from vna.targets.target import Capabilities, ObjectInfo, Readable

XATTR = "user.vna.xxh3_128"
CHUNK = 1 << 20


class LocalTarget:
    """`file:///path` targets."""

    def __init__(self, name: str, url: str, root: Path) -> None:
        self.name = name
        self.url = url
        self.root = root
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TargetError(f"target {name}: cannot create {root}: {exc}", classify(exc)) from exc
        self.capabilities = Capabilities(metadata=_xattrs_work(root), atomic_put=True)
        self._lock = threading.Lock()
        self._unsettled: set[Path] = set()  # folders renamed into since the last settle

    def _path(self, relpath: str) -> Path:
        return self.root / relpath

    def put(self, relpath: str, local: Path, digest: str, size: int, reader: Readable) -> bool:
        dest = self._path(relpath)
        try:
            makedirs_durable(dest.parent)
            tmp = dest.parent / f".{dest.name}.part-{uuid.uuid4().hex[:8]}"
            try:
                with tmp.open("wb") as out:
                    while chunk := reader.read(CHUNK):
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                if self.capabilities.metadata:
                    os.setxattr(tmp, XATTR, digest.encode())
                os.replace(tmp, dest)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            with self._lock:
                self._unsettled.add(dest.parent)
            return False  # the file system says nothing about the bytes: verified after
        except TargetError:
            raise
        except OSError as exc:
            raise TargetError(
                f"target {self.name}: writing {relpath}: {exc}", classify(exc)
            ) from exc

    def settle(self) -> None:
        with self._lock:
            folders, self._unsettled = self._unsettled, set()
        try:
            for folder in folders:
                fsync_dir(folder)
        except OSError as exc:
            raise TargetError(
                f"target {self.name}: fsync of {folder}: {exc}", classify(exc)
            ) from exc

    def discard_partial(self, relpath: str) -> None:
        """Temp files of killed uploads: looked for only then, as it lists the folder."""
        dest = self._path(relpath)
        try:
            for stale in dest.parent.glob(f".{dest.name}.part-*"):
                stale.unlink(missing_ok=True)
        except OSError as exc:
            raise TargetError(
                f"target {self.name}: cleaning up {relpath}: {exc}", classify(exc)
            ) from exc

    def stat(self, relpath: str) -> ObjectInfo | None:
        path = self._path(relpath)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TargetError(f"target {self.name}: stat {relpath}: {exc}", classify(exc)) from exc
        return ObjectInfo(relpath, st.st_size, self._digest_of(path))

    def _digest_of(self, path: Path) -> str | None:
        if not self.capabilities.metadata:
            return None
        try:
            return os.getxattr(path, XATTR).decode()
        except OSError:
            return None

    def open(self, relpath: str) -> BinaryIO:
        try:
            return self._path(relpath).open("rb")
        except FileNotFoundError:
            raise TargetError(f"target {self.name}: {relpath} is missing", Kind.SKIP) from None
        except OSError as exc:
            raise TargetError(f"target {self.name}: open {relpath}: {exc}", classify(exc)) from exc

    def read_range(self, relpath: str, start: int, end: int) -> bytes:
        with self.open(relpath) as fh:
            fh.seek(start)
            return fh.read(end - start)

    def delete(self, relpath: str) -> None:
        try:
            self._path(relpath).unlink(missing_ok=True)
        except OSError as exc:
            raise TargetError(
                f"target {self.name}: delete {relpath}: {exc}", classify(exc)
            ) from exc

    def names(self, folder: str) -> set[str]:
        try:
            with os.scandir(self._path(folder)) as entries:
                return {e.name for e in entries if not e.name.startswith(".")}
        except FileNotFoundError:
            return set()
        except OSError as exc:
            raise TargetError(f"target {self.name}: list {folder}: {exc}", classify(exc)) from exc

    def list(self, prefix: str = STUDIES) -> Iterator[ObjectInfo]:
        base = self.root / prefix
        if not base.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            for name in sorted(filenames):
                if name.startswith("."):
                    continue  # an interrupted upload's temp file, never a replica
                path = Path(dirpath) / name
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    continue
                yield ObjectInfo(f"{rel_dir}/{name}", size, self._digest_of(path))


def _xattrs_work(root: Path) -> bool:
    probe = root / f".xattr-probe-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"")
        os.setxattr(probe, XATTR, b"x")
        return os.getxattr(probe, XATTR) == b"x"
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.EPERM, errno.EACCES, errno.EOPNOTSUPP):
            raise
        return False
    finally:
        probe.unlink(missing_ok=True)
