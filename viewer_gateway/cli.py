"""`vna serve`: the DICOMweb service (registered through the `vna.commands` entry point)."""

from __future__ import annotations

import argparse
import threading

from vna.index.engine import open_index
from vna.settings import Settings

NAME = "serve"
HELP = "serve DICOMweb (QIDO-RS, WADO-RS, WADO-URI) to viewers"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="override gateway.host")
    parser.add_argument("--port", type=int, help="override gateway.port")


def main(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from viewer_gateway.app import create_app
    from viewer_gateway.engine import gateway_engine

    index = open_index(settings.index.url)
    engine = gateway_engine(index)
    if engine is not index:
        index.dispose()  # it only checked the URL and migrated
    app = create_app(settings, engine)
    stop = threading.Event()
    threading.Thread(
        target=app.state.metadata.run, args=(stop,), name="metadata", daemon=True
    ).start()
    uvicorn.run(
        app,
        host=args.host or settings.gateway.host,
        port=args.port or settings.gateway.port,
        log_level="warning",
        proxy_headers=False,
    )
    stop.set()
    engine.dispose()
    return 0
