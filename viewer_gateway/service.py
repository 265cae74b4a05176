"""The DICOMweb service as a service of `vna run` (entry point group `vna.services`)."""

from __future__ import annotations

import threading

import uvicorn
from sqlalchemy import Engine

from viewer_gateway.app import create_app
from viewer_gateway.engine import gateway_engine
from vna.settings import Settings

NAME = "gateway"


def serve(settings: Settings, engine: Engine, stop: threading.Event) -> None:
    """Serve DICOMweb until `stop` is set, on an engine of its own sized to its threads."""
    own = gateway_engine(engine)
    app = create_app(settings, own)
    threading.Thread(
        target=app.state.metadata.run, args=(stop,), name="metadata", daemon=True
    ).start()
    config = uvicorn.Config(
        app,
        host=settings.gateway.host,
        port=settings.gateway.port,
        log_level="warning",
    )
    server = uvicorn.Server(config)

    def watch() -> None:
        stop.wait()
        server.should_exit = True

    threading.Thread(target=watch, daemon=True).start()
    try:
        server.run()
    finally:
        if own is not engine:
            own.dispose()
