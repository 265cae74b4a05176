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
import json
import logging
import os
import sys
from pathlib import Path

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)


class AuditTrail:
    """Where audit lines go: a file (JSON lines), or stderr.

    Each line is one write(2) to the file opened with O_APPEND, so lines from
    concurrent requests never interleave and none waits in a buffer; the file is
    opened for each line, so a log rotation that moves it away is followed at
    once. Cheaper than the logging machinery (a record, a handler lock, a flush),
    which cost more than the rest of a small search's response.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

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
        if self.path is None:
            print(line, file=sys.stderr, flush=True)
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                os.write(fd, line.encode() + b"\n")
            finally:
                os.close(fd)
        except OSError as exc:  # a full disk must not turn answered requests into errors
            logger.error("cannot write the audit trail %s: %s; lost: %s", self.path, exc, line)


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
