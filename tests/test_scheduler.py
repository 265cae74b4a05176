"""Scheduled jobs: persisted across restarts, failures recorded and retried, one leader.

The scheduler runs for real (APScheduler, its job store in the index) on SQLite
and PostgreSQL; jobs get second-granular triggers so that many runs fit in a
few seconds.
"""

from __future__ import annotations

import datetime as dt
import errno
import threading
import time
import zoneinfo
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError

from tests.conftest import Archive, in_thread, make_archive
from vna import digest as digest_mod
from vna.cli.main import main as vna_main
from vna.index import schema
from vna.layout import Layout
from vna.reports import files
from vna.sample import SampleSpec, generate
from vna.scheduler import lease, runs
from vna.scheduler.jobs import JobBody, JobSpec, configured
from vna.scheduler.service import Scheduler
from vna.settings import Settings
from vna.verify import verify_share


def every_second(spec: JobSpec, zone: dt.tzinfo | None) -> CronTrigger:
    return CronTrigger(second="*", timezone=dt.UTC)


@contextmanager
def running(scheduler: Scheduler) -> Iterator[threading.Event]:
    stop = threading.Event()
    with in_thread(lambda: scheduler.run(stop), stop.set):
        yield stop


def wait_for(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def outcomes(engine: Engine, job: str) -> list[str]:
    return [r.outcome for r in reversed(runs.history(engine, job, limit=100))]


def test_a_failing_job_is_recorded_retried_and_does_not_stop_the_others(
    tmp_path: Path, index_url: str
) -> None:
    archive = make_archive(tmp_path, index_url)
    calls = {"boom": 0, "tick": 0}

    def boom(settings: Settings, engine: Engine, stop: threading.Event) -> str:
        calls["boom"] += 1
        raise RuntimeError(f"target unreachable (attempt {calls['boom']})")

    def tick(settings: Settings, engine: Engine, stop: threading.Event) -> str:
        calls["tick"] += 1
        return f"tick {calls['tick']}"

    scheduler = Scheduler(archive.settings, archive.engine, lease_seconds=3, trigger=every_second)
    scheduler.specs = {
        "boom": JobSpec("boom", "* * * * *", boom, "always fails"),
        "tick": JobSpec("tick", "* * * * *", tick, "always works"),
    }
    with running(scheduler):
        wait_for(lambda: calls["boom"] >= 3 and calls["tick"] >= 3)
    failed = runs.history(archive.engine, "boom", limit=100)
    assert len(failed) >= 3
    assert all(r.outcome == "failed" for r in failed if r.outcome != "running")
    assert "RuntimeError: target unreachable" in failed[-1].detail
    assert all(r.trigger == "schedule" for r in failed)
    ticks = outcomes(archive.engine, "tick")
    assert ticks.count("ok") >= 3


def test_jobs_survive_a_restart_and_a_due_run_happens_at_start_up(
    tmp_path: Path, index_url: str
) -> None:
    archive = make_archive(tmp_path, index_url)
    ran: list[dt.datetime] = []

    def nightly(settings: Settings, engine: Engine, stop: threading.Event) -> str:
        ran.append(dt.datetime.now(dt.UTC))
        return "done"

    due = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=4)

    def at_due(spec: JobSpec, zone: dt.tzinfo | None) -> CronTrigger:
        return CronTrigger(minute=due.minute, second=due.second, timezone=dt.UTC)

    def scheduler() -> Scheduler:
        s = Scheduler(archive.settings, archive.engine, lease_seconds=2, trigger=at_due)
        s.specs = {"nightly": JobSpec("nightly", "nightly", nightly, "once an hour, once")}
        return s

    with running(scheduler()):
        wait_for(lambda: _stored_next_run(archive.engine, "nightly") is not None)
    stored = _stored_next_run(archive.engine, "nightly")
    assert stored is not None and abs(stored - due.replace(microsecond=0).timestamp()) < 1
    assert not ran
    # Down while the job falls due ...
    while dt.datetime.now(dt.UTC) < due + dt.timedelta(seconds=1):
        time.sleep(0.2)
    assert not ran
    # ... and the next scheduler runs it at start-up, from the stored time.
    with running(scheduler()):
        wait_for(lambda: len(ran) == 1)
    assert ran[0] >= due
    assert outcomes(archive.engine, "nightly") == ["ok"]
    again = _stored_next_run(archive.engine, "nightly")
    assert again is not None and again > due.timestamp() + 3000  # the same time, next hour


def test_a_run_missed_beyond_the_grace_time_is_recorded_as_missed(
    tmp_path: Path, index_url: str
) -> None:
    archive = make_archive(tmp_path, index_url, scheduler={"misfire_grace_seconds": 1})
    kolkata = zoneinfo.ZoneInfo("Asia/Kolkata")  # +05:30: a wrong zone shifts even the minute
    due = dt.datetime.now(kolkata) + dt.timedelta(seconds=3)

    def at_due(spec: JobSpec, zone: dt.tzinfo | None) -> CronTrigger:
        return CronTrigger(minute=due.minute, second=due.second, timezone=kolkata)

    def scheduler() -> Scheduler:
        s = Scheduler(archive.settings, archive.engine, lease_seconds=2, trigger=at_due)
        s.specs = {"late": JobSpec("late", "late", lambda s, e, stop: "ran", "")}
        return s

    with running(scheduler()):
        wait_for(lambda: _stored_next_run(archive.engine, "late") is not None)
    while dt.datetime.now(dt.UTC) < due + dt.timedelta(seconds=3):
        time.sleep(0.2)
    with running(scheduler()):
        wait_for(lambda: outcomes(archive.engine, "late") == ["missed"])
    (run,) = runs.history(archive.engine, "late")
    assert abs((run.started_at - due).total_seconds()) < 1


def test_only_one_scheduler_leads_and_a_standby_takes_over(tmp_path: Path, index_url: str) -> None:
    archive = make_archive(tmp_path, index_url)
    who: list[str] = []

    def job_of(name: str) -> JobBody:
        def body(settings: Settings, engine: Engine, stop: threading.Event) -> str:
            who.append(name)
            return name

        return body

    first = Scheduler(archive.settings, archive.engine, lease_seconds=1.5, trigger=every_second)
    first.specs = {"job": JobSpec("job", "*", job_of("first"), "")}
    second = Scheduler(archive.settings, archive.engine, lease_seconds=1.5, trigger=every_second)
    second.specs = {"job": JobSpec("job", "*", job_of("second"), "")}
    with running(first):
        wait_for(lambda: first.leading)
        with running(second):
            wait_for(lambda: who.count("first") >= 2)
            assert "second" not in who
            assert not second.leading
        # second stopped while standing by; start it again and stop the leader
        stop_second = threading.Event()
        thread = threading.Thread(target=second.run, args=(stop_second,), daemon=True)
        thread.start()
    try:
        wait_for(lambda: who.count("second") >= 1)
    finally:
        stop_second.set()
        thread.join(timeout=20)
    assert who.count("first") >= 2


def test_the_jobs_of_the_configuration(tmp_path: Path, index_url: str) -> None:
    targets = [
        {"name": "nightly", "url": f"file://{tmp_path}/n", "window": "0 20-6 * * *"},
        {"name": "always", "url": f"file://{tmp_path}/a", "reconcile": "30 1 * * *"},
    ]
    archive = make_archive(tmp_path, index_url, targets=targets, scheduler={"report": ""})
    specs = configured(archive.settings)
    assert {n: s.cron for n, s in specs.items()} == {
        "verify": "0 2 * * *",
        "reconcile:nightly": "0 3 * * sun",
        "replicate:nightly": "0 20-6 * * *",
        "reconcile:always": "30 1 * * *",
    }


def share_archive(tmp_path: Path, index_url: str) -> Archive:
    archive = make_archive(tmp_path, index_url, scheduler={"verify_days": 3, "keep_reports": 2})
    generate(archive.drop(), SampleSpec(instances=10, per_series=5, rows=8, columns=8))
    archive.ingest()
    return archive


def test_verification_shares_cover_the_whole_archive_and_go_round(
    tmp_path: Path, index_url: str
) -> None:
    archive = share_archive(tmp_path, index_url)
    layout = Layout(archive.settings.archive.root)
    with archive.engine.connect() as conn:
        ids = [r[0] for r in conn.execute(select(schema.instances.c.id).order_by("id"))]
    after, seen = 0, []
    for _ in range(3):
        share = verify_share(archive.engine, layout, after, 3)
        assert share.checked == 4 and share.total == 10 and not share.problems
        seen.append(share.next_after)
        after = share.next_after
    # 4 + 4 + (2, then round again from the start: 2 more)
    assert seen == [ids[3], ids[7], ids[1]]


def test_vna_jobs_run_records_a_verification_that_finds_damage(
    tmp_path: Path, index_url: str, capsys: object
) -> None:
    archive = share_archive(tmp_path, index_url)
    config = archive.config_file()
    with archive.engine.connect() as conn:
        first = conn.execute(
            select(schema.instances.c.path).order_by(schema.instances.c.id).limit(1)
        ).scalar_one()
    victim = archive.settings.archive.root / first
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert vna_main(["--config", str(config), "jobs", "run", "verify"]) == 1
    assert vna_main(["--config", str(config), "jobs", "run", "verify"]) == 0  # next share
    (bad, good) = reversed(runs.history(archive.engine, "verify"))
    assert bad.outcome == "failed" and bad.trigger == "manual"
    assert f"digest-mismatch: {first}" in bad.detail
    assert good.outcome == "ok" and "re-hashed 4 of 10" in good.detail
    assert vna_main(["--config", str(config), "jobs", "run", "no-such-job"]) == 2


def test_report_job_writes_dated_reports_and_keeps_the_newest(
    tmp_path: Path, index_url: str
) -> None:
    archive = share_archive(tmp_path, index_url)
    config = archive.config_file()
    for _ in range(3):
        assert vna_main(["--config", str(config), "jobs", "run", "report:capacity"]) == 0
        time.sleep(1.1)  # names carry the second
    listed = files.listing(archive.settings.scheduler.reports)
    assert sorted({f.format for f in listed}) == ["csv", "html", "json"]
    assert len(listed) == 6  # keep_reports = 2 per format
    newest_json = next(f for f in listed if f.format == "json")
    assert '"instances": 10' in newest_json.path.read_text()
    assert files.find(archive.settings.scheduler.reports, "../index.db") is None


def _stored_next_run(engine: Engine, job: str) -> float | None:
    store = schema.scheduler_jobs
    with engine.connect() as conn:
        value = conn.execute(
            select(store.c.next_run_time).where(store.c.id == job)
        ).scalar_one_or_none()
    return float(value) if value is not None else None


def test_edited_job_times_are_picked_up_without_a_restart(tmp_path: Path, index_url: str) -> None:
    archive = make_archive(tmp_path, index_url)
    current = {"settings": archive.settings}
    scheduler = Scheduler(
        archive.settings, archive.engine, lease_seconds=1.5, reload=lambda: current["settings"]
    )
    with running(scheduler):
        wait_for(lambda: set(_stored(archive.engine)) == {"verify", "report:capacity"})
        before = _stored(archive.engine)["verify"]
        edited = make_archive(tmp_path, index_url, scheduler={"report": "", "verify": "0 4 * * *"})
        current["settings"] = edited.settings
        wait_for(lambda: set(_stored(archive.engine)) == {"verify"})
        wait_for(lambda: _stored(archive.engine)["verify"] != before)
    after = dt.datetime.fromtimestamp(_stored(archive.engine)["verify"], dt.UTC)
    local = after.astimezone()
    assert (local.hour, local.minute) == (4, 0)


def _stored(engine: Engine) -> dict[str, float]:
    store = schema.scheduler_jobs
    with engine.connect() as conn:
        return {r.id: r.next_run_time for r in conn.execute(select(store))}


def test_replication_window_job_copies_while_open_and_waits_while_closed(
    tmp_path: Path, index_url: str
) -> None:
    hour = dt.datetime.now().hour
    closed = f"0 {(hour + 3) % 24}-{(hour + 4) % 24} * * *"
    opened = f"0 {hour}-{(hour + 1) % 24} * * *"
    target = {"name": "nfs", "url": f"file://{tmp_path}/replica"}
    archive = make_archive(tmp_path, index_url, targets=[{**target, "window": closed}])
    generate(archive.drop(), SampleSpec(instances=3, per_series=3, rows=8, columns=8))
    archive.ingest()
    stop = threading.Event()
    body = configured(archive.settings)["replicate:nfs"].body
    assert body(archive.settings, archive.engine, stop) == (
        "the window closed with 3 instance(s) still to copy to nfs; the next pass goes on"
    )
    assert not (tmp_path / "replica").exists()
    reopened = make_archive(tmp_path, index_url, targets=[{**target, "window": opened}])
    body = configured(reopened.settings)["replicate:nfs"].body
    assert body(reopened.settings, reopened.engine, stop) == "target nfs fully verified"
    assert len(list((tmp_path / "replica").rglob("*.dcm"))) == 3


def test_the_scheduler_survives_an_index_failure(
    tmp_path: Path, index_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = make_archive(tmp_path, index_url)
    real = lease.acquire
    failures = {"left": 2}

    def flaky(*args: Any, **kwargs: Any) -> bool:
        if failures["left"]:
            failures["left"] -= 1
            raise OperationalError("SELECT", {}, Exception("server closed the connection"))
        return real(*args, **kwargs)

    monkeypatch.setattr(lease, "acquire", flaky)
    ran: list[int] = []
    scheduler = Scheduler(archive.settings, archive.engine, lease_seconds=0.6, trigger=every_second)
    scheduler.specs = {"tick": JobSpec("tick", "*", lambda s, e, stop: str(ran.append(1)), "")}
    with running(scheduler):
        wait_for(lambda: len(ran) >= 1)
    assert failures["left"] == 0


def test_an_unreadable_file_is_a_problem_and_the_share_moves_on(
    tmp_path: Path, index_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = share_archive(tmp_path, index_url)
    layout = Layout(archive.settings.archive.root)
    real = digest_mod.of_file
    calls = {"n": 0}

    def bad_sector(path: Path) -> str:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.EIO, "Input/output error")
        return real(path)

    monkeypatch.setattr(digest_mod, "of_file", bad_sector)
    share = verify_share(archive.engine, layout, 0, 3)
    assert share.checked == 4 and share.problem_count == 1
    (problem,) = share.problems
    assert problem.kind == "unreadable" and problem.detail == "Input/output error"
    assert share.next_after > 0
