"""A target that is a folder: local disk or a mounted NFS/SMB share.

A file is written without a name (O_TMPFILE) and named only once its bytes are
on disk; where the file system cannot (NFS, SMB), under a temp name in the same
folder, fsynced, then renamed. Either way a partial file is never visible under
its real name. The digest travels in an extended attribute where the file
system keeps them (many NFS/SMB mounts do not: then verification reads the
file back).

Durability a batch at a time. On the local file systems whose syncfs reports
write-back errors (`vna.durability`), an unnamed file stays open, its write-back
started at once, until the copy is verified and `settle` is given its path: one
syncfs for the batch, then each file is linked under its name, then each folder
is fsynced once. No copy thread waits for the disk, and a copy that is not yet
durable, or not verified, has no name (a crash or a power cut leaves nothing
behind but free space). Elsewhere, and past `MAX_UNNAMED` files waiting, each
file is fsynced and named in its copy thread, and `settle` fsyncs the folders.

A copy is a handful of system calls, each of which lets go of the interpreter
lock while other copy threads wait for it; so none is made twice: the folder
is created only when opening the file in it fails, and a put that wrote every
byte, with the digest beside them, proves the copy without a stat after it.
"""

from __future__ import annotations

import errno
import itertools
import os
import threading
import uuid
import weakref
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from vna.durability import batch_sync_available, start_writeback, syncfs
from vna.layout import STUDIES, fsync_dir, makedirs_durable
from vna.targets.faults import Kind, TargetError, classify
from vna.targets.target import Capabilities, ObjectInfo, Readable

XATTR = "user.vna.xxh3_128"
CHUNK = 1 << 20
MAX_UNNAMED = 256  # open files waiting for their batch's flush; past this, fsynced one by one


@dataclass(frozen=True)
class _Unnamed:
    """A copy written but not yet named: its open descriptor, and when it was opened
    (syncfs on the earliest-opened descriptor reports every write-back error since)."""

    fd: int
    opened: int


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
        self._unsettled: set[Path] = set()  # folders named into since the last settle
        # Until the file system says otherwise; the name is given through /proc.
        self._unnamed = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")
        # Written, unnamed, open: named by the settle given their paths, after one syncfs.
        self._pending: dict[Path, _Unnamed] = {}
        self._opened = itertools.count()
        self._batch: bool | None = None  # decided by the first put: readers never need it
        weakref.finalize(self, _close_all, self._pending)

    def _batch_sync(self) -> bool:
        with self._lock:
            if self._batch is None:
                self._batch = batch_sync_available(self.root)
            return self._batch

    def _path(self, relpath: str) -> Path:
        return self.root / relpath

    def put(self, relpath: str, local: Path, digest: str, size: int, reader: Readable) -> bool:
        dest = self._path(relpath)
        try:
            written = None
            if self._unnamed:
                written = self._put_unnamed(dest, digest, reader)
            if written is None:
                written = self._put_renamed(dest, digest, reader)
            # Every byte taken (and flushed, or to be flushed before it is named), with the
            # digest beside them: the file system's answer proves the copy as a stat would.
            return written == size and self.capabilities.metadata
        except TargetError:
            raise
        except OSError as exc:
            raise TargetError(
                f"target {self.name}: writing {relpath}: {exc}", classify(exc)
            ) from exc

    def _put_unnamed(self, dest: Path, digest: str, reader: Readable) -> int | None:
        """Written as a file without a name (O_TMPFILE): nothing partial is ever in the
        folder, even after a crash, and the folder is locked only to link the name, not
        while the file system finds the new file an inode (which copies into one folder
        would otherwise wait for one by one). The bytes written, or None where the file
        system cannot."""
        try:
            fd = _open_in(dest.parent, ".", os.O_TMPFILE | os.O_WRONLY)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            self._unnamed = False  # NFS, SMB and others: temp names, then rename
            return None
        opened = next(self._opened)
        try:
            batch = self._batch_sync()
            written = _write_all(
                fd, reader, digest if self.capabilities.metadata else None, flush=not batch
            )
            if batch:
                start_writeback(fd)
                with self._lock:
                    waiting = len(self._pending) < MAX_UNNAMED
                    stale = self._pending.pop(dest, None) if waiting else None
                    if waiting:
                        self._pending[dest] = _Unnamed(fd, opened)
                if stale is not None:
                    os.close(stale.fd)
                if waiting:
                    return written
                os.fsync(fd)  # too many wait for their batch: this one is made durable now
            _link(fd, dest)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        with self._lock:
            self._unsettled.add(dest.parent)
        return written

    def _put_renamed(self, dest: Path, digest: str, reader: Readable) -> int:
        tmp = _temp_name(dest)
        fd = _open_in(dest.parent, tmp.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            try:
                written = _write_all(fd, reader, digest if self.capabilities.metadata else None)
            finally:
                os.close(fd)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _rename(tmp, dest)
        with self._lock:
            self._unsettled.add(dest.parent)
        return written

    def settle(self, relpaths: Collection[str]) -> None:
        with self._lock:
            batch = {
                dest: self._pending.pop(dest)
                for dest in map(self._path, relpaths)
                if dest in self._pending
            }
        if batch:
            self._name(batch)
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

    def _name(self, batch: dict[Path, _Unnamed]) -> None:
        """One syncfs per file system for the batch, then its names. If a flush failed, no
        file of the batch is named: they vanish as they are closed, and their copies are
        tried again. Each syncfs is given the batch's earliest-opened file there, so it
        reports any write-back error since the first of them was opened, even one another
        batch's flush was told of already."""
        try:
            earliest: dict[int, _Unnamed] = {}
            for unnamed in batch.values():
                device = os.fstat(unnamed.fd).st_dev
                if device not in earliest or unnamed.opened < earliest[device].opened:
                    earliest[device] = unnamed
            for unnamed in earliest.values():
                syncfs(unnamed.fd)
            for dest, unnamed in batch.items():
                _link(unnamed.fd, dest)
                with self._lock:
                    self._unsettled.add(dest.parent)
        except OSError as exc:
            raise TargetError(
                f"target {self.name}: making {len(batch)} copies durable: {exc}", classify(exc)
            ) from exc
        finally:
            for unnamed in batch.values():
                os.close(unnamed.fd)

    def confirm(self, relpath: str) -> None:
        """Found already there (a copy whose folder fsync failed, or whose worker died
        before it): its name is made durable by the next `settle` like a new one's."""
        with self._lock:
            self._unsettled.add(self._path(relpath).parent)

    def discard_partial(self, relpath: str) -> None:
        """A copy that failed after its put: its unnamed file, if it waits to be named, is
        dropped. Temp files of killed uploads (NFS, SMB) are looked for only for copies
        taken over from a dead worker, as it lists the folder."""
        dest = self._path(relpath)
        with self._lock:
            unnamed = self._pending.pop(dest, None)
        if unnamed is not None:
            os.close(unnamed.fd)
        try:
            for stale in dest.parent.glob(f".{dest.name}.part-*"):
                stale.unlink(missing_ok=True)
        except OSError as exc:
            raise TargetError(
                f"target {self.name}: cleaning up {relpath}: {exc}", classify(exc)
            ) from exc

    def _reopen_pending(self, path: Path) -> int | None:
        """A new descriptor (own offset, read only) of a file written but not yet named."""
        with self._lock:
            unnamed = self._pending.get(path)
            if unnamed is None:
                return None
            return os.open(str(unnamed.fd), os.O_RDONLY | os.O_CLOEXEC, dir_fd=_proc_fds())

    def stat(self, relpath: str) -> ObjectInfo | None:
        path = self._path(relpath)
        try:
            fd = self._reopen_pending(path)
            if fd is not None:  # written, verified before it is named
                try:
                    return ObjectInfo(relpath, os.fstat(fd).st_size, self._digest_of(fd))
                finally:
                    os.close(fd)
            st = path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TargetError(f"target {self.name}: stat {relpath}: {exc}", classify(exc)) from exc
        return ObjectInfo(relpath, st.st_size, self._digest_of(path))

    def _digest_of(self, path: Path | int) -> str | None:
        if not self.capabilities.metadata:
            return None
        try:
            return os.getxattr(path, XATTR).decode()
        except OSError:
            return None

    def open(self, relpath: str) -> BinaryIO:
        path = self._path(relpath)
        try:
            fd = self._reopen_pending(path)  # read back before it is named
            return os.fdopen(fd, "rb") if fd is not None else path.open("rb")
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


_proc: int | None = None  # this process's /proc/self/fd, opened
_proc_lock = threading.Lock()


def _proc_fds() -> int:
    """This process's /proc/self/fd, opened once."""
    global _proc
    with _proc_lock:
        if _proc is None:
            _proc = os.open("/proc/self/fd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        return _proc


def _forget_proc() -> None:
    """In a forked child: the folder opened names the parent's descriptors."""
    global _proc, _proc_lock
    if _proc is not None:
        os.close(_proc)
    _proc, _proc_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_proc)


def _close_all(pending: dict[Path, _Unnamed]) -> None:
    for unnamed in pending.values():
        os.close(unnamed.fd)


def _link(fd: int, dest: Path) -> None:
    """Name an unnamed file: its /proc link, followed (AT_SYMLINK_FOLLOW, which a
    src_dir_fd makes Python pass to linkat)."""
    fds = _proc_fds()
    try:
        os.link(str(fd), dest, src_dir_fd=fds)
    except FileExistsError:  # a wrong copy is there: replace it in one step
        tmp = _temp_name(dest)
        os.link(str(fd), tmp, src_dir_fd=fds)
        _rename(tmp, dest)


def _open_in(folder: Path, name: str, flags: int) -> int:
    """Open `name` in `folder`, creating the folder (durably) only if it is missing."""
    path = folder / name
    try:
        return os.open(path, flags | os.O_CLOEXEC, 0o666)
    except FileNotFoundError:
        makedirs_durable(folder)
        return os.open(path, flags | os.O_CLOEXEC, 0o666)


def _write_all(fd: int, reader: Readable, digest: str | None, flush: bool = True) -> int:
    """The bytes, with the digest beside them, and (`flush`) on disk before the file gets
    its name: else a power cut could leave a complete-looking name with missing content."""
    written = 0
    while chunk := reader.read(CHUNK):
        view = memoryview(chunk)
        while view:
            n = os.write(fd, view)
            written += n
            view = view[n:]
    if digest is not None:
        os.setxattr(fd, XATTR, digest.encode())
    if flush:
        os.fsync(fd)
    return written


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
