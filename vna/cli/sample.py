"""`vna sample`: write a synthetic PACS export (CT-like studies) for demos and benchmarks."""

from __future__ import annotations

import argparse
from pathlib import Path

from vna.settings import Settings

NAME = "sample"
HELP = "generate synthetic CT studies as a PACS would export them"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", required=True, type=Path, help="folder to write into (e.g. a source's drop folder)"
    )
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--per-series", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1, help="same seed, same UIDs")
    parser.add_argument("--size", type=int, default=512, help="rows and columns")


def main(args: argparse.Namespace, settings: Settings) -> int:
    from vna.sample import SampleSpec, generate

    spec = SampleSpec(
        instances=args.instances,
        per_series=args.per_series,
        seed=args.seed,
        rows=args.size,
        columns=args.size,
    )
    files = generate(args.out, spec)
    print(f"wrote {len(files)} instances below {args.out}")
    return 0
