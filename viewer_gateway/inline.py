"""Searches run on the event loop, within a budget, on a SQLite index.

A search that finds one study is about 100 us of work; handing it to a worker
thread and back cost more than that (0.73 against 0.57 ms per request, over HTTP,
on a 2-core VM). So on SQLite a search runs on the event loop itself, where it
blocks nothing that the GIL would not block anyway, except for SQLite's own work,
which in a thread runs beside the loop. That work is bounded: SQLite calls a
progress handler every `STEP` virtual-machine instructions, and past `BUDGET`
calls it interrupts the search (OverBudget), which the caller then runs again in a
worker thread. Rendering is bounded by the page size (`ROWS`). PostgreSQL searches
always go to a worker thread: their time is a network round trip.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine

#: SQLite virtual-machine instructions between two calls of the progress handler.
STEP = 1000
#: Calls of the progress handler a search on the loop may take: about a millisecond.
BUDGET = 100
#: Largest page a search on the loop may render (OHIF's study list asks for 101).
ROWS = 101


class OverBudget(Exception):
    """A search on the event loop needs more work than the loop may give it."""


class LoopConnection:
    """The event loop's own connection to a SQLite index.

    One connection, kept for the app's life: the loop runs one search at a time,
    and taking one from the pool could block the loop while worker threads hold
    them all. It is dropped after an error and opened again on the next search.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._raw: Any = None

    @staticmethod
    def serves(engine: Engine) -> bool:
        return engine.dialect.name == "sqlite"

    @contextmanager
    def reading(self) -> Iterator[Any]:
        """A cursor in a read transaction whose statements may use up the budget together."""
        if self._raw is None:
            self._raw = self.engine.raw_connection()
        driver = self._raw.driver_connection
        calls = 0

        def progress() -> int:
            nonlocal calls
            calls += 1
            return int(calls > BUDGET)  # non-zero interrupts the statement

        driver.set_progress_handler(progress, STEP)
        cur = driver.cursor()
        broken = False
        try:
            cur.execute("BEGIN")
            yield cur
        except self.engine.dialect.loaded_dbapi.OperationalError as exc:
            if calls > BUDGET:
                raise OverBudget(f"interrupted after {calls * STEP} instructions") from exc
            broken = True
            raise
        finally:
            try:
                cur.close()
                driver.set_progress_handler(None, 0)
                if driver.in_transaction:
                    driver.rollback()
            except self.engine.dialect.loaded_dbapi.Error:
                broken = True
            if broken:
                self.close()

    def close(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None:
            raw.invalidate()
