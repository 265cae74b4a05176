"""Ingest behaviour, each test on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import MediaStorageDirectoryStorage
from sqlalchemy import func, select

from tests.conftest import Archive, make_archive
from vna.index import schema
from vna.ingest.coerce import read_provenance
from vna.layout import Layout, instance_relpath
from vna.sample import SampleSpec, datasets, generate
from vna.verify import verify

SMALL = SampleSpec(instances=6, per_series=3, rows=32, columns=32)


def instance_rows(archive: Archive) -> list:
    """Instances with their series' columns (modality, institution...)."""
    i, se = schema.instances, schema.series
    stmt = (
        select(i, se.c.modality, se.c.institution_name, se.c.series_uid)
        .join(se, i.c.series_pk == se.c.id)
        .order_by(i.c.sop_uid)
    )
    with archive.engine.connect() as conn:
        return list(conn.execute(stmt))


def count(archive: Archive, table) -> int:
    with archive.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def layout_problems(archive: Archive) -> list[str]:
    return [str(p) for p in verify(archive.engine, Layout(archive.settings.archive.root))]


def test_sample_files_are_archived_into_the_layout_and_index(archive: Archive) -> None:
    originals = {ds.SOPInstanceUID: ds for _, ds in datasets(SMALL)}
    generate(archive.drop(), SMALL)

    outcomes = archive.ingest()

    assert sorted(o.outcome for o in outcomes) == ["archived"] * 6
    rows = instance_rows(archive)
    assert {r.sop_uid for r in rows} == set(originals)
    for row in rows:
        original = originals[row.sop_uid]
        assert row.path == instance_relpath(
            original.StudyInstanceUID, original.SeriesInstanceUID, row.sop_uid
        )
        archived = pydicom.dcmread(archive.settings.archive.root / row.path)
        assert archived.PixelData == original.PixelData  # bit-exact
        assert archived.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert row.size == (archive.settings.archive.root / row.path).stat().st_size
        assert row.source == "pacs-a"
        assert row.modality == "CT"
    assert list(archive.drop().rglob("*")) == [p for p in archive.drop().rglob("*") if p.is_dir()]
    assert count(archive, schema.changes) == 6
    assert layout_problems(archive) == []


def test_same_patient_id_from_two_sources_stays_two_patients(archive: Archive) -> None:
    generate(archive.drop("pacs-a"), SampleSpec(instances=1, rows=16, columns=16, seed=1))
    generate(archive.drop("pacs-b"), SampleSpec(instances=1, rows=16, columns=16, seed=1 + 100))
    # Same Patient ID in both exports:
    for f in archive.drop("pacs-b").rglob("IM*"):
        ds = pydicom.dcmread(f)
        ds.PatientID = "P0100000"
        ds.save_as(f)
    for f in archive.drop("pacs-a").rglob("IM*"):
        ds = pydicom.dcmread(f)
        ds.PatientID = "P0100000"
        ds.save_as(f)

    archive.ingest()

    with archive.engine.connect() as conn:
        patients = conn.execute(
            select(schema.patients.c.patient_id, schema.patients.c.issuer_of_patient_id)
        ).all()
    assert sorted(patients) == [("P0100000", "PACS_A"), ("P0100000", "PACS_B")]


def test_coercion_rules_change_the_header_and_keep_originals(
    tmp_path: Path, index_url: str
) -> None:
    archive = make_archive(
        tmp_path,
        index_url,
        sources=[
            {
                "name": "pacs-a",
                "drop": "drop/pacs-a",
                "issuer_of_patient_id": "PACS_A",
                "coerce": {
                    "set": {"InstitutionName": "General Hospital"},
                    "replace": {"Modality": {"CT": "OT"}},
                    "remove": ["ReferringPhysicianName"],
                },
            }
        ],
    )
    generate(archive.drop(), SampleSpec(instances=1, rows=16, columns=16))

    archive.ingest()

    (row,) = instance_rows(archive)
    ds = pydicom.dcmread(archive.settings.archive.root / row.path)
    assert ds.InstitutionName == "General Hospital"
    assert ds.Modality == "OT"
    assert "ReferringPhysicianName" not in ds
    assert ds.IssuerOfPatientID == "PACS_A"
    (item,) = ds.OriginalAttributesSequence
    assert item.ReasonForTheAttributeModification == "COERCE"
    modified = item.ModifiedAttributesSequence[0]
    assert modified.InstitutionName == "Sample Hospital"
    assert modified.Modality == "CT"
    assert modified.ReferringPhysicianName == "House^Gregory"
    prov = read_provenance(ds)
    assert (
        prov.source == "pacs-a"
        and prov.received is not None
        and prov.content_digest == row.content_digest
    )
    assert row.modality == "OT" and row.institution_name == "General Hospital"


def test_issuer_already_present_is_kept_unless_overridden(archive: Archive) -> None:
    generate(archive.drop(), SampleSpec(instances=1, rows=16, columns=16, issuer="HOSPITAL_MRN"))
    archive.ingest()
    (row,) = instance_rows(archive)
    ds = pydicom.dcmread(archive.settings.archive.root / row.path)
    assert ds.IssuerOfPatientID == "HOSPITAL_MRN"


def test_duplicate_with_same_content_is_logged_and_dropped(archive: Archive) -> None:
    generate(archive.drop(), SMALL)
    archive.ingest()
    generate(archive.drop("pacs-a"), SMALL)  # the PACS exports the same study again

    outcomes = archive.ingest()

    assert [o.outcome for o in outcomes] == ["duplicate"] * 6
    assert count(archive, schema.instances) == 6
    assert count(archive, schema.duplicates) == 6
    assert not [p for p in archive.drop().rglob("*") if p.is_file()]


def test_duplicate_with_different_digest_is_quarantined(archive: Archive) -> None:
    generate(archive.drop(), SampleSpec(instances=1, rows=16, columns=16))
    archive.ingest()
    (before,) = instance_rows(archive)
    generate(archive.drop(), SampleSpec(instances=1, rows=16, columns=16))
    (f,) = [p for p in archive.drop().rglob("*") if p.is_file()]
    ds = pydicom.dcmread(f)
    ds.PatientName = "Changed^Name"
    ds.save_as(f)

    (outcome,) = archive.ingest()

    assert outcome.outcome == "quarantined" and outcome.reason == "duplicate-conflict"
    (after,) = instance_rows(archive)
    assert after.digest == before.digest  # never silently overwritten
    entry_dirs = list((archive.settings.archive.quarantine / "pacs-a").iterdir())
    assert len(entry_dirs) == 1
    reason = json.loads((entry_dirs[0] / "reason.json").read_text())
    assert reason["reason"] == "duplicate-conflict" and reason["sop_uid"] == before.sop_uid
    assert pydicom.dcmread(entry_dirs[0] / f.name).PatientName == "Changed^Name"


def test_replace_policy_archives_new_version_and_keeps_old_in_quarantine(
    tmp_path: Path, index_url: str
) -> None:
    archive = make_archive(tmp_path, index_url, duplicate_policy="replace")
    generate(archive.drop(), SampleSpec(instances=1, rows=16, columns=16))
    archive.ingest()
    (before,) = instance_rows(archive)
    generate(archive.drop(), SampleSpec(instances=1, rows=16, columns=16))
    (f,) = [p for p in archive.drop().rglob("*") if p.is_file()]
    ds = pydicom.dcmread(f)
    ds.SeriesDescription = "Corrected"
    ds.save_as(f)

    (outcome,) = archive.ingest()

    assert outcome.outcome == "replaced"
    (after,) = instance_rows(archive)
    assert after.digest != before.digest and after.series_pk == before.series_pk
    assert (
        pydicom.dcmread(archive.settings.archive.root / after.path).SeriesDescription == "Corrected"
    )
    with archive.engine.connect() as conn:
        kinds = [
            r.kind for r in conn.execute(select(schema.changes).order_by(schema.changes.c.seq))
        ]
        reasons = [r.reason for r in conn.execute(select(schema.quarantine))]
    assert kinds == ["created", "replaced"]
    assert reasons == ["superseded"]
    assert layout_problems(archive) == []


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty-file"),
        (b"this is a text file, not DICOM\n" * 10, "not-dicom"),
        (b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x14\x001.2.840.10008.1.2.1\0", "truncated"),
    ],
)
def test_bad_files_are_quarantined_with_a_reason(
    archive: Archive, content: bytes, reason: str
) -> None:
    bad = archive.drop() / "vendor" / "sub" / "file.bin"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(content)

    (outcome,) = archive.ingest()

    assert (outcome.outcome, outcome.reason) == ("quarantined", reason)
    assert not bad.exists()
    (entry,) = (archive.settings.archive.quarantine / "pacs-a").iterdir()
    assert (entry / "file.bin").read_bytes() == content
    assert json.loads((entry / "reason.json").read_text())["drop_path"] == "vendor/sub/file.bin"
    assert count(archive, schema.instances) == 0


def test_truncated_pixel_data_is_quarantined(archive: Archive) -> None:
    generate(archive.drop(), SampleSpec(instances=1, rows=64, columns=64))
    (f,) = [p for p in archive.drop().rglob("*") if p.is_file()]
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 1000])

    (outcome,) = archive.ingest()

    assert (outcome.outcome, outcome.reason) == ("quarantined", "truncated")


def test_dicomdir_is_quarantined(archive: Archive) -> None:
    dicomdir = pydicom.data.get_testdata_file("DICOMDIR")
    shutil.copy(dicomdir, archive.drop() / "DICOMDIR")
    ds = pydicom.dcmread(archive.drop() / "DICOMDIR")
    assert ds.file_meta.MediaStorageSOPClassUID == MediaStorageDirectoryStorage

    (outcome,) = archive.ingest()

    assert (outcome.outcome, outcome.reason) == ("quarantined", "dicomdir")


@pytest.mark.parametrize(
    "bad_uid", ["../../etc", "1.2.3/..", "1.2.3/../../x", "1." + "2" * 70, "1..2", ".1.2", "1.2."]
)
def test_uid_that_could_escape_the_layout_never_becomes_a_path(
    archive: Archive, bad_uid: str
) -> None:
    generate(archive.drop(), SampleSpec(instances=1, rows=16, columns=16))
    (f,) = [p for p in archive.drop().rglob("*") if p.is_file()]
    ds = pydicom.dcmread(f)
    ds.StudyInstanceUID = bad_uid
    ds.save_as(f)

    (outcome,) = archive.ingest()

    assert (outcome.outcome, outcome.reason) == ("quarantined", "invalid-uid")
    created = [p for p in archive.base.rglob("*") if p.is_file() and "quarantine" not in p.parts]
    assert all(p.name in ("index.db", "index.db-wal", "index.db-shm", "lock") for p in created), (
        created
    )


def test_missing_sop_instance_uid_is_quarantined(archive: Archive) -> None:
    generate(archive.drop(), SampleSpec(instances=1, rows=16, columns=16))
    (f,) = [p for p in archive.drop().rglob("*") if p.is_file()]
    ds = pydicom.dcmread(f)
    del ds.SeriesInstanceUID
    ds.save_as(f)

    (outcome,) = archive.ingest()

    assert (outcome.outcome, outcome.reason) == ("quarantined", "missing-uid")
    assert "SeriesInstanceUID" in (outcome.detail or "")


def test_a_file_is_taken_once_seen_unchanged_for_the_settle_time(
    tmp_path: Path, index_url: str
) -> None:
    """The settle rule counts by the daemon's own clock, never by how old the file's mtime
    looks: a share's server clock may run behind (a file being written looks old at once)
    or ahead (a finished file would wait until the clocks meet)."""
    archive = make_archive(tmp_path, index_url, settle_seconds=30)
    generate(archive.drop(), SampleSpec(instances=3, rows=16, columns=16))
    behind, ahead, steady = sorted(p for p in archive.drop().rglob("*") if p.is_file())
    hour = 3600.0
    os.utime(behind, (time.time() - hour, time.time() - hour))
    os.utime(ahead, (time.time() + hour, time.time() + hour))

    from vna.ingest.daemon import IngestDaemon

    daemon = IngestDaemon(archive.settings, archive.engine)
    clock = [1000.0]
    daemon._clock = lambda: clock[0]
    daemon._rescan()
    assert daemon._ready(10) == []  # an hour-old mtime is no proof the writer is done

    clock[0] += 20
    with behind.open("ab") as fh:  # still being written, mtime set by a clock an hour behind
        fh.write(b"\0" * 16)
    os.utime(behind, (time.time() - hour, time.time() - hour))
    daemon._rescan()
    clock[0] += 15
    assert sorted(c.path for c in daemon._ready(10)) == sorted(map(str, (ahead, steady)))

    clock[0] += 15  # 30 s since it last changed
    assert str(behind) in [c.path for c in daemon._ready(10)]


def test_a_slow_scan_counts_its_files_as_seen_when_it_ends(
    tmp_path: Path, index_url: str, monkeypatch: Any
) -> None:
    """A scan of a large share can take longer than the settle time: a file it found early
    is not due the moment the scan ends, when nobody has looked at it since."""
    import vna.ingest.daemon as daemon_mod
    from vna.ingest.daemon import IngestDaemon

    archive = make_archive(tmp_path, index_url, settle_seconds=5)
    generate(archive.drop(), SampleSpec(instances=3, rows=16, columns=16))
    daemon = IngestDaemon(archive.settings, archive.engine)
    clock = [1000.0]
    daemon._clock = lambda: clock[0]
    real_scan = daemon_mod.scan

    def slow_scan(*args: Any, **kw: Any) -> Any:
        for cand in real_scan(*args, **kw):
            clock[0] += 10  # each file takes a while to reach over the share
            yield cand

    monkeypatch.setattr(daemon_mod, "scan", slow_scan)
    daemon._rescan()
    assert daemon._ready(10) == []
    clock[0] += 5
    assert len(daemon._ready(10)) == 3


def test_ignored_names_are_left_alone(archive: Archive) -> None:
    (archive.drop() / "study.part").write_bytes(b"partial")
    (archive.drop() / ".hidden").write_bytes(b"x")
    generate(archive.drop(), SampleSpec(instances=1, rows=16, columns=16))

    outcomes = archive.ingest()

    assert [o.outcome for o in outcomes] == ["archived"]
    assert (archive.drop() / "study.part").exists() and (archive.drop() / ".hidden").exists()


def test_after_move_keeps_the_drop_file_in_processed(tmp_path: Path, index_url: str) -> None:
    archive = make_archive(tmp_path, index_url, after="move", processed="processed")
    generate(archive.drop(), SampleSpec(instances=1, rows=16, columns=16))
    (f,) = [p for p in archive.drop().rglob("*") if p.is_file()]
    rel = f.relative_to(archive.drop())

    archive.ingest()

    assert not f.exists()
    assert (tmp_path / "processed" / "pacs-a" / rel).is_file()


def test_worker_processes_give_the_same_result(tmp_path: Path, index_url: str) -> None:
    archive = make_archive(tmp_path, index_url, workers=2, batch_size=4)
    generate(archive.drop(), SampleSpec(instances=24, per_series=6, rows=32, columns=32))
    (archive.drop() / "junk").write_bytes(b"junk" * 100)

    outcomes = archive.ingest()

    assert sorted(o.outcome for o in outcomes).count("archived") == 24
    assert [o.reason for o in outcomes if o.outcome == "quarantined"] == ["not-dicom"]
    assert layout_problems(archive) == []


def _ingest_through_a_fault(
    archive: Archive, failing: threading.Event, tries: list[object]
) -> None:
    """Run the daemon while `failing` is set, until the fault was hit (`tries`); check that
    the refused batch left nothing in the layout or index and every input in place; then
    clear the fault and check that the retried batch took every input in."""
    from vna.ingest.daemon import IngestDaemon

    thread = threading.Thread(
        target=IngestDaemon(archive.settings, archive.engine).run, kwargs={"once": True}
    )
    thread.start()
    deadline = time.monotonic() + 20
    while not tries and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    placed = list((archive.settings.archive.root / "studies").rglob("*.dcm"))
    left = [p for p in archive.drop().rglob("*") if p.is_file()]
    indexed = count(archive, schema.instances)
    failing.clear()
    thread.join(timeout=60)

    assert tries and placed == [] and indexed == 0 and len(left) == 6
    assert count(archive, schema.instances) == 6
    assert not [p for p in archive.drop().rglob("*") if p.is_file()]
    assert layout_problems(archive) == []


def test_index_failure_mid_batch_leaves_layout_clean_and_inputs_in_place(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    from vna.index.writer import IndexWriter

    generate(archive.drop(), SMALL)
    real_add = IndexWriter.add
    failing = threading.Event()
    failing.set()
    attempts: list[object] = []

    def add(self, conn, records, replacing):  # type: ignore[no-untyped-def]
        attempts.append(len(records))
        if failing.is_set():
            raise OperationalError("INSERT", {}, Exception("database is gone"))
        return real_add(self, conn, records, replacing)

    monkeypatch.setattr(IndexWriter, "add", add)
    _ingest_through_a_fault(archive, failing, attempts)


def test_staged_files_the_disk_failed_to_write_are_never_placed(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's staged files become durable with one syncfs; when it reports a write-back
    error, nothing of the batch is placed or indexed, every input stays, and it is retried."""
    import errno

    import vna.layout

    monkeypatch.setattr(vna.layout, "batch_sync_available", lambda root: True)
    generate(archive.drop(), SMALL)
    real = vna.layout.syncfs
    failing = threading.Event()
    failing.set()
    calls: list[object] = []

    def syncfs(fd: int) -> None:
        calls.append(fd)
        if failing.is_set():
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(vna.layout, "syncfs", syncfs)
    _ingest_through_a_fault(archive, failing, calls)


def test_files_are_prepared_while_a_batch_commits(
    tmp_path: Path, index_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's commit (syncfs, index, drop files removed) runs beside the preparing of the
    next files, not in its place: while the first commit is held, every file is prepared."""
    from vna.ingest import daemon
    from vna.ingest.commit import Committer

    archive = make_archive(tmp_path, index_url, batch_size=8)
    generate(archive.drop(), SampleSpec(instances=40, per_series=20, rows=16, columns=16))
    prepared: list[object] = []
    real_prepare_many = daemon.prepare_many

    def prepare_many(jobs: list[Any]) -> list[Any]:
        prepared.extend(jobs)
        return real_prepare_many(jobs)

    held: list[int] = []
    real_commit = Committer.commit

    def commit(self: Committer, results: Any) -> Any:
        if not held:
            deadline = time.monotonic() + 10
            while len(prepared) < 40 and time.monotonic() < deadline:
                time.sleep(0.01)
            held.append(len(prepared))
        return real_commit(self, results)

    monkeypatch.setattr(daemon, "prepare_many", prepare_many)
    monkeypatch.setattr(Committer, "commit", commit)
    outcomes = archive.ingest()

    assert held == [40]
    assert sorted(o.outcome for o in outcomes) == ["archived"] * 40
    assert layout_problems(archive) == []


def test_a_failed_batch_whose_staged_files_cannot_be_removed_is_retried(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk that failed a batch may refuse the removal of its staged files too (remounted
    read-only): the batch is still handed back as failed, and taken again once the fault
    clears, instead of the commit thread ending and the daemon waiting for it for ever."""
    import errno

    from vna.ingest.commit import Committer
    from vna.layout import STAGING

    generate(archive.drop(), SMALL)
    failing = threading.Event()
    failing.set()
    tries: list[object] = []
    real_commit = Committer.commit
    real_unlink = Path.unlink

    def commit(self: Committer, results: Any) -> Any:
        if failing.is_set():
            tries.append(len(results))
            raise OSError(errno.EIO, "Input/output error")
        return real_commit(self, results)

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if failing.is_set() and STAGING in self.parts:
            raise OSError(errno.EROFS, "Read-only file system")
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Committer, "commit", commit)
    monkeypatch.setattr(Path, "unlink", unlink)
    _ingest_through_a_fault(archive, failing, tries)


def test_an_in_memory_index_is_one_database_for_every_thread(tmp_path: Path) -> None:
    """`sqlite://` keeps the index in its connection: the commit thread must see the schema
    the daemon migrated on its own thread, not a database of its own."""
    archive = make_archive(tmp_path, "sqlite://")
    generate(archive.drop(), SMALL)
    outcomes = archive.ingest()
    assert [o.outcome for o in outcomes] == ["archived"] * 6
    assert count(archive, schema.instances) == 6


def test_a_file_that_kills_its_worker_is_quarantined_alone(
    tmp_path: Path, index_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a worker dies, every file in flight is suspect, but only the one that kills a
    worker when tried on its own is quarantined; the others are archived."""
    from vna.ingest import daemon

    archive = make_archive(tmp_path, index_url, workers=2, batch_size=8)
    generate(archive.drop(), SampleSpec(instances=40, per_series=20, rows=16, columns=16))
    poison = sorted(archive.drop().rglob("IM*"))[5]
    poison.rename(poison.with_name("POISON"))
    real_prepare = daemon.prepare

    def prepare(job: Any) -> Any:
        if job.path.endswith("POISON"):
            os._exit(1)  # what a parser crash or the OOM killer does to the worker
        return real_prepare(job)

    monkeypatch.setattr(daemon, "prepare", prepare)  # the workers are forked: they have it too
    monkeypatch.setattr(daemon, "DEFER_SECONDS", 0.05)
    left_staged: list[str] = []
    real_close = Layout.close

    def close(self: Layout) -> None:  # before the staging folder goes: what is left in it?
        left_staged.extend(p.name for p in self.staging_dir().glob("*.dcm"))
        real_close(self)

    monkeypatch.setattr(Layout, "close", close)
    outcomes = archive.ingest()

    final = {o.file: o for o in outcomes if o.outcome != "deferred"}
    assert sorted(o.outcome for o in final.values()).count("archived") == 39
    quarantined = [o for o in final.values() if o.outcome == "quarantined"]
    assert [o.file.rsplit("/", 1)[-1] for o in quarantined] == ["POISON"]
    assert "crashed" in (quarantined[0].detail or "")
    assert left_staged == []  # the copies the dead workers had staged were removed
    assert layout_problems(archive) == []
