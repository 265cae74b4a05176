"""Per-source header coercion.

Each PACS has its habits (a missing Issuer of Patient ID, vendor-specific
modality codes, attributes a site wants gone). Rules from the source's
configuration are applied to the header only. As PS3.3 C.12.1.1.9 asks, the
values replaced are kept in the Original Attributes Sequence, so a coercion can
always be traced and undone.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from vna.errors import InvalidInput
from vna.part10 import CACHED_VALUE_MAX

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
    when = received.strftime(DT_FORMAT)
    if originals:
        _append_original_attributes(ds, originals, rules.source[:64], when)
        touched.add(_ORIGINAL_ATTRIBUTES)
    touched |= _stamp_provenance(ds, rules.source[:64], when, content_digest)
    return touched


DT_FORMAT = "%Y%m%d%H%M%S.%f%z"
_ORIGINAL_ATTRIBUTES = int(Tag("OriginalAttributesSequence"))


def _copy_element(elem: DataElement) -> DataElement:
    return DataElement(elem.tag, elem.VR, elem.value)


def _append_original_attributes(
    ds: Dataset, originals: list[DataElement], source: str, when: str
) -> None:
    key = _originals_key(originals)
    item = _modification(originals, source, when) if key is None else _shared(key, source, when)
    seq = ds.get("OriginalAttributesSequence")
    if seq is None:
        ds.OriginalAttributesSequence = Sequence([item])
    else:
        seq.append(item)


def _modification(originals: list[DataElement], source: str, when: str) -> Dataset:
    """One item of the Original Attributes Sequence: what was replaced, by whom, when."""
    modified = Dataset()
    for elem in originals:
        modified.add(elem)
    item = Dataset()
    item.AttributeModificationDateTime = when
    item.ModifyingSystem = MODIFYING_SYSTEM
    item.ReasonForTheAttributeModification = "COERCE"
    item.SourceOfPreviousValues = source
    item.ModifiedAttributesSequence = Sequence([modified])
    return item


OriginalsKey = tuple[tuple[int, str, str | bytes | None], ...]


def _originals_key(originals: list[DataElement]) -> OriginalsKey | None:
    """The replaced values as a cache key; None when one is not a short text or bytes."""
    key = []
    for elem in originals:
        value = elem.value
        short = isinstance(value, str | bytes) and len(value) <= CACHED_VALUE_MAX
        if value is not None and not short:
            return None
        key.append((int(elem.tag), elem.VR, value))
    return tuple(key)


@functools.lru_cache(maxsize=64)
def _shared(originals: OriginalsKey, source: str, when: str) -> Dataset:
    """`_modification`, made once for the files of a source that had the same values
    replaced at the same time (a chunk of files is given one received time): building
    the item's two datasets cost a tenth of a millisecond per file. The item is shared
    by those files' datasets and never changed after it is made."""
    return _modification([DataElement(t, vr, v) for t, vr, v in originals], source, when)


def _stamp_provenance(ds: Dataset, source: str, when: str, content_digest: str) -> set[int]:
    """Record which source sent the file, when, and the digest of what it sent.

    With these in the file itself, the index can be rebuilt from the layout (or
    a replica) alone, duplicate detection included.
    """
    block = _private_block(ds, PROVENANCE_GROUP, PROVENANCE_CREATOR) << 8
    base = PROVENANCE_GROUP << 16 | block
    ds.add_new(base | PROVENANCE_SOURCE, "LO", source)
    ds.add_new(base | PROVENANCE_RECEIVED, "DT", when)
    ds.add_new(base | PROVENANCE_CONTENT_DIGEST, "LO", content_digest)
    creator = PROVENANCE_GROUP << 16 | block >> 8
    offsets = (PROVENANCE_SOURCE, PROVENANCE_RECEIVED, PROVENANCE_CONTENT_DIGEST)
    return {creator} | {base | o for o in offsets}


def _private_block(ds: Dataset, group: int, creator: str) -> int:
    """The block (0x10-0xFF) of `creator` in a private `group`, reserved if it has none.

    What pydicom's `private_block(create=True)` finds, without the copy of the
    dataset's slice that it makes to look (a third of the coercion's time). The
    other creators are compared as read, not converted in the dataset: converted,
    one read as UN would be written back as LO.
    """
    reserved = set()
    wanted = creator.encode()
    for tag in ds.keys():  # noqa: SIM118 (iterating a Dataset converts its values)
        if tag >> 16 == group and 0x10 <= tag & 0xFFFF <= 0xFF:
            value = ds.get_item(tag).value
            if value == creator or (isinstance(value, bytes) and value.rstrip(b" \0") == wanted):
                return tag & 0xFFFF
            reserved.add(tag & 0xFFFF)
    free = next(block for block in range(0x10, 0x100) if block not in reserved)
    ds.add_new(group << 16 | free, "LO", creator)
    return free


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
            received = dt.datetime.strptime(text, DT_FORMAT)
        except ValueError:
            received = None
    return Provenance(value(PROVENANCE_SOURCE), received, value(PROVENANCE_CONTENT_DIGEST))
