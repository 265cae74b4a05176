"""What a target held in a folder before this replicator started copying into it.

A copy never tried before is looked for on the target only if its folder's
listing, taken the first time a copy into that folder comes along, names it:
one listing per folder instead of one request per copy, and no request at all
for the objects of a new series beyond that. An index restored from a backup
(its replicas forgotten) still finds what the target already holds, and
verifies it rather than sending it again.

A listing stays valid while this process copies into its folder: new objects
there are this process's own claimed copies (claims never overlap), recorded
in the index as they are verified. Listings are kept for `ttl` seconds and at
most `folders` of them, so memory stays bounded however long the daemon runs.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from vna.targets.target import Target

TTL_SECONDS = 300.0
FOLDERS = 256


class Presence:
    def __init__(self, target: Target, ttl: float = TTL_SECONDS, folders: int = FOLDERS) -> None:
        self.target = target
        self.ttl = ttl
        self.folders = folders
        self._lock = threading.Lock()
        self._listings: OrderedDict[str, tuple[float, frozenset[str]]] = OrderedDict()
        self._listing_now: dict[str, threading.Lock] = {}

    def held(self, relpath: str) -> bool:
        """Whether the object was in its folder's listing (listed now, if not yet)."""
        folder, _, name = relpath.rpartition("/")
        return name in self._listing(folder)

    def _listing(self, folder: str) -> frozenset[str]:
        with self._lock:
            cached = self._fresh(folder)
            if cached is not None:
                return cached
            once = self._listing_now.setdefault(folder, threading.Lock())
        with once:  # the copies of one folder, arriving together, wait for one listing
            with self._lock:
                cached = self._fresh(folder)
                if cached is not None:
                    return cached
            try:
                names = frozenset(self.target.names(folder))
            finally:
                with self._lock:
                    self._listing_now.pop(folder, None)
            with self._lock:
                self._listings[folder] = (time.monotonic(), names)
                self._listings.move_to_end(folder)
                while len(self._listings) > self.folders:
                    self._listings.popitem(last=False)
            return names

    def _fresh(self, folder: str) -> frozenset[str] | None:
        entry = self._listings.get(folder)
        if entry is None:
            return None
        taken, names = entry
        if time.monotonic() - taken > self.ttl:
            del self._listings[folder]
            return None
        return names
