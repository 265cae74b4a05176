"""`vna jobs`: what is scheduled and how it went; run a job now."""

from __future__ import annotations

import argparse
import json
import sys
import threading

from vna.cli.ingest import install_stop_handlers
from vna.errors import InvalidInput
from vna.settings import Settings

NAME = "jobs"
HELP = "list scheduled jobs, show their runs, or run one now"


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    listing = sub.add_parser("list", help="every job: schedule, next run, last outcome")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    now = sub.add_parser("run", help="run a job now, in this process (recorded as manual)")
    now.add_argument("name", help="the job's name, as `vna jobs list` shows it")
    hist = sub.add_parser("history", help="the latest runs, newest first")
    hist.add_argument("name", nargs="?", help="only this job")
    hist.add_argument("--limit", type=int, default=20)
    hist.add_argument("--json", action="store_true", help="machine-readable output")


def main(args: argparse.Namespace, settings: Settings) -> int:
    from vna.index.engine import open_index
    from vna.scheduler import overview, runs
    from vna.scheduler.jobs import configured
    from vna.scheduler.service import execute

    engine = open_index(settings.index.url)
    if args.action == "run":
        specs = configured(settings)
        spec = specs.get(args.name)
        if spec is None:
            raise InvalidInput(
                f"no job named {args.name!r}; configured: {', '.join(sorted(specs)) or 'none'}"
            )
        stop = threading.Event()
        install_stop_handlers(stop.set)
        done = execute(settings, engine, spec, "manual", stop)
        print(f"{spec.name}: {done.outcome} in {done.seconds:.1f} s: {done.detail}")
        return 0 if done.outcome == "ok" else 1
    if args.action == "history":
        history = runs.history(engine, args.name, args.limit)
        if args.json:
            print(json.dumps([r.to_dict() for r in history], indent=2))
            return 0
        for r in history:
            d = r.to_dict()
            print(
                f"{d['started_at']}  {r.job:<24} {r.outcome:<11} {r.trigger:<8} "
                f"{d['seconds'] if d['seconds'] is not None else '-':>7} s  {r.detail}"
            )
        return 0
    view = overview.jobs(settings, engine)
    if getattr(args, "json", False):
        print(json.dumps(view, indent=2))
        return 0
    sched = view["scheduler"]
    print(
        f"scheduler: running ({sched['holder']}, lease until {sched['lease_until']})"
        if sched["running"]
        else "scheduler: not running (start `vna scheduler` or `vna run`)",
        file=sys.stderr,
    )
    print(f"{'job':<24} {'schedule':<16} {'next run':<26} {'last run':<26} outcome")
    for job in view["jobs"]:
        last = job["last_run"]
        print(
            f"{job['name']:<24} {job['schedule']:<16} {job['next_run'] or '-':<26} "
            f"{last['started_at'] if last else '-':<26} "
            f"{last['outcome'] + ': ' + last['detail'] if last else '-'}"
        )
    return 0
