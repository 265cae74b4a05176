"""Every file among pydicom's bundled test files ends archived, duplicate or quarantined."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pydicom.data import get_testdata_files
from sqlalchemy import func, select

from tests.conftest import make_archive
from vna.index import schema
from vna.layout import Layout
from vna.quarantine import Reason
from vna.verify import verify


def test_every_pydicom_test_file_is_accounted_for(tmp_path: Path, index_url: str) -> None:
    archive = make_archive(tmp_path, index_url, workers=2, batch_size=32)
    files = sorted(f for f in get_testdata_files() if os.path.isfile(f))
    assert len(files) > 100
    for i, f in enumerate(files):
        # Vendor-like nesting, names with and without .dcm
        dest = archive.drop() / f"batch{i % 4}" / f"{i:03d}_{Path(f).name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dest)

    outcomes = archive.ingest()

    final = {o.file: o for o in outcomes if o.outcome != "deferred"}
    assert len(final) == len(files)  # every input has exactly one final outcome
    assert {o.outcome for o in final.values()} <= {"archived", "duplicate", "quarantined"}
    for o in final.values():
        if o.outcome == "quarantined":
            assert o.reason in {r.value for r in Reason} and o.detail
    assert not [p for p in archive.drop().rglob("*") if p.is_file()]
    archived = sum(o.outcome == "archived" for o in final.values())
    assert archived > 80
    with archive.engine.connect() as conn:
        assert (
            conn.execute(select(func.count()).select_from(schema.instances)).scalar_one()
            == archived
        )
        held = conn.execute(select(func.count()).select_from(schema.quarantine)).scalar_one()
    assert held == sum(o.outcome == "quarantined" for o in final.values())
    quarantined_files = [
        p
        for p in archive.settings.archive.quarantine.rglob("*")
        if p.is_file() and p.name != "reason.json"
    ]
    assert len(quarantined_files) == held
    assert list(verify(archive.engine, Layout(archive.settings.archive.root))) == []
