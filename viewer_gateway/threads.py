"""The gateway's worker threads: where index queries and file reads run, off the event loop.

One pool of `WORKER_THREADS` threads, used through asyncio's `run_in_executor`.
anyio's worker threads (FastAPI's `run_in_threadpool`) did the same job at about
twice the cost per call: 143 us against 77 us for an empty call on a 2-core VM,
where a search that finds one study takes 190 us of work. Each thread holds at
most one index connection at a time, so the gateway's engine keeps as many
(engine.py).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from viewer_gateway.engine import WORKER_THREADS

P = ParamSpec("P")
T = TypeVar("T")


class Workers:
    """Threads are started as work comes and kept until `close`; work after that (an app
    whose lifespan is run again, as tests do) starts new ones."""

    def __init__(self, threads: int = WORKER_THREADS) -> None:
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)` in a worker thread. Cancelling the await does not stop a
        call already running; its result is dropped."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="gateway")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(_call, fn, args, kwargs))

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def _call(fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
    """`fn`'s StopIteration as a RuntimeError: an asyncio future cannot hold a StopIteration,
    and its await would never end (`next` on an empty iterator, say)."""
    try:
        return fn(*args, **kwargs)
    except StopIteration as exc:
        raise RuntimeError(f"{getattr(fn, '__name__', fn)!s} raised StopIteration") from exc
