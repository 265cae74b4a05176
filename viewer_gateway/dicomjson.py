"""DICOM JSON (PS3.18 F.2) for QIDO-RS results built from index rows.

Tags are written in hex only here, at the JSON edge, and made with pydicom's
dictionary from the keywords of `vna.attributes`.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

_NUMERIC = {"IS", "US", "UL", "SS", "SL", "DS", "FL", "FD", "UV", "SV"}


@cache
def tag_hex(keyword: str) -> str:
    """'StudyInstanceUID' -> '0020000D' (remembered: a search writes the same few per row)."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return f"{tag:08X}"


def element(keyword: str, value: Any) -> tuple[str, dict[str, Any]]:
    """One DICOM JSON attribute; an empty value is written without "Value", as F.2.5 asks."""
    return tag_hex(keyword), attribute(vr_of(keyword), value)


@cache
def vr_of(keyword: str) -> str:
    """The keyword's VR from pydicom's dictionary (remembered, as `tag_hex`)."""
    return str(dictionary_VR(keyword))


def attribute(vr: str, value: Any) -> dict[str, Any]:
    """The JSON object of one attribute of `vr` holding `value` (`element` without the tag)."""
    out: dict[str, Any] = {"vr": vr}
    if value is None or value == "" or value == []:
        return out
    values = (
        value
        if isinstance(value, list)
        else str(value).split("\\")
        if isinstance(value, str)
        else [value]
    )
    if vr == "PN":
        out["Value"] = [{"Alphabetic": v} for v in values]
    elif vr in _NUMERIC:
        out["Value"] = [_number(v) for v in values]
    else:
        out["Value"] = values
    return out


def _number(value: Any) -> int | float:
    if isinstance(value, int | float):
        return value
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        return float(text)


def dataset(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A DICOM JSON object from (keyword, value) pairs, tags in ascending order."""
    items = [element(k, v) for k, v in pairs]
    return dict(sorted(items))
