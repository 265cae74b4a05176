"""Long operations report progress: tqdm's bar on a terminal, periodic lines in a log."""

from __future__ import annotations

import io
import logging
import re
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from replicator import daemon
from replicator.daemon import Replicator
from tests.conftest import make_archive, write_config
from vna.cli.main import main
from vna.progress import Progress
from vna.sample import SampleSpec, generate


class Clock:
    """A clock the test moves by hand, so rates and ETAs are exact."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def progress_lines(caplog: pytest.LogCaptureFixture, prefix: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(prefix)]


def config(tmp_path: Path, url: str) -> Path:
    target = f'[replicator]\npoll_seconds = 0.1\n[[targets]]\nname = "nfs"\nurl = "file://{tmp_path}/replica"\n'
    return write_config(tmp_path, url, extra=target)


def test_log_lines_carry_count_share_rate_and_eta_at_most_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="vna.progress")
    clock = Clock()

    with Progress("reindex", 50000, "files", interval=10, bar=False, clock=clock) as p:
        clock.now = 10
        p.update(3500)
        clock.now = 15
        p.update(1000)  # within the interval: no line
        clock.now = 20
        p.advance_to(12000)
        clock.now = 30
        p.advance_to(50000)

    assert progress_lines(caplog, "reindex") == [
        "reindex: started, 50000 files to do",
        "reindex: 3500/50000 files (7%), 350.0 files/s, ETA 0:02:13",
        "reindex: 12000/50000 files (24%), 850.0 files/s, ETA 0:00:45",
        "reindex: 50000/50000 files (100%), 3800.0 files/s, ETA 0:00:00",
        "reindex: 50000/50000 files in 0:00:30, 1666.7 files/s",
    ]


def test_unknown_total_logs_count_and_rate_without_share_or_eta(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="vna.progress")
    clock = Clock()

    with Progress("scan", None, "objects", interval=0, bar=False, clock=clock) as p:
        clock.now = 4
        p.update(100)

    assert progress_lines(caplog, "scan") == [
        "scan: started",
        "scan: 100 objects, 25.0 objects/s",
        "scan: 100 objects in 0:00:04, 25.0 objects/s",
    ]


def test_a_run_ended_by_an_error_says_so_in_its_last_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="vna.progress")
    clock = Clock()

    with (
        pytest.raises(RuntimeError),
        Progress("reindex", 10, bar=False, clock=clock, interval=60) as p,
    ):
        clock.now = 2
        p.update(4)
        raise RuntimeError("disk gone")

    assert progress_lines(caplog, "reindex")[-1] == (
        "reindex: 4/10 files in 0:00:02, 2.0 files/s (interrupted)"
    )


def test_on_a_terminal_the_bar_is_tqdms_and_nothing_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="vna.progress")
    screen = Terminal()

    with Progress("reindex", 4, "files", stream=screen) as p:
        for _ in range(4):
            p.update()

    out = screen.getvalue()
    assert "reindex: 100%|" in out and "4/4" in out and "files/s" in out
    assert progress_lines(caplog, "reindex") == []


def test_log_records_during_a_bar_start_on_a_fresh_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    console = logging.StreamHandler(sys.stderr)
    root = logging.getLogger()
    root.addHandler(console)
    try:
        with Progress("replicate", 2, "copies") as p:
            p.update()
            logging.getLogger("vna.replicator").warning("target nfs slow")
            p.update()
    finally:
        root.removeHandler(console)

    out = screen.getvalue()
    # Written straight to the stream the record would follow the bar's text on its line;
    # through tqdm the bar is cleared first (a carriage return) and redrawn below.
    assert re.search(r"\rtarget nfs slow\n", out), out
    assert out.rindex("target nfs slow") < out.rindex("2/2")


def test_a_daemon_writes_lines_even_on_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vna.progress")
    screen = Terminal()

    with Progress("replicate", 3, "copies", bar=False, interval=0, stream=screen) as p:
        p.update(3)

    assert screen.getvalue() == ""
    assert progress_lines(caplog, "replicate")[-1].startswith("replicate: 3/3 copies in ")


def test_reindex_command_logs_progress_over_the_files_it_counted(
    tmp_path: Path,
    index_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = config(tmp_path, index_url)
    generate(tmp_path / "drop-a", SampleSpec(instances=3, rows=16, columns=16))
    assert main(["--config", str(cfg), "ingest", "--once"]) == 0
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log, not a terminal
    caplog.set_level(logging.INFO, logger="vna.progress")

    assert main(["--config", str(cfg), "reindex", "--yes"]) == 0

    lines = progress_lines(caplog, "reindex")
    assert lines[0] == "reindex: started, 3 files to do"
    assert re.fullmatch(r"reindex: 3/3 files in 0:00:\d\d(, [\d.]+ files/s)?", lines[-1])


def test_replicate_once_and_reconcile_log_progress_over_the_index(
    tmp_path: Path,
    index_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = config(tmp_path, index_url)
    generate(tmp_path / "drop-a", SampleSpec(instances=3, rows=16, columns=16))
    assert main(["--config", str(cfg), "ingest", "--once"]) == 0
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setattr(signal, "signal", lambda *_: None)  # keep pytest's own handlers
    caplog.set_level(logging.INFO)

    assert main(["--config", str(cfg), "replicate", "--once"]) == 0
    assert main(["--config", str(cfg), "replicate", "reconcile"]) == 0

    copies = progress_lines(caplog, "replicate:")
    assert copies[0] == "replicate: started, 3 copies to do"
    assert copies[-1].startswith("replicate: 3/3 copies in ")
    checked = progress_lines(caplog, "reconcile nfs:")
    assert checked[0] == "reconcile nfs: started, 3 instances to do"
    assert checked[-1].startswith("reconcile nfs: 3/3 instances in ")


def test_only_a_watched_run_or_a_large_backlog_reports_progress(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path}/index.db"
    archive = make_archive(tmp_path, url, targets=[{"name": "nfs", "url": f"file://{tmp_path}/r"}])
    generate(archive.drop(), SampleSpec(instances=4, per_series=2, rows=16, columns=16))
    archive.ingest()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    caplog.set_level(logging.INFO, logger="vna.replicator")

    assert Replicator(archive.settings, archive.engine).run(once=True)
    assert progress_lines(caplog, "replicate:") == []  # 4 copies: the batch lines suffice

    generate(archive.drop(), SampleSpec(instances=4, per_series=2, rows=16, columns=16, seed=9))
    archive.ingest()
    watched = Replicator(archive.settings, archive.engine, progress_bar=True, progress_seconds=0)
    assert watched.run(once=True)
    lines = progress_lines(caplog, "replicate:")
    assert lines[0] == "replicate: started, 4 copies to do"
    # Started, a line per batch of copies recorded (interval 0), the total.
    found = [re.match(r"replicate: ([1-4])/4 copies \(", line) for line in lines[1:-1]]
    counts = [int(m[1]) for m in found if m is not None]
    assert len(counts) == len(found) and counts == sorted(set(counts)) and counts[-1] == 4, lines
    assert lines[-1].startswith("replicate: 4/4 copies in ")


def test_the_daemon_follows_a_large_backlog_until_it_is_worked_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path}/index.db"
    archive = make_archive(tmp_path, url, targets=[{"name": "nfs", "url": f"file://{tmp_path}/r"}])
    generate(archive.drop(), SampleSpec(instances=4, per_series=2, rows=16, columns=16))
    archive.ingest()
    monkeypatch.setattr(daemon, "LARGE_BACKLOG", 2)
    caplog.set_level(logging.INFO, logger="vna.replicator")
    rep = Replicator(archive.settings, archive.engine, progress_seconds=0)
    runner = threading.Thread(target=rep.run)
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(
            line.startswith("replicate: 4/4 copies in ")
            for line in progress_lines(caplog, "replicate:")
        ):
            time.sleep(0.05)
        lines = progress_lines(caplog, "replicate:")  # before the stop, which ends it too
    finally:
        rep.stop()
        runner.join(timeout=60)

    assert lines[0] == "replicate: started, 4 copies to do"
    assert lines[-1].startswith("replicate: 4/4 copies in "), lines
