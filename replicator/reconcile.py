"""Reconciliation: a target's listing against the index, study by study.

Reports drift (missing, extra, wrong size, wrong digest) and mends it: a
missing or wrong object is queued for copying again; an extra object (on the
target, not in the index) is only reported, unless the site enabled delete
propagation, and even then a run that would delete more than
`max_delete_share` of the target stops before deleting anything.
Memory holds one study's rows at a time, never the whole listing.

Progress is counted in index rows compared (found on the target or missing
from it), so a run ends at the number of instances in the index
(`indexed_instances`) however much extra the target holds.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, func, select, update

from replicator.claims import enqueue
from vna import digest
from vna.index import schema
from vna.index.engine import write_transaction
from vna.layout import parse_relpath
from vna.settings import TargetSettings
from vna.targets.registry import open_target
from vna.targets.target import ObjectInfo, Target

logger = logging.getLogger("vna.replicator")


@dataclass
class Drift:
    checked: int = 0  # objects listed on the target
    compared: int = 0  # index rows looked for on the target
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    wrong_size: list[str] = field(default_factory=list)
    wrong_digest: list[str] = field(default_factory=list)
    requeued: int = 0
    deleted: int = 0
    delete_refused: str | None = None

    def summary(self) -> str:
        """One line for the command's output and the job's record."""
        return (
            f"{self.checked} objects checked; missing {len(self.missing)}, "
            f"extra {len(self.extra)}, wrong size {len(self.wrong_size)}, "
            f"wrong digest {len(self.wrong_digest)}; "
            f"{self.requeued} queued for copying, {self.deleted} deleted"
        )

    @property
    def clean(self) -> bool:
        return not (self.missing or self.extra or self.wrong_size or self.wrong_digest)


def reconcile(
    engine: Engine,
    settings: TargetSettings,
    deep: bool = False,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Drift:
    """Compare, report and (unless `dry_run`) mend one target.

    `progress` is called after each study with the index rows compared so far.
    """
    target = open_target(settings)
    drift = Drift()
    by_study: dict[str, list[ObjectInfo]] = defaultdict(list)
    studies_in_index = _indexed_studies(engine)
    listed_studies: set[str] = set()
    current: str | None = None
    for obj in target.list():
        entry = parse_relpath(obj.path)
        study = (
            entry.study_uid
            if entry
            else obj.path.split("/")[1]
            if obj.path.count("/")
            else obj.path
        )
        if current is not None and study != current:
            _compare_study(engine, target, current, by_study.pop(current), drift, deep, dry_run)
            if progress:
                progress(drift.compared)
        current = study
        listed_studies.add(study)
        by_study[study].append(obj)
    if current is not None:
        _compare_study(engine, target, current, by_study.pop(current), drift, deep, dry_run)
    for study in sorted(studies_in_index - listed_studies):
        _compare_study(engine, target, study, [], drift, deep, dry_run)
        if progress:
            progress(drift.compared)
    if progress:
        progress(drift.compared)
    if drift.extra and settings.delete and not dry_run:
        _delete_extras(target, settings, drift)
    return drift


def indexed_instances(engine: Engine) -> int:
    """What a reconciliation will compare: the total for its progress."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(schema.instances)).scalar_one())


def _indexed_studies(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(schema.studies.c.study_uid)).scalars())


def _compare_study(
    engine: Engine,
    target: Target,
    study: str,
    listed: list[ObjectInfo],
    drift: Drift,
    deep: bool,
    dry_run: bool,
) -> None:
    i, se, st = schema.instances, schema.series, schema.studies
    with engine.connect() as conn:
        rows = {
            row.path: row
            for row in conn.execute(
                select(i.c.sop_uid, i.c.path, i.c.size, i.c.digest)
                .join(se, i.c.series_pk == se.c.id)
                .join(st, se.c.study_pk == st.c.id)
                .where(st.c.study_uid == study)
            )
        }
    drift.compared += len(rows)
    requeue = []
    for obj in listed:
        row = rows.pop(obj.path, None)
        drift.checked += 1
        if row is None:
            drift.extra.append(obj.path)
            continue
        if obj.size != row.size:
            drift.wrong_size.append(obj.path)
            requeue.append(row)
        elif obj.digest is not None and obj.digest != row.digest:
            drift.wrong_digest.append(obj.path)
            requeue.append(row)
        elif deep:
            with target.open(obj.path) as fh:
                if digest.of_stream(fh) != row.digest:
                    drift.wrong_digest.append(obj.path)
                    requeue.append(row)
    for row in rows.values():
        drift.missing.append(row.path)
        requeue.append(row)
    if requeue and not dry_run:
        _requeue(engine, target.name, requeue)
        drift.requeued += len(requeue)


def _requeue(engine: Engine, target: str, rows: Sequence[Any]) -> None:
    with write_transaction(engine) as conn:
        enqueue(conn, target, rows, "reconciliation: copy missing or wrong on the target")


def _delete_extras(target: Target, settings: TargetSettings, drift: Drift) -> None:
    share = len(drift.extra) / max(drift.checked, 1)
    if share > settings.max_delete_share:
        drift.delete_refused = (
            f"{len(drift.extra)} of {drift.checked} objects ({share:.1%}) would be deleted, "
            f"more than max_delete_share {settings.max_delete_share:.1%}: nothing deleted"
        )
        logger.error("target %s: %s", settings.name, drift.delete_refused)
        return
    for path in drift.extra:
        target.delete(path)
        drift.deleted += 1


def reset_skipped(engine: Engine, target: str) -> None:
    """Copies skipped for a missing tier-0 file get another chance after reconciliation."""
    r = schema.replicas
    with engine.begin() as conn:
        conn.execute(
            update(r)
            .where(r.c.target == target, r.c.state == "skipped")
            .values(state="pending", attempts=0)
        )
