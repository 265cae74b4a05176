"""QIDO-RS (PS3.18 10.6): search for studies, series and instances, in the index only.

Matching follows PS3.4 C.2.2.2: single value (with `*` and `?` wildcards on
strings), UID lists, date and time ranges, case-insensitive person names
(folded with str.casefold, so `müller*` finds `Müller^Hans`), and, with
`fuzzymatching=true`, person names matching at the start of any component.
Never a file is opened to answer a search.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import keyword_for_tag, tag_for_keyword
from sqlalchemy import (
    ColumnElement,
    Engine,
    Select,
    and_,
    bindparam,
    exists,
    func,
    or_,
    select,
)

from viewer_gateway.dicomjson import attribute, tag_hex, vr_of
from vna.attributes import BY_KEYWORD, Attribute, Level, Match
from vna.errors import InvalidInput
from vna.index import schema
from vna.layout import check_uid

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
TABLES = {
    Level.PATIENT: schema.patients,
    Level.STUDY: schema.studies,
    Level.SERIES: schema.series,
    Level.INSTANCE: schema.instances,
}


class BadQuery(InvalidInput):
    reason = "bad-query"


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


def _condition(attr: Attribute, value: str, fuzzy: bool) -> ColumnElement[bool] | None:
    col = TABLES[attr.level].c[attr.column]
    if value in ("", "*"):
        return None  # universal matching
    if attr.match is Match.UID:
        uids = [v for v in value.replace("\\", ",").split(",") if v]
        for uid in uids:
            check_uid(uid, attr.keyword)
        return col.in_(uids)
    if attr.match in (Match.DATE, Match.TIME):
        return _range(col, value, attr)
    if attr.match is Match.INTEGER:
        try:
            return col == int(value)
        except ValueError:
            raise BadQuery(f"{attr.keyword} must be a number, not {value!r}") from None
    if attr.match is Match.PERSON_NAME:
        folded = value.casefold()
        target = (
            schema.patients.c.patient_name_folded
            if attr.keyword == "PatientName"
            else func.lower(col)
        )
        if attr.keyword != "PatientName":
            folded = value.lower()
        cond = _like(target, folded)
        if fuzzy:
            pattern = _to_like(folded.rstrip("*")) + "%"
            cond = or_(
                cond, target.like(pattern, escape="\\"), target.like("%^" + pattern, escape="\\")
            )
        return cond
    return _like(col, value)


def _like(col: Any, value: str) -> ColumnElement[bool]:
    if "*" in value or "?" in value:
        return col.like(_to_like(value), escape="\\")  # type: ignore[no-any-return]
    return col == value  # type: ignore[no-any-return]


def _to_like(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _range(col: Any, value: str, attr: Attribute) -> ColumnElement[bool]:
    allowed = set("0123456789.:") | ({"-"} if "-" in value else set())
    if not set(value) <= allowed or value.count("-") > 1:
        raise BadQuery(f"{attr.keyword}: {value!r} is not a {attr.match.value} or range")
    if "-" not in value:
        return col == value  # type: ignore[no-any-return]
    low, high = value.split("-")
    if attr.match is Match.TIME:
        low, high = low.replace(":", ""), high.replace(":", "")
    conds = []
    if low:
        conds.append(col >= low)
    if high:
        # A time range end of "1015" includes 101530.5; compare on the prefix length.
        conds.append(
            func.substr(col, 1, len(high)) <= high if attr.match is Match.TIME else col <= high
        )
    return and_(*conds)


@dataclass(frozen=True)
class Scope:
    """Path parameters of the nested routes (/studies/{s}/series, .../series/{se}/instances)."""

    study_uid: str | None = None
    series_uid: str | None = None


def search(engine: Engine, q: Query, scope: Scope, base_url: str) -> list[dict[str, Any]]:
    """Run a parsed query; return DICOM JSON objects."""
    p, st, se, i = schema.patients, schema.studies, schema.series, schema.instances
    conds: list[ColumnElement[bool]] = []
    for attr, value in q.filters:
        if isinstance(attr, str):  # ModalitiesInStudy
            mods = [m for m in value.replace("\\", ",").split(",") if m and m != "*"]
            if mods:
                conds.append(exists().where(se.c.study_pk == st.c.id, se.c.modality.in_(mods)))
            continue
        cond = _condition(attr, value, q.fuzzy)
        if cond is not None:
            conds.append(cond)
    if scope.study_uid:
        conds.append(st.c.study_uid == check_uid(scope.study_uid, "StudyInstanceUID"))
    if scope.series_uid:
        conds.append(se.c.series_uid == check_uid(scope.series_uid, "SeriesInstanceUID"))
    stmt: Select[Any]
    if q.level is Level.STUDY:
        stmt = (
            select(st, p)
            .join(p, st.c.patient_pk == p.c.id)
            .order_by(st.c.study_date.desc(), st.c.id)
        )
    elif q.level is Level.SERIES:
        stmt = (
            select(se, st, p)
            .join(st, se.c.study_pk == st.c.id)
            .join(p, st.c.patient_pk == p.c.id)
            .order_by(st.c.id, se.c.series_number, se.c.id)
        )
    else:
        stmt = (
            select(i, se.c.series_uid, st, p)
            .join(se, i.c.series_pk == se.c.id)
            .join(st, se.c.study_pk == st.c.id)
            .join(p, st.c.patient_pk == p.c.id)
            .order_by(se.c.id, i.c.instance_number, i.c.id)
        )
    stmt = stmt.where(*conds).limit(q.limit).offset(q.offset)
    with engine.connect() as conn:
        result = conn.execute(stmt)
        plan = _Plan(q, list(result.keys()), base_url)
        rows = result.all()
        extra = _computed(conn, q.level, [plan.key(row) for row in rows])
    return [plan.render(row, extra.get(plan.key(row), {})) for row in rows]


# The computed attributes of a page of results, one statement per search: per series of the
# page's studies, its modality and instance count (an outer join keeps empty series, whose
# modality counts for ModalitiesInStudy though the series does not count as related); per
# series of a page of series, its instance count. Built once: only the UID list varies.
_ST, _SE, _I = schema.studies, schema.series, schema.instances
_STUDY_SERIES = (
    select(_ST.c.study_uid, _SE.c.modality, func.count(_I.c.id))
    .join(_SE, _SE.c.study_pk == _ST.c.id)
    .outerjoin(_I, _I.c.series_pk == _SE.c.id)
    .where(_ST.c.study_uid.in_(bindparam("uids", expanding=True)))
    .group_by(_ST.c.study_uid, _SE.c.id, _SE.c.modality)
    .order_by(_SE.c.id)
)
_SERIES_INSTANCES = (
    select(_SE.c.series_uid, func.count(_I.c.id))
    .join(_I, _I.c.series_pk == _SE.c.id)
    .where(_SE.c.series_uid.in_(bindparam("uids", expanding=True)))
    .group_by(_SE.c.series_uid)
)


def _computed(conn: Any, level: Level, uids: list[str | None]) -> dict[Any, dict[str, Any]]:
    """NumberOfStudyRelated*, ModalitiesInStudy (in series order) or
    NumberOfSeriesRelatedInstances of the studies or series `uids`, keyed by UID."""
    out: dict[Any, dict[str, Any]] = {}
    if not uids or level is Level.INSTANCE:
        return out
    if level is Level.STUDY:
        for uid, modality, ninst in conn.execute(_STUDY_SERIES, {"uids": uids}):
            found = out.setdefault(
                uid,
                {
                    "NumberOfStudyRelatedSeries": 0,
                    "NumberOfStudyRelatedInstances": 0,
                    "ModalitiesInStudy": [],
                },
            )
            if ninst:
                found["NumberOfStudyRelatedSeries"] += 1
                found["NumberOfStudyRelatedInstances"] += ninst
            if modality and modality not in found["ModalitiesInStudy"]:
                found["ModalitiesInStudy"].append(modality)
        return out
    for uid, ninst in conn.execute(_SERIES_INSTANCES, {"uids": uids}):
        out[uid] = {"NumberOfSeriesRelatedInstances": ninst}
    return out


class _Plan:
    """How each result row of one search becomes DICOM JSON, worked out once per search.

    The attributes (defaults, includefield, computed, RetrieveURL) are looked up,
    ordered by tag and mapped to row positions once; each row then only fills in
    values. The same objects as building each row from keywords, in less time
    (a 101-study page took longer to render than to query).
    """

    def __init__(self, q: Query, columns: list[str], base_url: str) -> None:
        self.level = q.level
        self.base_url = base_url
        position = {name: k for k, name in reversed(list(enumerate(columns)))}
        self.uids = [position.get(c) for c in ("study_uid", "series_uid", "sop_uid")]
        keywords: list[str] = list(DEFAULTS[q.level])
        if q.include_all:
            for level in SEARCHABLE[q.level]:
                keywords += [a.keyword for a in BY_KEYWORD.values() if a.level is level]
        keywords += sorted(q.include)
        # (tag, vr, where the value comes from: a row position, a computed keyword, or a
        # constant in a 1-tuple; None for RetrieveURL)
        fields: list[tuple[str, str, int | str | tuple[Any] | None]] = [
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
        for keyword in COMPUTED[q.level]:
            fields.append((tag_hex(keyword), vr_of(keyword), keyword))
        fields.append((tag_hex("RetrieveURL"), vr_of("RetrieveURL"), None))
        self.fields = sorted(fields, key=lambda f: f[0])

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


def _retrieve_url(
    level: Level, study: str | None, series: str | None, sop: str | None, base: str
) -> str:
    url = f"{base}/studies/{study}"
    if level is not Level.STUDY:
        url += f"/series/{series}"
    if level is Level.INSTANCE:
        url += f"/instances/{sop}"
    return url
