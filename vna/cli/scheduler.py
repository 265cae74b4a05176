"""`vna scheduler`: the scheduler as its own process (instead of inside `vna run`)."""

from __future__ import annotations

import argparse
import os
import threading

from vna.cli.ingest import install_stop_handlers
from vna.settings import Settings, load

NAME = "scheduler"
HELP = "run scheduled jobs (verification, reconciliation, replication windows, reports)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lease-seconds",
        type=float,
        default=60.0,
        help="how long the scheduler lease lasts unrenewed; a standby takes over after it",
    )


def main(args: argparse.Namespace, settings: Settings) -> int:
    from vna.index.engine import open_index
    from vna.scheduler.service import Scheduler

    stop = threading.Event()
    install_stop_handlers(stop.set)
    config = args.config or os.environ.get("VNA_CONFIG")
    reload = (lambda: load(config)) if config else None
    Scheduler(settings, open_index(settings.index.url), args.lease_seconds, reload=reload).run(stop)
    return 0
