"""A replication target: one small interface, with declared capabilities.

The rest of the replicator sees only this; fsspec (and its wide API) stays
behind the one adapter in `vna.targets.objectstore`. Errors raised through
this interface are `TargetError`s already classified as retry, fatal or skip
(`vna.targets.faults`), so callers never parse a backend's exceptions.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

# Objects up to this size are checked and sent from memory in one piece.
SINGLE_PUT_MAX = 64 * 1024 * 1024


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do; decides how copies are verified and made atomic."""

    metadata: bool  # keeps user metadata (the digest travels with the object)
    atomic_put: bool  # a partial object is never visible (else: temp name, then rename)


@dataclass(frozen=True)
class ObjectInfo:
    """What a target says about one object."""

    path: str  # layout-relative
    size: int
    digest: str | None  # from object metadata, where the backend keeps it


class Readable(Protocol):
    """What `Target.put` reads from: a file, a buffer, or a throttled wrapper of either."""

    def read(self, n: int = -1, /) -> bytes: ...


class Target(Protocol):
    """One replication target (a local/NFS/SMB folder, a container, a bucket)."""

    name: str
    url: str
    capabilities: Capabilities

    def put(self, relpath: str, local: Path, digest: str, size: int, reader: Readable) -> bool:
        """Store `reader`'s bytes at `relpath`; visible only once complete (at the latest
        once `settle` returned, which is also when it is durable). True if the store's
        answer proves it kept exactly these bytes (with `digest` in the object's metadata):
        a checksum it computed over what it stored, equal to the one of what was sent."""

    def settle(self, relpaths: Collection[str]) -> None:
        """Make the objects at `relpaths`, put and verified (or confirmed), durable: a power
        cut cannot take them back. A target that names its files only once they are
        durable names them now; one not named here stays unnamed."""

    def confirm(self, relpath: str) -> None:
        """An object found already on the target is about to count as verified: have the
        next `settle` make it durable too."""

    def discard_partial(self, relpath: str) -> None:
        """Remove what an upload of `relpath` killed midway, or one that failed its
        verification, left behind, if anything."""

    def stat(self, relpath: str) -> ObjectInfo | None:
        """Size (and digest if kept) of an object, or None if there is none."""

    def open(self, relpath: str) -> BinaryIO:
        """Read an object (for verification and for serving a replica)."""

    def read_range(self, relpath: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of an object."""

    def delete(self, relpath: str) -> None:
        """Remove an object (only ever called with delete propagation on)."""

    def names(self, folder: str) -> set[str]:
        """Names of the objects directly in `folder` (empty if there is none)."""

    def list(self, prefix: str = "studies") -> Iterator[ObjectInfo]:
        """Every object below `prefix`, streamed (never the whole listing in memory)."""
