"""The replicator against real targets: a folder, Azurite and moto's S3."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from replicator.daemon import Replicator
from replicator.reconcile import reconcile
from tests.conftest import Archive, make_archive
from vna import digest
from vna.index import schema
from vna.reports.replication import collect
from vna.sample import SampleSpec, generate
from vna.targets.registry import open_target

SPEC = SampleSpec(instances=8, per_series=4, rows=32, columns=32)


def archive_with(
    tmp_path: Path, url: str, targets: list[dict[str, Any]], n: int = 8, **kw: Any
) -> Archive:
    archive = make_archive(tmp_path, url, targets=targets, **kw)
    generate(archive.drop(), SampleSpec(instances=n, per_series=4, rows=32, columns=32))
    archive.ingest()
    return archive


def replicate(archive: Archive, **kw: Any) -> tuple[bool, Replicator]:
    r = Replicator(archive.settings, archive.engine)
    return r.run(once=True, **kw), r


def replica_states(archive: Archive, target: str) -> dict[str, int]:
    r = schema.replicas
    with archive.engine.connect() as conn:
        return dict(
            conn.execute(
                select(r.c.state, func.count()).where(r.c.target == target).group_by(r.c.state)
            ).all()
        )


def assert_target_matches_index(archive: Archive, name: str) -> None:
    target = open_target(archive.settings.target(name))
    with archive.engine.connect() as conn:
        rows = conn.execute(select(schema.instances.c.path, schema.instances.c.digest)).all()
    assert sorted(o.path for o in target.list()) == sorted(p for p, _ in rows)
    for path, d in rows:
        with target.open(path) as fh:
            assert digest.of_stream(fh) == d


def test_once_copies_and_verifies_every_instance(
    tmp_path: Path, target_config: dict[str, Any]
) -> None:
    archive = archive_with(tmp_path, f"sqlite:///{tmp_path}/index.db", [target_config])

    complete, r = replicate(archive)

    name = target_config["name"]
    assert complete
    assert r.lanes[name].uploaded == 8
    assert replica_states(archive, name) == {"verified": 8}
    assert_target_matches_index(archive, name)


def test_copies_waiting_to_be_claimed_never_wait_for_a_poll(tmp_path: Path, index_url: str) -> None:
    """The loop waits `poll_seconds` only when it has nothing to do. A round whose claims were
    held back by a full batch waiting for the settler, and which then recorded that batch,
    once returned "idle" with copies still pending: an initial copy paused a poll (1 s by
    default) every few batches, and took four times as long as it should."""
    target = {"name": "nfs", "url": f"file://{tmp_path}/replica", "concurrency": 4}
    archive = archive_with(
        tmp_path, index_url, [target], n=48, replicator={"poll_seconds": 3600, "batch_size": 4}
    )
    r = Replicator(archive.settings, archive.engine)
    pending_at_wait: list[int] = []

    def no_wait(timeout: float | None = None) -> bool:
        states = replica_states(archive, "nfs")
        pending_at_wait.append(sum(n for s, n in states.items() if s != "verified"))
        return False

    r.stop_event.wait = no_wait  # type: ignore[method-assign]
    assert r.run(once=True)
    assert replica_states(archive, "nfs") == {"verified": 48}
    assert pending_at_wait == [0] * len(pending_at_wait), pending_at_wait


def test_no_change_pass_uploads_nothing_and_new_study_follows(
    tmp_path: Path, index_url: str
) -> None:
    archive = archive_with(
        tmp_path, index_url, [{"name": "nfs", "url": f"file://{tmp_path}/replica"}]
    )
    replicate(archive)

    complete, idle = replicate(archive)
    assert complete and idle.lanes["nfs"].uploaded == 0
    assert idle.lanes["nfs"].target is None  # nothing to copy: the target was not even opened

    generate(archive.drop(), SampleSpec(instances=3, rows=16, columns=16, seed=42))
    archive.ingest()
    complete, after = replicate(archive)
    assert complete and after.lanes["nfs"].uploaded == 3
    assert_target_matches_index(archive, "nfs")


def test_object_already_on_target_is_verified_not_uploaded(tmp_path: Path, index_url: str) -> None:
    archive = archive_with(
        tmp_path, index_url, [{"name": "nfs", "url": f"file://{tmp_path}/replica"}]
    )
    replicate(archive)
    with (
        archive.engine.begin() as conn
    ):  # the index forgot it was replicated (restored backup, say)
        conn.execute(schema.replicas.delete())
        conn.execute(schema.replication_cursors.delete())

    complete, r = replicate(archive)

    assert complete and r.lanes["nfs"].uploaded == 0 and r.lanes["nfs"].copied == 8


@pytest.mark.parametrize("verify", ["metadata", "read-back"])
def test_removed_or_corrupted_replica_is_mended_by_reconciliation(
    tmp_path: Path, index_url: str, verify: str
) -> None:
    """The corrupted copy keeps its metadata (the right digest, in an xattr): the copy queued
    again must not be taken for verified by that metadata, but replaced."""
    archive = archive_with(
        tmp_path,
        index_url,
        [{"name": "nfs", "url": f"file://{tmp_path}/replica", "verify": verify}],
    )
    replicate(archive)
    replica = sorted((tmp_path / "replica" / "studies").rglob("*.dcm"))
    replica[0].unlink()
    data = bytearray(replica[1].read_bytes())
    data[-10] ^= 0xFF  # same size, other bytes
    replica[1].write_bytes(bytes(data))
    extra = tmp_path / "replica" / "studies" / "9.9" / "series" / "9.9" / "instances" / "9.9.dcm"
    extra.parent.mkdir(parents=True)
    extra.write_bytes(b"not ours")

    drift = reconcile(archive.engine, archive.settings.target("nfs"), deep=True)

    rel = lambda p: str(p.relative_to(tmp_path / "replica"))  # noqa: E731
    assert drift.missing == [rel(replica[0])]
    assert drift.wrong_digest == [rel(replica[1])]
    assert drift.extra == ["studies/9.9/series/9.9/instances/9.9.dcm"]
    assert drift.requeued == 2 and drift.deleted == 0
    assert extra.exists()  # never deleted without delete = true
    complete, r = replicate(archive)
    assert complete and r.lanes["nfs"].uploaded == 2
    assert reconcile(archive.engine, archive.settings.target("nfs"), deep=True).extra == [
        "studies/9.9/series/9.9/instances/9.9.dcm"
    ]


def test_delete_propagation_is_capped(tmp_path: Path, index_url: str) -> None:
    target = {
        "name": "nfs",
        "url": f"file://{tmp_path}/replica",
        "delete": True,
        "max_delete_share": 0.2,
    }
    archive = archive_with(tmp_path, index_url, [target])
    replicate(archive)
    extras = []
    for i in range(3):
        p = tmp_path / "replica" / "studies" / f"9.{i}" / "series" / "9" / "instances" / "9.dcm"
        p.parent.mkdir(parents=True)
        p.write_bytes(b"x")
        extras.append(p)

    drift = reconcile(archive.engine, archive.settings.target("nfs"))
    assert (
        drift.deleted == 0 and drift.delete_refused and all(p.exists() for p in extras)
    )  # 3/11 > 20%

    extras[1].unlink()
    extras[2].unlink()
    drift = reconcile(archive.engine, archive.settings.target("nfs"))
    assert drift.deleted == 1 and not extras[0].exists()  # 1/9 <= 20%


def test_closed_window_copies_nothing(tmp_path: Path) -> None:
    closed = (dt.datetime.now().hour + 12) % 24
    target = {"name": "nfs", "url": f"file://{tmp_path}/replica", "window": f"* {closed} * * *"}
    archive = archive_with(tmp_path, f"sqlite:///{tmp_path}/index.db", [target])

    complete, r = replicate(archive)

    assert not complete and r.lanes["nfs"].uploaded == 0
    assert collect(archive.settings, archive.engine)["nfs"]["window_open"] is False
    complete, r = replicate(archive, ignore_window=True)
    assert complete and r.lanes["nfs"].uploaded == 8


def test_bandwidth_cap_slows_copies_down(tmp_path: Path) -> None:
    target = {
        "name": "nfs",
        "url": f"file://{tmp_path}/replica",
        "bandwidth": "20KB/s",
        "concurrency": 4,
    }
    archive = archive_with(tmp_path, f"sqlite:///{tmp_path}/index.db", [target], n=4)
    total = sum(p.stat().st_size for p in (tmp_path / "archive" / "studies").rglob("*.dcm"))

    started = time.monotonic()
    complete, _ = replicate(archive)
    elapsed = time.monotonic() - started

    assert complete
    assert elapsed >= (total - 20_000) / 20_000 * 0.9  # one second of burst allowed


def test_status_shows_backlog_lag_and_progress(tmp_path: Path, index_url: str) -> None:
    archive = archive_with(
        tmp_path, index_url, [{"name": "nfs", "url": f"file://{tmp_path}/replica"}]
    )
    time.sleep(1.1)
    before = collect(archive.settings, archive.engine)["nfs"]
    assert before["backlog"] == 8 and before["backlog_bytes"] > 0 and before["lag_seconds"] >= 1
    assert before["feed_behind"] == 8

    replicate(archive)

    after = collect(archive.settings, archive.engine)["nfs"]
    assert after["backlog"] == 0 and after["lag_seconds"] == 0 and after["verified"] == 8
    assert after["throughput_files_per_s"] > 0 and after["feed_behind"] == 0


def test_two_replicators_share_the_work_without_copying_twice(
    tmp_path: Path, index_url: str
) -> None:
    target = {"name": "nfs", "url": f"file://{tmp_path}/replica", "concurrency": 2}
    archive = archive_with(tmp_path, index_url, [target], n=24, replicator={"batch_size": 3})
    workers = [Replicator(archive.settings, archive.engine) for _ in range(2)]
    for i, w in enumerate(workers):
        w.worker += f"-{i}"
    threads = [threading.Thread(target=w.run, kwargs={"once": True}) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)

    uploads = [w.lanes["nfs"].uploaded for w in workers]
    assert sum(uploads) == 24
    assert replica_states(archive, "nfs") == {"verified": 24}


def test_a_slow_target_never_holds_up_a_fast_one(
    tmp_path: Path, index_url: str, monkeypatch: Any
) -> None:
    """Each target's copies wake the loop on their own: while every copy to a slow target
    hangs, the fast target is brought fully up to date. The loop once waited on each
    target's copies in turn, so a target whose copies took long stalled the others' claims;
    with the wait made endless here, the fast target would never finish."""
    import replicator.daemon as daemon_mod
    from vna.targets.local import LocalTarget

    monkeypatch.setattr(daemon_mod, "WAIT_SECONDS", 3600.0)
    held = threading.Event()
    real_put = LocalTarget.put

    def put(self: LocalTarget, *args: Any) -> bool:
        if self.name == "slow":
            held.wait(120)
        return real_put(self, *args)

    monkeypatch.setattr(LocalTarget, "put", put)
    targets = [
        {"name": "slow", "url": f"file://{tmp_path}/slow", "concurrency": 2},
        {"name": "fast", "url": f"file://{tmp_path}/fast", "concurrency": 2},
    ]
    archive = archive_with(tmp_path, index_url, targets, n=40, replicator={"batch_size": 4})
    r = Replicator(archive.settings, archive.engine)
    outcome: list[bool] = []
    runner = threading.Thread(target=lambda: outcome.append(r.run(once=True)))
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while replica_states(archive, "fast") != {"verified": 40}:
            assert time.monotonic() < deadline, replica_states(archive, "fast")
            time.sleep(0.05)
        assert replica_states(archive, "slow").get("verified", 0) == 0
    finally:
        held.set()
        runner.join(timeout=120)
    assert outcome == [True]
    assert replica_states(archive, "slow") == {"verified": 40}


def test_copies_of_a_killed_replicator_are_taken_over_at_once(
    tmp_path: Path, index_url: str
) -> None:
    """A replicator killed mid-run leaves its copies claimed for a whole lease (five minutes
    by default). One started after it on the same machine sees that process is gone and
    takes them over at once; claims of a live process, or of another machine, stay theirs."""
    import subprocess
    import sys

    from replicator.claims import expire_gone
    from replicator.feed import feed
    from replicator.owners import worker_name

    archive = archive_with(
        tmp_path, index_url, [{"name": "nfs", "url": f"file://{tmp_path}/replica"}], n=8
    )
    feed(archive.engine, "nfs")  # the copies queued, none made yet
    place = worker_name().partition(":")[0]
    gone_pid = subprocess.Popen([sys.executable, "-c", "pass"])
    gone_pid.wait()
    holders = {
        "gone": f"{place}:{gone_pid.pid}:1",
        "alive": f"{place}:{os.getpid()}:1",
        "elsewhere": f"other-host@0.0:{gone_pid.pid}:1",
    }
    r = schema.replicas
    until = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    with archive.engine.begin() as conn:
        ids = conn.execute(select(r.c.id).order_by(r.c.id)).scalars().all()
        for holder, chunk in zip(holders.values(), (ids[:4], ids[4:6], ids[6:]), strict=True):
            conn.execute(
                r.update()
                .where(r.c.id.in_(chunk))
                .values(state="copying", claimed_by=holder, claimed_until=until)
            )

    def claims() -> dict[str, tuple[int, bool]]:
        """Copies per holder, and whether their lease is still running."""
        moment = dt.datetime.now(dt.UTC)
        with archive.engine.connect() as conn:
            rows = conn.execute(
                select(r.c.claimed_by, r.c.claimed_until).where(r.c.state == "copying")
            )
            held: dict[str, tuple[int, bool]] = {}
            for holder, lease in rows:
                count, _ = held.get(holder, (0, True))
                running = lease.replace(tzinfo=lease.tzinfo or dt.UTC) > moment
                held[holder] = (count + 1, running)
        return held

    assert expire_gone(archive.engine, "nfs") == {holders["gone"]: 4}
    assert claims() == {
        holders["gone"]: (4, False),
        holders["alive"]: (2, True),
        holders["elsewhere"]: (2, True),
    }

    # The live and the remote workers gave theirs back; the gone one's are still claimed.
    with archive.engine.begin() as conn:
        conn.execute(
            r.update()
            .where(r.c.claimed_by != holders["gone"])
            .values(state="pending", claimed_by=None, claimed_until=None)
        )
        conn.execute(
            r.update().where(r.c.claimed_by == holders["gone"]).values(claimed_until=until)
        )
    rep = Replicator(archive.settings, archive.engine)
    outcome: list[bool] = []
    runner = threading.Thread(target=lambda: outcome.append(rep.run(once=True)))
    runner.start()
    runner.join(timeout=60)
    if runner.is_alive():  # waiting for the hour-long lease
        rep.stop()
        runner.join()
    assert outcome == [True]
    assert replica_states(archive, "nfs") == {"verified": 8}
    assert rep.lanes["nfs"].uploaded == 8


def test_the_backlog_counts_open_copies_and_changes_not_yet_fed(
    tmp_path: Path, index_url: str
) -> None:
    """The count the daemon follows a large backlog by, taken from two index ranges, agrees
    with the exact count over every instance (`unverified`) as work is fed and done."""
    from replicator.daemon import backlog, unverified
    from replicator.feed import feed

    archive = archive_with(
        tmp_path, index_url, [{"name": "nfs", "url": f"file://{tmp_path}/replica"}], n=8
    )
    counts = [(backlog(archive.engine, "nfs"), unverified(archive.engine, "nfs"))]
    feed(archive.engine, "nfs")
    counts.append((backlog(archive.engine, "nfs"), unverified(archive.engine, "nfs")))
    replicate(archive)
    counts.append((backlog(archive.engine, "nfs"), unverified(archive.engine, "nfs")))
    generate(archive.drop(), SampleSpec(instances=4, per_series=4, rows=32, columns=32, seed=7))
    archive.ingest()
    counts.append((backlog(archive.engine, "nfs"), unverified(archive.engine, "nfs")))

    assert counts == [(8, 8), (8, 8), (0, 0), (4, 4)]


def test_edited_window_takes_effect_without_restart(tmp_path: Path) -> None:
    import replicator.daemon as daemon_mod
    from vna import settings as settings_mod

    closed = (dt.datetime.now().hour + 12) % 24
    target = {"name": "nfs", "url": f"file://{tmp_path}/replica", "window": f"* {closed} * * *"}
    archive = archive_with(tmp_path, f"sqlite:///{tmp_path}/index.db", [target])
    opened = settings_mod.from_dict(
        {"index": {"url": f"sqlite:///{tmp_path}/index.db"}, "targets": [{**target, "window": ""}]},
        tmp_path,
    )
    rep = Replicator(archive.settings, archive.engine, reload=lambda: opened)
    daemon_mod.RELOAD_SECONDS = 0.0
    try:
        assert rep.run(once=True)
    finally:
        daemon_mod.RELOAD_SECONDS = 5.0
    assert rep.lanes["nfs"].uploaded == 8


def test_new_copies_to_an_object_store_cost_one_put_each(tmp_path: Path, azurite: Any) -> None:
    """A copy never tried goes straight up (its folder listed once, not a stat per copy), and
    the put's answer (the MD5 the store computed) verifies it without another request."""
    from tests.servers import FlakyProxy

    proxy = FlakyProxy(azurite.port, failures=0)
    try:
        endpoint = azurite.connection_string.replace(f":{azurite.port}/", f":{proxy.port}/")
        url = f"az://{azurite.new_container()}/site-1"
        target = {
            "name": "cloud",
            "url": url,
            "storage_options": {"connection_string": endpoint},
        }  # the default verification
        archive = archive_with(tmp_path, f"sqlite:///{tmp_path}/index.db", [target])

        complete, r = replicate(archive)

        assert complete and r.lanes["cloud"].uploaded == 8
        assert proxy.methods["PUT"] == 8
        assert proxy.methods["HEAD"] == 0
        assert proxy.methods["GET"] == 2  # a listing of each series folder: 8 instances in 2
        assert_target_matches_index(archive, "cloud")
    finally:
        proxy.close()


@pytest.mark.parametrize("verify", ["metadata", "read-back"])
def test_an_upload_is_read_back_unless_the_stores_answer_proves_it(
    tmp_path: Path, monkeypatch: Any, verify: str
) -> None:
    """By default the put's answer proves an upload; where a store's answer proves nothing
    (no MD5 reported, a multipart upload), the copy is read back and hashed before it
    counts. `read-back` reads back every upload."""
    from vna.targets.local import LocalTarget

    real_put, real_open = LocalTarget.put, LocalTarget.open
    opened: list[str] = []
    proves = {"0": True, "1": False}  # the first series' puts prove the copy, the second's not

    def put(self: LocalTarget, relpath: str, *args: Any) -> bool:
        return real_put(self, relpath, *args) and proves[series_of[relpath]]

    def open_(self: LocalTarget, relpath: str) -> Any:
        opened.append(relpath)
        return real_open(self, relpath)

    monkeypatch.setattr(LocalTarget, "put", put)
    monkeypatch.setattr(LocalTarget, "open", open_)
    target = {"name": "nfs", "url": f"file://{tmp_path}/replica", "verify": verify}
    archive = archive_with(tmp_path, f"sqlite:///{tmp_path}/index.db", [target])
    with archive.engine.connect() as conn:
        paths = conn.execute(select(schema.instances.c.path)).scalars().all()
    first = min(p.split("/")[3] for p in paths)  # studies/S/series/<series>/instances/I.dcm
    series_of = {p: "0" if p.split("/")[3] == first else "1" for p in paths}

    complete, r = replicate(archive)

    assert complete and r.lanes["nfs"].uploaded == 8
    unproven = sorted(p for p, s in series_of.items() if s == "1")
    assert sorted(opened) == (sorted(series_of) if verify == "read-back" else unproven)
    assert_target_matches_index(archive, "nfs")


def test_a_large_copy_counts_only_if_the_bytes_sent_were_the_archived_ones(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """A file too large for one put is read twice: once to check it against the index, once
    to send it. If the bytes change in between (they rot on the disk), the store's answer
    (here: every byte written) proves only that it took what it was sent; hashed on the way,
    the copy is not proven, is read back, and fails instead of counting as verified."""
    import replicator.copier
    import vna.digest

    monkeypatch.setattr(replicator.copier, "SINGLE_PUT_MAX", 1024)
    target = {"name": "nfs", "url": f"file://{tmp_path}/r", "concurrency": 1}
    archive = archive_with(tmp_path, f"sqlite:///{tmp_path}/index.db", [target])
    real_of_stream = vna.digest.of_stream
    rotted: list[int] = []

    def checked_then_rots(fh: Any) -> str:
        checked = real_of_stream(fh)
        if not rotted:  # the first file checked rots right after its check
            with open(f"/proc/self/fd/{fh.fileno()}", "r+b") as same:
                same.seek(2000)
                rotted.append(same.write(b"\xff\xfe"))
        return checked

    monkeypatch.setattr(vna.digest, "of_stream", checked_then_rots)
    complete, r = replicate(archive, max_attempts=1)

    assert rotted == [2] and not complete
    assert r.lanes["nfs"].copied == 7 and r.lanes["nfs"].failed == 1
    assert replica_states(archive, "nfs") == {"verified": 7, "failed": 1}


def test_restored_index_finds_what_every_target_holds(
    tmp_path: Path, target_config: dict[str, Any]
) -> None:
    """Folder listings, not per-copy stats, tell a copy never tried that the target has it."""
    archive = archive_with(tmp_path, f"sqlite:///{tmp_path}/index.db", [target_config])
    name = target_config["name"]
    replicate(archive)
    with archive.engine.begin() as conn:  # a backup of the index from before replication
        conn.execute(schema.replicas.delete())
        conn.execute(schema.replication_cursors.delete())

    complete, r = replicate(archive)

    assert complete and r.lanes[name].uploaded == 0 and r.lanes[name].copied == 8
    assert replica_states(archive, name) == {"verified": 8}
