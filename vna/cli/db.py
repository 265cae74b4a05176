"""`vna db upgrade|current`: schema migrations (also applied at every start)."""

from __future__ import annotations

import argparse

from vna.settings import Settings

NAME = "db"
HELP = "apply or show index schema migrations"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["upgrade", "current"])


def main(args: argparse.Namespace, settings: Settings) -> int:
    from alembic import command

    from vna.index.engine import alembic_config, create, upgrade

    engine = create(settings.index.url)
    if args.action == "upgrade":
        upgrade(engine)
    command.current(alembic_config(engine))
    return 0
