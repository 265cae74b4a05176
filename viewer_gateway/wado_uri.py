"""WADO-URI (PS3.18 9): `?requestType=WADO&studyUID=..&objectUID=..`, for older viewers.

Serves the DICOM object (`contentType=application/dicom`, stored or a
requested transfer syntax), or a rendered image (`contentType=image/jpeg`,
the default of PS3.18 9.1.2.1, or image/png) with `windowCenter`,
`windowWidth`, `rows`, `columns` and `imageQuality`.
"""

from __future__ import annotations

from viewer_gateway.rendered import parse_options, render
from viewer_gateway.tiers import InstanceStore, Located
from viewer_gateway.transcode import convert
from vna.errors import InvalidInput


def retrieve(
    store: InstanceStore,
    inst: Located,
    request_type: str,
    content_type: str,
    syntax: str | None,
    rendering: tuple[str | None, str | None, str | None] = (None, None, None),
) -> tuple[bytes, str]:
    """(body, media type) of one WADO-URI answer: the object, or a rendered image."""
    if request_type != "WADO":
        raise InvalidInput(f"requestType must be WADO, not {request_type!r}")
    kinds = [c.split(";")[0].strip().lower() for c in content_type.split(",")]
    data = store.read(inst)
    if "application/dicom" in kinds:
        if syntax:
            data = convert(data, inst.transfer_syntax_uid, syntax)
        return data, "application/dicom"
    window, viewport, quality = rendering
    options = parse_options(kinds, window, viewport, quality)
    return render(data, 1, options), options.media_type
