"""The replicator as a service of `vna run` (entry point group `vna.services`)."""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Engine

from replicator.daemon import Replicator
from vna.settings import Settings

NAME = "replicator"
logger = logging.getLogger("vna.replicator")


def serve(settings: Settings, engine: Engine, stop: threading.Event) -> None:
    """Replicate to every configured target until `stop` is set."""
    if not settings.targets:
        logger.info("no [[targets]] configured: replication is off")
        return
    replicator = Replicator(settings, engine)
    replicator.stop_event = stop
    replicator.run()
