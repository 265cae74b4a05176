"""`vna verify`: layout, index and digests agree, or a list of what does not."""

from __future__ import annotations

import argparse

from vna.settings import Settings

NAME = "verify"
HELP = "check that layout, index and digests agree (exit 1 and a list when they do not)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-digests", action="store_true", help="compare presence and sizes only (fast)"
    )


def main(args: argparse.Namespace, settings: Settings) -> int:
    from vna.index.engine import open_index
    from vna.layout import Layout
    from vna.verify import Summary, verify

    summary = Summary()
    problems = 0
    layout = Layout(settings.archive.root, settings.archive.fsync)
    for problem in verify(open_index(settings.index.url), layout, not args.no_digests, summary):
        problems += 1
        print(problem)
    print(
        f"verified {summary.files} files against {summary.rows} index rows "
        f"({summary.hashed} hashed): {problems} problem(s)"
    )
    return 1 if problems else 0
