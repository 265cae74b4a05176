"""Batches committed on a thread of their own, while the daemon keeps the workers fed.

A batch's commit waits on the disk and the index: the syncfs of its staged
files, an index transaction, the folder fsyncs and the removal of its drop
files (the kernel frees each file's pages as it goes). Done by the daemon's
loop, that was 60 ms a batch in which no new work reached the workers, and
they sat idle for most of it. Here one thread commits the batches one after
another, in the order they came, and hands back what became of each; the
daemon applies that to its own state on its own thread, so nothing but the
two queues is shared.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from dataclasses import dataclass

from vna.errors import TargetUnavailable
from vna.ingest.commit import Committer, Outcome
from vna.ingest.prepare import Prepared, Result

logger = logging.getLogger(__name__)

MAX_BACKOFF = 60.0


@dataclass
class Committed:
    """A batch handed back: its outcomes, or None if it failed (every file is taken again)."""

    results: list[Result]
    outcomes: list[Outcome] | None


class CommitThread:
    def __init__(self, committer: Committer, stop: threading.Event) -> None:
        self.committer = committer
        self.stop = stop
        self._todo: queue.SimpleQueue[list[Result] | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[Committed] = queue.SimpleQueue()
        self._outstanding = 0  # batches handed in and not yet taken back (daemon's thread)
        self._backoff = 1.0
        self._thread = threading.Thread(target=self._run, name="vna-commit", daemon=True)
        self._thread.start()

    @property
    def outstanding(self) -> int:
        """Batches handed in whose outcomes the daemon has not taken back yet."""
        return self._outstanding

    def put(self, results: list[Result]) -> None:
        self._outstanding += 1
        self._todo.put(results)

    def take(self, timeout: float = 0) -> list[Committed]:
        """The batches committed (or failed) since the last call, in order; with a
        `timeout`, wait that long for the first."""
        out: list[Committed] = []
        try:
            out.append(self._done.get(timeout=timeout) if timeout else self._done.get_nowait())
            while True:
                out.append(self._done.get_nowait())
        except queue.Empty:
            pass
        self._outstanding -= len(out)
        if self._outstanding and not self._thread.is_alive():
            raise CommitThreadDied("the commit thread stopped with batches still to commit")
        return out

    def close(self) -> list[Committed]:
        """Commit what was handed in, stop the thread, and return what is not taken yet."""
        self._todo.put(None)
        self._thread.join()
        return self.take()

    def _run(self) -> None:
        while (results := self._todo.get()) is not None:
            try:
                outcomes = self._commit(results)
            except BaseException:  # handed back as failed, never a silent end of the thread
                logger.exception("committing a batch failed unexpectedly")
                outcomes = None
            self._done.put(Committed(results, outcomes))

    def _commit(self, results: list[Result]) -> list[Outcome] | None:
        try:
            outcomes = self.committer.commit(results)
        except Exception as exc:  # the daemon outlives any one batch
            if isinstance(exc, TargetUnavailable):
                logger.error("index unavailable, retrying in %.0fs: %s", self._backoff, exc)
            else:
                logger.exception("batch failed, retrying in %.0fs", self._backoff)
            for r in results:
                if isinstance(r, Prepared):
                    with contextlib.suppress(OSError):  # left for the next start if it must be
                        r.job.discard_staged()
            # Later batches wait too: the index is what failed, most likely.
            self.stop.wait(self._backoff)
            self._backoff = min(self._backoff * 2, MAX_BACKOFF)
            return None
        self._backoff = 1.0
        return outcomes


class CommitThreadDied(RuntimeError):
    """The commit thread ended while batches were waiting for it: the daemon must stop."""
