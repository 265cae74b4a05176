"""`vna status`: what the archive holds and what became of the input, per source."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, select

from vna.index import schema


def collect(engine: Engine) -> dict[str, Any]:
    """Per source: archived (instances, bytes), duplicates, quarantined by reason; and totals."""
    inst, dup, q = schema.instances, schema.duplicates, schema.quarantine
    sources: dict[str, dict[str, Any]] = {}

    def entry(name: str) -> dict[str, Any]:
        return sources.setdefault(
            name,
            {
                "archived": 0,
                "bytes": 0,
                "duplicates": 0,
                "quarantined": 0,
                "quarantine_reasons": {},
                "last_received": None,
            },
        )

    with engine.connect() as conn:
        for r in conn.execute(
            select(
                inst.c.source,
                func.count(),
                func.coalesce(func.sum(inst.c.size), 0),
                func.max(inst.c.received_at),
            ).group_by(inst.c.source)
        ):
            e = entry(r[0])
            e["archived"], e["bytes"] = int(r[1]), int(r[2])
            e["last_received"] = r[3].isoformat() if r[3] is not None else None
        for r in conn.execute(select(dup.c.source, func.count()).group_by(dup.c.source)):
            entry(r[0])["duplicates"] = int(r[1])
        for r in conn.execute(
            select(q.c.source, q.c.reason, func.count())
            .where(q.c.state == "held")
            .group_by(q.c.source, q.c.reason)
        ):
            e = entry(r[0])
            e["quarantined"] += int(r[2])
            e["quarantine_reasons"][r[1]] = int(r[2])
        studies = conn.execute(select(func.count()).select_from(schema.studies)).scalar_one()
        series = conn.execute(select(func.count()).select_from(schema.series)).scalar_one()
        patients = conn.execute(select(func.count()).select_from(schema.patients)).scalar_one()
        last_change = conn.execute(select(func.max(schema.changes.c.seq))).scalar_one()
    totals = {
        "patients": int(patients),
        "studies": int(studies),
        "series": int(series),
        "instances": sum(s["archived"] for s in sources.values()),
        "bytes": sum(s["bytes"] for s in sources.values()),
        "duplicates": sum(s["duplicates"] for s in sources.values()),
        "quarantined": sum(s["quarantined"] for s in sources.values()),
        "change_feed_head": int(last_change or 0),
    }
    return {"sources": dict(sorted(sources.items())), "totals": totals}


def human_bytes(n: float) -> str:
    """Bytes as an admin reads them: 1.5 GB, not 1610612736."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover
