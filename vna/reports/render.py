"""The capacity report as JSON, CSV or a self-contained HTML page.

The HTML page carries its charts as inline SVG and its style inline: it works
offline, has no external assets, and prints on A4 (print CSS).
"""

from __future__ import annotations

import csv
import html
import io
import json

from vna.reports.capacity import CapacityReport, Share
from vna.status import human_bytes


def to_json(report: CapacityReport) -> str:
    return json.dumps(report.to_dict(), indent=2)


def to_csv(report: CapacityReport) -> str:
    """One row per figure: section, key, instances, bytes (spreadsheet-friendly)."""
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["section", "key", "instances", "bytes"])
    w.writerow(["total", "archive", report.instances, report.bytes])
    for section, shares in (
        ("source", report.by_source),
        ("modality", report.by_modality),
        ("month", report.by_month),
    ):
        for key, share in shares.items():
            w.writerow([section, key, share.instances, share.bytes])
    for window, rate in report.intake_bytes_per_day.items():
        w.writerow(["intake_bytes_per_day", window, "", round(rate)])
    w.writerow(["tier0", "free", "", report.tier0_free_bytes])
    w.writerow(["tier0", "total", "", report.tier0_total_bytes])
    w.writerow(
        [
            "tier0",
            "days_until_full",
            "",
            report.days_until_full if report.days_until_full is not None else "",
        ]
    )
    for t in report.targets:
        w.writerow([f"target:{t.name}", "verified", t.verified_instances, t.verified_bytes])
        w.writerow([f"target:{t.name}", "backlog", t.backlog_instances, t.backlog_bytes])
        for month, b in t.monthly_verified_bytes.items():
            w.writerow([f"target:{t.name}", f"verified {month}", "", b])
    for reason, n in report.quarantine_by_reason.items():
        w.writerow(["quarantine", reason, n, ""])
    return out.getvalue()


def bar_chart(title: str, items: dict[str, float], unit: str = "bytes") -> str:
    """A horizontal bar chart as inline SVG."""
    if not items:
        return f"<figure><figcaption>{html.escape(title)}</figcaption><p>no data yet</p></figure>"
    width, row = 640, 22
    top = max(items.values()) or 1
    height = row * len(items) + 10
    parts = [
        f'<svg role="img" aria-label="{html.escape(title)}" '
        f'viewBox="0 0 {width} {height}" width="100%">'
    ]
    for k, (label, value) in enumerate(items.items()):
        y = 5 + k * row
        w = max(1.0, (width - 260) * value / top)
        text = _amount(value, unit)
        parts.append(f'<text x="0" y="{y + 15}" class="label">{html.escape(label[:28])}</text>')
        parts.append(f'<rect x="180" y="{y + 3}" width="{w:.1f}" height="{row - 8}" class="bar"/>')
        parts.append(
            f'<text x="{185 + w:.1f}" y="{y + 15}" class="value">{html.escape(text)}</text>'
        )
    parts.append("</svg>")
    return f"<figure><figcaption>{html.escape(title)}</figcaption>{''.join(parts)}</figure>"


def column_chart(title: str, items: dict[str, float], unit: str = "bytes") -> str:
    """Vertical columns as inline SVG, for a series over time (oldest on the left)."""
    if not items:
        return f"<figure><figcaption>{html.escape(title)}</figcaption><p>no data yet</p></figure>"
    width, height, left, bottom = 640, 180, 70, 24
    top = max(items.values()) or 1
    step = (width - left) / len(items)
    label_every = max(1, len(items) // 12)
    parts = [
        f'<svg role="img" aria-label="{html.escape(title)}" '
        f'viewBox="0 0 {width} {height}" width="100%">',
        f'<text x="0" y="12" class="value">{html.escape(_amount(top, unit))}</text>',
        f'<text x="0" y="{height - bottom}" class="value">0</text>',
    ]
    for k, (label, value) in enumerate(items.items()):
        h = (height - bottom - 10) * value / top
        x = left + k * step
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{height - bottom - h:.1f}" width="{max(1.0, step - 2):.1f}" '
            f'height="{max(h, 0.5):.1f}" class="bar"><title>{html.escape(label)}: '
            f"{html.escape(_amount(value, unit))}</title></rect>"
        )
        if k % label_every == 0:
            parts.append(
                f'<text x="{x + 1:.1f}" y="{height - 6}" class="label">{html.escape(label)}</text>'
            )
    parts.append("</svg>")
    return f"<figure><figcaption>{html.escape(title)}</figcaption>{''.join(parts)}</figure>"


def _amount(value: float, unit: str) -> str:
    if unit == "bytes":
        return human_bytes(value)
    if unit == "percent":
        return f"{value:.1f} %"
    return f"{value:g}"


def _projection(report: CapacityReport) -> str:
    """Used space now and at the 30-day rate over the next 12 months, against the disk size."""
    total = report.tier0_total_bytes or 1
    used = total - report.tier0_free_bytes
    rate = report.intake_bytes_per_day["30d"]
    width, height = 640, 180
    points = []
    for month in range(13):
        value = min(total, used + rate * 30.4 * month)
        x = 40 + month * (width - 60) / 12
        y = height - 20 - (height - 40) * value / total
        points.append(f"{x:.1f},{y:.1f}")
    full_y = 20
    return (
        "<figure><figcaption>Tier 0 used space, projected 12 months "
        "at the 30-day intake rate</figcaption>"
        f'<svg role="img" aria-label="projection" viewBox="0 0 {width} {height}" width="100%">'
        f'<line x1="40" y1="{full_y}" x2="{width - 20}" y2="{full_y}" class="full"/>'
        f'<text x="42" y="{full_y - 4}" class="label">'
        f"disk size {html.escape(human_bytes(total))}</text>"
        f'<polyline points="{" ".join(points)}" class="line"/>'
        f'<text x="40" y="{height - 4}" class="label">now</text>'
        f'<text x="{width - 80}" y="{height - 4}" class="label">+12 months</text>'
        "</svg></figure>"
    )


def _shares(shares: dict[str, Share]) -> dict[str, float]:
    return {k: float(v.bytes) for k, v in shares.items()}


STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#1b1f24;max-width:60rem}
h1{font-size:1.5rem}
h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ccd}
.kpis{display:flex;gap:1rem;flex-wrap:wrap}
.kpi{border:1px solid #ccd;border-radius:6px;padding:.6rem 1rem}
.kpi b{display:block;font-size:1.4rem}
table{border-collapse:collapse}
td,th{padding:.2rem .8rem;text-align:right}
td:first-child,th:first-child{text-align:left}
.bar{fill:#3a7bd5}
.line{fill:none;stroke:#d55e3a;stroke-width:3}
.full{stroke:#888;stroke-dasharray:4 4}
.label,.value{font-size:12px;fill:#333}
figure{margin:1rem 0}
@media print{body{margin:1cm;max-width:none} h2{break-after:avoid} figure,table{break-inside:avoid}}
"""


def to_html(report: CapacityReport) -> str:
    e = html.escape
    full = report.projected_full_date or "not within 100 years at this rate"
    kpis = [
        ("Archive", f"{report.instances:,} instances, {human_bytes(report.bytes)}"),
        ("Intake (30 days)", f"{human_bytes(report.intake_bytes_per_day['30d'])}/day"),
        ("Tier 0 free", human_bytes(report.tier0_free_bytes)),
        ("Tier 0 full on", full),
    ]
    rows = "".join(
        f"<tr><td>{e(t.name)}</td><td>{t.verified_instances:,}</td>"
        f"<td>{e(human_bytes(t.verified_bytes))}</td><td>{t.backlog_instances:,}</td>"
        f"<td>{e(human_bytes(t.backlog_bytes))}</td><td>{t.lag_seconds:.0f} s</td></tr>"
        for t in report.targets
    )
    quarantine = "".join(
        f"<tr><td>{e(k)}</td><td>{v:,}</td></tr>" for k, v in report.quarantine_by_reason.items()
    )
    intake = "".join(
        f"<tr><td>last {e(k)}</td><td>{e(human_bytes(v))}/day</td></tr>"
        for k, v in report.intake_bytes_per_day.items()
    )
    per_target = "".join(
        bar_chart(
            f"Verified on {t.name} per month",
            {k: float(v) for k, v in t.monthly_verified_bytes.items()},
        )
        for t in report.targets
    )
    quarantine = quarantine or "<tr><td>none</td><td>0</td></tr>"
    title = f"VNA capacity report {e(report.generated_at)}"
    columns = ("target", "verified", "bytes", "backlog", "bytes", "lag")
    heads = "<tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{STYLE}</style></head><body>
<h1>Capacity report</h1><p>Generated {e(report.generated_at)}</p>
<div class="kpis">{"".join(f'<div class="kpi">{e(k)}<b>{e(v)}</b></div>' for k, v in kpis)}</div>
<h2>Intake</h2>{column_chart("Received per month", _shares(report.by_month))}
<table><tr><th>window</th><th>average intake</th></tr>{intake}</table>
<h2>Projection</h2>{_projection(report)}
<h2>Sources</h2>{bar_chart("Archive size by source PACS", _shares(report.by_source))}
<h2>Modalities</h2>{bar_chart("Archive size by modality", _shares(report.by_modality))}
<h2>Replication targets</h2>
<table>{heads}{rows}</table>
{per_target}
<h2>Quarantine</h2><table><tr><th>reason</th><th>files held</th></tr>{quarantine}</table>
</body></html>
"""


# Every format the report is written in, by its file extension.
FORMATS = {"html": to_html, "csv": to_csv, "json": to_json}
