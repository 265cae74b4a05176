"""Bandwidth caps: one token bucket per target, shared by its copy threads."""

from __future__ import annotations

import threading
import time

from vna.targets.target import Readable


class Throttle:
    """Lets at most `rate` bytes per second through, averaged over about a second."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self._lock = threading.Lock()
        self._allowance = rate or 0.0
        self._last = time.monotonic()

    def consume(self, nbytes: int) -> None:
        """Block until `nbytes` may be sent."""
        if not self.rate:
            return
        with self._lock:
            now = time.monotonic()
            self._allowance = min(self.rate, self._allowance + (now - self._last) * self.rate)
            self._last = now
            self._allowance -= nbytes
            wait = -self._allowance / self.rate if self._allowance < 0 else 0.0
        if wait > 0:
            time.sleep(wait)


class ThrottledReader:
    """A file-like reader that pays the throttle for every byte it hands out."""

    def __init__(self, raw: Readable, throttle: Throttle) -> None:
        self.raw = raw
        self.throttle = throttle

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.throttle.consume(len(data))
        return data
