"""Our archive as a benchmark subject: a fresh index per run, `vna ingest`, what it holds.

The same shape as `peers.orthanc` (start, feed, count, stop), for our side of
a side-by-side benchmark; the timing itself stays in the benchmark script.

- `BenchIndex`: every run of ours gets a fresh, migrated index holding exactly
  `prefill` synthetic instances (`scripts/synthetic_index.py`). SQLite: one
  template file, filled once, copied per run (a copy of a million-row index takes
  seconds, a fill half a minute). PostgreSQL: a fresh schema per run (`CREATE
  SCHEMA bench_<random>`, reached through `?options=-csearch_path=...`), filled
  there (~1 min per million rows), then vacuumed, analyzed and checkpointed so
  none of that lands in the timed run; dropped after the run and at exit.
- `InstanceCounter`: counts index rows from outside the daemon (SQLite read-only),
  cheaply at any index size: rows above the highest id seen before the run.
- `VnaProcess`: `vna --config CFG ingest [--once]` as a subprocess with its log,
  stopped by SIGTERM (the daemon finishes its batch), killed only after a grace.
- `wait_warm` / `wait_ingested`: a warm daemon proven ready by a warm-up file, and
  the poll that says when a moved-in dataset is fully taken in.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

#: How often the warm daemon's index and drop folder are polled while the clock runs.
POLL_SECONDS = 0.02
#: The warm daemon must take its warm-up file in within this time.
READY_TIMEOUT = 120.0
#: A run fails when the index gains no instance for this long.
STALL_TIMEOUT = 120.0
#: How long a SIGTERM'd daemon may take to finish its batch before it is killed.
STOP_TIMEOUT = 60.0
#: The warm-up instance: small, with UIDs of its own (another seed than the dataset's).
WARMUP_SEED = 999


class OursError(RuntimeError):
    """Our ingest did not start, finish or store what it should; the message says where to look."""


def files_below(folder: Path) -> list[Path]:
    """Every regular file below `folder`."""
    return [path for path in folder.rglob("*") if path.is_file()]


def holds_files(folder: Path) -> bool:
    """Whether any regular file is left below `folder` (empty sub-folders do not count)."""
    return any(names for _dir, _subdirs, names in os.walk(folder))


# --------------------------------------------------------------------------- index


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def with_search_path(url: str, schema: str) -> str:
    """A PostgreSQL URL whose connections use `schema` (libpq `options=-csearch_path=`)."""
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


def prefill_index(engine: Engine, instances: int, where: str) -> None:
    """Add `instances` synthetic rows to a migrated index (untimed) and say how long it took."""
    from synthetic_index import fill

    seconds = fill(engine, instances)
    print(f"prefilled {where} with {instances:,} synthetic instances ({seconds:.1f} s)", flush=True)


class BenchIndex:
    """A fresh index per run of ours, prefilled when asked: the part SQLite and PostgreSQL share.

    `for_run` returns the URL of a migrated index holding exactly `prefill`
    instances; `release` gives it back; `close` removes whatever is left.
    """

    kind = ""

    def __init__(self, prefill: int) -> None:
        self.prefill = prefill

    def describe(self) -> str:
        filled = f"prefilled {self.prefill:,}" if self.prefill else "empty"
        return f"{self.kind}, {filled}"

    def bytes_per_run(self) -> int:
        return 0

    def prepare(self) -> None:
        """Work done once, before any run (untimed)."""

    def for_run(self, run_dir: Path) -> str:
        raise NotImplementedError

    def scratch(self, run_dir: Path) -> str:
        """An empty index of the same kind, not migrated (the archive migrates it on open),
        for an untimed run that only loads the program; `release` it after."""
        raise NotImplementedError

    def release(self, url: str) -> None:
        """Give a run's index back (untimed)."""

    def close(self) -> None:
        """Remove every index still held; safe to call twice."""

    def __enter__(self) -> BenchIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SqliteBenchIndex(BenchIndex):
    """A template file, migrated (and prefilled) once; every run gets a copy in its folder."""

    kind = "SQLite"

    def __init__(self, work: Path, prefill: int) -> None:
        super().__init__(prefill)
        self.template = work / "index-template" / "index.db"

    def bytes_per_run(self) -> int:
        return self.template.stat().st_size if self.template.exists() else 0

    def prepare(self) -> None:
        from vna.index.engine import open_index

        self.template.parent.mkdir(parents=True)
        engine = open_index(sqlite_url(self.template))
        try:
            if self.prefill:
                prefill_index(engine, self.prefill, "the SQLite template")
        finally:
            engine.dispose()  # the last connection closing checkpoints the WAL into the file

    def scratch(self, run_dir: Path) -> str:
        return sqlite_url(run_dir / "index.db")

    def for_run(self, run_dir: Path) -> str:
        target = run_dir / "index.db"
        for suffix in ("", "-wal"):
            source = Path(f"{self.template}{suffix}")
            if source.exists():
                shutil.copyfile(source, f"{target}{suffix}")
        return sqlite_url(target)


class PostgresBenchIndex(BenchIndex):
    """A fresh schema per run in the database of `url`, migrated and prefilled there."""

    kind = "PostgreSQL"

    def __init__(self, url: str, prefill: int) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        super().__init__(prefill)
        self.url = url
        self.admin = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        self.schemas: dict[str, str] = {}  # url -> schema

    def prepare(self) -> None:
        from sqlalchemy import text
        from sqlalchemy.exc import OperationalError

        try:
            with self.admin.connect() as conn:
                conn.execute(text("SELECT 1"))
        except OperationalError as exc:
            raise OursError(f"PostgreSQL at {self.url} is not reachable: {exc.orig}") from None

    def scratch(self, run_dir: Path) -> str:
        from sqlalchemy import text

        schema = f"bench_{secrets.token_hex(6)}"
        url = with_search_path(self.url, schema)
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        self.schemas[url] = schema
        return url

    def for_run(self, run_dir: Path) -> str:
        from vna.index.engine import open_index

        url = self.scratch(run_dir)
        schema = self.schemas[url]
        engine = open_index(url)
        try:
            if self.prefill:
                prefill_index(engine, self.prefill, f"schema {schema}")
        finally:
            engine.dispose()
        self.quiesce(schema)
        return url

    def quiesce(self, schema: str) -> None:
        """Vacuum and analyze the schema's tables, then checkpoint, so neither lands in a run.

        Right after a bulk fill PostgreSQL would otherwise autovacuum the new rows
        and write the fill's dirty buffers out while the clock runs; a long-lived
        archive's index is in that settled state already.
        """
        from sqlalchemy import text

        with self.admin.connect() as conn:
            tables = conn.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = :schema"),
                {"schema": schema},
            ).scalars()
            names = ", ".join(f'"{schema}"."{table}"' for table in tables)
            if self.prefill and names:
                conn.execute(text(f"VACUUM (ANALYZE) {names}"))
            conn.execute(text("CHECKPOINT"))

    def release(self, url: str) -> None:
        from sqlalchemy import text

        schema = self.schemas.pop(url, None)
        if schema:
            with self.admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))

    def close(self) -> None:
        for url in list(self.schemas):
            with contextlib.suppress(Exception):  # clean up what we can, report the first error
                self.release(url)
        self.admin.dispose()


def bench_index(url: str, prefill: int, work: Path) -> BenchIndex:
    """PostgreSQL when `url` is given, else SQLite files below `work`."""
    if url:
        return PostgresBenchIndex(url, prefill)
    return SqliteBenchIndex(work, prefill)


class InstanceCounter:
    """Counts rows of the `instances` table from outside the daemon, without disturbing it.

    SQLite is opened read-only (a WAL reader never blocks the writer). Counting
    rows above an id (`since`) stays a short range scan however big the index is.
    """

    def __init__(self, url: str, readonly: bool = True) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url
        from sqlalchemy.pool import NullPool

        parsed = make_url(url)
        if readonly and parsed.get_backend_name() == "sqlite":
            url = f"sqlite:///file:{parsed.database}?mode=ro&uri=true"
        self.engine: Engine = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        self.conn: Connection = self.engine.connect()

    def _scalar(self, sql: str, **params: int) -> int:
        from sqlalchemy import text

        return int(self.conn.execute(text(sql), params).scalar_one())

    def max_id(self) -> int:
        return self._scalar("SELECT coalesce(max(id), 0) FROM instances")

    def since(self, base: int) -> int:
        """Instances added after the one with id `base` (ids only grow)."""
        return self._scalar("SELECT count(*) FROM instances WHERE id > :base", base=base)

    def total(self) -> int:
        return self._scalar("SELECT count(*) FROM instances")

    def close(self) -> None:
        self.conn.close()
        self.engine.dispose()

    def __enter__(self) -> InstanceCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- vna ingest

CONFIG_TEMPLATE = """\
# Written by scripts/bench_ingest.py; relative paths resolve against this folder.
[archive]
root = "archive"
quarantine = "quarantine"

[index]
url = {url}

[ingest]
settle_seconds = 0
rescan_seconds = 3600
workers = {workers}
batch_size = 64

[[sources]]
name = "bench"
drop = "drop"
issuer_of_patient_id = "BENCH"
watch = "events"
"""


def write_config(run_dir: Path, url: str, workers: int) -> Path:
    config = run_dir / "vna.toml"
    config.write_text(CONFIG_TEMPLATE.format(url=json.dumps(url), workers=workers))
    return config


def vna_command(config: Path, once: bool) -> list[str]:
    """`vna --config CFG ingest [--once]`, from the venv this script runs in."""
    script = Path(sys.executable).with_name("vna")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "vna.cli.main"]
    return [*head, "--config", str(config), "ingest", *(["--once"] if once else [])]


def ours_runnable() -> str | None:
    """None when our CLI can be started, else why not."""
    if importlib.util.find_spec("vna") is None:
        return "package 'vna' is not importable from this interpreter"
    if importlib.util.find_spec("vna.cli.main") is None:
        return "module vna.cli.main does not exist yet"
    return None


class VnaProcess:
    """`vna ingest` as a subprocess logging to `ingest.log`; stopped (SIGTERM) on exit."""

    def __init__(self, command: list[str], run_dir: Path) -> None:
        self.command = command
        self.run_dir = run_dir
        self.log_path = run_dir / "ingest.log"
        self._log: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> VnaProcess:
        self._log = self.log_path.open("wb")
        self._process = subprocess.Popen(
            self.command,
            cwd=self.run_dir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        finally:
            if self._log:
                self._log.close()

    @property
    def process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise OursError("vna ingest was not started")
        return self._process

    def wait(self) -> int:
        return self.process.wait()

    def stop(self) -> int:
        """SIGTERM (the daemon finishes its batch), SIGKILL after STOP_TIMEOUT; the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def check_running(self, doing: str) -> None:
        """Fail with the log's end when the daemon exited while it should be `doing` something."""
        if self.process.poll() is not None:
            raise self.failure(f"exited with code {self.process.returncode} while {doing}")

    def failure(self, what: str) -> OursError:
        tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])
        return OursError(f"{' '.join(self.command)}: {what}; end of {self.log_path}:\n{tail}")


def make_warmup(folder: Path) -> Path:
    """One small instance (16x16, its own UIDs) the warm daemon must take in before the clock."""
    from vna.sample import SampleSpec, generate

    generate(folder, SampleSpec(instances=1, rows=16, columns=16, seed=WARMUP_SEED))
    return folder


def wait_warm(vna: VnaProcess, warmup: Path, drop: Path, run_dir: Path) -> None:
    """Move the warm-up folder in and wait until the daemon has taken it in (drop folder empty)."""
    os.rename(warmup, drop / warmup.name)
    deadline = time.monotonic() + READY_TIMEOUT
    while holds_files(drop):
        vna.check_running("taking in its warm-up file")
        if time.monotonic() > deadline:
            raise vna.failure(f"warm-up file not taken in within {READY_TIMEOUT:.0f} s")
        time.sleep(POLL_SECONDS)
    if (run_dir / "quarantine").exists() and files_below(run_dir / "quarantine"):
        raise vna.failure("the warm-up file went to quarantine")


def wait_ingested(vna: VnaProcess, counter: InstanceCounter, base: int, n: int, drop: Path) -> None:
    """Poll until the index holds `n` instances above id `base` and the drop folder no file."""
    seen, progressed = -1, time.monotonic()
    while True:
        count = counter.since(base)
        if count >= n and not holds_files(drop):
            return
        now = time.monotonic()
        if count > seen:
            seen, progressed = count, now
        elif now - progressed > STALL_TIMEOUT:
            raise vna.failure(
                f"stalled at {count} of {n} instances for {STALL_TIMEOUT:.0f} s "
                f"(drop folder {'not ' if holds_files(drop) else ''}empty)"
            )
        vna.check_running("ingesting")
        time.sleep(POLL_SECONDS)


def check_run(run_dir: Path, expected: int, indexed: int, expected_indexed: int) -> None:
    """Fail loudly unless every instance is in the layout and index, and nothing stayed behind."""
    archived = list((run_dir / "archive").glob("studies/*/series/*/instances/*.dcm"))
    left = files_below(run_dir / "drop")
    quarantined = files_below(run_dir / "quarantine") if (run_dir / "quarantine").exists() else []
    if len(archived) != expected or indexed != expected_indexed or left or quarantined:
        raise OursError(
            f"{len(archived)} instances in the layout (expected {expected}), "
            f"{indexed} in the index (expected {expected_indexed}), "
            f"{len(left)} files left in drop, {len(quarantined)} files in quarantine "
            f"(e.g. {[str(p) for p in (left + quarantined)[:3]]}); see {run_dir / 'ingest.log'}"
        )
