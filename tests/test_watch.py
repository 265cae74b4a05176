"""The daemon finds new files by inotify events, by polling, and by its start-up scan."""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.conftest import Archive, in_thread, make_archive
from vna.index import schema
from vna.ingest import daemon as daemon_module
from vna.ingest.daemon import IngestDaemon
from vna.ingest.scan import Candidate
from vna.ingest.watch import Watchers
from vna.sample import SampleSpec, generate
from vna.settings import SourceSettings


def wait_for_instances(engine, n: int, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    got = 0
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            got = conn.execute(select(func.count()).select_from(schema.instances)).scalar_one()
        if got >= n:
            return got
        time.sleep(0.1)
    return got


@contextlib.contextmanager
def running(archive: Archive) -> Iterator[IngestDaemon]:
    """The ingest daemon in a thread, stopped (and proven stopped) on the way out."""
    daemon = IngestDaemon(archive.settings, archive.engine)
    with in_thread(daemon.run, daemon.stop):
        yield daemon


@pytest.mark.parametrize("watch", ["events", "poll"])
def test_running_daemon_takes_new_files_without_a_rescan(
    tmp_path: Path, index_url: str, watch: str
) -> None:
    sources = [{"name": "pacs-a", "drop": "drop/pacs-a", "watch": watch, "poll_seconds": 0.5}]
    archive = make_archive(
        tmp_path, index_url, sources=sources, settle_seconds=0.3, rescan_seconds=3600
    )
    with running(archive):
        time.sleep(1.0)  # the start-up scan is over; only events can find what comes now
        generate(archive.drop() / "late-export", SampleSpec(instances=5, rows=16, columns=16))

        assert wait_for_instances(archive.engine, 5) == 5
    assert not [p for p in archive.drop().rglob("*") if p.is_file()]


def test_a_folder_moved_in_whole_is_taken_from_its_events(tmp_path: Path, index_url: str) -> None:
    """One rename brings nested series folders: every file is taken once, from the events
    of the folder and of what lies below it, and an ignored file below it is left alone."""
    archive = make_archive(tmp_path, index_url, settle_seconds=0, rescan_seconds=3600)
    export = tmp_path / "outside" / "export"
    files = generate(export, SampleSpec(instances=12, per_series=4, rows=16, columns=16))
    (files[0].parent / "partial.tmp").write_bytes(b"still being written")
    outcomes = []
    daemon = IngestDaemon(archive.settings, archive.engine, on_outcome=outcomes.append)
    with in_thread(daemon.run, daemon.stop):
        time.sleep(1.0)  # the start-up scan is over; only events can find what comes now
        export.rename(archive.drop() / "export")
        assert wait_for_instances(archive.engine, 12) == 12
        time.sleep(0.5)
    assert sorted(o.outcome for o in outcomes) == ["archived"] * 12
    left = [p.name for p in archive.drop().rglob("*") if p.is_file()]
    assert left == ["partial.tmp"]


def test_files_dropped_while_the_daemon_was_down_are_taken_at_start(
    tmp_path: Path, index_url: str
) -> None:
    archive = make_archive(tmp_path, index_url, settle_seconds=0, rescan_seconds=3600)
    generate(archive.drop(), SampleSpec(instances=3, rows=16, columns=16))
    with running(archive):
        assert wait_for_instances(archive.engine, 3) == 3


def test_a_backlog_larger_than_max_pending_does_not_wait_for_the_next_rescan(
    tmp_path: Path, index_url: str
) -> None:
    """Files there before the daemon started raise no events: a rescan that stopped at
    max_pending scans again once half of what it took is done, not after rescan_seconds."""
    archive = make_archive(
        tmp_path, index_url, settle_seconds=0, rescan_seconds=3600, max_pending=4
    )
    generate(archive.drop(), SampleSpec(instances=14, rows=16, columns=16))
    with running(archive):
        assert wait_for_instances(archive.engine, 14) == 14


def _hints_within(watchers: Watchers, seconds: float) -> list[tuple[str, str, bool]]:
    got = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            got.append(watchers.hints.get(timeout=0.05))
    return got


def test_events_name_new_files_and_not_each_write_or_removal(tmp_path: Path) -> None:
    """Each write to a file being written, and the removal of each archived file, would be
    an event to take in and throw away: inotify is not asked for them."""
    drop = tmp_path / "drop"
    watchers = Watchers([SourceSettings(name="pacs-a", drop=drop)])
    watchers.start()
    try:
        path = drop / "IM0001"
        with path.open("wb") as fh:
            for _ in range(20):
                fh.write(b"\0" * 4096)
                fh.flush()
        written = _hints_within(watchers, 0.5)
        path.unlink()
        removed = _hints_within(watchers, 0.5)
    finally:
        watchers.stop()
    assert written and all(hint == ("pacs-a", str(path), False) for hint in written)
    assert len(written) <= 2  # created, closed
    assert removed == []


def test_a_file_written_into_a_folder_after_its_scan_is_taken_from_its_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder's event has the daemon scan it; a file written into it just after that scan
    is not among what the scan found, and is taken from its own event in the same drain."""
    archive = make_archive(tmp_path, f"sqlite:///{tmp_path}/index.db", settle_seconds=0)
    series = archive.drop() / "S1"
    series.mkdir(parents=True)
    (series / "IM1").write_bytes(b"first")
    late = series / "IM2"
    scan = daemon_module.scan

    def scan_then_write(*args: object, **kwargs: object) -> Iterator[Candidate]:
        yield from scan(*args, **kwargs)  # type: ignore[arg-type]
        late.write_bytes(b"written after the listing")

    monkeypatch.setattr(daemon_module, "scan", scan_then_write)
    daemon = IngestDaemon(archive.settings, archive.engine)
    hints: queue.SimpleQueue[tuple[str, str, bool]] = queue.SimpleQueue()
    for hint in [(str(series), True), (str(series / "IM1"), False), (str(late), False)]:
        hints.put(("pacs-a", *hint))
    daemon._drain_hints(hints)
    assert sorted(Path(p).name for p in daemon.pending) == ["IM1", "IM2"]
