"""The storage admin's status page: is intake flowing, is the cloud copy complete?

Everything on it comes from the index (aggregates, the newest rows), never from
walking files, so it is cheap to refresh every few seconds. The same figures are
served as JSON for monitoring systems.
"""

from __future__ import annotations

import datetime as dt
import html
from typing import Any

from sqlalchemy import Engine, func, select

from vna import status as archive_status
from vna.index import schema
from vna.index.timestamps import aware, hour_bucket
from vna.reports import files
from vna.reports.render import STYLE, bar_chart, column_chart
from vna.reports.replication import collect as replication_status
from vna.scheduler import overview, runs
from vna.settings import Settings
from vna.status import human_bytes

RECENT = 10
REFRESH_SECONDS = 10


def collect(settings: Settings, engine: Engine) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    i, q = schema.instances, schema.quarantine
    hour = hour_bucket(i.c.received_at, engine.dialect.name)
    with engine.connect() as conn:
        per_hour = {
            str(h): (int(n), int(b or 0))
            for h, n, b in conn.execute(
                select(hour, func.count(), func.sum(i.c.size))
                .where(i.c.received_at >= now - dt.timedelta(hours=24))
                .group_by(hour)
            )
        }
        last_5m = conn.execute(
            select(func.count(), func.coalesce(func.sum(i.c.size), 0)).where(
                i.c.received_at >= now - dt.timedelta(minutes=5)
            )
        ).one()
        quarantined = [
            {
                "at": aware(row.at).isoformat(timespec="seconds"),
                "source": row.source,
                "reason": row.reason,
                "detail": row.detail,
                "file": row.drop_path,
            }
            for row in conn.execute(
                select(q.c.at, q.c.source, q.c.reason, q.c.detail, q.c.drop_path)
                .where(q.c.state == "held")
                .order_by(q.c.at.desc())
                .limit(RECENT)
            )
        ]
    hours = [(now - dt.timedelta(hours=k)).strftime("%Y-%m-%dT%H") for k in range(23, -1, -1)]
    failed_runs = [
        r.to_dict()
        for r in runs.history(engine, limit=RECENT, outcomes=("failed", "missed", "interrupted"))
    ]
    reports = files.listing(settings.scheduler.reports)
    return {
        "generated_at": now.isoformat(timespec="seconds"),
        "archive": archive_status.collect(engine),
        "intake": {
            "last_5_minutes": {"instances": int(last_5m[0]), "bytes": int(last_5m[1])},
            "per_hour": {
                h: dict(zip(("instances", "bytes"), per_hour.get(h, (0, 0)), strict=True))
                for h in hours
            },
        },
        "replication": replication_status(settings, engine, now),
        "jobs": overview.jobs(settings, engine),
        "recent_quarantine": quarantined,
        "recent_failed_jobs": failed_runs,
        "reports": [
            {"name": r.name, "format": r.format, "written": r.written.isoformat(timespec="seconds")}
            for r in reports[:12]
        ],
    }


def to_html(data: dict[str, Any]) -> str:
    e = html.escape
    totals = data["archive"]["totals"]
    intake5 = data["intake"]["last_5_minutes"]
    kpis = [
        ("Archive", f"{totals['instances']:,} instances, {human_bytes(totals['bytes'])}"),
        ("Studies", f"{totals['studies']:,}"),
        ("Intake, last 5 min", f"{intake5['instances']:,} ({human_bytes(intake5['bytes'])})"),
        ("Quarantined", f"{totals['quarantined']:,}"),
    ]
    for name, t in data["replication"].items():
        kpis.append((f"Lag to {name}", _duration(t["lag_seconds"])))
    sources = "".join(
        f"<tr><td>{e(name)}</td><td>{s['archived']:,}</td><td>{e(human_bytes(s['bytes']))}</td>"
        f"<td>{s['duplicates']:,}</td><td>{s['quarantined']:,}</td>"
        f"<td>{e(_when(s['last_received']))}</td></tr>"
        for name, s in data["archive"]["sources"].items()
    )
    targets = "".join(
        f"<tr><td>{e(name)}</td><td>{t['verified']:,}</td><td>{t['backlog']:,}</td>"
        f"<td>{e(human_bytes(t['backlog_bytes']))}</td><td>{e(_duration(t['lag_seconds']))}</td>"
        f"<td>{t['throughput_files_per_s']}/s</td>"
        f"<td>{e(t['window'])} ({'open' if t['window_open'] else 'closed'})</td></tr>"
        for name, t in data["replication"].items()
    )
    complete = {
        name: 100.0 * t["verified"] / max(1, t["verified"] + t["backlog"])
        for name, t in data["replication"].items()
    }
    errors = "".join(
        f"<tr><td>{e(name)}</td><td>{e(err['state'])}</td><td>{e(err['path'])}</td>"
        f"<td>{e(str(err['error']))}</td></tr>"
        for name, t in data["replication"].items()
        for err in t["recent_errors"]
    )
    jobs = "".join(_job_row(j) for j in data["jobs"]["jobs"])
    sched = data["jobs"]["scheduler"]
    sched_line = (
        f"Scheduler running ({e(sched['holder'])})"
        if sched["running"]
        else "No scheduler is running: start <code>vna scheduler</code> or <code>vna run</code>."
    )
    failed = "".join(
        f"<tr><td>{e(_when(r['started_at']))}</td><td>{e(r['job'])}</td><td>{e(r['outcome'])}</td>"
        f"<td>{e(r['detail'])}</td></tr>"
        for r in data["recent_failed_jobs"]
    )
    quarantine = "".join(
        f"<tr><td>{e(_when(q['at']))}</td><td>{e(q['source'])}</td><td>{e(q['reason'])}</td>"
        f"<td>{e(q['file'])}</td></tr>"
        for q in data["recent_quarantine"]
    )
    reports = "".join(
        f'<li><a href="reports/{e(r["name"])}">{e(r["name"])}</a></li>' for r in data["reports"]
    )
    hourly = {h[-2:] + ":00": float(v["bytes"]) for h, v in data["intake"]["per_hour"].items()}
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>VNA status</title>
<style>{STYLE}
.failed,.missed,.interrupted{{color:#b3261e;font-weight:600}} .ok{{color:#1e7b34}}
td,th{{text-align:left;vertical-align:top}} td{{white-space:nowrap}}
td:last-child{{white-space:normal}}
</style></head><body>
<main>
<h1>Archive status</h1><p>As of {e(data["generated_at"])} (refreshes every {REFRESH_SECONDS} s)
· <a href="status.json">JSON</a></p>
<div class="kpis">{"".join(f'<div class="kpi">{e(k)}<b>{e(v)}</b></div>' for k, v in kpis)}</div>
<h2>Ingest</h2>
{column_chart("Received per hour, last 24 hours (UTC)", hourly)}
{_table(("source", "archived", "size", "duplicates", "quarantined", "last received"), sources)}
<h2>Replication</h2>
{bar_chart("Cloud copy complete (%)", complete, unit="percent")}
{_table(("target", "verified", "backlog", "bytes", "lag", "throughput", "window"), targets)}
<h3>Recent replication errors</h3>
{_table(("target", "state", "object", "error"), errors)}
<h2>Jobs</h2><p>{sched_line}</p>
{_table(("job", "schedule", "next run", "last run", "outcome", "detail"), jobs)}
<h3>Recent failed or missed runs</h3>
{_table(("started", "job", "outcome", "detail"), failed)}
<h2>Recently quarantined</h2>
{_table(("when", "source", "reason", "file"), quarantine)}
<h2>Reports</h2><ul>{reports or "<li>none written yet</li>"}</ul>
</main>
<script>
setInterval(async () => {{
  const r = await fetch(location.href, {{credentials: "same-origin"}});
  if (!r.ok) return;
  const page = new DOMParser().parseFromString(await r.text(), "text/html");
  document.querySelector("main").replaceWith(page.querySelector("main"));
}}, {REFRESH_SECONDS * 1000});
</script>
</body></html>
"""


def _job_row(job: dict[str, Any]) -> str:
    e = html.escape
    last = job["last_run"]
    outcome = last["outcome"] if last else "-"
    return (
        f"<tr><td>{e(job['name'])}</td><td><code>{e(job['schedule'])}</code></td>"
        f"<td>{e(_when(job['next_run']))}</td>"
        f"<td>{e(_when(last['started_at'] if last else None))}</td>"
        f'<td class="{e(outcome)}">{e(outcome)}</td>'
        f"<td>{e(last['detail'] if last else '')}</td></tr>"
    )


def _table(columns: tuple[str, ...], rows: str) -> str:
    head = "".join(f"<th>{c}</th>" for c in columns)
    body = rows or f'<tr><td colspan="{len(columns)}">none</td></tr>'
    return f"<table><tr>{head}</tr>{body}</table>"


def _when(iso: str | None) -> str:
    """An ISO timestamp as a person reads it, in UTC like the rest of the page."""
    if not iso:
        return "-"
    moment = aware(dt.datetime.fromisoformat(iso)).astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
