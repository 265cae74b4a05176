"""`vna run`: every part of the archive in one process, on the embedded default.

The ingest daemon runs in the main thread; the services other packages
register under the `vna.services` entry point (the replicator, and the
DICOMweb gateway and scheduler as they are built) run in threads beside it.
`vna` finds them by name and never imports them itself.
"""

from __future__ import annotations

import argparse
import logging
import threading

from vna import plugins
from vna.cli.ingest import install_stop_handlers
from vna.settings import Settings

NAME = "run"
HELP = "run the whole archive in one process: ingest and every installed service"
logger = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", action="store_true", help="drain the drop folders, then exit")


def main(args: argparse.Namespace, settings: Settings) -> int:
    from vna.index.engine import open_index
    from vna.ingest.daemon import IngestDaemon

    engine = open_index(settings.index.url)
    daemon = IngestDaemon(settings, engine)
    stop = threading.Event()
    threads = []
    if not args.once:
        for service in plugins.load("vna.services"):
            thread = threading.Thread(
                target=service.serve, args=(settings, engine, stop), name=service.NAME, daemon=True
            )
            thread.start()
            threads.append(thread)

    def stop_all() -> None:
        daemon.stop()
        stop.set()

    install_stop_handlers(stop_all)
    logger.info(
        "archive at %s, index %s, %d source(s), services: %s",
        settings.archive.root,
        engine.url.render_as_string(hide_password=True),
        len(settings.sources),
        ", ".join(t.name for t in threads) or "none",
    )
    try:
        daemon.run(once=args.once)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    return 0
