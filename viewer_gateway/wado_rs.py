"""WADO-RS (PS3.18 10.4): retrieve instances, metadata, frames and bulk data.

Instances stream one part at a time (a series is never held in memory whole),
each read through `tiers.InstanceStore`, so every byte sent matches the digest
in the index, from tier 0 or a replica.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import UID, ExplicitVRLittleEndian

from viewer_gateway.media import Choice, MediaRange, Multipart, choose_multipart
from viewer_gateway.tiers import InstanceStore, Located
from viewer_gateway.transcode import can_convert, convert
from vna.errors import InvalidInput, NotAcceptable, NotFound

_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}


def retrieve(
    store: InstanceStore, found: list[Located], accept: list[MediaRange]
) -> tuple[str, Iterator[bytes]]:
    """A multipart/related of application/dicom parts; (content type, body iterator)."""
    choice = choose_multipart(accept, ["application/dicom"], ExplicitVRLittleEndian)
    for inst in found:
        if choice.transfer_syntax and not can_convert(
            inst.transfer_syntax_uid, choice.transfer_syntax
        ):
            raise NotAcceptable(
                f"instance {inst.sop_uid} is stored as {inst.transfer_syntax_uid} and cannot be "
                f"converted to {choice.transfer_syntax}; ask with transfer-syntax=*"
            )
    mp = Multipart("application/dicom")

    def parts() -> Iterator[bytes]:
        for inst in found:
            data = store.read(inst)
            syntax = choice.transfer_syntax or inst.transfer_syntax_uid
            data = convert(data, inst.transfer_syntax_uid, syntax)
            yield mp.part(data, f"application/dicom; transfer-syntax={syntax}")
        yield mp.end()

    return mp.content_type, parts()


def parse_frames(text: str) -> list[int]:
    try:
        numbers = [int(p) for p in text.split(",")]
    except ValueError:
        raise InvalidInput(
            f"frame list {text!r} is not a comma-separated list of numbers"
        ) from None
    if not numbers or any(n < 1 for n in numbers):
        raise InvalidInput("frame numbers start at 1")
    return numbers


def frames(
    store: InstanceStore, inst: Located, numbers: list[int], accept: list[MediaRange]
) -> tuple[str, Iterator[bytes]]:
    """Frames as multipart/related octet-stream (or the stored compressed type with `*`)."""
    stored = UID(inst.transfer_syntax_uid)
    compressed = stored.is_compressed
    choice = choose_multipart(accept, ["application/octet-stream"], ExplicitVRLittleEndian)
    if (
        compressed
        and choice.transfer_syntax not in (None, str(stored))
        and not can_convert(str(stored), ExplicitVRLittleEndian)
    ):
        raise NotAcceptable(f"frames are stored as {stored}; ask with transfer-syntax=*")
    data = store.read(inst)
    ds = pydicom.dcmread(io.BytesIO(data))
    if "PixelData" not in ds:
        raise NotFound("this instance has no pixel data")
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if any(n > count for n in numbers):
        raise NotFound(f"the instance has {count} frame(s)")
    chosen = _choice_syntax(choice, stored)
    if compressed and chosen == str(stored):
        all_frames = list(generate_frames(ds.PixelData, number_of_frames=count))
        ctype = f"application/octet-stream; transfer-syntax={stored}"
    else:
        if compressed:
            ds.decompress()
        frame_len = len(ds.PixelData) // count
        all_frames = [ds.PixelData[k * frame_len : (k + 1) * frame_len] for k in range(count)]
        ctype = f"application/octet-stream; transfer-syntax={ExplicitVRLittleEndian}"
    mp = Multipart("application/octet-stream")
    return mp.content_type, mp.stream((all_frames[n - 1], ctype) for n in numbers)


def _choice_syntax(choice: Choice, stored: UID) -> str:
    if choice.transfer_syntax is None:
        return str(stored)
    return choice.transfer_syntax


def bulkdata(store: InstanceStore, inst: Located, tag_hex: str) -> bytes:
    """The value of one top-level binary element."""
    try:
        tag = int(tag_hex, 16)
    except ValueError:
        raise InvalidInput(f"{tag_hex!r} is not a tag") from None
    ds: Dataset = pydicom.dcmread(io.BytesIO(store.read(inst)))
    if tag not in ds or ds[tag].VR not in _BINARY_VRS | {"OB or OW"}:
        raise NotFound(f"no bulk data element {tag_hex} in this instance")
    value = ds[tag].value
    return bytes(value)
