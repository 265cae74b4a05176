"""Every target error classified, in one place: retry, fatal or skip.

- retry: the target is down, throttling (HTTP 429/503), or timed out; back off
  with jitter and try again; nothing is lost, the row stays in the backlog.
- fatal: the target refuses us (credentials, permissions, a missing container);
  retrying soon will not help; the copy waits for the longest back-off and the
  error is shown in `vna replicate status`.
- skip: this one copy cannot be made (the local file is gone from tier 0);
  it is recorded and not retried until reconciliation looks again.
"""

from __future__ import annotations

import enum
import errno
import random

from vna.errors import TargetUnavailable


class Kind(enum.Enum):
    RETRY = "retry"
    FATAL = "fatal"
    SKIP = "skip"


class TargetError(TargetUnavailable):
    """A target operation failed; `kind` says what to do about it."""

    def __init__(self, message: str, kind: Kind) -> None:
        super().__init__(message)
        self.kind = kind


class VerificationFailed(TargetError):
    """The copy on the target does not have the bytes it should; copy again."""

    def __init__(self, message: str) -> None:
        super().__init__(message, Kind.RETRY)


_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
_FATAL_STATUS = {400, 401, 403, 404, 405, 409, 412}


def classify(exc: BaseException) -> Kind:
    """Decide what an exception from a backend means for the copy that raised it."""
    if isinstance(exc, TargetError):
        return exc.kind
    status = _status_of(exc)
    if status in _RETRY_STATUS:
        return Kind.RETRY
    if status in _FATAL_STATUS:
        return Kind.FATAL
    if isinstance(exc, PermissionError):
        return Kind.FATAL
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return Kind.FATAL
    # Connection refused/reset, timeouts, DNS, anything else: assume transient.
    return Kind.RETRY


def _status_of(exc: BaseException) -> int | None:
    """HTTP status from the exceptions of azure-core, botocore and friends, if any."""
    for attr in ("status_code", "status"):
        value = getattr(exc, attr, None)
        if isinstance(value, int):
            return value
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        meta = response.get("ResponseMetadata", {})
        code = meta.get("HTTPStatusCode")
        if isinstance(code, int):
            return code
    cause = exc.__cause__ or exc.__context__
    if cause is not None and cause is not exc:
        return _status_of(cause)
    return None


def backoff(attempts: int, cap: float, base: float = 1.0) -> float:
    """Exponential back-off with full jitter: spreads retries of many copies apart."""
    ceiling = min(cap, base * (2 ** min(attempts, 30)))
    return random.uniform(ceiling / 2, ceiling)
