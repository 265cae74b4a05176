"""Capacity report benchmark: the report over an index of a million instances, per backend.

Why: storage admins read the capacity report on a schedule and on demand (`vna
report capacity`). It is computed from the index alone, with aggregate queries,
and must stay quick at archive scale: the goal is under 10 s for one million
instances, on SQLite and on PostgreSQL alike.

The index: a fresh one per backend, filled by `scripts/synthetic_index.py` with
`--instances` instances (2 series of 500 per study, sources pacs-a/b/c, modalities
CT/MR/CR/US) arriving evenly over the last SPREAD_DAYS days, a replica row per
instance on each of TARGETS (verified when received, the newest 2 % resp. 4 %
still pending) and QUARANTINED quarantine records (most held, some released).
- SQLite: a file in the temporary folder.
- PostgreSQL: a fresh schema `bench_report_<pid>` in the database of `--pg-url`,
  reached through `?options=-csearch_path=...` like the tests' per-test schemas;
  vacuumed and analyzed after the fill (the settled state autovacuum keeps a
  long-lived index in), dropped at the end, also on error, Ctrl-C or SIGTERM.

What is timed, `--repeat` times per backend (median reported, every run shown):
`build(settings, engine)` as `vna report capacity` calls it (real disk usage of
the temporary folder, now = the wall clock), then rendering the report as HTML,
CSV and JSON. The fill is timed once and shown for scale. Each run's report is
checked against what was filled (instance count, months, targets, quarantine),
so a fast but wrong report fails the benchmark instead of passing it.

Run from the repo root: `.venv/bin/python scripts/bench_report.py [--instances N]
[--backends sqlite,postgresql] [--repeat R] [--pg-url URL] [--keep]`.
The temporary folder is made by `tempfile` (set TMPDIR to put it on another disk).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from bench_ingest import MB, filesystem_of
from peers.lifecycle import cleanup, stop_on_sigterm
from peers.ours import sqlite_url, with_search_path
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool
from synthetic_index import PENDING_SHARE, fill

from vna.index.engine import open_index
from vna.reports import render
from vna.reports.capacity import build
from vna.settings import Settings, from_dict

PG_URL = os.environ.get("VNA_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SQLITE, POSTGRESQL = "sqlite", "postgresql"
LABELS = {SQLITE: "SQLite", POSTGRESQL: "PostgreSQL"}
#: The synthetic archive: arrivals over about a year, two targets, a quarantine of some size.
SPREAD_DAYS = 365
TARGETS = ("nfs", "cloud")
QUARANTINED = 5000
#: The goal from the issue, per backend, for build() plus rendering all three formats.
GOAL_SECONDS = 10.0


class BenchError(RuntimeError):
    """A measurement did not do what it claims (wrong figures, unreachable server, ...)."""


@dataclass(frozen=True)
class Run:
    """One timed report: build() and the three renderings, and the sizes rendered."""

    build: float
    render: float
    html_bytes: int
    csv_bytes: int
    json_bytes: int

    @property
    def total(self) -> float:
        return self.build + self.render


@dataclass
class Result:
    """One backend: how its index was made, and its timed runs."""

    backend: str
    fill_seconds: float
    settle_seconds: float
    index_bytes: int
    runs: list[Run] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return float(statistics.median(getattr(run, attr) for run in self.runs))


# --------------------------------------------------------------------------- indexes


@contextlib.contextmanager
def sqlite_index(work: Path) -> Iterator[str]:
    """A new SQLite index file in the work folder (removed with the folder)."""
    yield sqlite_url(work / "index.db")


@contextlib.contextmanager
def postgres_index(url: str) -> Iterator[str]:
    """A fresh schema `bench_report_<pid>` in the database of `url`, dropped on the way out.

    The drop runs on every exit (error, Ctrl-C, SIGTERM through stop_on_sigterm);
    with a lock timeout, so a connection left inside the schema makes it say so
    instead of hanging.
    """
    schema = f"bench_report_{os.getpid()}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except OperationalError as exc:
        admin.dispose()
        raise BenchError(f"PostgreSQL at {url} is not reachable: {exc.orig}") from None
    print(f"PostgreSQL: schema {schema} created", flush=True)
    try:
        yield with_search_path(url, schema)
    finally:
        try:
            with admin.connect() as conn:
                conn.execute(text("SET lock_timeout = '60s'"))
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            print(f"PostgreSQL: schema {schema} dropped", flush=True)
        except Exception as exc:  # report it, but never hide the error that brought us here
            print(
                f"bench_report: could not drop schema {schema} ({exc}); "
                f'drop it by hand: DROP SCHEMA "{schema}" CASCADE',
                file=sys.stderr,
            )
        admin.dispose()


def settle(engine: Engine) -> float:
    """After the bulk fill: VACUUM ANALYZE on PostgreSQL, a WAL checkpoint on SQLite.

    What a long-lived index looks like: autovacuum has set the visibility map and
    the planner's statistics, and SQLite's WAL has been folded into the file.
    Neither belongs in the report's time. Returns the seconds it took.
    """
    started = time.perf_counter()
    if engine.dialect.name == POSTGRESQL:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            tables = conn.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
            ).scalars()
            names = ", ".join(f'"{table}"' for table in tables)  # only this run's schema
            conn.execute(text(f"VACUUM (ANALYZE) {names}"))
    else:
        raw = engine.raw_connection()  # no transaction around it: the checkpoint must not wait
        try:
            raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            raw.close()
    return time.perf_counter() - started


def index_size(engine: Engine, url: str) -> int:
    """Bytes the index takes: the SQLite file, or every relation of the PostgreSQL schema."""
    if engine.dialect.name == SQLITE:
        path = Path(url.removeprefix("sqlite:///"))
        return sum(p.stat().st_size for p in path.parent.glob(f"{path.name}*"))
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = current_schema() AND c.relkind = 'r'"
                )
            ).scalar_one()
        )


# --------------------------------------------------------------------------- the report


def report_settings(work: Path, url: str) -> Settings:
    """Settings as a site would have them: archive in the work folder, the filled targets."""
    targets = [{"name": name, "url": (work / "replica" / name).as_uri()} for name in TARGETS]
    data = {
        "archive": {"root": "archive", "quarantine": "quarantine"},
        "index": {"url": url},
        "targets": targets,
    }
    return from_dict(data, base=work)


def timed_report(settings: Settings, engine: Engine, instances: int) -> Run:
    """One report: build() then HTML, CSV and JSON, timed apart; its figures checked."""
    started = time.perf_counter()
    report = build(settings, engine)
    built = time.perf_counter()
    html, csv, json = render.to_html(report), render.to_csv(report), render.to_json(report)
    rendered = time.perf_counter()
    problems = []
    if report.instances != instances:
        problems.append(f"{report.instances} instances, not {instances}")
    if sum(share.instances for share in report.by_month.values()) != instances:
        problems.append("the months do not add up to the instances")
    if len(report.by_month) < SPREAD_DAYS // 31:
        problems.append(f"only {len(report.by_month)} months")
    if len(report.by_modality) != 4 or len(report.by_source) != 3:
        problems.append(f"modalities {list(report.by_modality)}, sources {list(report.by_source)}")
    for k, target in enumerate(report.targets):
        pending = round(instances * PENDING_SHARE * (k + 1))
        if (target.verified_instances, target.backlog_instances) != (instances - pending, pending):
            problems.append(
                f"target {target.name}: {target.verified_instances} verified, "
                f"{target.backlog_instances} backlog; expected {instances - pending}, {pending}"
            )
        if len(target.monthly_verified_bytes) < SPREAD_DAYS // 31:
            problems.append(
                f"target {target.name}: only {len(target.monthly_verified_bytes)} months"
            )
    held = QUARANTINED - QUARANTINED // 10
    if sum(report.quarantine_by_reason.values()) != held:
        problems.append(f"quarantine {report.quarantine_by_reason}, expected {held} held")
    if problems:
        raise BenchError("the report is wrong: " + "; ".join(problems))
    return Run(
        built - started, rendered - built, len(html.encode()), len(csv.encode()), len(json.encode())
    )


def measure(backend: str, url: str, work: Path, args: argparse.Namespace) -> Result:
    """Fill a fresh index on `backend`, settle it, then time the report `--repeat` times."""
    label = LABELS[backend]
    engine = open_index(url)
    try:
        print(f"{label}: filling {args.instances:,} instances ...", flush=True)
        seconds = fill(
            engine,
            args.instances,
            spread_days=SPREAD_DAYS,
            targets=TARGETS,
            quarantined=QUARANTINED,
        )
        result = Result(backend, seconds, settle(engine), index_size(engine, url))
        print(
            f"{label}: filled in {result.fill_seconds:.1f} s, settled in "
            f"{result.settle_seconds:.1f} s, index {result.index_bytes / MB:,.0f} MB",
            flush=True,
        )
        settings = report_settings(work / backend, url)
        for rep in range(1, args.repeat + 1):
            run = timed_report(settings, engine, args.instances)
            result.runs.append(run)
            print(
                f"{label}: run {rep}/{args.repeat}: build {run.build:.3f} s, "
                f"render {run.render:.3f} s, total {run.total:.3f} s",
                flush=True,
            )
        return result
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- report


def machine_facts(work: Path, pg_version: str | None) -> list[str]:
    """CPUs, RAM, file system, versions, load: what the figures depend on."""
    versions = f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    if pg_version:
        versions += f", {pg_version}"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"machine: {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
        f"{platform.system()} {platform.release()}; {versions}",
        f"file system: {filesystem_of(work)}",
        f"load average (1, 5, 15 min) at the end: {load} (other work on this machine shows here)",
    ]


def print_report(
    args: argparse.Namespace, results: Sequence[Result], work: Path, pg_version: str | None
) -> None:
    """The table (medians, every run) and one goal line per backend."""
    print()
    print(
        f"Capacity report benchmark: {args.instances:,} synthetic instances received over "
        f"{SPREAD_DAYS} days, replica rows on {len(TARGETS)} targets ({', '.join(TARGETS)}), "
        f"{QUARANTINED:,} quarantine records; {args.repeat} run(s) per backend, median reported"
    )
    for line in machine_facts(work, pg_version):
        print(line)
    print(
        "timed: vna.reports.capacity.build(settings, engine), then render.to_html, to_csv, "
        "to_json; fill: scripts/synthetic_index.py (untimed for the goal); settle: VACUUM "
        "ANALYZE (PostgreSQL) or WAL checkpoint (SQLite) after the fill"
    )
    print()
    header = (
        f"{'backend':<11} {'fill s':>7} {'settle s':>8} {'index MB':>9} {'build s':>8} "
        f"{'render s':>8} {'total s':>8}  runs, total (s)"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        runs = " ".join(f"{run.total:.3f}" for run in r.runs)
        print(
            f"{LABELS[r.backend]:<11} {r.fill_seconds:>7.1f} {r.settle_seconds:>8.1f} "
            f"{r.index_bytes / MB:>9,.0f} {r.median('build'):>8.3f} {r.median('render'):>8.3f} "
            f"{r.median('total'):>8.3f}  {runs}"
        )
    if results:
        last = results[-1].runs[-1]
        print(
            f"   rendered: HTML {last.html_bytes / 1000:.0f} kB, CSV {last.csv_bytes / 1000:.0f} "
            f"kB, JSON {last.json_bytes / 1000:.0f} kB"
        )
    print()
    for r in results:
        mid = r.median("total")
        verdict = "met" if mid < GOAL_SECONDS else "NOT met"
        print(f"{LABELS[r.backend]}: {mid:.2f} s (target < {GOAL_SECONDS:.0f} s): {verdict}")


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--instances", type=int, default=1_000_000, help="synthetic instances in the index"
    )
    parser.add_argument(
        "--backends", default=f"{SQLITE},{POSTGRESQL}", help="comma-separated: sqlite,postgresql"
    )
    parser.add_argument("--repeat", type=int, default=3, help="reports per backend (median)")
    parser.add_argument("--pg-url", default=PG_URL, help="PostgreSQL database for the fresh schema")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(args.backends) - set(LABELS))
    if unknown or not args.backends:
        parser.error(f"--backends: choose from {SQLITE},{POSTGRESQL} (got {unknown or 'none'})")
    if args.instances < 1 or args.repeat < 1:
        parser.error("--instances and --repeat must be at least 1")
    return args


def postgres_version(url: str) -> str:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            version = str(conn.execute(text("SHOW server_version")).scalar_one())
        return f"PostgreSQL {version.split()[0]}"
    except OperationalError as exc:
        raise BenchError(f"PostgreSQL at {url} is not reachable: {exc.orig}") from None
    finally:
        engine.dispose()


def benchmark(args: argparse.Namespace) -> None:
    pg_version = postgres_version(args.pg_url) if POSTGRESQL in args.backends else None
    work = Path(tempfile.mkdtemp(prefix="vna-bench-report-"))
    print(f"work folder: {work}", flush=True)
    results: list[Result] = []
    with contextlib.ExitStack() as stack:
        stack.callback(cleanup, work, args.keep)
        for backend in args.backends:
            (work / backend).mkdir()
            with contextlib.ExitStack() as index:
                if backend == SQLITE:
                    url = index.enter_context(sqlite_index(work / backend))
                else:
                    url = index.enter_context(postgres_index(args.pg_url))
                results.append(measure(backend, url, work, args))
        print_report(args, results, work, pg_version)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    stop_on_sigterm()
    try:
        benchmark(args)
        return 0
    except BenchError as exc:
        print(f"bench_report: FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_report: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
