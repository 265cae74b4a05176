"""Recovery from the intent journal, for the crashes reprocessing alone cannot mend.

If a process dies after renaming files into the layout but before their index
rows commit, the drop files are normally still there and are taken again. The
journal covers what is left when they are not (a PACS share cleaned meanwhile),
and puts back an archived version a replacement had pushed aside.
"""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pytest

from tests.conftest import Archive, make_archive
from vna import digest
from vna.ingest.commit import Committer, received_now
from vna.ingest.daemon import rules_for
from vna.ingest.prepare import Job, Result, prepare
from vna.layout import Layout
from vna.quarantine import QuarantineStore
from vna.sample import SampleSpec, generate
from vna.verify import verify


class Killed(BaseException):
    """Stands for SIGKILL: nothing catches it."""


def committer(archive: Archive) -> Committer:
    s = archive.settings
    c = Committer(s, archive.engine, Layout(s.archive.root), QuarantineStore(s.archive.quarantine))
    c.recover()
    return c


def prepared(archive: Archive, c: Committer) -> list[Result]:
    src = archive.settings.source("pacs-a")
    staging = str(c.layout.staging_dir())
    return [
        prepare(Job("pacs-a", str(f), f.name, rules_for(src), staging, True, received_now()))
        for f in sorted(p for p in src.drop.rglob("*") if p.is_file())
    ]


def die(c: Committer) -> None:
    """The process is gone: its staging lock is released, its files stay."""
    assert c.layout._staging is not None
    os.close(c.layout._staging[1])
    c.layout._staging = None


def test_files_placed_by_an_uncommitted_batch_are_removed_at_start(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    generate(archive.drop(), SampleSpec(instances=4, rows=16, columns=16))
    first = committer(archive)
    results = prepared(archive, first)
    monkeypatch.setattr(Committer, "_write_index", lambda self, b: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        first.commit(results)
    monkeypatch.undo()
    studies = archive.settings.archive.root / "studies"
    assert len(list(studies.rglob("*.dcm"))) == 4  # placed, never indexed
    for f in [p for p in archive.drop().rglob("*") if p.is_file()]:
        f.unlink()  # and the share was cleaned before the next start
    die(first)

    committer(archive)

    assert list(studies.rglob("*.dcm")) == []
    assert list(verify(archive.engine, Layout(archive.settings.archive.root))) == []


def test_interrupted_replacement_puts_the_archived_version_back(
    tmp_path: Path, index_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = make_archive(tmp_path, index_url, duplicate_policy="replace")
    generate(archive.drop(), SampleSpec(instances=1, rows=16, columns=16))
    archive.ingest()
    (archived,) = (archive.settings.archive.root / "studies").rglob("*.dcm")
    original = digest.of_file(archived)
    (f,) = generate(archive.drop(), SampleSpec(instances=1, rows=16, columns=16))
    ds = pydicom.dcmread(f)
    ds.SeriesDescription = "Corrected"
    ds.save_as(f)
    first = committer(archive)
    results = prepared(archive, first)
    monkeypatch.setattr(Committer, "_write_index", lambda self, b: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        first.commit(results)
    monkeypatch.undo()
    assert digest.of_file(archived) != original  # the new version is in place, uncommitted
    die(first)

    committer(archive)

    assert digest.of_file(archived) == original
    held = [p for p in (archive.settings.archive.quarantine / "pacs-a").glob("*")]
    assert held == []  # the superseded copy went back; nothing claims it was replaced
    assert list(verify(archive.engine, Layout(archive.settings.archive.root))) == []
