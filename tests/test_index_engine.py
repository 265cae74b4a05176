"""Commits that wait for the disk, and the bookkeeping ones that need not."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError

from vna.index.engine import open_index, write_transaction


def _durability(conn) -> str:  # type: ignore[no-untyped-def]
    if conn.dialect.name == "sqlite":
        return str(conn.exec_driver_sql("PRAGMA synchronous").scalar_one())
    return str(conn.execute(text("SHOW synchronous_commit")).scalar_one())


def test_relaxed_commit_applies_to_its_own_transaction_only(index_url: str) -> None:
    engine = open_index(index_url)
    durable, relaxed = ("2", "1") if engine.dialect.name == "sqlite" else ("on", "off")
    try:
        with write_transaction(engine, durable=False) as conn:
            assert _durability(conn) == relaxed
        with write_transaction(engine) as conn:  # the same pooled connection, as it happens
            assert _durability(conn) == durable
        with write_transaction(engine, durable=False) as conn:
            assert _durability(conn) == relaxed
        with engine.connect() as conn:
            assert _durability(conn) == durable
    finally:
        engine.dispose()


def test_a_failed_begin_on_sqlite_is_sqlalchemys_error(tmp_path: Path) -> None:
    """Callers handle SQLAlchemy's OperationalError (the ingest rolls its batch back on it):
    a BEGIN that fails, a writer's waiting for the lock or a reader's, must raise that."""
    engine = open_index(f"sqlite:///{tmp_path}/index.db")

    @event.listens_for(engine, "connect")
    def impatient(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA busy_timeout=0")

    engine.dispose()  # connections made from now on give up at once
    blocker = sqlite3.connect(tmp_path / "index.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(OperationalError, match="locked"), write_transaction(engine):
            pass
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    with engine.connect() as conn:
        conn.connection.driver_connection.execute("BEGIN")  # type: ignore[union-attr]
        with pytest.raises(OperationalError, match="within a transaction"):
            conn.execute(text("SELECT 1"))
    engine.dispose()
