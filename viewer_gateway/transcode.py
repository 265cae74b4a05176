"""Transfer syntax conversion for retrieve, where pydicom can do it; else 406.

The archive keeps pixel data in its stored syntax. A client that asks for
another (WADO-RS defaults to Explicit VR Little Endian) gets a converted copy:
re-encoding for the uncompressed syntaxes, decoding through pydicom's pixel
decoders for compressed ones (when a decoder for that syntax is installed).
"""

from __future__ import annotations

import io

import pydicom
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from vna.errors import NotAcceptable

_REENCODE = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, UID("1.2.840.10008.1.2.1.99")}


def can_convert(stored: str, wanted: str) -> bool:
    """Whether `stored` can be served as `wanted` here."""
    if stored == wanted:
        return True
    if wanted != ExplicitVRLittleEndian:
        return False
    if stored in _REENCODE:
        return True
    try:
        from pydicom.pixels.decoders.base import get_decoder

        return bool(get_decoder(UID(stored)).is_available)
    except (NotImplementedError, ValueError, ImportError):
        return False


def convert(data: bytes, stored: str, wanted: str) -> bytes:
    """The instance re-encoded in `wanted`; NotAcceptable if that cannot be done."""
    if stored == wanted:
        return data
    if not can_convert(stored, wanted):
        raise NotAcceptable(f"cannot convert {stored} to {wanted}")
    ds = pydicom.dcmread(io.BytesIO(data))
    if UID(stored) not in _REENCODE:
        try:
            ds.decompress()
        except Exception as exc:
            raise NotAcceptable(f"cannot decode {stored}: {exc}") from None
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return out.getvalue()
