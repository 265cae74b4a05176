"""UIDs become paths only when they are digits and dots."""

from __future__ import annotations

from pathlib import Path

import pytest

from vna.layout import InvalidUID, check_uid, instance_relpath, parse_relpath


@pytest.mark.parametrize(
    "uid",
    [
        "../../etc",
        "1.2.3/..",
        "1.2/3",
        "",
        ".",
        "1..2",
        ".1",
        "1.",
        "1.2.a",
        "١.٢",
        "1" * 65,
        "1.2\x00",
        " 1.2",
        "1.2\n",
    ],
)
def test_malformed_uid_is_rejected(uid: str) -> None:
    with pytest.raises(InvalidUID):
        check_uid(uid, "StudyInstanceUID")


def test_valid_uid_maps_to_the_dicomweb_shaped_path() -> None:
    uid = "1.2.840.113619.2.55.3." + "1" * 30
    assert check_uid(uid, "x") == uid
    rel = instance_relpath("1.2", "3.4", "5.6")
    assert rel == "studies/1.2/series/3.4/instances/5.6.dcm"
    entry = parse_relpath(rel)
    assert entry is not None and (entry.study_uid, entry.series_uid, entry.sop_uid) == (
        "1.2",
        "3.4",
        "5.6",
    )
    assert parse_relpath("studies/../series/3.4/instances/5.6.dcm") is None


def test_place_makes_missing_folders_and_reports_every_folder_it_changed(tmp_path: Path) -> None:
    """The rename is tried first; a series folder is made only when it is missing, and
    every folder whose entries changed is returned for the batch's fsync."""
    from vna.layout import Layout

    layout = Layout(tmp_path / "archive")
    staging = layout.staging_dir()
    first, second = staging / "a.dcm", staging / "b.dcm"
    first.write_bytes(b"first")
    second.write_bytes(b"second")
    root = str(layout.root)

    dirs = layout.place(first, "studies/1.2/series/3.4/instances/5.6.dcm")
    series = f"{root}/studies/1.2/series/3.4/instances"
    assert dirs == {
        root,  # studies/ appeared in it
        f"{root}/studies",
        f"{root}/studies/1.2",
        f"{root}/studies/1.2/series",
        f"{root}/studies/1.2/series/3.4",
        series,
    }
    assert layout.place(str(second), "studies/1.2/series/3.4/instances/7.8.dcm") == {series}
    assert (layout.root / "studies/1.2/series/3.4/instances/5.6.dcm").read_bytes() == b"first"
    assert not first.exists() and not second.exists()
    layout.sync_dirs(dirs | {Path(series)})  # str and Path name the same folder: synced once

    with pytest.raises(FileNotFoundError):  # a staged file that is gone makes no folder
        layout.place(staging / "gone.dcm", "studies/9.9/series/1.1/instances/2.2.dcm")
    assert not (layout.root / "studies/9.9").exists()
    layout.close()


def test_failed_batch_sync_discards_every_staged_file(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """syncfs does not say whose write failed (it may be a later batch's file, staged
    already): every staged file goes, so none can be placed on a later, passing syncfs."""
    import errno

    import vna.layout
    from vna.layout import Layout

    monkeypatch.setattr(vna.layout, "batch_sync_available", lambda root: True)
    layout = Layout(tmp_path / "archive")
    assert layout.batch_sync
    staging = layout.staging_dir()
    for name in ("this-batch.dcm", "next-batch.dcm"):
        (staging / name).write_bytes(b"x" * 100)

    def fails(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(vna.layout, "syncfs", fails)
    with pytest.raises(OSError):
        layout.sync_staged()

    assert list(staging.glob("*.dcm")) == []
    assert any(staging.iterdir())  # the lock (and journal) stay: the folder is still ours
    layout.close()


def test_batch_sync_only_on_local_file_systems_known_to_report_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The file system type comes from the mount holding the path (the longest mount point
    above it, spaces escaped as in mountinfo); NFS, SMB and overlay get an fsync per file."""
    from pathlib import Path

    from vna.durability import BATCH_SYNC_FILE_SYSTEMS, file_system_type

    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 8:1 / / rw,relatime - ext4 /dev/vda rw\n"
        "30 22 0:50 / /srv/vna rw - nfs4 nas:/vna rw\n"
        "31 30 8:17 / /srv/vna/fast\\040disk rw - xfs /dev/sdb1 rw\n"
        "32 22 0:60 / /var/lib/docker/overlay2/x/merged rw - overlay overlay rw\n"
    )
    kinds = {
        p: file_system_type(Path(p), mountinfo)
        for p in (
            "/srv/vna/archive/studies",
            "/srv/vna/fast disk/archive",
            "/srv/vnax",
            "/var/lib/docker/overlay2/x/merged/archive",
        )
    }

    assert kinds == {
        "/srv/vna/archive/studies": "nfs4",
        "/srv/vna/fast disk/archive": "xfs",
        "/srv/vnax": "ext4",
        "/var/lib/docker/overlay2/x/merged/archive": "overlay",
    }
    assert {k for k, v in kinds.items() if v in BATCH_SYNC_FILE_SYSTEMS} == {
        "/srv/vna/fast disk/archive",
        "/srv/vnax",
    }


def test_staging_folders_are_spread_over_ext4_block_groups(tmp_path: Path) -> None:
    """The staging base folder is a top directory (chattr +T) where the file system takes
    the flag, so that ext4 places each process's staging folder in a block group of its own
    choosing, away from a drop folder whose removed files would slow every new inode."""
    import array
    import fcntl
    import os

    from vna.durability import file_system_type
    from vna.layout import FS_IOC_GETFLAGS, FS_TOPDIR_FL, STAGING, Layout

    if file_system_type(tmp_path) != "ext4":
        pytest.skip("the top-directory flag is an ext2/3/4 one")
    layout = Layout(tmp_path / "archive")
    staging = layout.staging_dir()
    try:
        fd = os.open(tmp_path / "archive" / STAGING, os.O_RDONLY | os.O_DIRECTORY)
        try:
            flags = array.array("i", [0])
            fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags)
        finally:
            os.close(fd)
        assert flags[0] & FS_TOPDIR_FL
        assert staging.parent == tmp_path / "archive" / STAGING
    finally:
        layout.close()


def test_spreading_subfolders_is_best_effort(tmp_path: Path) -> None:
    from vna.layout import spread_subfolders

    assert spread_subfolders(tmp_path / "missing") is False
