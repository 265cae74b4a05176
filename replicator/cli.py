"""`vna replicate`: the replicator daemon, one pass, status and reconciliation.

Registered with the `vna` command through the `vna.commands` entry point, so
`vna` itself never imports the replicator. Like every command module, it imports
what its work needs inside the functions that do it: building `vna`'s parser
then costs nothing, and a `vna replicate --once` run by cron starts fast.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import TYPE_CHECKING

from vna.settings import Settings, load

if TYPE_CHECKING:
    from sqlalchemy import Engine

NAME = "replicate"
HELP = "mirror the archive one-way to the configured targets"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", default="run", choices=["run", "status", "reconcile"])
    parser.add_argument(
        "--once",
        action="store_true",
        help="bring every target up to date, then exit (1 if not all copied)",
    )
    parser.add_argument("--target", action="append", help="only this target (repeatable)")
    parser.add_argument(
        "--ignore-window", action="store_true", help="copy now, even outside a target's window"
    )
    parser.add_argument("--json", action="store_true", help="status: machine-readable output")
    parser.add_argument(
        "--deep", action="store_true", help="reconcile: read back and hash every object"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="reconcile: report only, mend nothing"
    )


def main(args: argparse.Namespace, settings: Settings) -> int:
    from replicator.daemon import Replicator
    from vna.index.engine import open_index

    if not settings.targets:
        print("vna replicate: no [[targets]] configured", file=sys.stderr)
        return 2
    for name in args.target or []:
        settings.target(name)
    engine = open_index(settings.index.url)
    if args.action == "status":
        return _status(settings, engine, args)
    if args.action == "reconcile":
        return _reconcile(settings, engine, args)
    config = args.config or os.environ.get("VNA_CONFIG")
    reload = (lambda: load(config)) if config else None
    # --once is a person (or a cron job) waiting: progress of any backlog, a bar on a terminal.
    replicator = Replicator(settings, engine, args.target, reload=reload, progress_bar=args.once)
    signal.signal(signal.SIGTERM, lambda *_: replicator.stop())
    signal.signal(signal.SIGINT, lambda *_: replicator.stop())
    complete = replicator.run(once=args.once, ignore_window=args.ignore_window)
    if args.once:
        for name, lane in replicator.lanes.items():
            print(
                f"target {name}: {lane.copied} verified ({lane.uploaded} uploaded), "
                f"{lane.failed} failed attempts"
            )
        if not complete:
            print("vna replicate: not every instance is verified; see `vna replicate status`")
            return 1
    return 0


def _status(settings: Settings, engine: Engine, args: argparse.Namespace) -> int:
    from vna.reports.replication import collect
    from vna.status import human_bytes

    report = collect(settings, engine)
    if args.target:
        report = {k: v for k, v in report.items() if k in args.target}
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    for name, t in report.items():
        window = "open" if t["window_open"] else "closed"
        print(f"{name}  {t['url']}  (window {t['window']}: {window})")
        verified, backlog = human_bytes(t["verified_bytes"]), human_bytes(t["backlog_bytes"])
        rate = human_bytes(t["throughput_bytes_per_s"])
        print(
            f"  verified {t['verified']} ({verified}), backlog {t['backlog']} ({backlog}), "
            f"lag {t['lag_seconds']:.0f} s, "
            f"throughput {t['throughput_files_per_s']} files/s ({rate}/s)"
        )
        for e in t["recent_errors"]:
            print(f"  {e['state']} after {e['attempts']} attempt(s): {e['path']}: {e['error']}")
    return 0


def _reconcile(settings: Settings, engine: Engine, args: argparse.Namespace) -> int:
    from replicator.reconcile import indexed_instances, reconcile, reset_skipped
    from vna.progress import Progress

    dirty = False
    total = indexed_instances(engine)
    for t in settings.targets:
        if args.target and t.name not in args.target:
            continue
        with Progress(f"reconcile {t.name}", total, "instances") as progress:
            drift = reconcile(
                engine,
                t,
                deep=args.deep,
                dry_run=args.dry_run,
                progress=progress.advance_to,
            )
        if not args.dry_run:
            reset_skipped(engine, t.name)
        print(f"target {t.name}: {drift.summary()}")
        for kind in ("missing", "extra", "wrong_size", "wrong_digest"):
            for path in getattr(drift, kind)[:20]:
                print(f"  {kind.replace('_', ' ')}: {path}")
        if drift.delete_refused:
            print(f"  delete refused: {drift.delete_refused}")
        dirty |= not drift.clean
    return 1 if dirty else 0
