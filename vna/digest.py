"""Content digests: xxh3-128, as 32 lowercase hex characters.

fsspec's `checksum()` is a token of metadata, not content; every digest the
archive trusts is computed here from the bytes themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import xxhash

CHUNK = 1 << 20


def new() -> xxhash.xxh3_128:
    """A fresh hasher, for code that streams bytes it also writes elsewhere."""
    return xxhash.xxh3_128()


def of_bytes(data: bytes | memoryview) -> str:
    """Digest of an in-memory buffer."""
    return xxhash.xxh3_128_hexdigest(data)


def of_stream(fh: BinaryIO) -> str:
    """Digest of everything left in an open binary stream."""
    h = xxhash.xxh3_128()
    while chunk := fh.read(CHUNK):
        h.update(chunk)
    return h.hexdigest()


class HashingReader:
    """A reader that hashes what it hands out: the digest of the bytes another party
    actually took (an upload), not of an earlier read of the same file."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self._hash = xxhash.xxh3_128()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self._hash.update(data)
        self.count += len(data)
        return data

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def of_file(path: Path) -> str:
    """Digest of a whole file."""
    with path.open("rb") as fh:
        return of_stream(fh)
