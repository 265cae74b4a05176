"""The audit trail: one line per access to patient data, apart from the operational log.

`AuditMiddleware` is a plain ASGI middleware (not Starlette's BaseHTTPMiddleware,
which costs a task and a memory stream per request and buffers streamed bodies
through them): it passes the response through untouched, notes its status from
`http.response.start`, and writes the line once the response has ended, so a
streamed multipart retrieve is recorded after its last part. A request that
fails before any response started is recorded with status 500 (what the error
middleware outside it then sends).
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import os
import sys
import time
from pathlib import Path

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vna.errors import SettingsError

logger = logging.getLogger(__name__)
REPORT_SECONDS = 60.0


class AuditUnavailable(SettingsError):
    """The configured audit log cannot be written: the gateway does not start."""


class AuditTrail:
    """Where audit lines go: a file (JSON lines), or stderr.

    Each line is one write(2) to the file opened with O_APPEND, so lines from
    concurrent requests never interleave and none waits in a buffer; the file is
    opened for each line, so a log rotation that moves it away is followed at
    once. Cheaper than the logging machinery (a record, a handler lock, a flush),
    which cost more than the rest of a small search's response.

    A file that cannot be written at start-up stops the gateway (AuditUnavailable):
    it must not serve patient data unaudited because of a wrong path. A line that
    cannot be written later (a full disk) is counted and reported in the
    operational log, at most once a minute and without its content, which is not
    for that log; the request it records has been answered already.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.lost = 0
        self._reported_at = -REPORT_SECONDS
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                os.close(self._open())
            except OSError as exc:
                raise AuditUnavailable(f"gateway.audit_log {path}: {exc.strerror}") from None

    def _open(self) -> int:
        assert self.path is not None
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def record(self, who: str, client: str, method: str, path: str, status: int) -> None:
        """Who, what, when, outcome."""
        line = json.dumps(
            {
                "at": dt.datetime.now(dt.UTC).isoformat(),
                "who": who,
                "client": client,
                "method": method,
                "resource": path,
                "status": status,
            }
        )
        data = line.encode() + b"\n"
        try:
            if self.path is None:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()
                return
            fd = self._open()
            try:
                written = os.write(fd, data)
                if written < len(data):  # end the partial line, so the next one parses
                    os.write(fd, b"\n")
                    raise OSError(errno.ENOSPC, f"only {written} of {len(data)} bytes written")
            finally:
                os.close(fd)
        except (OSError, ValueError) as exc:  # ValueError: stderr closed
            self._lose(exc)

    def _lose(self, exc: Exception) -> None:
        self.lost += 1
        now = time.monotonic()
        if now - self._reported_at >= REPORT_SECONDS:
            self._reported_at = now
            logger.error(
                "audit trail %s cannot be written (%s): %d line(s) lost so far",
                self.path or "stderr",
                exc,
                self.lost,
            )


class AuditMiddleware:
    """Records every HTTP request under `root` (except CORS preflights) once it has ended.

    Who is the principal the route's authentication put in the request state
    (`principal`, with a `name`); "-" when authentication never ran or failed.
    """

    def __init__(self, app: ASGIApp, root: str, trail: AuditTrail) -> None:
        self.app = app
        self.root = root
        self.trail = trail

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] == "OPTIONS"
            or not scope["path"].startswith(self.root)
        ):
            await self.app(scope, receive, send)
            return
        # Shared by reference with every Request made from this scope (Request.state).
        state = scope.setdefault("state", {})
        status = 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            who = state.get("principal")
            client = scope.get("client")
            self.trail.record(
                who.name if who is not None else "-",
                client[0] if client else "-",
                scope["method"],
                _escaped(scope["path"]),
                status,
            )


def _escaped(path: str) -> str:
    """The path as `Request.url.path` spells it: characters that would end it, escaped."""
    return path.replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")
