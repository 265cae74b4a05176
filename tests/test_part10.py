"""Part 10 reading and writing: a file read into memory whole or read in parts is archived the
same, byte for byte."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.tag import Tag

from vna import part10


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",  # explicit VR little endian
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "image_dfl.dcm",  # deflated: read whole by pydicom either way
        "JPEG2000.dcm",  # encapsulated pixel data
        "rtplan.dcm",  # no pixel data
    ],
)
def test_a_file_in_memory_or_read_in_parts_is_archived_the_same(tmp_path: Path, name: str) -> None:
    source = Path(str(get_testdata_file(name)))
    archived = []
    for keep in (True, False):
        header = part10.read_header(source, keep=keep)
        assert (header.data is not None) == keep
        content = part10.content_digest(header, source)
        header.dataset.PatientName = "Changed^Name"
        dest = tmp_path / f"{keep}.dcm"
        file_digest, size = part10.write_archived(
            header, source, dest, durable=False, touched={int(Tag("PatientName"))}
        )
        data = dest.read_bytes()
        assert size == len(data)
        archived.append((content, file_digest, data))
    assert archived[0] == archived[1]
    ds = pydicom.dcmread(tmp_path / "True.dcm")
    assert ds.PatientName == "Changed^Name"
    original = pydicom.dcmread(source)
    if "PixelData" in original:
        assert ds.PixelData == original.PixelData


def test_a_file_that_grew_since_its_size_was_taken_is_not_read_whole(tmp_path: Path) -> None:
    """Only as many bytes as the file had are read into memory; one still growing is read in
    parts (and its stat, taken again after, tells the ingest it changed)."""
    source = Path(str(get_testdata_file("CT_small.dcm")))
    size = source.stat().st_size
    assert part10._read_header(source, size, keep=True).data is not None
    assert part10._read_header(source, size - 1, keep=True).data is None
