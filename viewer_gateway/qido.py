"""QIDO-RS (PS3.18 10.6): search for studies, series and instances, in the index only.

Here the query parameters are read and the results rendered as DICOM JSON; how
attributes match is in matching.py. Never a file is opened to answer a search.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import keyword_for_tag, tag_for_keyword
from sqlalchemy import Engine

from viewer_gateway import matching
from viewer_gateway.dicomjson import attribute, tag_hex, vr_of
from viewer_gateway.matching import BadQuery
from vna.attributes import BY_KEYWORD, Attribute, Level, Match

CONTROL = {"limit", "offset", "fuzzymatching", "includefield"}
UTF8 = "ISO_IR 192"

DEFAULTS = {
    Level.STUDY: (
        "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName",
        "TimezoneOffsetFromUTC", "PatientName", "PatientID", "IssuerOfPatientID",
        "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
    ),
    Level.SERIES: (
        "Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
        "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", "StudyInstanceUID",
    ),
    Level.INSTANCE: (
        "SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns", "BitsAllocated",
        "NumberOfFrames", "StudyInstanceUID", "SeriesInstanceUID",
    ),
}  # fmt: skip
# Which index levels a search at each level may match on (relational queries across levels).
SEARCHABLE = {
    Level.STUDY: (Level.PATIENT, Level.STUDY),
    Level.SERIES: (Level.PATIENT, Level.STUDY, Level.SERIES),
    Level.INSTANCE: (Level.PATIENT, Level.STUDY, Level.SERIES, Level.INSTANCE),
}
COMPUTED = {
    Level.STUDY: (
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    Level.SERIES: ("NumberOfSeriesRelatedInstances",),
    Level.INSTANCE: (),
}
__all__ = ["BadQuery", "Query", "Scope", "parse", "search"]


@dataclass
class Query:
    level: Level
    filters: list[tuple[Attribute | str, str]] = field(default_factory=list)
    include: set[str] = field(default_factory=set)
    include_all: bool = False
    fuzzy: bool = False
    limit: int = 100
    offset: int = 0


def parse(level: Level, params: Sequence[tuple[str, str]], max_limit: int) -> Query:
    """Read QIDO-RS query parameters; anything unknown or malformed is a BadQuery (400)."""
    q = Query(level)
    for name, value in params:
        if name == "limit":
            q.limit = _count(name, value, 1, max_limit)
        elif name == "offset":
            q.offset = _count(name, value, 0, 10**9)
        elif name == "fuzzymatching":
            if value not in ("true", "false"):
                raise BadQuery(f"fuzzymatching must be true or false, not {value!r}")
            q.fuzzy = value == "true"
        elif name == "includefield":
            for item in filter(None, (v.strip() for v in value.split(","))):
                if item == "all":
                    q.include_all = True
                else:
                    q.include.add(_keyword(item))
        else:
            keyword = _keyword(name)
            if keyword in ("ModalitiesInStudy",) and level is Level.STUDY:
                q.filters.append((keyword, value))
                continue
            attr = BY_KEYWORD.get(keyword)
            if attr is None or attr.match is Match.NONE:
                raise BadQuery(f"matching on {keyword} is not supported")
            if attr.level not in SEARCHABLE[level]:
                raise BadQuery(f"{keyword} cannot be matched in a {level.value} search")
            q.filters.append((attr, value))
    return q


def _count(name: str, value: str, low: int, high: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise BadQuery(f"{name} must be a whole number, not {value!r}") from None
    if not low <= n <= high:
        raise BadQuery(f"{name} must be between {low} and {high}, not {n}")
    return n


def _keyword(name: str) -> str:
    """A parameter names an attribute by keyword or by tag (`00100020`, `0010,0020`)."""
    text = name.replace(",", "").replace("(", "").replace(")", "")
    if len(text) == 8 and all(c in "0123456789abcdefABCDEF" for c in text):
        keyword = keyword_for_tag(int(text, 16))
        if keyword:
            return str(keyword)
        raise BadQuery(f"unknown attribute tag {name}")
    if tag_for_keyword(name) is not None:
        return name
    raise BadQuery(f"unknown query parameter {name!r}")


@dataclass(frozen=True)
class Scope:
    """Path parameters of the nested routes (/studies/{s}/series, .../series/{se}/instances)."""

    study_uid: str | None = None
    series_uid: str | None = None


def search(
    engine: Engine,
    q: Query,
    scope: Scope,
    base_url: str,
    reading: AbstractContextManager[Any] | None = None,
) -> list[dict[str, Any]]:
    """Run a parsed query (with `reading`'s cursor, if given); return DICOM JSON objects."""
    dialect = engine.dialect.name
    terms = matching.terms(dialect, q.filters, q.fuzzy, scope.study_uid, scope.series_uid)
    found = matching.search(engine, q.level, terms, q.limit, q.offset, reading)
    plan = _Plan(q, found.columns, base_url)
    return [plan.render(row, found.computed.get(plan.key(row), {})) for row in found.rows]


class _Plan:
    """How each result row of one search becomes DICOM JSON, worked out once per search.

    The attributes (defaults, includefield, computed, RetrieveURL) are looked up,
    ordered by tag and mapped to row positions once per kind of search (`_layout`);
    each row then only fills in values. The same objects as building each row from
    keywords, in less time (a 101-study page took longer to render than to query).
    """

    def __init__(self, q: Query, columns: list[str], base_url: str) -> None:
        self.level = q.level
        self.base_url = base_url
        include = frozenset(q.include)
        self.uids, self.fields = _layout(q.level, include, q.include_all, tuple(columns))

    def key(self, row: Sequence[Any]) -> str | None:
        """The UID the computed attributes of `row` are keyed by (none for instances)."""
        at = self.uids[0] if self.level is Level.STUDY else self.uids[1]
        return None if self.level is Level.INSTANCE or at is None else row[at]

    def render(self, row: Sequence[Any], extra: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for tag, vr, source in self.fields:
            if isinstance(source, int):
                value = row[source]
            elif isinstance(source, str):
                value = extra.get(source, [] if source == "ModalitiesInStudy" else 0)
            elif source is None:
                value = self._retrieve_url(row)
            else:
                value = source[0]
            out[tag] = attribute(vr, value)
        return out

    def _retrieve_url(self, row: Sequence[Any]) -> str:
        study, series, sop = (row[k] if k is not None else None for k in self.uids)
        return _retrieve_url(self.level, study, series, sop, self.base_url)


# (tag, vr, where the value comes from: a row position, a computed keyword, or a constant in
# a 1-tuple; None for RetrieveURL)
Field = tuple[str, str, int | str | tuple[Any] | None]


@functools.lru_cache(maxsize=matching.SHAPES_KEPT)
def _layout(
    level: Level, include: frozenset[str], include_all: bool, columns: tuple[str, ...]
) -> tuple[list[int | None], list[Field]]:
    """Where a row's UIDs are, and its fields in tag order; the same for every search that
    asks for the same attributes of the same statement's columns."""
    position = {name: k for k, name in reversed(list(enumerate(columns)))}
    uids = [position.get(c) for c in ("study_uid", "series_uid", "sop_uid")]
    keywords: list[str] = list(DEFAULTS[level])
    if include_all:
        for at in SEARCHABLE[level]:
            keywords += [a.keyword for a in BY_KEYWORD.values() if a.level is at]
    keywords += sorted(include)
    fields: list[Field] = [
        (tag_hex("SpecificCharacterSet"), vr_of("SpecificCharacterSet"), (UTF8,)),
        (tag_hex("InstanceAvailability"), vr_of("InstanceAvailability"), ("ONLINE",)),
    ]
    seen = {"SpecificCharacterSet", "InstanceAvailability"}
    for keyword in keywords:
        if keyword in seen:
            continue
        seen.add(keyword)
        attr = BY_KEYWORD.get(keyword)
        if attr is not None and attr.column in position:
            fields.append((tag_hex(keyword), vr_of(keyword), position[attr.column]))
    for keyword in COMPUTED[level]:
        fields.append((tag_hex(keyword), vr_of(keyword), keyword))
    fields.append((tag_hex("RetrieveURL"), vr_of("RetrieveURL"), None))
    return uids, sorted(fields, key=lambda f: f[0])


def _retrieve_url(
    level: Level, study: str | None, series: str | None, sop: str | None, base: str
) -> str:
    url = f"{base}/studies/{study}"
    if level is not Level.STUDY:
        url += f"/series/{series}"
    if level is Level.INSTANCE:
        url += f"/instances/{sop}"
    return url
