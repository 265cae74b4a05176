"""The project's small error hierarchy.

Every error raised inside the packages is one of these, so the edges (the HTTP
gateway, the ingest quarantine, the CLI) can turn it into a status, a reason or
an exit code in one place. Each class carries the HTTP status it maps to and a
stable machine-readable reason.
"""

from __future__ import annotations


class VnaError(Exception):
    """Base class: something the archive refuses, with a message for a person."""

    status: int = 500
    reason: str = "internal-error"


class InvalidInput(VnaError):
    """The caller (a file, a request, a configuration) gave something malformed."""

    status = 400
    reason = "invalid-input"


class Unauthorized(VnaError):
    """No credentials, or credentials the archive does not know."""

    status = 401
    reason = "unauthorized"


class Forbidden(VnaError):
    """Known credentials without the role this needs."""

    status = 403
    reason = "forbidden"


class NotFound(VnaError):
    """The thing asked for is not in the archive."""

    status = 404
    reason = "not-found"


class Conflict(VnaError):
    """The request clashes with what the archive already holds."""

    status = 409
    reason = "conflict"


class NotAcceptable(VnaError):
    """The archive cannot produce the representation asked for."""

    status = 406
    reason = "not-acceptable"


class TargetUnavailable(VnaError):
    """A storage target or the index cannot be reached right now; try again later."""

    status = 503
    reason = "target-unavailable"


class Corrupt(VnaError):
    """Stored bytes do not match what the index says they are."""

    status = 502
    reason = "corrupt"


class SettingsError(InvalidInput):
    """The configuration file is wrong; the message names the key and the fault."""

    reason = "invalid-settings"
