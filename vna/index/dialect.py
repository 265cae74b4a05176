"""The backend's own INSERT, for what standard SQL lacks (ON CONFLICT).

PostgreSQL and SQLite spell upserts alike, and SQLAlchemy gives each its own
`insert` with `on_conflict_do_nothing` / `on_conflict_do_update`. The dialect's
module is imported when first used, so a process on SQLite never loads
PostgreSQL's (a tenth of a command's start-up).
"""

from __future__ import annotations

import importlib
from typing import Any

from sqlalchemy import Connection, Engine, Table


def native_insert(bind: Connection | Engine, table: Table) -> Any:
    """`sqlalchemy.dialects.<backend>.insert(table)`: an Insert that knows ON CONFLICT."""
    module = importlib.import_module(f"sqlalchemy.dialects.{bind.dialect.name}")
    return module.insert(table)
