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


@pytest.mark.parametrize("batch_sync", [True, False])
def test_a_batchs_journal_is_durable_before_its_first_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch_sync: bool
) -> None:
    """With a syncfs per batch, that syncfs (before any rename) makes the journal durable;
    with staged files fsynced one by one, the journal is fdatasynced itself."""
    import vna.layout
    from vna.ingest import journal

    monkeypatch.setattr(vna.layout, "batch_sync_available", lambda root: batch_sync)
    archive = make_archive(tmp_path, f"sqlite:///{tmp_path}/index.db")
    generate(archive.drop(), SampleSpec(instances=3, rows=16, columns=16))
    events: list[str] = []
    real_write, real_syncfs, real_place = journal.write, vna.layout.syncfs, Layout.place

    def write(folder: Path, intents: list[journal.Intent], durable: bool) -> None:
        events.append(f"journal durable={durable}")
        real_write(folder, intents, durable)

    def syncfs(fd: int) -> None:
        events.append("syncfs")
        real_syncfs(fd)

    def place(self: Layout, staged: Path, relpath: str) -> set[Path]:
        events.append("rename")
        return real_place(self, staged, relpath)

    monkeypatch.setattr(journal, "write", write)
    monkeypatch.setattr(vna.layout, "syncfs", syncfs)
    monkeypatch.setattr(Layout, "place", place)
    archive.ingest()
    archive.engine.dispose()
    first = events.index("rename")
    expected = ["journal durable=False", "syncfs"] if batch_sync else ["journal durable=True"]
    assert events[:first] == expected
    assert events[first:] == ["rename"] * 3
