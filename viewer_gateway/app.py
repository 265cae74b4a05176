"""The DICOMweb service: every route in one table, every error turned into a response here.

Routes live under /dicomweb and name their PS3.18 section; CONFORMANCE.md says
what each supports. Errors from anywhere below become a status and a JSON
message in `_vna_error`; anything unexpected is a 500 that shows no internals.
"""

import itertools
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException

from viewer_gateway import admin, audit, inline, qido, rendered, viewer, wado_rs, wado_uri
from viewer_gateway.auth import Principal, authenticate
from viewer_gateway.media import parse_accept
from viewer_gateway.metadata import MetadataCache
from viewer_gateway.threads import Workers
from viewer_gateway.tiers import InstanceStore
from vna.attributes import Level
from vna.errors import VnaError
from vna.settings import Settings

logger = logging.getLogger("vna.gateway")
ROOT = "/dicomweb"
UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
Uid = Annotated[str, Path(pattern=UID_PATTERN, max_length=64)]
QueryUid = Annotated[str, Query(pattern=UID_PATTERN, max_length=64)]
DICOM_JSON = "application/dicom+json"


def create_app(settings: Settings, engine: Engine) -> FastAPI:
    """The ASGI application for one archive."""
    gw = settings.gateway
    store = InstanceStore(settings, engine)
    prepared = MetadataCache(store, engine)
    workers = Workers()
    on_loop = inline.LoopConnection(engine) if inline.LoopConnection.serves(engine) else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        workers.close()
        if on_loop is not None:
            on_loop.dispose()

    app = FastAPI(
        title="vna DICOMweb",
        version="0.1",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.metadata = prepared  # its `run` keeps metadata prepared (see service.py)
    if gw.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=gw.cors_origins,
            allow_methods=["GET", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["Content-Type", "Content-Location"],
            max_age=600,
        )

    async def principal(request: Request) -> Principal:  # async: cheap, no thread hop
        who = authenticate(gw, request.headers.get("authorization"))
        request.state.principal = who
        return who

    def base_url(request: Request) -> str:
        if gw.public_url:
            return gw.public_url.rstrip("/")
        # The headers first: building `request.url` costs more than the rest of this.
        headers = request.headers
        proto = headers.get("x-forwarded-proto") or request.scope.get("scheme", "http")
        proto = proto.split(",")[0].strip()
        host = headers.get("x-forwarded-host") or headers.get("host") or request.url.netloc
        prefix = headers.get("x-forwarded-prefix", "").rstrip("/")
        return f"{proto}://{host.split(',')[0].strip()}{prefix}{ROOT}"

    # Pure ASGI (see audit.py): no per-request task, streamed bodies pass straight through.
    app.add_middleware(audit.AuditMiddleware, root=ROOT, trail=audit.AuditTrail(gw.audit_log))

    @app.exception_handler(VnaError)
    async def _vna_error(request: Request, exc: VnaError) -> JSONResponse:
        challenge = admin.CHALLENGE if request.url.path.startswith(admin.PREFIX) else "Bearer"
        headers = {"WWW-Authenticate": challenge} if exc.status == 401 else None
        return JSONResponse(
            {"error": exc.reason, "message": str(exc)}, status_code=exc.status, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": "invalid-input", "message": problems}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": "http", "message": str(exc.detail)}, status_code=exc.status_code
        )

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s", request.url.path)
        return JSONResponse(
            {"error": "internal-error", "message": "internal error; see the server log"},
            status_code=500,
        )

    def search_body(q: qido.Query, scope: qido.Scope, base: str, reading: Any = None) -> bytes:
        # orjson: json.dumps took a third of the time of rendering a page of studies.
        return orjson.dumps(qido.search(engine, q, scope, base, reading))

    async def search(request: Request, level: Level, scope: qido.Scope) -> Response:
        q = qido.parse(level, request.query_params.multi_items(), gw.max_limit)
        base = base_url(request)
        if on_loop is None:
            body = await workers.run(search_body, q, scope, base)
            return Response(body, media_type=DICOM_JSON)
        if q.limit <= inline.ROWS and not on_loop.cold:  # see inline.py
            try:
                body = search_body(q, scope, base, on_loop.reading())
                return Response(body, media_type=DICOM_JSON)
            except inline.OverBudget:
                pass
        body = await workers.run(on_loop.in_thread, lambda: search_body(q, scope, base))
        return Response(body, media_type=DICOM_JSON)

    Who = Annotated[Principal, Depends(principal)]

    # QIDO-RS, PS3.18 10.6
    @app.get(f"{ROOT}/studies", summary="Search for studies (PS3.18 10.6)")
    async def search_studies(request: Request, who: Who) -> Response:
        return await search(request, Level.STUDY, qido.Scope())

    @app.get(f"{ROOT}/series", summary="Search for series (PS3.18 10.6)")
    async def search_all_series(request: Request, who: Who) -> Response:
        return await search(request, Level.SERIES, qido.Scope())

    @app.get(f"{ROOT}/instances", summary="Search for instances (PS3.18 10.6)")
    async def search_all_instances(request: Request, who: Who) -> Response:
        return await search(request, Level.INSTANCE, qido.Scope())

    @app.get(ROOT + "/studies/{study}/series", summary="Search for a study's series (PS3.18 10.6)")
    async def search_series(request: Request, study: Uid, who: Who) -> Response:
        return await search(request, Level.SERIES, qido.Scope(study))

    @app.get(
        ROOT + "/studies/{study}/instances", summary="Search for a study's instances (PS3.18 10.6)"
    )
    async def search_study_instances(request: Request, study: Uid, who: Who) -> Response:
        return await search(request, Level.INSTANCE, qido.Scope(study))

    @app.get(
        ROOT + "/studies/{study}/series/{series}/instances",
        summary="Search for a series' instances (PS3.18 10.6)",
    )
    async def search_series_instances(
        request: Request,
        study: Uid,
        series: Uid,
        who: Who,
    ) -> Response:
        return await search(request, Level.INSTANCE, qido.Scope(study, series))

    # WADO-RS, PS3.18 10.4
    async def send_instances(
        request: Request, study: str, series: str | None, sop: str | None
    ) -> StreamingResponse:
        accept = parse_accept(request.headers.get("accept"))

        def plan() -> wado_rs.Retrieval:  # one worker-thread hop: the lookup and first batch
            return wado_rs.retrieve(store, store.instances(study, series, sop), accept)

        retrieval = await workers.run(plan)
        length = retrieval.length
        headers = {"Content-Length": str(length)} if length is not None else None
        return StreamingResponse(
            retrieval.body(workers), media_type=retrieval.content_type, headers=headers
        )

    @app.get(ROOT + "/studies/{study}", summary="Retrieve a study (PS3.18 10.4)")
    async def retrieve_study(request: Request, study: Uid, who: Who) -> StreamingResponse:
        return await send_instances(request, study, None, None)

    @app.get(ROOT + "/studies/{study}/series/{series}", summary="Retrieve a series (PS3.18 10.4)")
    async def retrieve_series(
        request: Request,
        study: Uid,
        series: Uid,
        who: Who,
    ) -> StreamingResponse:
        return await send_instances(request, study, series, None)

    @app.get(
        ROOT + "/studies/{study}/series/{series}/instances/{sop}",
        summary="Retrieve an instance (PS3.18 10.4)",
    )
    async def retrieve_instance(
        request: Request,
        study: Uid,
        series: Uid,
        sop: Uid,
        who: Who,
    ) -> StreamingResponse:
        return await send_instances(request, study, series, sop)

    async def send_metadata(
        request: Request, study: str, series: str | None, sop: str | None
    ) -> Response:
        base = base_url(request)

        def prepared_json() -> bytes:
            return prepared.get(store.instances(study, series, sop), base)

        return Response(await workers.run(prepared_json), media_type=DICOM_JSON)

    @app.get(ROOT + "/studies/{study}/metadata", summary="Study metadata (PS3.18 10.4)")
    async def study_metadata(request: Request, study: Uid, who: Who) -> Response:
        return await send_metadata(request, study, None, None)

    @app.get(
        ROOT + "/studies/{study}/series/{series}/metadata", summary="Series metadata (PS3.18 10.4)"
    )
    async def series_metadata(
        request: Request,
        study: Uid,
        series: Uid,
        who: Who,
    ) -> Response:
        return await send_metadata(request, study, series, None)

    @app.get(
        ROOT + "/studies/{study}/series/{series}/instances/{sop}/metadata",
        summary="Instance metadata (PS3.18 10.4)",
    )
    async def instance_metadata(
        request: Request,
        study: Uid,
        series: Uid,
        sop: Uid,
        who: Who,
    ) -> Response:
        return await send_metadata(request, study, series, sop)

    @app.get(
        ROOT + "/studies/{study}/series/{series}/instances/{sop}/frames/{frames}",
        summary="Retrieve frames (PS3.18 10.4)",
    )
    async def retrieve_frames(
        request: Request,
        study: Uid,
        series: Uid,
        sop: Uid,
        frames: Annotated[str, Path(pattern=r"^[0-9]+(,[0-9]+)*$", max_length=200)],
        who: Who,
    ) -> Response:
        accept = parse_accept(request.headers.get("accept"))
        numbers = wado_rs.parse_frames(frames)

        def frames_of() -> tuple[str, bytes | Iterator[bytes]]:
            (inst,) = store.instances(study, series, sop)
            return wado_rs.frames(store, inst, numbers, accept)

        ctype, body = await workers.run(frames_of)
        if isinstance(body, bytes):  # small: one plain response
            return Response(body, media_type=ctype)
        return StreamingResponse(body, media_type=ctype)

    @app.get(
        ROOT + "/studies/{study}/series/{series}/instances/{sop}/bulkdata/{tag}",
        summary="Retrieve bulk data (PS3.18 10.4)",
    )
    async def retrieve_bulkdata(
        request: Request,
        study: Uid,
        series: Uid,
        sop: Uid,
        tag: Annotated[str, Path(pattern=r"^[0-9A-Fa-f]{8}$")],
        who: Who,
    ) -> Response:
        def bulk() -> bytes:
            (inst,) = store.instances(study, series, sop)
            return wado_rs.bulkdata(store, inst, tag)

        return Response(await workers.run(bulk), media_type="application/octet-stream")

    def render_options(request: Request) -> rendered.Options:
        accept_types = [r.type for r in parse_accept(request.headers.get("accept"))]
        params = request.query_params
        if "accept" in params:  # PS3.18 8.3.3.1: the query parameter wins over the header
            accept_types = [t.strip().split(";")[0] for t in params["accept"].split(",")]
        return rendered.parse_options(
            accept_types, params.get("window"), params.get("viewport"), params.get("quality")
        )

    async def send_rendered(
        request: Request,
        study: str,
        series: str | None,
        sop: str | None,
        frame: int,
        thumbnail: bool,
    ) -> Response:
        options = render_options(request)
        if thumbnail and options.viewport is None:
            options = rendered.Options(options.media_type, 80, options.window, rendered.THUMBNAIL)

        def image() -> bytes:  # one worker-thread hop for the lookup, the read and the render
            found = store.instances(study, series, sop)
            inst = found[len(found) // 2]  # a series thumbnail shows its middle instance
            return rendered.render(store.read(inst), frame, options)

        return Response(await workers.run(image), media_type=options.media_type)

    async def send_rendered_all(request: Request, study: str, series: str | None) -> Response:
        options = render_options(request)
        found = await workers.run(store.instances, study, series, None)
        mp, parts = rendered.each(store, found, options)
        first = await workers.run(next, parts)  # errors before the response starts
        return StreamingResponse(itertools.chain([first], parts), media_type=mp.content_type)

    @app.get(ROOT + "/studies/{study}/rendered", summary="Rendered study (PS3.18 10.4)")
    async def rendered_study(request: Request, study: Uid, who: Who) -> Response:
        return await send_rendered_all(request, study, None)

    @app.get(
        ROOT + "/studies/{study}/series/{series}/rendered", summary="Rendered series (PS3.18 10.4)"
    )
    async def rendered_series(request: Request, study: Uid, series: Uid, who: Who) -> Response:
        return await send_rendered_all(request, study, series)

    @app.get(
        ROOT + "/studies/{study}/series/{series}/instances/{sop}/rendered",
        summary="Rendered instance (PS3.18 10.4)",
    )
    async def rendered_instance(
        request: Request, study: Uid, series: Uid, sop: Uid, who: Who
    ) -> Response:
        return await send_rendered(request, study, series, sop, 1, False)

    @app.get(
        ROOT + "/studies/{study}/series/{series}/instances/{sop}/frames/{frame}/rendered",
        summary="Rendered frame (PS3.18 10.4)",
    )
    async def rendered_frame(
        request: Request,
        study: Uid,
        series: Uid,
        sop: Uid,
        frame: Annotated[int, Path(ge=1, le=100000)],
        who: Who,
    ) -> Response:
        return await send_rendered(request, study, series, sop, frame, False)

    @app.get(
        ROOT + "/studies/{study}/series/{series}/instances/{sop}/thumbnail",
        summary="Instance thumbnail (PS3.18 10.4)",
    )
    async def thumbnail_instance(
        request: Request, study: Uid, series: Uid, sop: Uid, who: Who
    ) -> Response:
        return await send_rendered(request, study, series, sop, 1, True)

    @app.get(
        ROOT + "/studies/{study}/series/{series}/thumbnail",
        summary="Series thumbnail (PS3.18 10.4)",
    )
    async def thumbnail_series(request: Request, study: Uid, series: Uid, who: Who) -> Response:
        return await send_rendered(request, study, series, None, 1, True)

    @app.get(ROOT + "/studies/{study}/thumbnail", summary="Study thumbnail (PS3.18 10.4)")
    async def thumbnail_study(request: Request, study: Uid, who: Who) -> Response:
        return await send_rendered(request, study, None, None, 1, True)

    # WADO-URI, PS3.18 9
    @app.get(f"{ROOT}/wado", summary="WADO-URI retrieve (PS3.18 9)")
    async def wado(  # parameter names are the standard's
        request: Request,
        who: Who,
        requestType: Annotated[str, Query()],
        studyUID: QueryUid,
        seriesUID: QueryUid,
        objectUID: QueryUid,
        contentType: Annotated[str, Query()] = "image/jpeg",
        transferSyntax: Annotated[str | None, Query()] = None,
        windowCenter: Annotated[float | None, Query()] = None,
        windowWidth: Annotated[float | None, Query(gt=0)] = None,
        rows: Annotated[int | None, Query(ge=1, le=4096)] = None,
        columns: Annotated[int | None, Query(ge=1, le=4096)] = None,
        imageQuality: Annotated[int | None, Query(ge=1, le=100)] = None,
    ) -> Response:
        window = (
            f"{windowCenter},{windowWidth}" if windowCenter is not None and windowWidth else None
        )
        viewport = f"{columns or rows},{rows or columns}" if rows or columns else None
        quality = str(imageQuality) if imageQuality else None

        def answer() -> tuple[bytes, str]:
            (inst,) = store.instances(studyUID, seriesUID, objectUID)
            rendering = (window, viewport, quality)
            return wado_uri.retrieve(
                store, inst, requestType, contentType, transferSyntax, rendering
            )

        data, ctype = await workers.run(answer)
        return Response(data, media_type=ctype)

    app.include_router(admin.router(settings, engine, workers))
    if gw.viewer is not None:
        viewer.mount(app, gw.viewer)  # last: it answers every path the routes above do not
    return app
