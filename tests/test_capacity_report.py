"""The capacity report's figures for a known archive, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from pathlib import Path

import pytest
from sqlalchemy import update

from replicator.daemon import Replicator
from tests.conftest import make_archive
from vna.index import schema
from vna.reports import render
from vna.reports.capacity import build
from vna.sample import SampleSpec, generate

MB = 1000**2


@pytest.fixture
def known(tmp_path: Path, index_url: str):  # type: ignore[no-untyped-def]
    archive = make_archive(
        tmp_path, index_url, targets=[{"name": "nfs", "url": f"file://{tmp_path}/replica"}]
    )
    generate(
        archive.drop("pacs-a"), SampleSpec(instances=4, per_series=2, rows=16, columns=16, seed=1)
    )
    generate(
        archive.drop("pacs-b"), SampleSpec(instances=2, per_series=2, rows=16, columns=16, seed=2)
    )
    (archive.drop("pacs-b") / "junk.txt").write_text("not dicom")
    archive.ingest()
    # Two of pacs-a's instances arrived in an earlier month.
    now = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
    with archive.engine.begin() as conn:
        i = schema.instances
        rows = conn.execute(i.select().where(i.c.source == "pacs-a").order_by(i.c.id)).all()
        old = [r.id for r in rows[:2]]
        conn.execute(
            update(i)
            .where(i.c.id.in_(old))
            .values(received_at=dt.datetime(2026, 9, 10, tzinfo=dt.UTC))
        )
        conn.execute(
            update(i)
            .where(i.c.id.notin_(old))
            .values(received_at=dt.datetime(2026, 11, 20, tzinfo=dt.UTC))
        )
    Replicator(archive.settings, archive.engine).run(once=True)
    return archive, now


def test_report_figures_are_right(known) -> None:  # type: ignore[no-untyped-def]
    archive, now = known
    sizes = {}
    with archive.engine.connect() as conn:
        for row in conn.execute(schema.instances.select()):
            sizes[row.id] = (row.source, row.size, row.received_at)
    total = sum(s for _, s, _ in sizes.values())
    a = sum(s for src, s, _ in sizes.values() if src == "pacs-a")
    recent = sum(s for _, s, r in sizes.values() if r.month == 11)

    report = build(archive.settings, archive.engine, now=now, disk=(10 * MB, MB))

    assert (report.instances, report.bytes) == (6, total)
    assert report.by_source["pacs-a"].instances == 4 and report.by_source["pacs-a"].bytes == a
    assert report.by_source["pacs-b"].instances == 2
    assert report.by_modality["CT"].instances == 6
    assert {k: v.instances for k, v in report.by_month.items()} == {"2026-09": 2, "2026-11": 4}
    assert report.intake_bytes_per_day["7d"] == pytest.approx(recent / 7)
    assert report.intake_bytes_per_day["30d"] == pytest.approx(recent / 30)
    assert report.intake_bytes_per_day["90d"] == pytest.approx(total / 90)
    days = MB / (recent / 30)
    assert report.days_until_full == pytest.approx(round(days, 1))
    assert report.projected_full_date == (now.date() + dt.timedelta(days=int(days))).isoformat()
    (target,) = report.targets
    assert (target.verified_instances, target.verified_bytes, target.backlog_instances) == (
        6,
        total,
        0,
    )
    assert sum(target.monthly_verified_bytes.values()) == total
    assert report.quarantine_by_reason == {"not-dicom": 1}


def test_report_formats(known, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    archive, now = known
    report = build(archive.settings, archive.engine, now=now, disk=(10 * MB, MB))
    assert json.loads(render.to_json(report))["instances"] == 6
    rows = list(csv.DictReader(io.StringIO(render.to_csv(report))))
    assert {"section": "source", "key": "pacs-b", "instances": "2"}.items() <= next(
        r for r in rows if r["key"] == "pacs-b"
    ).items()
    page = render.to_html(report)
    assert page.count("<svg") >= 4 and "http" not in page.replace(
        "http-equiv", ""
    )  # no external assets
    assert "@media print" in page and "not-dicom" in page
