"""Entry point of the `vna` command: options common to all, then the subcommand.

Errors become exit codes here and only here: 2 for bad configuration or
usage, 3 when the index or a target cannot be reached, 1 when a check found
problems, 0 otherwise.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from vna import __version__, plugins, settings
from vna.cli import (
    db,
    ingest,
    jobs,
    quarantine,
    reindex,
    report,
    run,
    sample,
    scheduler,
    status,
    verify,
)
from vna.errors import InvalidInput, TargetUnavailable, VnaError

COMMANDS: tuple[ModuleType, ...] = (
    run,
    ingest,
    status,
    quarantine,
    verify,
    reindex,
    report,
    scheduler,
    jobs,
    db,
    sample,
)

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vna", description="Vendor-neutral archive for medical images."
    )
    parser.add_argument(
        "--config", help="settings file (TOML); default: $VNA_CONFIG, else built-in defaults"
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("VNA_LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING, ERROR",
    )
    parser.add_argument("--version", action="version", version=f"vna {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (*COMMANDS, *plugins.load("vna.commands")):
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.configure(p)
        p.set_defaults(handler=module.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    config = args.config or os.environ.get("VNA_CONFIG")
    try:
        loaded = settings.load(config)
        code: int = args.handler(args, loaded)
        return code
    except InvalidInput as exc:
        print(f"vna: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TargetUnavailable as exc:
        print(f"vna: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except VnaError as exc:
        print(f"vna: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    except KeyboardInterrupt:
        return 130


def entry() -> int:
    """The `vna` command: `main`, then an exit that does not walk every object once more.

    At exit the interpreter collects garbage over every object still alive, about 0.1 s
    with SQLAlchemy loaded: a quarter of a short command's time. Frozen (`gc.freeze`),
    they are left to the end of the process; each is still freed by reference counting
    as modules are torn down, so files are closed and flushed as before.
    """
    code = main()
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(entry())
