"""`vna report capacity`: the capacity report as HTML, CSV or JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vna.settings import Settings

NAME = "report"
HELP = "write the capacity report (html, csv, json)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=["capacity"])
    parser.add_argument("--format", choices=["html", "csv", "json"], default="html")
    parser.add_argument("--out", type=Path, help="file to write (default: standard output)")


def main(args: argparse.Namespace, settings: Settings) -> int:
    from vna.index.engine import open_index
    from vna.reports import render
    from vna.reports.capacity import build

    report = build(settings, open_index(settings.index.url))
    text = render.FORMATS[args.format](report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
