"""Admin routes: the status page, its JSON, and the scheduled reports it links.

Admin role only. Besides `Authorization: Bearer <key>`, HTTP Basic with the key
as password is accepted here, so a storage admin can open the page in a browser
(which asks for it); reports are served only by their own names from the
configured reports folder.
"""

# No `from __future__ import annotations`: FastAPI must resolve the route parameters'
# annotations, which name `Admin`, local to `router`.
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from sqlalchemy import Engine

from viewer_gateway import status_page
from viewer_gateway.auth import Principal, authenticate, require
from viewer_gateway.threads import Workers
from vna.errors import NotFound, Unauthorized
from vna.reports import files
from vna.settings import Settings

PREFIX = "/admin"
CHALLENGE = 'Basic realm="vna admin", charset="UTF-8"'
FRESH_SECONDS = 5.0  # half the page's refresh interval
MEDIA = {"html": "text/html; charset=utf-8", "csv": "text/csv; charset=utf-8"}


def router(settings: Settings, engine: Engine, workers: Workers) -> APIRouter:
    gw = settings.gateway

    def admin(request: Request) -> Principal:
        who = authenticate(gw, request.headers.get("authorization"), basic=True)
        if who.name == "anonymous":
            raise Unauthorized("the status page needs an admin key")
        require(who, "admin")
        request.state.principal = who
        return who

    Admin = Annotated[Principal, Depends(admin)]
    r = APIRouter(prefix=PREFIX)
    latest: dict[str, Any] = {}

    def figures() -> dict[str, Any]:
        """The figures, computed at most once per `FRESH_SECONDS` however many pages are open:
        at a million instances one computation takes a second or two of the index's time."""
        if time.monotonic() - latest.get("at", -FRESH_SECONDS) >= FRESH_SECONDS:
            latest["data"] = status_page.collect(settings, engine)
            latest["at"] = time.monotonic()
        data: dict[str, Any] = latest["data"]
        return data

    @r.get("/status", response_class=HTMLResponse)
    async def status(who: Admin) -> HTMLResponse:
        data = await workers.run(figures)
        return HTMLResponse(status_page.to_html(data), headers={"Cache-Control": "no-store"})

    @r.get("/status.json")
    async def status_json(who: Admin) -> JSONResponse:
        data = await workers.run(figures)
        return JSONResponse(data, headers={"Cache-Control": "no-store"})

    @r.get("/reports/{name}")
    async def report(name: str, who: Admin) -> Response:
        path = files.find(settings.scheduler.reports, name)
        if path is None:
            raise NotFound(f"no report named {name!r}")
        ext = path.suffix.lstrip(".")
        return FileResponse(path, media_type=MEDIA.get(ext, "application/json"))

    return r
