"""Part 10 reading and writing: a file read into memory whole or read in parts is archived the
same, byte for byte."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import UID

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


def test_empty_elements_as_read_leave_the_header_spliced(tmp_path: Path) -> None:
    """This implicit-VR file has runs of empty elements next to each other. Finding where
    each element lies must not convert them (converted, they lose their offsets and the
    header was rewritten whole); every element but the touched one is copied as read."""
    source = Path(str(get_testdata_file("MR_small_implicit.dcm")))
    header = part10.read_header(source, keep=True)
    assert header.spans is not None and len(header.spans) == len(header.dataset)
    first = header.content_offset
    header.dataset.PatientName = "Changed^Name"
    name = int(Tag("PatientName"))
    part10.write_archived(header, source, tmp_path / "a.dcm", durable=False, touched={name})
    before = source.read_bytes()
    after = (tmp_path / "a.dcm").read_bytes()
    start, stop = header.spans[name]
    at = after.index(before[first:start])  # everything before the name, copied
    assert after[at + start - first :].startswith(b"\x10\x00\x10\x00")
    assert after.endswith(before[stop:])  # everything after it, pixel data included
    assert after[:128] == bytes(128)


def test_a_file_that_grew_since_its_size_was_taken_is_not_read_whole(tmp_path: Path) -> None:
    """Only as many bytes as the file had are read into memory; one still growing is read in
    parts (and its stat, taken again after, tells the ingest it changed)."""
    source = Path(str(get_testdata_file("CT_small.dcm")))
    size = source.stat().st_size
    assert part10._read_header(source, size, keep=True).data is not None
    assert part10._read_header(source, size - 1, keep=True).data is None


def _written(
    elem: DataElement, encodings: str | list[str] | None, implicit: bool, little: bool
) -> bytes:
    """What pydicom's writer writes for `elem`."""
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, little
    write_data_element(fp, elem, encodings)
    return fp.getvalue()


@pytest.mark.parametrize(
    "encodings", [None, "iso8859", "iso_ir_126", ["latin_1"], ["iso8859", "iso2022_jp"]]
)
@pytest.mark.parametrize("implicit, little", [(False, True), (True, True), (False, False)])
def test_an_element_from_the_encoding_cache_is_what_pydicom_writes(
    encodings: str | list[str] | None, implicit: bool, little: bool
) -> None:
    warnings.simplefilter("ignore")  # values the character set cannot hold: pydicom warns
    elements = [
        DataElement("InstitutionName", "LO", "Zürich Universitätsspital"),
        DataElement("PatientName", "PN", "Yamada^Tarou=山田^太郎"),
        DataElement("SOPClassUID", "UI", UID("1.2.840.10008.5.1.4.1.1.2")),
        DataElement("FileMetaInformationVersion", "OB", b"\x00\x01"),
        DataElement("StationName", "SH", ""),
        DataElement("InstitutionAddress", "ST", "Αθήνα"),
    ]
    for elem in elements:
        expected = _written(elem, encodings, implicit, little)
        for _ in range(2):  # written, then taken from the cache
            got = part10._encoded_element(elem, implicit, little, encodings)
            assert got == expected, elem.keyword


def _original_attributes(when: str, previous: DataElement) -> DataElement:
    modified = Dataset()
    modified.add(previous)
    item = Dataset()
    item.AttributeModificationDateTime = when
    item.ModifyingSystem = "VNA"
    item.ModifiedAttributesSequence = Sequence([modified])
    return DataElement("OriginalAttributesSequence", "SQ", Sequence([item]))


@pytest.mark.parametrize("implicit, little", [(False, True), (True, True), (False, False)])
def test_a_sequence_from_the_encoding_cache_is_what_pydicom_writes_for_its_content(
    implicit: bool, little: bool
) -> None:
    """Sequences that differ only deep inside are told apart; one holding an element whose
    VR depends on the dataset around it is not taken from the cache."""
    sequences = [
        _original_attributes("20261204120000", DataElement("IssuerOfPatientID", "LO", None)),
        _original_attributes("20261204120000", DataElement("IssuerOfPatientID", "LO", "A")),
        _original_attributes("20261204120001", DataElement("IssuerOfPatientID", "LO", "A")),
        _original_attributes("20261204120001", DataElement("IssuerOfPatientID", "LO", "")),
        _original_attributes("20261204120001", DataElement("StationName", "SH", "A")),
        _original_attributes(
            "20261204120001", DataElement("SmallestImagePixelValue", "US or SS", b"\x01\x00")
        ),
    ]
    for elem in sequences * 2:  # each written, then taken from the cache
        expected = _written(elem, ["iso8859"], implicit, little)
        assert part10._encoded_element(elem, implicit, little, ["iso8859"]) == expected


def test_a_large_value_is_written_but_not_kept_in_the_encoding_cache() -> None:
    """A coercion removing an encapsulated document records it in the Original Attributes
    Sequence: encoding it must not keep megabytes per distinct file in every worker."""
    previous = DataElement("EncapsulatedDocument", "OB", b"%PDF" + b"\0" * (1 << 20))
    elem = _original_attributes("20261204120000", previous)
    expected = _written(elem, None, False, True)
    assert part10._encoded_element(elem, False, True) == expected
    assert max(map(len, part10._ENCODED.values()), default=0) < 1 << 20


def test_a_source_preamble_is_not_kept_on_either_path(tmp_path: Path) -> None:
    """A deflated file is rewritten whole by pydicom, every other one is spliced: both write
    the preamble as zeros, as the spliced path always did."""
    ds = pydicom.dcmread(str(get_testdata_file("image_dfl.dcm")))
    ds.preamble = b"II*\x00" + b"\x01" * 124
    source = tmp_path / "dfl.dcm"
    ds.save_as(source, enforce_file_format=True)
    assert source.read_bytes()[:4] == b"II*\x00"
    header = part10.read_header(source, keep=True)
    assert header.whole
    part10.write_archived(header, source, tmp_path / "out.dcm", durable=False, touched=set())
    assert (tmp_path / "out.dcm").read_bytes()[:132] == bytes(128) + b"DICM"


def test_a_multi_valued_ae_title_in_the_file_meta_is_kept_as_it_came() -> None:
    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")), stop_before_pixels=True)
    ds.file_meta.SourceApplicationEntityTitle = ["AE1", "AE2"]
    meta = part10.file_meta_elements(ds, UID(ds.file_meta.TransferSyntaxUID), ds.file_meta)
    expected = DataElement("SourceApplicationEntityTitle", "AE", ["AE1", "AE2"])
    assert part10._encoded_file_meta(meta).endswith(_written(expected, None, False, True))
