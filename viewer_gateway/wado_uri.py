"""WADO-URI (PS3.18 9): `?requestType=WADO&studyUID=..&objectUID=..`, for older viewers.

Serves the DICOM object (`contentType=application/dicom`, stored or a
requested transfer syntax). Rendered JPEG/PNG answers are not offered yet:
they get 406 with a message rather than a wrong image.
"""

from __future__ import annotations

from pydicom.uid import ExplicitVRLittleEndian

from viewer_gateway.tiers import InstanceStore, Located
from viewer_gateway.transcode import convert
from vna.errors import InvalidInput, NotAcceptable


def retrieve(
    store: InstanceStore, inst: Located, request_type: str, content_type: str, syntax: str | None
) -> tuple[bytes, str]:
    """(body, media type) of one WADO-URI answer."""
    if request_type != "WADO":
        raise InvalidInput(f"requestType must be WADO, not {request_type!r}")
    kinds = [c.split(";")[0].strip().lower() for c in content_type.split(",")]
    if "application/dicom" not in kinds and "*/*" not in kinds:
        raise NotAcceptable(f"contentType {content_type!r} is not offered; use application/dicom")
    data = store.read(inst)
    if syntax:
        data = convert(data, inst.transfer_syntax_uid, syntax)
    elif inst.transfer_syntax_uid != ExplicitVRLittleEndian:
        data = data  # PS3.18 9.1.2: without transferSyntax the stored one is fine for DICOM
    return data, "application/dicom"
