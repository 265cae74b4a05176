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
from pathlib import Path

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_logger = logging.getLogger("vna.audit")
_logger.propagate = False


def configure(path: Path | None) -> None:
    """Send audit lines to `path` (JSON lines); without a path they go to stderr."""
    for old in list(_logger.handlers):
        _logger.removeHandler(old)
        old.close()
    handler: logging.Handler
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    _logger.addHandler(handler)
    _logger.setLevel(logging.INFO)


def record(who: str, client: str, method: str, path: str, status: int) -> None:
    """Who, what, when, outcome."""
    _logger.info(
        json.dumps(
            {
                "at": dt.datetime.now(dt.UTC).isoformat(),
                "who": who,
                "client": client,
                "method": method,
                "resource": path,
                "status": status,
            }
        )
    )


class AuditMiddleware:
    """Records every HTTP request under `root` (except CORS preflights) once it has ended.

    Who is the principal the route's authentication put in the request state
    (`principal`, with a `name`); "-" when authentication never ran or failed.
    """

    def __init__(self, app: ASGIApp, root: str) -> None:
        self.app = app
        self.root = root

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
            record(
                who.name if who is not None else "-",
                client[0] if client else "-",
                scope["method"],
                _escaped(scope["path"]),
                status,
            )


def _escaped(path: str) -> str:
    """The path as `Request.url.path` spells it: characters that would end it, escaped."""
    return path.replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")
