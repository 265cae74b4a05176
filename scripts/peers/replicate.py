"""Our replicator as a benchmark subject: per-run archive and index, config, commands, lag.

The same shape as `peers.ours` (which it builds on) for `vna replicate`; the
timing itself stays in the benchmark script.

- `link_tree` / `copy_index`: every run starts from the same archive and index
  without copying the archive. Layout files are written once and never changed
  in place (DESIGN.md), so a tree of hard links is a faithful, instant copy: an
  ingest into it adds files and never touches the shared ones. The index (a
  SQLite file) is copied, so each run has its own replica rows and cursor.
- `write_replicate_config`: `peers.ours.write_config` plus one `[[targets]]`
  entry; the replicator's own settings stay at their defaults.
- `ReplicaCounter` / `LagSampler`: replication lag from outside the daemons, by
  SQL on the index (SQLite opened read-only, so it never blocks a writer).
- `mark_replicated` / `rewind_target`: an index of a million rows that claims to
  be replicated already, and a target put back to before a run, for the scale test.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peers.ours import InstanceCounter, OursError, VnaProcess, write_config

if TYPE_CHECKING:
    from sqlalchemy import Engine

#: The target name every benchmark config uses (replica rows are per target name).
TARGET = "bench"
#: How often the lag sampler asks the index.
LAG_SAMPLE_SECONDS = 0.1
#: `vna replicate --once` ends with one such line per target.
ONCE_SUMMARY = re.compile(
    r"^target (?P<name>\S+): (?P<verified>\d+) verified \((?P<uploaded>\d+) uploaded\), "
    r"(?P<failed>\d+) failed attempts$",
    re.MULTILINE,
)


# --------------------------------------------------------------------------- files


def link_tree(source: Path, dest: Path) -> None:
    """`dest` becomes a copy of `source` made of hard links (same file system)."""
    shutil.copytree(source, dest, copy_function=os.link)


def copy_index(source: Path, dest: Path) -> None:
    """Copy a SQLite index file (and its WAL, if a writer left one) to `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal"):
        src = Path(f"{source}{suffix}")
        if src.exists():
            shutil.copyfile(src, f"{dest}{suffix}")


def count_files(folder: Path) -> int:
    """Regular files below `folder`, except hidden ones (a target's temp files)."""
    return sum(
        1 for _dir, _subdirs, names in os.walk(folder) for name in names if not name.startswith(".")
    )


# --------------------------------------------------------------------------- config


def _toml(value: Any) -> str:
    """A TOML value for a string, number or flat table (JSON strings are TOML strings)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


REPLICATE_TEMPLATE = """
[[targets]]
name = "{target}"
url = {url}
storage_options = {options}
concurrency = {concurrency}
verify = "{verify}"
"""


def write_replicate_config(
    run_dir: Path,
    index_url: str,
    target_url: str,
    storage_options: dict[str, Any],
    verify: str,
    concurrency: int,
    workers: int = 2,
) -> Path:
    """`peers.ours`' ingest config (archive, drop, index) plus one target; the replicator's
    own settings (poll, batch size) are left at their defaults, as an admin would have them."""
    config = write_config(run_dir, index_url, workers)
    with config.open("a") as fh:
        fh.write(
            REPLICATE_TEMPLATE.format(
                target=TARGET,
                url=_toml(target_url),
                options=_toml(storage_options),
                concurrency=concurrency,
                verify=verify,
            )
        )
    return config


def vna_head() -> list[str]:
    """How to start `vna` from the venv this script runs in."""
    script = Path(sys.executable).with_name("vna")
    return [str(script)] if script.exists() else [sys.executable, "-m", "vna.cli.main"]


def replicate_command(config: Path, once: bool) -> list[str]:
    """`vna --config CFG replicate [--once]`."""
    return [*vna_head(), "--config", str(config), "replicate", *(["--once"] if once else [])]


def ingest_command(config: Path, once: bool) -> list[str]:
    """`vna --config CFG ingest [--once]`."""
    return [*vna_head(), "--config", str(config), "ingest", *(["--once"] if once else [])]


@dataclass(frozen=True)
class OnceSummary:
    """What `vna replicate --once` said about the benchmark target."""

    verified: int
    uploaded: int
    failed: int


def parse_once(stdout: str, target: str = TARGET) -> OnceSummary | None:
    """The summary line of `target` in the output of `vna replicate --once`, if any."""
    for match in ONCE_SUMMARY.finditer(stdout):
        if match["name"] == target:
            return OnceSummary(int(match["verified"]), int(match["uploaded"]), int(match["failed"]))
    return None


class LoggedVnaProcess(VnaProcess):
    """`peers.ours.VnaProcess` logging to a file of our choosing (two daemons share a run)."""

    def __init__(self, command: list[str], run_dir: Path, log_name: str) -> None:
        super().__init__(command, run_dir)
        self.log_path = run_dir / log_name


# --------------------------------------------------------------------------- lag


def as_utc(value: object) -> dt.datetime | None:
    """A timestamp read by raw SQL (SQLite: text, naive UTC; PostgreSQL: aware) as aware UTC."""
    if value is None:
        return None
    moment = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class LagSample:
    """One look at the index: instances above the base id, how many verified, and the lag."""

    at: float  # time.perf_counter()
    indexed: int
    verified: int
    lag: float  # seconds since the oldest unverified instance was received; 0 if none


class ReplicaCounter(InstanceCounter):
    """`InstanceCounter` plus replica state: verified copies and the age of the oldest missing."""

    SAMPLE_SQL = """
        SELECT count(*) AS indexed, count(r.sop_uid) AS verified,
               min(CASE WHEN r.sop_uid IS NULL THEN i.received_at END) AS oldest
        FROM instances AS i
        LEFT JOIN replicas AS r
          ON r.target = :target AND r.sop_uid = i.sop_uid AND r.state = 'verified'
        WHERE i.id > :base
    """

    def __enter__(self) -> ReplicaCounter:
        return self

    def sample(self, base: int, target: str = TARGET) -> LagSample:
        """Lag = now - received_at of the oldest instance above `base` without a verified copy."""
        from sqlalchemy import text

        row = self.conn.execute(text(self.SAMPLE_SQL), {"base": base, "target": target}).one()
        now = dt.datetime.now(dt.UTC)
        oldest = as_utc(row.oldest)
        lag = max(0.0, (now - oldest).total_seconds()) if oldest else 0.0
        return LagSample(time.perf_counter(), int(row.indexed), int(row.verified), lag)


class LagSampler:
    """`ReplicaCounter.sample` every LAG_SAMPLE_SECONDS in a thread, on a connection of its own."""

    def __init__(self, url: str, base: int, period: float = LAG_SAMPLE_SECONDS) -> None:
        self.url = url
        self.base = base
        self.period = period
        self.samples: list[LagSample] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lag-sampler", daemon=True)

    def _run(self) -> None:
        try:
            with ReplicaCounter(self.url) as counter:
                while not self._stop.is_set():
                    self.samples.append(counter.sample(self.base))
                    self._stop.wait(self.period)
        except Exception as exc:  # reported by the benchmark, which then fails the run
            self.error = exc

    def __enter__(self) -> LagSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def wait_verified(
    vna: VnaProcess, counter: ReplicaCounter, base: int, n: int, stall_timeout: float
) -> None:
    """Poll until `n` instances above `base` have a verified copy; fail when progress stops."""
    seen, progressed = -1, time.monotonic()
    while True:
        verified = counter.sample(base).verified
        if verified >= n:
            return
        now = time.monotonic()
        if verified > seen:
            seen, progressed = verified, now
        elif now - progressed > stall_timeout:
            raise vna.failure(f"stalled at {verified} of {n} verified for {stall_timeout:.0f} s")
        vna.check_running("replicating")
        time.sleep(0.02)


# --------------------------------------------------------------------------- scale


def mark_replicated(engine: Engine, target: str = TARGET) -> int:
    """Mark every instance as verified on `target` (one statement); cursor at the feed's head.

    What an archive that has been replicating for years looks like to the
    replicator: a replica row per instance, all verified, nothing to feed.
    Returns the head of the change feed, where the cursor now stands.
    """
    from sqlalchemy import DateTime, func, insert, literal, select

    from vna.index import schema

    i, r, c = schema.instances, schema.replicas, schema.replication_cursors
    now = literal(dt.datetime.now(dt.UTC), DateTime(timezone=True))
    columns = [
        "target", "sop_uid", "path", "digest", "size", "state", "attempts",
        "next_attempt_at", "queued_at", "verified_at",
    ]  # fmt: skip
    rows = select(
        literal(target), i.c.sop_uid, i.c.path, i.c.digest, i.c.size,
        literal("verified"), literal(0), now, now, now,
    )  # fmt: skip
    with engine.begin() as conn:
        conn.execute(insert(r).from_select([r.c[name] for name in columns], rows))
        head = int(
            conn.execute(select(func.coalesce(func.max(schema.changes.c.seq), 0))).scalar_one()
        )
        conn.execute(insert(c).values(target=target, seq=head, updated_at=dt.datetime.now(dt.UTC)))
    return head


def rewind_target(url: str, seq: int, target: str = TARGET) -> None:
    """Forget `target`'s copies of instances fed after `seq`, and put its cursor back there."""
    from sqlalchemy import delete, select, update

    from vna.index import schema
    from vna.index.engine import create

    r, c, ch = schema.replicas, schema.replication_cursors, schema.changes
    engine = create(url)
    try:
        with engine.begin() as conn:
            later = select(ch.c.sop_uid).where(ch.c.seq > seq)
            conn.execute(delete(r).where(r.c.target == target, r.c.sop_uid.in_(later)))
            conn.execute(update(c).where(c.c.target == target).values(seq=seq))
    finally:
        engine.dispose()


def require(condition: bool, what: str) -> None:
    """Fail a run whose result is not what it claims (counts, exit codes)."""
    if not condition:
        raise OursError(what)
