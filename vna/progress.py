"""Progress of long operations: a bar on a terminal, plain periodic lines in a log.

A reindex, a reconciliation or a first full replication can run for hours.
Someone watching a terminal wants a bar with rate and ETA, and that is tqdm's
job (its rate smoothing and ETA included). A service writes to a log, where a
redrawn bar is noise: there the same progress becomes one line through
`logging` at most every `interval` seconds, and a last line with the total and
the time taken, so a log read the next morning says how far a run got and how
fast it went.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from types import TracebackType
from typing import Never, TextIO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

logger = logging.getLogger(__name__)
INTERVAL_SECONDS = 10.0


class Progress:
    """Counts work done towards an optional `total`; use it as a context manager.

    `bar=None` shows a tqdm bar when `stream` (default: stderr) is a terminal;
    `bar=False` always writes log lines (a daemon, whose terminal, if any, is
    not watched for bars). Whoever does the work calls `update` or `advance_to`
    from one thread.
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        unit: str = "files",
        *,
        interval: float = INTERVAL_SECONDS,
        bar: bool | None = None,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        log: logging.Logger | None = None,
    ) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.done = 0
        self._interval = interval
        self._clock = clock
        self._log = log or logger
        self._started = self._last_at = clock()
        self._last_done = 0
        self._closed = False
        self._stack = ExitStack()
        out = stream if stream is not None else sys.stderr
        self._bar: tqdm[Never] | None = None  # no iterable: counted by hand
        if bar or (bar is None and out.isatty()):
            self._bar = self._stack.enter_context(
                tqdm(total=total, desc=label, unit=f" {unit}", file=out, dynamic_ncols=True)
            )
            # Log records go above the bar instead of tearing it apart.
            self._stack.enter_context(logging_redirect_tqdm())
        else:
            to_go = f", {total} {unit} to do" if total is not None else ""
            self._log.info("%s: started%s", label, to_go)

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(interrupted=exc_type is not None)

    def update(self, n: int = 1) -> None:
        """`n` more units done."""
        if n <= 0:
            return
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = self._clock()
        if now - self._last_at >= self._interval:
            self._log.info("%s", self._line(now))
            self._last_at, self._last_done = now, self.done

    def advance_to(self, done: int) -> None:
        """For callers that report a running count rather than increments."""
        self.update(done - self.done)

    def close(self, interrupted: bool = False) -> None:
        """End the bar, or write the last log line; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._bar is None:
            self._log.info("%s", self._summary(self._clock(), interrupted))
        self._stack.close()

    def _count(self) -> str:
        if self.total is None:
            return f"{self.done} {self.unit}"
        return f"{self.done}/{self.total} {self.unit}"

    def _line(self, now: float) -> str:
        """The rate since the previous line, so a slowdown shows in the log as it happens."""
        text = f"{self.label}: {self._count()}"
        if self.total is not None:
            text += f" ({100 * self.done // self.total if self.total else 100}%)"
        seconds = now - self._last_at
        if seconds <= 0:
            return text
        rate = (self.done - self._last_done) / seconds
        text += f", {rate:.1f} {self.unit}/s"
        if self.total is not None and rate > 0:
            text += f", ETA {_duration(max(self.total - self.done, 0) / rate)}"
        return text

    def _summary(self, now: float, interrupted: bool) -> str:
        seconds = now - self._started
        text = f"{self.label}: {self._count()} in {_duration(seconds)}"
        if seconds > 0:
            text += f", {self.done / seconds:.1f} {self.unit}/s"
        return text + (" (interrupted)" if interrupted else "")


def _duration(seconds: float) -> str:
    return str(dt.timedelta(seconds=round(seconds)))
