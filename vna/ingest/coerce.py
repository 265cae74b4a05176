"""Per-source header coercion.

Each PACS has its habits (a missing Issuer of Patient ID, vendor-specific
modality codes, attributes a site wants gone). Rules from the source's
configuration are applied to the header only. As PS3.3 C.12.1.1.9 asks, the
values replaced are kept in the Original Attributes Sequence, so a coercion can
always be traced and undone.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from vna.errors import InvalidInput

MODIFYING_SYSTEM = "VNA"
PROVENANCE_GROUP = 0x0009
PROVENANCE_CREATOR = "VNA ARCHIVE"
PROVENANCE_SOURCE = 0x01
PROVENANCE_RECEIVED = 0x02
PROVENANCE_CONTENT_DIGEST = 0x03


class CoercionFailed(InvalidInput):
    reason = "coercion-failed"


@dataclass(frozen=True)
class Rules:
    """A source's coercion rules, in a picklable form for worker processes."""

    source: str
    issuer_of_patient_id: str = ""
    override_issuer: bool = False
    set: dict[str, str] = field(default_factory=dict)
    replace: dict[str, dict[str, str]] = field(default_factory=dict)
    remove: tuple[str, ...] = ()


def apply(ds: Dataset, rules: Rules, received: dt.datetime, content_digest: str) -> set[int]:
    """Apply `rules` to `ds` in place; return the tags of every top-level element touched.

    The writer copies every other element byte for byte from the input.
    """
    originals: list[DataElement] = []
    changed: list[str] = []

    def record(keyword: str) -> None:
        if keyword in changed:
            return
        changed.append(keyword)
        if keyword in ds:
            originals.append(_copy_element(ds[keyword]))
        else:
            originals.append(DataElement(keyword, dictionary_VR(keyword), None))

    try:
        issuer = rules.issuer_of_patient_id
        current_issuer = ds.get("IssuerOfPatientID")
        wanted = issuer and (rules.override_issuer or not current_issuer)
        if wanted and current_issuer != issuer:
            record("IssuerOfPatientID")
            ds.IssuerOfPatientID = issuer
        for keyword, value in rules.set.items():
            if str(ds.get(keyword, "")) != value:
                record(keyword)
                setattr(ds, keyword, value)
        for keyword, mapping in rules.replace.items():
            if keyword in ds:
                current = str(ds.get(keyword) or "")
                if current in mapping:
                    record(keyword)
                    setattr(ds, keyword, mapping[current])
        for keyword in rules.remove:
            if keyword in ds:
                record(keyword)
                del ds[keyword]
    except (ValueError, TypeError, OverflowError) as exc:
        raise CoercionFailed(f"coercion rule could not be applied: {exc}") from None
    touched = {int(tag_for_keyword(k) or 0) for k in changed}
    if originals:
        _append_original_attributes(ds, originals, rules.source, received)
        touched.add(int(tag_for_keyword("OriginalAttributesSequence") or 0))
    touched |= _stamp_provenance(ds, rules.source, received, content_digest)
    return touched


def _copy_element(elem: DataElement) -> DataElement:
    return DataElement(elem.tag, elem.VR, elem.value)


def _append_original_attributes(
    ds: Dataset, originals: list[DataElement], source: str, received: dt.datetime
) -> None:
    modified = Dataset()
    for elem in originals:
        modified.add(elem)
    item = Dataset()
    item.AttributeModificationDateTime = received.strftime("%Y%m%d%H%M%S.%f%z")
    item.ModifyingSystem = MODIFYING_SYSTEM
    item.ReasonForTheAttributeModification = "COERCE"
    item.SourceOfPreviousValues = source[:64]
    item.ModifiedAttributesSequence = Sequence([modified])
    seq = ds.get("OriginalAttributesSequence")
    if seq is None:
        ds.OriginalAttributesSequence = Sequence([item])
    else:
        seq.append(item)


def _stamp_provenance(
    ds: Dataset, source: str, received: dt.datetime, content_digest: str
) -> set[int]:
    """Record which source sent the file, when, and the digest of what it sent.

    With these in the file itself, the index can be rebuilt from the layout (or
    a replica) alone, duplicate detection included.
    """
    block = ds.private_block(PROVENANCE_GROUP, PROVENANCE_CREATOR, create=True)
    block.add_new(PROVENANCE_SOURCE, "LO", source[:64])
    block.add_new(PROVENANCE_RECEIVED, "DT", received.strftime("%Y%m%d%H%M%S.%f%z"))
    block.add_new(PROVENANCE_CONTENT_DIGEST, "LO", content_digest)
    creator = (PROVENANCE_GROUP << 16) | (block.block_start >> 8)
    offsets = (PROVENANCE_SOURCE, PROVENANCE_RECEIVED, PROVENANCE_CONTENT_DIGEST)
    return {creator} | {int(block.get_tag(o)) for o in offsets}


@dataclass(frozen=True)
class Provenance:
    source: str | None
    received: dt.datetime | None
    content_digest: str | None


def read_provenance(ds: Dataset) -> Provenance:
    """What `_stamp_provenance` wrote, as far as the file carries it."""
    try:
        block = ds.private_block(PROVENANCE_GROUP, PROVENANCE_CREATOR)
    except KeyError:
        return Provenance(None, None, None)

    def value(offset: int) -> str | None:
        try:
            return str(block[offset].value)
        except KeyError:
            return None

    received = None
    if (text := value(PROVENANCE_RECEIVED)) is not None:
        try:
            received = dt.datetime.strptime(text, "%Y%m%d%H%M%S.%f%z")
        except ValueError:
            received = None
    return Provenance(value(PROVENANCE_SOURCE), received, value(PROVENANCE_CONTENT_DIGEST))
