"""`vna status`: counts per source and outcome."""

from __future__ import annotations

import argparse
import json

from vna.settings import Settings

NAME = "status"
HELP = "show what the archive holds and what became of the input, per source"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def main(args: argparse.Namespace, settings: Settings) -> int:
    from vna.index.engine import open_index
    from vna.status import collect, human_bytes

    report = collect(open_index(settings.index.url))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    t = report["totals"]
    print(
        f"archive: {t['instances']} instances ({human_bytes(t['bytes'])}) "
        f"in {t['studies']} studies, "
        f"{t['series']} series, {t['patients']} patients; change feed at {t['change_feed_head']}"
    )
    header = ("source", "archived", "size", "duplicates", "quarantined", "last received")
    print("{:<20} {:>10} {:>10} {:>11} {:>12}  {}".format(*header))
    for name, s in report["sources"].items():
        print(
            f"{name:<20} {s['archived']:>10} {human_bytes(s['bytes']):>10} {s['duplicates']:>11} "
            f"{s['quarantined']:>12}  {s['last_received'] or '-'}"
        )
        for reason, n in sorted(s["quarantine_reasons"].items()):
            print(f"{'':<20}   quarantined {reason}: {n}")
    return 0
