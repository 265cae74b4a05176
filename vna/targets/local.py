"""A target that is a folder: local disk or a mounted NFS/SMB share.

A file is written without a name (O_TMPFILE), fsynced, then linked under its
name; where the file system cannot (NFS, SMB), under a temp name in the same
folder, then renamed. Either way a partial file is never visible under its real
name. `settle` then fsyncs each folder written to once, so the finished files
survive a power cut (one flush per folder per batch of copies, not per file).
The digest travels in an extended attribute where the file system keeps them
(many NFS/SMB mounts do not: then verification reads the file back).
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
        # Until the file system says otherwise; the name is given through /proc.
        self._unnamed = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")

    def _path(self, relpath: str) -> Path:
        return self.root / relpath

    def put(self, relpath: str, local: Path, digest: str, size: int, reader: Readable) -> bool:
        dest = self._path(relpath)
        try:
            makedirs_durable(dest.parent)
            if not (self._unnamed and self._put_unnamed(dest, digest, reader)):
                self._put_renamed(dest, digest, reader)
            with self._lock:
                self._unsettled.add(dest.parent)
            return False  # the file system says nothing about the bytes: verified after
        except TargetError:
            raise
        except OSError as exc:
            raise TargetError(
                f"target {self.name}: writing {relpath}: {exc}", classify(exc)
            ) from exc

    def _put_unnamed(self, dest: Path, digest: str, reader: Readable) -> bool:
        """Written as a file without a name (O_TMPFILE), named once complete: nothing partial
        is ever in the folder, even after a crash, and the folder is locked only to link
        the name, not while the file system finds the new file an inode (which copies into
        one folder would otherwise wait for one by one). False where unsupported."""
        folder = os.open(dest.parent, os.O_PATH | os.O_DIRECTORY)
        try:
            try:
                fd = os.open(".", os.O_TMPFILE | os.O_WRONLY, 0o666, dir_fd=folder)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
                self._unnamed = False  # NFS, SMB and others: temp names, then rename
                return False
            try:
                _write_all(fd, reader, digest if self.capabilities.metadata else None)
                # The /proc link of the descriptor, followed (AT_SYMLINK_FOLLOW), names the
                # file; a dst_dir_fd makes Python call linkat rather than link.
                unnamed = f"/proc/self/fd/{fd}"
                try:
                    os.link(unnamed, dest.name, dst_dir_fd=folder)
                except FileExistsError:  # a wrong copy is there: replace it in one step
                    tmp = _temp_name(dest)
                    os.link(unnamed, tmp.name, dst_dir_fd=folder)
                    _rename(tmp, dest)
            finally:
                os.close(fd)
        finally:
            os.close(folder)
        return True

    def _put_renamed(self, dest: Path, digest: str, reader: Readable) -> None:
        tmp = _temp_name(dest)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            try:
                _write_all(fd, reader, digest if self.capabilities.metadata else None)
            finally:
                os.close(fd)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _rename(tmp, dest)

    def settle(self) -> None:
        with self._lock:
            folders, self._unsettled = list(self._unsettled), set()
        for i, folder in enumerate(folders):
            try:
                fsync_dir(folder)
            except OSError as exc:
                with self._lock:  # still to be made durable, for these copies and the next
                    self._unsettled.update(folders[i:])
                raise TargetError(
                    f"target {self.name}: fsync of {folder}: {exc}", classify(exc)
                ) from exc

    def confirm(self, relpath: str) -> None:
        """Found already there (a copy whose folder fsync failed, or whose worker died
        before it): its name is made durable by the next `settle` like a new one's."""
        with self._lock:
            self._unsettled.add(self._path(relpath).parent)

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


def _temp_name(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.part-{uuid.uuid4().hex[:8]}"


def _rename(tmp: Path, dest: Path) -> None:
    try:
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_all(fd: int, reader: Readable, digest: str | None) -> None:
    """The bytes on disk before the file gets its name (else a power cut could leave a
    complete-looking name with missing content), with the digest beside them."""
    while chunk := reader.read(CHUNK):
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]
    os.fsync(fd)
    if digest is not None:
        os.setxattr(fd, XATTR, digest.encode())


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
