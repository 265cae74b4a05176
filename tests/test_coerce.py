"""Coercion and provenance on a parsed header, without the rest of the ingest."""

from __future__ import annotations

import datetime as dt

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from vna.ingest.coerce import PROVENANCE_CREATOR, PROVENANCE_GROUP, Rules, apply, read_provenance

WHEN = dt.datetime(2026, 12, 4, 12, 0, 0, 123456, tzinfo=dt.UTC)


def _header(name: str = "CT_small.dcm") -> Dataset:
    return pydicom.dcmread(str(get_testdata_file(name)), stop_before_pixels=True)


def test_files_coerced_together_each_record_their_own_originals() -> None:
    """Files taken in one chunk share a received time: what each had replaced is its own."""
    rules = Rules(source="pacs-a", issuer_of_patient_id="PACS_A", set={"StationName": "CT9"})
    first, second, third = _header(), _header(), _header()
    second.StationName = "OLD"
    for ds in (first, second, third):
        apply(ds, rules, WHEN, "digest")
    recorded = [
        ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0]
        for ds in (first, second, third)
    ]
    assert [m.StationName for m in recorded] == ["CT01_OC0", "OLD", "CT01_OC0"]
    assert all(m.IssuerOfPatientID is None for m in recorded)
    assert all(
        ds.StationName == "CT9" and ds.IssuerOfPatientID == "PACS_A" for ds in (first, second)
    )
    item = first.OriginalAttributesSequence[0]
    assert item.AttributeModificationDateTime == "20261204120000.123456+0000"
    assert item.SourceOfPreviousValues == "pacs-a"


def test_a_coercion_is_appended_to_the_originals_a_file_already_carries() -> None:
    ds = _header()
    earlier = Dataset()
    earlier.ModifyingSystem = "OTHER"
    ds.OriginalAttributesSequence = Sequence([earlier])
    apply(ds, Rules(source="pacs-a", issuer_of_patient_id="PACS_A"), WHEN, "digest")
    assert [item.ModifyingSystem for item in ds.OriginalAttributesSequence] == ["OTHER", "VNA"]


def test_provenance_takes_the_next_free_block_and_leaves_other_creators_as_read() -> None:
    """This file's group 9 holds two creators read as UN: they must be written back as they
    were, and ours goes into the first free block."""
    ds = _header("J2K_pixelrep_mismatch.dcm")
    touched = apply(ds, Rules(source="pacs-a"), WHEN, "abc")
    group = PROVENANCE_GROUP << 16
    for block in (0x10, 0x11):
        elem = ds.get_item(group | block)
        assert isinstance(elem, RawDataElement) and elem.VR == "UN"
    assert ds[group | 0x12].value == PROVENANCE_CREATOR
    assert touched == {group | 0x12, group | 0x1201, group | 0x1202, group | 0x1203}
    prov = read_provenance(ds)
    assert (prov.source, prov.received, prov.content_digest) == ("pacs-a", WHEN, "abc")


def test_provenance_of_a_file_ingested_again_replaces_the_block_it_had() -> None:
    """This file's group 9 holds a GE creator at 0x10, so ours takes 0x11, and keeps it."""
    ds = _header()
    first = apply(ds, Rules(source="pacs-a"), WHEN, "first")
    later = WHEN + dt.timedelta(days=1)
    second = apply(ds, Rules(source="pacs-b"), later, "second")
    group = PROVENANCE_GROUP << 16
    creators = [ds[group | block].value for block in range(0x10, 0x100) if group | block in ds]
    assert creators == ["GEMS_IDEN_01", PROVENANCE_CREATOR]
    assert first == second and group | 0x11 in second
    prov = read_provenance(ds)
    assert (prov.source, prov.received, prov.content_digest) == ("pacs-b", later, "second")
