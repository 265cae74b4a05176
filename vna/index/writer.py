"""Writing instances into the index, with their change-feed rows, in one transaction.

Patients, studies and series are found or created with INSERT .. ON CONFLICT DO
NOTHING, so several ingest processes sharing one PostgreSQL index never race
into duplicates. Their ids are cached per process; the cache only learns ids
from transactions that committed.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Table, select, text, update

from vna.attributes import Level, at_level
from vna.index import schema
from vna.index.dialect import native_insert

CHANGE_FEED_LOCK = 7243611
_CACHE_SIZE = 20000


@dataclass
class InstanceRecord:
    """Everything the index stores about one archived instance."""

    attributes: dict[str, Any]  # column name -> value, for every level (vna.attributes)
    path: str
    size: int
    digest: str
    content_digest: str
    transfer_syntax_uid: str
    source: str
    received_at: dt.datetime

    @property
    def sop_uid(self) -> str:
        return str(self.attributes["sop_uid"])


@dataclass(frozen=True)
class Existing:
    """What the index holds for an instance already archived."""

    id: int
    sop_uid: str
    path: str
    digest: str
    content_digest: str
    size: int
    source: str


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def insert_ignoring_conflicts(
    conn: Connection, table: Table, rows: list[dict[str, Any]], keys: list[str]
) -> None:
    """INSERT rows, silently skipping those whose unique `keys` already exist."""
    if not rows:
        return
    stmt = native_insert(conn, table).on_conflict_do_nothing(index_elements=keys)
    conn.execute(stmt, rows)


def lookup(conn: Connection, sop_uids: Iterable[str]) -> dict[str, Existing]:
    """The archived instances among `sop_uids`."""
    uids = list(set(sop_uids))
    found: dict[str, Existing] = {}
    t = schema.instances
    for i in range(0, len(uids), 500):
        chunk = uids[i : i + 500]
        rows = conn.execute(
            select(
                t.c.id, t.c.sop_uid, t.c.path, t.c.digest, t.c.content_digest, t.c.size, t.c.source
            ).where(t.c.sop_uid.in_(chunk))
        )
        for r in rows:
            found[r.sop_uid] = Existing(
                r.id, r.sop_uid, r.path, r.digest, r.content_digest, r.size, r.source
            )
    return found


def _columns(level: Level) -> list[str]:
    return [a.column for a in at_level(level)]


_PATIENT_COLUMNS = _columns(Level.PATIENT)
_STUDY_COLUMNS = _columns(Level.STUDY)
_SERIES_COLUMNS = _columns(Level.SERIES)
_INSTANCE_COLUMNS = _columns(Level.INSTANCE)


def fold_name(name: str | None) -> str | None:
    """Case-folded person name, for case-insensitive matching that works on any script."""
    return name.casefold() if name else None


_Learned = tuple[dict[tuple[str, str], int], dict[str, int], dict[str, int]]


def _remember(cache: OrderedDict[Any, int], learned: dict[Any, int]) -> None:
    cache.update(learned)
    while len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)


@dataclass
class IndexWriter:
    """Adds instances to the index; one per process, used from one thread."""

    _patients: OrderedDict[tuple[str, str], int] = field(default_factory=OrderedDict)
    _studies: OrderedDict[str, int] = field(default_factory=OrderedDict)
    _series: OrderedDict[str, int] = field(default_factory=OrderedDict)
    _pending: _Learned | None = None

    def forget(self) -> None:
        """Drop every cached id (after a rollback, or a reindex that cleared the tables)."""
        self._patients.clear()
        self._studies.clear()
        self._series.clear()

    def add(
        self, conn: Connection, records: Sequence[InstanceRecord], replacing: dict[str, Existing]
    ) -> list[dict[str, Any]]:
        """Insert (or, for UIDs in `replacing`, update) instances; return their change rows.

        Runs inside the caller's transaction; `learned` ids enter the cache only
        through `commit_cache` once that transaction committed.
        """
        learned_p: dict[tuple[str, str], int] = {}
        learned_st: dict[str, int] = {}
        learned_se: dict[str, int] = {}
        stamp = now()

        patient_rows: dict[tuple[str, str], dict[str, Any]] = {}
        for r in records:
            key = (
                r.attributes.get("patient_id") or "",
                r.attributes.get("issuer_of_patient_id") or "",
            )
            if key not in self._patients and key not in patient_rows:
                row = {c: r.attributes.get(c) for c in _PATIENT_COLUMNS}
                row["patient_id"], row["issuer_of_patient_id"] = key
                row["patient_name_folded"] = fold_name(row.get("patient_name"))
                patient_rows[key] = row
        if patient_rows:
            insert_ignoring_conflicts(
                conn,
                schema.patients,
                list(patient_rows.values()),
                ["patient_id", "issuer_of_patient_id"],
            )
            p = schema.patients
            for key in patient_rows:
                pid = conn.execute(
                    select(p.c.id).where(
                        p.c.patient_id == key[0], p.c.issuer_of_patient_id == key[1]
                    )
                ).scalar_one()
                learned_p[key] = pid

        def patient_pk(r: InstanceRecord) -> int:
            key = (
                r.attributes.get("patient_id") or "",
                r.attributes.get("issuer_of_patient_id") or "",
            )
            return learned_p.get(key) or self._patients[key]

        study_rows: dict[str, dict[str, Any]] = {}
        for r in records:
            uid = r.attributes["study_uid"]
            if uid not in self._studies and uid not in study_rows:
                row = {c: r.attributes.get(c) for c in _STUDY_COLUMNS}
                row.update(patient_pk=patient_pk(r), created_at=stamp)
                study_rows[uid] = row
        learned_st = self._find_or_create(conn, schema.studies, "study_uid", study_rows)

        series_rows: dict[str, dict[str, Any]] = {}
        for r in records:
            uid = r.attributes["series_uid"]
            if uid not in self._series and uid not in series_rows:
                study_uid = r.attributes["study_uid"]
                row = {c: r.attributes.get(c) for c in _SERIES_COLUMNS}
                row.update(
                    study_pk=learned_st.get(study_uid) or self._studies[study_uid], created_at=stamp
                )
                series_rows[uid] = row
        learned_se = self._find_or_create(conn, schema.series, "series_uid", series_rows)

        new_rows: list[dict[str, Any]] = []
        change_rows: list[dict[str, Any]] = []
        for r in records:
            series_uid = r.attributes["series_uid"]
            row = {c: r.attributes.get(c) for c in _INSTANCE_COLUMNS}
            row.update(
                series_pk=learned_se.get(series_uid) or self._series[series_uid],
                path=r.path,
                size=r.size,
                digest=r.digest,
                content_digest=r.content_digest,
                transfer_syntax_uid=r.transfer_syntax_uid,
                source=r.source,
                received_at=r.received_at,
            )
            kind = "created"
            if r.sop_uid in replacing:
                kind = "replaced"
                t = schema.instances
                conn.execute(update(t).where(t.c.id == replacing[r.sop_uid].id).values(**row))
            else:
                new_rows.append(row)
            change_rows.append(
                dict(
                    kind=kind,
                    sop_uid=r.sop_uid,
                    study_uid=r.attributes["study_uid"],
                    series_uid=series_uid,
                    path=r.path,
                    digest=r.digest,
                    size=r.size,
                    at=stamp,
                )
            )
        if new_rows:
            conn.execute(schema.instances.insert(), new_rows)
        self._pending = (learned_p, learned_st, learned_se)
        return change_rows

    def _find_or_create(
        self, conn: Connection, table: Table, key: str, rows: dict[str, dict[str, Any]]
    ) -> dict[str, int]:
        if not rows:
            return {}
        insert_ignoring_conflicts(conn, table, list(rows.values()), [key])
        col = table.c[key]
        found: dict[str, int] = {}
        uids = list(rows)
        for i in range(0, len(uids), 500):
            for r in conn.execute(select(table.c.id, col).where(col.in_(uids[i : i + 500]))):
                found[r[1]] = r[0]
        return found

    def commit_cache(self) -> None:
        """Remember the ids learned by the transaction that just committed."""
        if self._pending is None:
            return
        patients, studies, series = self._pending
        _remember(self._patients, patients)
        _remember(self._studies, studies)
        _remember(self._series, series)
        self._pending = None


def append_changes(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Append change-feed rows; on PostgreSQL, serialized so sequence order is commit order.

    Without the lock, two concurrent writers could commit sequence numbers out of
    order, and a consumer reading by cursor would skip the lower one.
    """
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": CHANGE_FEED_LOCK})
    conn.execute(schema.changes.insert(), rows)
