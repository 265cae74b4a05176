"""Searches run on the event loop, within a budget, on a SQLite index.

A search that finds one study is about 100 us of work; handing it to a worker
thread and back cost more than that (0.73 against 0.57 ms per request, over HTTP,
on a 2-core VM). So on SQLite a search runs on the event loop itself, where its
Python work blocks nothing that the GIL would not block anyway. What it adds is
SQLite's own work, which in a thread runs beside the loop, and that is bounded:
SQLite calls a progress handler every `STEP` virtual-machine instructions, and
past `BUDGET` calls it interrupts the search (OverBudget), which the caller then
runs again in a worker thread. A search that finds one study takes about 3,000
instructions, OHIF's study list on a few studies of 500 instances 25,000; the
budget is 50,000. Rendering is bounded by the page size (`ROWS`).

What the budget cannot bound are waits: pages of the index read from the disk,
not from the page cache, block the loop while they are read (after a restart, or
when the index outgrows the memory). So when a search on the loop had to read
from the disk (its thread's block reads, as getrusage counts them), searches go
to worker threads until one there reads nothing from the disk: the cache holds
what searches need again. A reader never waits for a lock (WAL). The loop's
connection comes from a pool of its own, so it never waits for one the worker
threads hold. A kind of search seen for the first time is compiled on the loop
(about a millisecond, once per kind). PostgreSQL searches
always go to a worker thread: their time is a network round trip.
"""

from __future__ import annotations

import resource
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Engine

from viewer_gateway.engine import SQLITE_CACHE_KIB
from vna.index.engine import Pooling, create

T = TypeVar("T")

#: SQLite virtual-machine instructions between two calls of the progress handler.
STEP = 1000
#: Calls of the progress handler a search on the loop may take (a millisecond or two).
BUDGET = 50
#: Largest page a search on the loop may render (OHIF's study list asks for 101).
ROWS = 101


class OverBudget(Exception):
    """A search on the event loop needs more work than the loop may give it."""


class LoopConnection:
    """The event loop's own connection to a SQLite index file.

    From a pool of one of its own, kept for the app's life: the loop runs one search
    at a time, and taking a connection from the gateway's pool could block the loop
    while worker threads hold them all. Dropped after an error, opened again on the
    next search.
    """

    def __init__(self, engine: Engine) -> None:
        url = engine.url.render_as_string(hide_password=False)
        self.engine = create(url, Pooling(1, 0, SQLITE_CACHE_KIB))
        self._raw: Any = None
        self.cold = False  # a search on the loop read from the disk; threads search for now

    def in_thread(self, fn: Callable[[], T]) -> T:
        """Run a search in a worker thread; one that reads nothing from the disk tells the
        loop it may search again."""
        blocks = _blocks_read()
        result = fn()
        if _blocks_read() == blocks:
            self.cold = False
        return result

    @staticmethod
    def serves(engine: Engine) -> bool:
        """SQLite in a file (an in-memory index exists only inside its own connections)."""
        url = engine.url
        return url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")

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
        blocks = _blocks_read()
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
            if _blocks_read() != blocks:
                self.cold = True

    def close(self) -> None:
        """Drop the connection (the next search opens another)."""
        raw, self._raw = self._raw, None
        if raw is not None:
            raw.invalidate()

    def dispose(self) -> None:
        self.close()
        self.engine.dispose()


def _blocks_read() -> int:
    """Blocks this thread has read from a disk (not from the page cache); 0 where the
    system does not count them per thread."""
    if not hasattr(resource, "RUSAGE_THREAD"):
        return 0
    return int(resource.getrusage(resource.RUSAGE_THREAD).ru_inblock)
