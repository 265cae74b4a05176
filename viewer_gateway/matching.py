"""QIDO-RS matching (PS3.4 C.2.2.2) as SQL, compiled once per shape of search.

A search's SQL depends only on its shape: the level, which attributes are matched
and how (a single value, a wildcard, a list of n UIDs, a range open at one end,
fuzzy names), and the nested route's scope. Its values are bound. So each shape is
built with SQLAlchemy and compiled for the index's dialect once; a search binds its
values into that SQL and runs it on a pooled driver connection. Through
SQLAlchemy's execution path (statement building, cache key, execution context,
result metadata) a search that finds one study cost ten times SQLite's own work.

Matching follows PS3.4 C.2.2.2: single value (with `*` and `?` wildcards on
strings), UID lists, date and time ranges, case-insensitive person names (folded
with str.casefold, so `müller*` finds `Müller^Hans`), and, with fuzzy matching,
person names matching at the start of any component.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Engine,
    Integer,
    Select,
    and_,
    bindparam,
    exists,
    func,
    or_,
    select,
)
from sqlalchemy.engine import Dialect

from vna.attributes import BY_KEYWORD, Attribute, Level, Match
from vna.errors import InvalidInput
from vna.index import schema
from vna.layout import check_uid

#: Shapes of search kept compiled; a shape's entry is a few kilobytes.
SHAPES_KEPT = 512

TABLES = {
    Level.PATIENT: schema.patients,
    Level.STUDY: schema.studies,
    Level.SERIES: schema.series,
    Level.INSTANCE: schema.instances,
}
_P, _ST, _SE, _I = schema.patients, schema.studies, schema.series, schema.instances
#: The UID column each level's computed attributes are keyed by (instances have none).
KEYED_BY = {Level.STUDY: "study_uid", Level.SERIES: "series_uid"}
#: Keys of the terms that are not attributes.
MODALITIES = "ModalitiesInStudy"
IN_STUDY, IN_SERIES = "scope:study", "scope:series"


class BadQuery(InvalidInput):
    reason = "bad-query"


#: How a term matches: its kind and what else changes the SQL (which ends a range has).
#: Hashable: with the number of values bound, part of the key a compiled search is kept under.
Form = tuple[Any, ...]


@dataclass(frozen=True)
class Term:
    """One matching key of a search: what it matches, how, and the values bound."""

    key: str  # an attribute keyword, MODALITIES, IN_STUDY or IN_SERIES
    form: Form
    values: tuple[Any, ...]


def terms(
    dialect: str,
    filters: Sequence[tuple[Attribute | str, str]],
    fuzzy: bool,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> list[Term]:
    """The terms of a search on an index of `dialect` (its name): one per query filter that
    is not universal (ModalitiesInStudy given by name), then the nested route's scope."""
    out = []
    for attr, value in filters:
        found = _modalities(value) if attr == MODALITIES else None
        if isinstance(attr, Attribute):
            found = term(attr, value, fuzzy, dialect == "sqlite")
        if found is not None:
            out.append(found)
    if study_uid:
        out.append(Term(IN_STUDY, ("eq",), (check_uid(study_uid, "StudyInstanceUID"),)))
    if series_uid:
        out.append(Term(IN_SERIES, ("eq",), (check_uid(series_uid, "SeriesInstanceUID"),)))
    return out


def term(attr: Attribute, value: str, fuzzy: bool, sqlite: bool) -> Term | None:
    """The term matching `attr` against a query value; None for universal matching."""
    if value in ("", "*"):
        return None
    key = attr.keyword
    if attr.match is Match.UID:
        uids = tuple(v for v in value.replace("\\", ",").split(",") if v)
        if not uids:
            raise BadQuery(f"{key}: {value!r} is a list of no UIDs")
        for uid in uids:
            check_uid(uid, key)
        return Term(key, ("in",), uids)
    if attr.match in (Match.DATE, Match.TIME):
        return _range(attr, value)
    if attr.match is Match.INTEGER:
        try:
            return Term(key, ("eq",), (int(value),))
        except ValueError:
            raise BadQuery(f"{key} must be a number, not {value!r}") from None
    if attr.match is Match.PERSON_NAME:  # case-insensitive: folded on both sides
        folded = value.casefold() if key == "PatientName" else value.lower()
        form, values = _text(folded, sqlite)
        if not fuzzy:
            return Term(key, ("name", form, None), values)
        start = folded.rstrip("*")
        fuzzy_values = (_pattern(start + "*", sqlite), _pattern("*^" + start + "*", sqlite))
        return Term(key, ("name", form, "GLOB" if sqlite else "LIKE"), values + fuzzy_values)
    form, values = _text(value, sqlite)
    return Term(key, form, values)


def _modalities(value: str) -> Term | None:
    """ModalitiesInStudy: studies with a series of any of the listed modalities."""
    mods = tuple(m for m in value.replace("\\", ",").split(",") if m and m != "*")
    return Term(MODALITIES, ("in",), mods) if mods else None


def _text(value: str, sqlite: bool) -> tuple[Form, tuple[str, ...]]:
    """How a string matches, case-sensitive as PS3.4 C.2.2.2.4 asks.

    Without wildcards, equal. On PostgreSQL, LIKE. On SQLite, LIKE would ignore ASCII
    case, and a LIKE whose pattern is bound makes SQLite plan the statement again for
    every search (three times the cost of the search): instead the fixed start of the
    value is a range, which an index serves, and GLOB (case-sensitive) matches what
    comes after it, unless that is a single `*`.
    """
    if not _wild(value):
        return ("eq",), (value,)
    if not sqlite:
        return ("like",), (_pattern(value, False),)
    start = value[: min(k for k in (value.find("*"), value.find("?")) if k >= 0)]
    end = _after(start) if start else None
    if end is not None and value == start + "*":
        return ("starts",), (start, end)
    bounds = tuple(b for b in (start, end) if b)
    return ("glob", len(bounds)), (*bounds, _pattern(value, True))


def _after(start: str) -> str | None:
    """The first string past every string that begins with `start`, in code point order
    (SQLite's BINARY collation of UTF-8); None past the last code point."""
    last = ord(start[-1]) + 1
    if last == 0xD800:  # surrogates are not characters: the next one is U+E000
        last = 0xE000
    return start[:-1] + chr(last) if last <= 0x10FFFF else None


def _wild(value: str) -> bool:
    return "*" in value or "?" in value


def _pattern(value: str, sqlite: bool) -> str:
    """A DICOM wildcard value as a GLOB (SQLite) or LIKE pattern."""
    if sqlite:
        return value.replace("[", "[[]")
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _range(attr: Attribute, value: str) -> Term:
    allowed = set("0123456789.:") | ({"-"} if "-" in value else set())
    if not set(value) <= allowed or value.count("-") > 1:
        raise BadQuery(f"{attr.keyword}: {value!r} is not a {attr.match.value} or range")
    if "-" not in value:
        return Term(attr.keyword, ("eq",), (value,))
    low, high = value.split("-")
    if attr.match is Match.TIME:
        low, high = low.replace(":", ""), high.replace(":", "")
    # A time range end of "1015" includes 101530.5: times compare on the end's length.
    high_len = len(high) if attr.match is Match.TIME else -1
    form = ("range", bool(low), high_len if high else 0)
    return Term(attr.keyword, form, tuple(v for v in (low, high) if v))


def _clause(key: str, form: Form, params: Sequence[BindParameter[Any]]) -> ColumnElement[bool]:
    if key == MODALITIES:
        return exists().where(_SE.c.study_pk == _ST.c.id, _SE.c.modality.in_(params))
    if key == IN_STUDY:
        return _ST.c.study_uid == params[0]
    if key == IN_SERIES:
        return _SE.c.series_uid == params[0]
    attr = BY_KEYWORD[key]
    col: Any = TABLES[attr.level].c[attr.column]
    kind = form[0]
    if kind == "in":
        return col.in_(params)  # type: ignore[no-any-return]
    if kind == "name":
        _, text, fuzzy = form
        target = _P.c.patient_name_folded if key == "PatientName" else func.lower(col)
        cond = _text_clause(target, text, params)
        if fuzzy:
            op = target.op(fuzzy, is_comparison=True)
            cond = or_(cond, op(params[-2]), op(params[-1]))
        return cond
    if kind != "range":
        return _text_clause(col, form, params)
    _, has_low, high_len = form
    conds = []
    rest = list(params)
    if has_low:
        conds.append(col >= rest.pop(0))
    if high_len > 0:
        conds.append(func.substr(col, 1, high_len) <= rest[0])
    elif high_len < 0:
        conds.append(col <= rest[0])
    return and_(*conds)


def _text_clause(
    target: Any, form: Form, params: Sequence[BindParameter[Any]]
) -> ColumnElement[bool]:
    kind = form[0]
    if kind == "eq":
        return target == params[0]  # type: ignore[no-any-return]
    if kind == "like":
        return target.like(params[0], escape="\\")  # type: ignore[no-any-return]
    if kind == "starts":
        return and_(target >= params[0], target < params[1])
    bounds = form[1]  # glob
    conds = [target >= params[0]] if bounds else []
    if bounds == 2:
        conds.append(target < params[1])
    conds.append(target.op("GLOB", is_comparison=True)(params[bounds]))
    return and_(*conds)


@dataclass(frozen=True)
class Compiled:
    """A statement's SQL for one dialect, and the order its values are bound in."""

    sql: str
    order: tuple[str, ...] | None  # names in placeholder order; None: bound by name
    constants: dict[str, Any]  # values the shape itself fixes (a substring's length)

    @classmethod
    def of(cls, stmt: Select[Any], dialect: Dialect) -> Compiled:
        compiled = stmt.compile(dialect=dialect)
        order = tuple(compiled.positiontup) if compiled.positiontup is not None else None
        constants = {k: v for k, v in compiled.params.items() if v is not None}
        return cls(compiled.string, order, constants)

    def bind(self, values: dict[str, Any]) -> Sequence[Any] | dict[str, Any]:
        values = {**self.constants, **values}
        return values if self.order is None else [values[name] for name in self.order]


#: A search's shape: per term, its key, its form and how many values it binds.
Shape = tuple[tuple[str, Form, int], ...]


def _search_statement(level: Level, shape: Shape) -> Select[Any]:
    """The search of one shape, each term's values as bind parameters t<k>_<n>."""
    p, st, se, i = _P, _ST, _SE, _I
    conds = []
    for k, (key, form, count) in enumerate(shape):
        conds.append(_clause(key, form, [bindparam(f"t{k}_{n}") for n in range(count)]))
    stmt: Select[Any]
    if level is Level.STUDY:
        stmt = select(st, p).join(p, st.c.patient_pk == p.c.id)
        stmt = stmt.order_by(st.c.study_date.desc(), st.c.id)
    elif level is Level.SERIES:
        stmt = select(se, st, p).join(st, se.c.study_pk == st.c.id)
        stmt = stmt.join(p, st.c.patient_pk == p.c.id)
        stmt = stmt.order_by(st.c.id, se.c.series_number, se.c.id)
    else:
        stmt = select(i, se.c.series_uid, st, p).join(se, i.c.series_pk == se.c.id)
        stmt = stmt.join(st, se.c.study_pk == st.c.id).join(p, st.c.patient_pk == p.c.id)
        stmt = stmt.order_by(se.c.id, i.c.instance_number, i.c.id)
    limit, offset = bindparam("limit", type_=Integer), bindparam("offset", type_=Integer)
    return stmt.where(*conds).limit(limit).offset(offset)


@functools.lru_cache(maxsize=SHAPES_KEPT)
def _compiled_search(dialect: Dialect, level: Level, shape: Shape) -> Compiled:
    return Compiled.of(_search_statement(level, shape), dialect)


# The computed attributes of a page of results, one statement per search: per series of the
# page's studies, its modality and instance count (an outer join keeps empty series, whose
# modality counts for ModalitiesInStudy though the series does not count as related); per
# series of a page of series, its instance count.
@functools.lru_cache(maxsize=SHAPES_KEPT)
def _compiled_computed(dialect: Dialect, level: Level, count: int) -> Compiled:
    uids: list[BindParameter[Any]] = [bindparam(f"u{n}") for n in range(count)]
    if level is Level.STUDY:
        stmt = (
            select(_ST.c.study_uid, _SE.c.modality, func.count(_I.c.id))
            .join(_SE, _SE.c.study_pk == _ST.c.id)
            .outerjoin(_I, _I.c.series_pk == _SE.c.id)
            .where(_ST.c.study_uid.in_(uids))
            .group_by(_ST.c.study_uid, _SE.c.id, _SE.c.modality)
            .order_by(_SE.c.id)
        )
    else:
        stmt = (
            select(_SE.c.series_uid, func.count(_I.c.id))
            .join(_I, _I.c.series_pk == _SE.c.id)
            .where(_SE.c.series_uid.in_(uids))
            .group_by(_SE.c.series_uid)
        )
    return Compiled.of(stmt, dialect)


@dataclass
class Found:
    """A page of search results: rows with their column names, and per study or series
    UID of the page, the related counts and modalities."""

    columns: list[str]
    rows: list[Sequence[Any]]
    computed: dict[Any, dict[str, Any]]


def search(
    engine: Engine,
    level: Level,
    terms: Sequence[Term],
    limit: int,
    offset: int,
    reading: AbstractContextManager[Any] | None = None,
) -> Found:
    """Run a search. `reading` is the cursor to run it with, in a read transaction; by
    default one on a pooled connection."""
    dialect = engine.dialect
    shape = tuple((t.key, t.form, len(t.values)) for t in terms)
    compiled = _compiled_search(dialect, level, shape)
    key_column = KEYED_BY.get(level)
    values: dict[str, Any] = {"limit": limit, "offset": offset}
    for k, t in enumerate(terms):
        values.update((f"t{k}_{n}", v) for n, v in enumerate(t.values))
    with reading or _reading(engine) as cur:
        cur.execute(compiled.sql, compiled.bind(values))
        columns = [d[0] for d in cur.description]
        rows = cur.fetchall()
        computed: dict[Any, dict[str, Any]] = {}
        if key_column is not None and rows:
            at = columns.index(key_column)
            uids = list(dict.fromkeys(row[at] for row in rows))
            counts = _compiled_computed(dialect, level, len(uids))
            cur.execute(counts.sql, counts.bind({f"u{n}": u for n, u in enumerate(uids)}))
            computed = _related(level, cur.fetchall())
    return Found(columns, rows, computed)


def _related(level: Level, rows: Sequence[Sequence[Any]]) -> dict[Any, dict[str, Any]]:
    """NumberOfStudyRelated*, ModalitiesInStudy (in series order) or
    NumberOfSeriesRelatedInstances, keyed by study or series UID."""
    out: dict[Any, dict[str, Any]] = {}
    if level is Level.SERIES:
        for uid, ninst in rows:
            out[uid] = {"NumberOfSeriesRelatedInstances": ninst}
        return out
    for uid, modality, ninst in rows:
        found = out.setdefault(
            uid,
            {
                "NumberOfStudyRelatedSeries": 0,
                "NumberOfStudyRelatedInstances": 0,
                MODALITIES: [],
            },
        )
        if ninst:
            found["NumberOfStudyRelatedSeries"] += 1
            found["NumberOfStudyRelatedInstances"] += ninst
        if modality and modality not in found[MODALITIES]:
            found[MODALITIES].append(modality)
    return out


@contextmanager
def _reading(engine: Engine) -> Iterator[Any]:
    """A driver cursor on a pooled connection, in one read transaction.

    SQLite's connections run without the driver's own transactions (engine.py), so the
    page and its counts are read in an explicit one; psycopg opens one by itself. The
    pool rolls back whatever is left when the connection goes back.
    """
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        try:
            if engine.dialect.name == "sqlite":
                cur.execute("BEGIN")
            yield cur
        finally:
            cur.close()
    finally:
        raw.close()
