"""`vna ingest`: the ingest daemon, or one pass that drains the drop folders (`--once`)."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable

from vna.settings import Settings

NAME = "ingest"
HELP = "take PACS exports in from the drop folders into the layout and index"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", action="store_true", help="drain every drop folder, then exit")


def main(args: argparse.Namespace, settings: Settings) -> int:
    from vna.index.engine import open_index
    from vna.ingest.daemon import IngestDaemon

    if not settings.sources:
        print("vna ingest: no [[sources]] configured; nothing to watch", file=sys.stderr)
        return 2
    daemon = IngestDaemon(settings, open_index(settings.index.url))
    install_stop_handlers(daemon.stop)
    counts = daemon.run(once=args.once)
    summary = (
        ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k != "deferred")
        or "nothing to do"
    )
    print(f"vna ingest: {summary}", file=sys.stderr)
    return 0


def install_stop_handlers(stop: Callable[[], None]) -> None:
    """SIGTERM and SIGINT finish the batch in hand, then stop."""

    def handler(signum: int, _frame: object) -> None:
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
