"""`vna run`: every part of the archive in one process, on the embedded default.

Today that is the ingest daemon; the replicator, the DICOMweb gateway and the
scheduler join it here as they are built.
"""

from __future__ import annotations

import argparse
import logging

from vna.cli.ingest import install_stop_handlers
from vna.index.engine import open_index
from vna.ingest.daemon import IngestDaemon
from vna.settings import Settings

NAME = "run"
HELP = "run the whole archive in one process (ingest; later replication and DICOMweb)"
logger = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", action="store_true", help="drain the drop folders, then exit")


def main(args: argparse.Namespace, settings: Settings) -> int:
    engine = open_index(settings.index.url)
    daemon = IngestDaemon(settings, engine)
    install_stop_handlers(daemon.stop)
    logger.info(
        "archive at %s, index %s, watching %d source(s)",
        settings.archive.root,
        engine.url.render_as_string(hide_password=True),
        len(settings.sources),
    )
    daemon.run(once=args.once)
    return 0
