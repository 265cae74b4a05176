"""`vna quarantine list|retry`: what was put aside, and taking it in again."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from vna.settings import Settings

NAME = "quarantine"
HELP = "list quarantined files with their reasons, or retry them"


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (
        ("list", "list held files"),
        ("retry", "run held files through ingest again"),
    ):
        p = sub.add_parser(action, help=text)
        p.add_argument("ids", nargs="*", help="entry ids (default: all matching the filters)")
        p.add_argument("--source", help="only this source")
        p.add_argument("--reason", help="only this reason (e.g. truncated, duplicate-conflict)")
        if action == "list":
            p.add_argument("--json", action="store_true", help="machine-readable output")
        else:
            p.add_argument(
                "--all",
                action="store_true",
                help="retry every held file (needed without ids or filters)",
            )


def main(args: argparse.Namespace, settings: Settings) -> int:
    from vna.index.engine import open_index
    from vna.ingest.retry import held, retry

    engine = open_index(settings.index.url)
    entries = held(engine, args.ids, args.source, args.reason)
    if args.action == "list":
        if args.json:
            print(json.dumps([asdict(e) for e in entries], indent=2, ensure_ascii=False))
            return 0
        for e in entries:
            print(
                f"{e.id}  {e.at[:19]}  {e.source:<12} {e.reason:<18} {e.drop_path}\n    {e.detail}"
            )
        print(f"{len(entries)} held")
        return 0
    if not (args.ids or args.source or args.reason or args.all):
        print("vna quarantine retry: name ids, a --source or --reason filter, or --all")
        return 2
    outcomes = retry(settings, engine, entries)
    for o in outcomes:
        print(
            f"{o.outcome:<11} {o.source} {o.file}"
            + (f"  ({o.reason}: {o.detail})" if o.reason else "")
        )
    still = sum(o.outcome == "quarantined" for o in outcomes)
    print(f"{len(outcomes) - still} taken in, {still} still quarantined")
    return 1 if still else 0
