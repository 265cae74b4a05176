"""The bundled OHIF viewer: its built files served at /, configured for this gateway.

OHIF reads `window.config` from /app-config.js; the one served here points its
DICOMweb data source at this gateway's /dicomweb on whatever origin the
browser used, so the viewer works behind a proxy without editing anything.
Unknown paths fall back to index.html (OHIF routes in the browser).
"""

from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

APP_CONFIG = """window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  defaultDataSourceName: 'vna',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'vna',
      configuration: {
        friendlyName: 'VNA',
        name: 'vna',
        wadoUriRoot: window.location.origin + '/dicomweb/wado',
        qidoRoot: window.location.origin + '/dicomweb',
        wadoRoot: window.location.origin + '/dicomweb',
        qidoSupportsIncludeField: true,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: true,
        supportsWildcard: true,
        staticWado: false,
        singlepart: 'bulkdata,video',
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
"""


def app_config() -> Response:
    return Response(APP_CONFIG, media_type="application/javascript")


class SinglePageApp(StaticFiles):
    """Static files, with index.html for any path that is not a file (browser routes)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        try:
            return await super().get_response(path, scope)
        except HTTPException as exc:
            if exc.status_code != 404 or path.startswith("dicomweb"):
                raise
            return await super().get_response("index.html", scope)


def mount(app: object, folder: Path) -> None:
    """Serve `folder` (a built OHIF) at / on `app`, with the generated app-config.js."""
    from fastapi import FastAPI

    assert isinstance(app, FastAPI)
    if not (folder / "index.html").is_file():
        raise FileNotFoundError(
            f"gateway.viewer: {folder} holds no index.html (a built OHIF dist/)"
        )
    app.add_api_route("/app-config.js", app_config, include_in_schema=False)
    app.mount("/", SinglePageApp(directory=folder, html=True), name="viewer")
