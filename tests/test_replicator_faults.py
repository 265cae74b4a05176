"""Faults: a target that goes away, a throttling target, a replicator killed mid-run.

Each ends with every instance verified on the target and nothing uploaded
twice beyond the copies a crash interrupted.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from replicator.daemon import Replicator
from tests.conftest import make_archive
from tests.servers import Azurite, FlakyProxy, MotoS3
from tests.test_replicator import assert_target_matches_index, replica_states
from vna.index import schema
from vna.sample import SampleSpec, generate


def verified(archive, name: str) -> int:  # type: ignore[no-untyped-def]
    r = schema.replicas
    with archive.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).where(r.c.target == name, r.c.state == "verified")
            ).scalar_one()
        )


def test_target_outage_resumes_without_recopy(tmp_path: Path) -> None:
    server = Azurite(tmp_path / "azurite-data")
    server.workdir.mkdir()
    server.start()
    try:
        container = server.new_container()
        target = {
            "name": "azure",
            "url": f"az://{container}/site-1",
            "storage_options": server.storage_options(),
            "concurrency": 2,
            "bandwidth": "400KB/s",
        }
        archive = make_archive(tmp_path, f"sqlite:///{tmp_path}/index.db", targets=[target])
        generate(archive.drop(), SampleSpec(instances=40, per_series=20, rows=64, columns=64))
        archive.ingest()
        rep = Replicator(archive.settings, archive.engine)
        thread = threading.Thread(target=rep.run)
        thread.start()
        deadline = time.monotonic() + 60
        while verified(archive, "azure") < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        server.stop()  # the cloud goes away mid-run
        time.sleep(3)
        stalled_at = verified(archive, "azure")
        server.start()
        while verified(archive, "azure") < 40 and time.monotonic() < deadline + 60:
            time.sleep(0.1)
        rep.stop()
        thread.join(timeout=60)

        assert verified(archive, "azure") == 40
        assert stalled_at < 40  # the outage really hit the run
        assert rep.lanes["azure"].uploaded <= 40 + 2 * 2  # at most the interrupted copies again
        assert_target_matches_index(archive, "azure")
    finally:
        server.stop()


@pytest.mark.parametrize("status", [503, 429])
def test_throttling_target_is_backed_off_from(tmp_path: Path, moto_s3: MotoS3, status: int) -> None:
    bucket = moto_s3.new_bucket()
    proxy = FlakyProxy(moto_s3.port, failures=40, status=status)
    try:
        options = moto_s3.storage_options(proxy.port)
        options.update(config_kwargs={"retries": {"max_attempts": 1, "mode": "standard"}})
        target = {
            "name": "s3",
            "url": f"s3://{bucket}/site-1",
            "storage_options": options,
            "concurrency": 2,
        }
        archive = make_archive(tmp_path, f"sqlite:///{tmp_path}/index.db", targets=[target])
        generate(archive.drop(), SampleSpec(instances=6, per_series=6, rows=32, columns=32))
        archive.ingest()

        rep = Replicator(archive.settings, archive.engine)
        complete = rep.run(once=True, max_attempts=20)

        assert proxy.refused == 40 and complete
        assert rep.lanes["s3"].failed > 0 and rep.lanes["s3"].uploaded == 6
        assert replica_states(archive, "s3") == {"verified": 6}
    finally:
        proxy.close()


@pytest.mark.soak
def test_sigkilled_replicator_resumes_without_recopying(tmp_path: Path, index_url: str) -> None:
    trials = int(os.environ.get("VNA_SOAK_TRIALS", "20")) // 4 + 1
    rng = random.Random(int(os.environ.get("VNA_SOAK_SEED", str(int(time.time())))))
    target = {
        "name": "nfs",
        "url": f"file://{tmp_path}/replica",
        "concurrency": 2,
        "bandwidth": "300KB/s",
    }
    archive = make_archive(tmp_path, index_url, targets=[target])
    generate(archive.drop(), SampleSpec(instances=120, per_series=40, rows=64, columns=64))
    archive.ingest()
    cfg = tmp_path / "vna.toml"
    cfg.write_text(
        f"""
[archive]
root = "archive"
quarantine = "quarantine"
[index]
url = "{index_url}"
[replicator]
poll_seconds = 0.1
backoff_max_seconds = 2
[[targets]]
name = "nfs"
url = "file://{tmp_path}/replica"
concurrency = 2
bandwidth = "300KB/s"
"""
    )
    command = [  # each copy's line is a debug line
        *(sys.executable, "-m", "vna.cli.main", "--config", str(cfg), "--log-level", "debug"),
        "replicate",
    ]
    uploads = 0
    for _ in range(trials):
        proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True)
        time.sleep(rng.uniform(0.8, 1.6))
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        uploads += err.count(" uploaded ")
    # The leases are five minutes long: each start takes over the killed run's copies at once.
    final = subprocess.run([*command, "--once"], capture_output=True, text=True, timeout=300)
    uploads += final.stderr.count(" uploaded ")

    assert final.returncode == 0, final.stdout + final.stderr
    assert replica_states(archive, "nfs") == {"verified": 120}
    # Each kill may interrupt the copies in flight (2), whose upload is not logged:
    assert uploads <= 120
    assert not [p for p in (tmp_path / "replica").rglob(".*.part-*")]
    assert_target_matches_index(archive, "nfs")


def test_uploads_count_only_once_made_durable(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A folder target (an NFS mount: each file fsynced and named in its copy thread) that
    cannot fsync its folders: the copies are there but not durable, so none counts as
    verified; once it can, they are verified without being sent again."""
    import vna.targets.local
    from tests.test_replicator import archive_with, replicate
    from vna.targets.faults import Kind, TargetError
    from vna.targets.local import LocalTarget

    monkeypatch.setattr(vna.targets.local, "batch_sync_available", lambda root: False)
    archive = archive_with(
        tmp_path, f"sqlite:///{tmp_path}/index.db", [{"name": "nfs", "url": f"file://{tmp_path}/r"}]
    )

    def fails(self: LocalTarget, relpaths: object) -> None:
        raise TargetError("fsync: input/output error", Kind.RETRY)

    with monkeypatch.context() as patched:
        patched.setattr(LocalTarget, "settle", fails)
        complete, r = replicate(archive, max_attempts=1)
    assert not complete and r.lanes["nfs"].failed == 8
    assert replica_states(archive, "nfs") == {"failed": 8}

    import vna.targets.local

    synced: list[Path] = []
    real_fsync_dir = vna.targets.local.fsync_dir
    monkeypatch.setattr(
        vna.targets.local, "fsync_dir", lambda d: (synced.append(d), real_fsync_dir(d))
    )
    r = Replicator(archive.settings, archive.engine)
    with archive.engine.begin() as conn:  # due now, not after the back-off
        conn.execute(schema.replicas.update().values(next_attempt_at=schema.replicas.c.queued_at))
    assert r.run(once=True)
    assert r.lanes["nfs"].uploaded == 0 and r.lanes["nfs"].copied == 8
    # Found there, the copies were made durable before they counted: both series folders.
    assert len(set(synced)) == 2 and all(d.name == "instances" for d in synced)
    assert_target_matches_index(archive, "nfs")


def test_a_failed_batch_flush_names_nothing_and_the_copies_go_again(
    tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """A local disk: a batch's files are named only after one syncfs. When it reports a
    write-back error, no file of the batch gets a name, none counts as verified, and the
    next run sends them again: the target never shows a name whose bytes may be lost."""
    import vna.targets.local
    from tests.test_replicator import archive_with, replicate

    archive = archive_with(
        tmp_path,
        f"sqlite:///{tmp_path}/index.db",
        [{"name": "disk", "url": f"file://{tmp_path}/r"}],
    )

    def fails(fd: int) -> None:
        raise OSError(5, "Input/output error")

    with monkeypatch.context() as patched:
        patched.setattr(vna.targets.local, "syncfs", fails)
        complete, r = replicate(archive, max_attempts=1)
    assert not complete and r.lanes["disk"].failed == 8 and r.lanes["disk"].copied == 0
    assert replica_states(archive, "disk") == {"failed": 8}
    assert [p for p in (tmp_path / "r").rglob("*") if p.is_file()] == []

    with archive.engine.begin() as conn:  # due now, not after the back-off
        conn.execute(schema.replicas.update().values(next_attempt_at=schema.replicas.c.queued_at))
    r = Replicator(archive.settings, archive.engine)
    assert r.run(once=True)
    assert r.lanes["disk"].uploaded == 8
    assert_target_matches_index(archive, "disk")


def test_a_flush_names_only_its_own_batch_and_a_failed_one_names_nothing(
    tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Copies still being verified are not named by another batch's flush; a batch whose
    flush failed leaves no name behind, while the others are named by their own."""
    import io

    import vna.targets.local
    from vna import digest
    from vna.settings import TargetSettings
    from vna.targets.faults import TargetError
    from vna.targets.registry import open_target

    target = open_target(TargetSettings(name="disk", url=f"file://{tmp_path}/r"))
    first, second = (f"studies/1/series/1/instances/{n}.dcm" for n in (1, 2))
    for rel in (first, second):
        data = rel.encode() * 100
        target.put(rel, tmp_path, digest.of_bytes(data), len(data), io.BytesIO(data))
    real_syncfs = vna.targets.local.syncfs
    calls: list[int] = []

    def fails_once(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(5, "Input/output error")
        real_syncfs(fd)

    monkeypatch.setattr(vna.targets.local, "syncfs", fails_once)
    with pytest.raises(TargetError):
        target.settle([first])
    assert target.stat(first) is None  # gone: its copy goes again
    assert target.stat(second) is not None and not (tmp_path / "r" / second).exists()

    target.settle([second])

    assert (tmp_path / "r" / second).read_bytes() == second.encode() * 100
    assert not (tmp_path / "r" / first).exists() and len(calls) == 2


def test_a_flush_failing_once_under_load_loses_nothing_and_reads_back_every_copy(
    tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Read-back verification runs while earlier batches are flushed and named; one flush
    fails. Every copy recorded as verified is on the target, named, with
    the right bytes, and none is skipped for being momentarily out of sight."""
    import vna.targets.local
    from tests.test_replicator import archive_with

    archive = archive_with(
        tmp_path,
        f"sqlite:///{tmp_path}/index.db",
        # Copies trickle in (a bandwidth cap), so they finish over many batches.
        [
            {
                "name": "disk",
                "url": f"file://{tmp_path}/r",
                "concurrency": 4,
                "bandwidth": "40KB/s",
                "verify": "read-back",
            }
        ],
        n=40,
    )
    real_syncfs = vna.targets.local.syncfs
    calls: list[int] = []

    def slow_and_failing_once(fd: int) -> None:
        calls.append(fd)
        time.sleep(0.05)
        if len(calls) == 1:
            raise OSError(5, "Input/output error")
        real_syncfs(fd)

    monkeypatch.setattr(vna.targets.local, "syncfs", slow_and_failing_once)
    first = Replicator(archive.settings, archive.engine)
    first.run(once=True, max_attempts=1)
    states = replica_states(archive, "disk")
    assert states.get("skipped", 0) == 0 and first.lanes["disk"].failed > 0
    assert len(calls) >= 2  # batches flushed while others were read back

    with archive.engine.begin() as conn:  # due now, not after the back-off
        conn.execute(schema.replicas.update().values(next_attempt_at=schema.replicas.c.queued_at))
    assert Replicator(archive.settings, archive.engine).run(once=True)
    assert replica_states(archive, "disk") == {"verified": 40}
    assert_target_matches_index(archive, "disk")


def test_a_failed_folder_fsync_keeps_every_folder_for_the_next_settle(
    tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    import io

    import vna.targets.local
    from vna import digest
    from vna.settings import TargetSettings
    from vna.targets.faults import TargetError
    from vna.targets.registry import open_target

    target = open_target(TargetSettings(name="nfs", url=f"file://{tmp_path}/r"))
    rels = [f"studies/1/series/{series}/instances/1.dcm" for series in ("1.1", "1.2", "1.3")]
    for rel in rels:
        data = rel.encode() * 100
        target.put(rel, tmp_path, digest.of_bytes(data), len(data), io.BytesIO(data))
    synced: list[Path] = []

    def fails_once(folder: Path) -> None:
        if not synced:
            synced.append(folder)
            raise OSError(5, "Input/output error")
        synced.append(folder)

    monkeypatch.setattr(vna.targets.local, "fsync_dir", fails_once)
    with pytest.raises(TargetError):
        target.settle(rels)
    target.settle([])

    folders = {p.parent for p in (tmp_path / "r").rglob("*.dcm")}
    assert len(synced) == 4 and set(synced[1:]) == folders  # the failed one and the two after


@pytest.mark.parametrize("renewed", [True, False], ids=["renewed", "not-renewed"])
def test_a_copy_slower_than_its_lease_is_not_taken_over_while_it_runs(
    tmp_path: Path, monkeypatch, renewed: bool
) -> None:  # type: ignore[no-untyped-def]
    """Copies under a tight bandwidth cap outlast a 1 s lease. Renewed while they run, none
    is claimed again (by this worker's next claim, which takes over expired leases); not
    renewed, the same copies would be sent twice, as the second case shows."""
    import replicator.daemon
    from tests.test_replicator import archive_with

    if not renewed:
        monkeypatch.setattr(replicator.daemon, "renew", lambda *args: None)
    archive = archive_with(
        tmp_path,
        f"sqlite:///{tmp_path}/index.db",
        [{"name": "disk", "url": f"file://{tmp_path}/r", "concurrency": 1, "bandwidth": "3KB/s"}],
        n=3,
        replicator={"lease_seconds": 1, "poll_seconds": 0.1},
    )

    r = Replicator(archive.settings, archive.engine)
    assert r.run(once=True)

    assert_target_matches_index(archive, "disk")
    if renewed:
        assert r.lanes["disk"].uploaded == 3 and r.lanes["disk"].copied == 3
    else:
        assert r.lanes["disk"].copied > 3  # the failure renewal prevents
