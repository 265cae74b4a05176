"""Making one copy: check tier 0, skip what the target already holds, upload, verify.

Nothing counts as replicated before it was verified (DESIGN.md, invariant 4).
Tier 0's bytes are checked against the index as they are read; then, with
`verify = "metadata"` (the default), the put's own answer proves the upload
(the store's MD5 of what it kept equals the MD5 of those bytes, or the file
system took every byte; see `Target.put`), and an upload whose answer proves
nothing (a multipart upload, a store that reports no MD5) is read back and
hashed. With `verify = "read-back"` every upload is read back: it costs a
download per copy, egress on cloud storage. A copy found already on the target
is checked by its size and the digest kept in its metadata (`metadata`, where
the backend keeps metadata) only if it was never tried: a listing named it (an
index restored from a backup meets the whole archive there, not to be
downloaded again). One tried before (failed, taken over from a dead worker,
or found wrong by reconciliation, whose metadata may well be right while the
bytes are not) is read back. Tier 0 is only ever read.

A copy is looked for on the target first only where it may already be there:
tried before, taken over from a worker that died, or named in its folder's
listing (`Presence`). Else it goes straight up.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from replicator.claims import Copy, Result
from replicator.presence import Presence
from replicator.throttle import Throttle, ThrottledReader
from vna import digest
from vna.layout import Layout
from vna.targets.faults import Kind, TargetError, VerificationFailed, backoff, classify
from vna.targets.target import SINGLE_PUT_MAX, Target


def copy_one(
    target: Target,
    presence: Presence,
    layout: Layout,
    job: Copy,
    throttle: Throttle,
    verify: str,
    backoff_cap: float,
) -> Result:
    """Make (or confirm) one copy; every failure comes back classified, never raised."""
    try:
        uploaded = _copy(target, presence, layout, job, throttle, verify)
        return Result(job, "verified", uploaded=uploaded)
    except Exception as exc:
        kind = classify(exc)
        message = str(exc) or type(exc).__name__
        if kind is Kind.SKIP:
            return Result(job, "skipped", error=message, retry_in=backoff_cap)
        wait = backoff(job.attempts, backoff_cap) if kind is Kind.RETRY else backoff_cap
        return Result(job, "failed", error=f"{kind.value}: {message}", retry_in=wait)


def _copy(
    target: Target, presence: Presence, layout: Layout, job: Copy, throttle: Throttle, verify: str
) -> bool:
    local = layout.path(job.path)
    look = job.tried or job.interrupted or presence.held(job.path)
    existing = target.stat(job.path) if look else None
    if existing is not None and existing.size == job.size and existing.digest in (job.digest, None):
        try:
            _verify(target, job, "read-back" if job.tried or job.interrupted else verify)
            target.confirm(job.path)
            return False  # already there and proven: nothing uploaded
        except VerificationFailed:
            pass
    proven = _upload(target, local, job, throttle)
    if not (proven and verify == "metadata"):
        try:
            _verify(target, job, "read-back")  # size and metadata alone prove no upload
        except BaseException:
            target.discard_partial(job.path)  # a copy not verified is never named later
            raise
    return True


def _upload(target: Target, local: Path, job: Copy, throttle: Throttle) -> bool:
    """Upload tier 0's bytes, after checking they are the bytes the index vouches for.

    Read with bare system calls (no buffered file object, which would stat the file
    twice and ask whether it is a terminal): each call lets the other copy threads in.
    """
    try:
        fd = os.open(local, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TargetError(f"tier 0 copy of {job.path} is missing", Kind.SKIP) from None
    try:
        if job.interrupted:
            target.discard_partial(job.path)
        if job.size <= SINGLE_PUT_MAX:
            data = _read(fd, job.size + 1)  # one byte more: a longer file shows
            if len(data) != job.size or digest.of_bytes(data) != job.digest:
                raise TargetError(f"tier 0 copy of {job.path} does not match its digest", Kind.SKIP)
            return target.put(
                job.path, local, job.digest, job.size, ThrottledReader(io.BytesIO(data), throttle)
            )
        with open(fd, "rb", closefd=False) as fh:
            if digest.of_stream(fh) != job.digest:
                raise TargetError(f"tier 0 copy of {job.path} does not match its digest", Kind.SKIP)
            fh.seek(0)
            # Read a second time to be sent: the store's answer proves what it took, and
            # what it took is proven to be the archived bytes only by hashing it on the way.
            sent = digest.HashingReader(fh)
            proven = target.put(
                job.path, local, job.digest, job.size, ThrottledReader(sent, throttle)
            )
            return proven and sent.count == job.size and sent.hexdigest() == job.digest
    finally:
        os.close(fd)


def _read(fd: int, size: int) -> bytes:
    """Up to `size` bytes from the start of the file, in one read as a rule."""
    data = os.read(fd, size)
    while len(data) < size and (more := os.read(fd, size - len(data))):
        data += more
    return data


def _verify(target: Target, job: Copy, verify: str) -> None:
    if verify == "metadata" and target.capabilities.metadata:
        info = target.stat(job.path)
        if info is None or info.size != job.size or info.digest != job.digest:
            raise VerificationFailed(f"{job.path}: size or digest on the target differ")
        return
    with target.open(job.path) as fh:
        got = digest.of_stream(fh)
    if got != job.digest:
        raise VerificationFailed(f"{job.path}: read back {got}, expected {job.digest}")
