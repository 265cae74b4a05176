"""File-system events from the drop folders (watchdog), as hints for the daemon.

Events only speed things up: the periodic rescan is what guarantees that
nothing is missed. A source on a network share uses watchdog's polling
observer (inotify sees nothing of writes made by another machine).
"""

from __future__ import annotations

import logging
import queue
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from vna.settings import SourceSettings

logger = logging.getLogger(__name__)

Hint = tuple[str, str, bool]  # (source, path, is_directory)

# The events that point at a file to take. Left out, so that inotify does not even deliver
# them: a removal (the daemon's own, one per file archived, and its folder's change with
# it), and every write to a file being written: the settle rule looks at the file again
# before it is taken, whatever the events said.
WATCHED = [DirCreatedEvent, DirMovedEvent, FileCreatedEvent, FileClosedEvent, FileMovedEvent]


class _Handler(FileSystemEventHandler):
    def __init__(self, source: str, hints: queue.SimpleQueue[Hint]) -> None:
        self.source = source
        self.hints = hints

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            # A folder that appears (created, or moved in whole) is scanned; a folder whose
            # entries changed is not: every archived file's removal changes its folder, and
            # rescanning it then would cost a scan per file. New files bring their own events.
            if event.event_type in ("created", "moved"):
                path = getattr(event, "dest_path", "") or event.src_path
                self.hints.put((self.source, str(path), True))
            return
        if event.event_type in ("created", "closed", "moved"):
            path = getattr(event, "dest_path", "") or event.src_path
            self.hints.put((self.source, str(path), False))


class Watchers:
    """One observer per source; hints land in one queue the daemon drains."""

    def __init__(self, sources: list[SourceSettings]) -> None:
        self.hints: queue.SimpleQueue[Hint] = queue.SimpleQueue()
        self._observers: list[BaseObserver] = []
        for src in sources:
            Path(src.drop).mkdir(parents=True, exist_ok=True)
            observer: BaseObserver
            if src.watch == "poll":
                observer = PollingObserver(timeout=src.poll_seconds)
            else:
                observer = Observer()
            observer.schedule(
                _Handler(src.name, self.hints), str(src.drop), recursive=True, event_filter=WATCHED
            )
            self._observers.append(observer)

    def start(self) -> None:
        for observer in self._observers:
            observer.start()

    def stop(self) -> None:
        for observer in self._observers:
            observer.stop()
        for observer in self._observers:
            observer.join(timeout=5)
