"""UIDs become paths only when they are digits and dots."""

from __future__ import annotations

import pytest

from vna.layout import InvalidUID, check_uid, instance_relpath, parse_relpath


@pytest.mark.parametrize(
    "uid",
    [
        "../../etc",
        "1.2.3/..",
        "1.2/3",
        "",
        ".",
        "1..2",
        ".1",
        "1.",
        "1.2.a",
        "١.٢",
        "1" * 65,
        "1.2\x00",
        " 1.2",
        "1.2\n",
    ],
)
def test_malformed_uid_is_rejected(uid: str) -> None:
    with pytest.raises(InvalidUID):
        check_uid(uid, "StudyInstanceUID")


def test_valid_uid_maps_to_the_dicomweb_shaped_path() -> None:
    uid = "1.2.840.113619.2.55.3." + "1" * 30
    assert check_uid(uid, "x") == uid
    rel = instance_relpath("1.2", "3.4", "5.6")
    assert rel == "studies/1.2/series/3.4/instances/5.6.dcm"
    entry = parse_relpath(rel)
    assert entry is not None and (entry.study_uid, entry.series_uid, entry.sop_uid) == (
        "1.2",
        "3.4",
        "5.6",
    )
    assert parse_relpath("studies/../series/3.4/instances/5.6.dcm") is None
