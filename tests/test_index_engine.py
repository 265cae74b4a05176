"""Commits that wait for the disk, and the bookkeeping ones that need not."""

from __future__ import annotations

from sqlalchemy import text

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
