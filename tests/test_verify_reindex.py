"""`vna verify` finds every kind of disagreement; `vna reindex` rebuilds from the layout."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import select

from tests.conftest import Archive
from vna.index import schema
from vna.layout import Layout
from vna.quarantine import QuarantineStore
from vna.reindex import reindex
from vna.sample import SampleSpec, generate
from vna.verify import verify


def problems(archive: Archive) -> list[tuple[str, str]]:
    return [(p.kind, p.path) for p in verify(archive.engine, Layout(archive.settings.archive.root))]


def snapshot(archive: Archive) -> list[tuple]:
    i = schema.instances
    cols = (
        i.c.sop_uid,
        i.c.path,
        i.c.size,
        i.c.digest,
        i.c.content_digest,
        i.c.source,
        i.c.transfer_syntax_uid,
        i.c.instance_number,
    )
    with archive.engine.connect() as conn:
        return sorted(tuple(r) for r in conn.execute(select(*cols)))


def test_verify_reports_missing_orphan_and_corrupt_files(archive: Archive) -> None:
    generate(archive.drop(), SampleSpec(instances=4, per_series=2, rows=16, columns=16))
    archive.ingest()
    assert problems(archive) == []
    root = archive.settings.archive.root
    paths = [r[1] for r in snapshot(archive)]
    (root / paths[0]).unlink()
    with (root / paths[1]).open("r+b") as fh:
        fh.seek(-4, os.SEEK_END)
        fh.write(b"\xff\xff\xff\xff")  # same size, other bytes
    with (root / paths[2]).open("ab") as fh:
        fh.write(b"xx")
    orphan = root / "studies" / "1.2.3" / "series" / "4.5" / "instances" / "6.7.dcm"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"not indexed")

    found = sorted(problems(archive))

    assert found == sorted(
        [
            ("missing-file", paths[0]),
            ("digest-mismatch", paths[1]),
            ("size-mismatch", paths[2]),
            ("orphan-file", "studies/1.2.3/series/4.5/instances/6.7.dcm"),
        ]
    )


def test_reindex_rebuilds_the_same_index_from_the_layout(archive: Archive) -> None:
    generate(archive.drop(), SampleSpec(instances=6, per_series=3, rows=16, columns=16))
    (archive.drop() / "junk.txt").write_text("not dicom")
    archive.ingest()
    before = snapshot(archive)
    with archive.engine.begin() as conn:
        for t in (
            schema.instances,
            schema.series,
            schema.studies,
            schema.patients,
            schema.quarantine,
        ):
            conn.execute(t.delete())

    report = reindex(
        archive.engine,
        Layout(archive.settings.archive.root),
        QuarantineStore(archive.settings.archive.quarantine),
    )

    assert report.instances == 6 and report.quarantined == 1 and report.problems == []
    assert snapshot(archive) == before
    with archive.engine.connect() as conn:
        patients = conn.execute(select(schema.patients.c.issuer_of_patient_id)).scalars().all()
        (reason,) = conn.execute(select(schema.quarantine.c.reason)).scalars().all()
    assert set(patients) == {"PACS_A"} and reason == "not-dicom"
    assert problems(archive) == []


def test_reindexed_archive_still_recognises_duplicates(archive: Archive) -> None:
    spec = SampleSpec(instances=2, rows=16, columns=16)
    generate(archive.drop(), spec)
    archive.ingest()
    reindex(
        archive.engine,
        Layout(archive.settings.archive.root),
        QuarantineStore(archive.settings.archive.quarantine),
    )
    generate(archive.drop(), spec)

    outcomes = archive.ingest()

    assert [o.outcome for o in outcomes] == ["duplicate", "duplicate"]


def test_verify_flags_leftover_staging_files(archive: Archive, tmp_path: Path) -> None:
    staging = archive.settings.archive.root / ".staging" / "otherhost-1-abcd"
    staging.mkdir(parents=True)
    (staging / "0123.dcm").write_bytes(b"partial")

    assert problems(archive) == [("stale-staging", ".staging/otherhost-1-abcd/0123.dcm")]
