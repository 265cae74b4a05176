"""Replication benchmark: our replicator side by side with rclone, in one run.

Why side by side: a replication rate means little on its own; measured in the
same run, on the same files and the same targets, it can be read against the
tool a site would otherwise use to mirror a folder tree to cloud storage.

The dataset: `--instances` CT-like instances (512x512 16-bit, 250 per series) are
generated and ingested once (`vna ingest --once`) into a base archive and index.
Every run starts from that state: the archive as a tree of hard links (layout
files are never changed in place, so this is a faithful copy that costs nothing),
the index as a copy of its SQLite file, and a fresh target: a local folder, or a
fresh container in Azurite (the Azure Blob emulator, on 127.0.0.1 only).

What is timed, per target kind, for each method:
- ours, verify=metadata: `vna --config CFG replicate --once`, the default
  verification: the store's answer to each put proves the upload (on Azure the
  MD5 it computed over what it kept; on a folder, every byte written), anything
  it does not prove is read back;
- ours, verify=read-back: the same, reading every object back from the target
  and hashing it (a download per copy); an option, shown for information;
- rclone: `rclone copy` for the initial copy, `rclone sync` for later passes,
  `--transfers` and `--checkers` both at `--concurrency` (ours: `concurrency`).
  rclone compares size and modification time to decide what to copy, and after
  each transfer the MD5 of both sides as each side reports it; it reads nothing back.
Every figure is the wall time of one process run (start-up included) with the
peak RSS of its process tree, sampled every 50 ms. Our local target makes every
file durable before it is named (a batch of files with one syncfs on ext4, XFS and
Btrfs; one fsync per file elsewhere) and fsyncs each folder once per batch; rclone
does not fsync. So the initial copy into a folder is also shown as "rclone copy, then
syncfs": rclone's time plus a syncfs of the target's file system right after it, the
time until rclone's copy is as durable as ours when ours exits.

1. initial copy into the fresh target;
2. no-change pass: the same command again with nothing new. Our start-up cost
   is measured too (`vna replicate --once` on an empty index and a fresh target,
   after an untimed warm-up run) and subtracted to show the pass itself;
3. one new study (`--new-study` instances, another seed) ingested (untimed), then
   the time to bring the target up to date;
4. replication lag while ingest runs at full speed: `vna replicate` and `vna
   ingest` run as daemons (local folder target, already up to date); an export of
   `--instances` instances is moved into the drop folder with one rename; every
   100 ms, lag = now - received_at of the oldest new instance in the index
   without a verified copy on the target;
5. at scale: an index filled with `--scale-instances` synthetic instances (rows
   only), all marked verified on the target with one statement and the cursor
   at the feed's head; then `--instances` real instances are ingested, and
   `vna replicate --once` and a no-change pass are timed with their peak RSS.

Each of 1-3 is repeated `--repeat` times (methods interleaved, so drift of the
machine spreads over all of them), 4 and 5 as well; medians are reported with
the individual runs. Run from the repo root:
`.venv/bin/python scripts/bench_replicate.py [--instances N] [--repeat R] ...`.
The temporary folder is made by `tempfile` (set TMPDIR to put it on another disk).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib.util
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from bench_ingest import MB, Dataset, PeakMemory, Run, filesystem_of, settle_disk
from peers import rclone
from peers.azurite import AzuriteServer, azurite_missing, azurite_version
from peers.lifecycle import cleanup, stop_on_sigterm
from peers.orthanc import PeerError
from peers.ours import OursError, make_warmup, ours_runnable, sqlite_url, wait_ingested, wait_warm
from peers.replicate import (
    LagSampler,
    LoggedVnaProcess,
    ReplicaCounter,
    copy_index,
    count_files,
    ingest_command,
    link_tree,
    mark_replicated,
    parse_once,
    replicate_command,
    rewind_target,
    wait_verified,
    write_replicate_config,
)

#: Instances per series in the generated datasets (a typical thin-slice CT series).
PER_SERIES = 250
#: Seeds of the datasets: UIDs derive from the seed, so each dataset is new to the archive.
BASE_SEED, NEW_STUDY_SEED, LAG_SEED = 1, 2, 3
#: A daemon run fails when nothing progresses for this long.
STALL_TIMEOUT = 120.0
#: Where the replica lives inside an Azurite container (ours and rclone alike).
AZ_PREFIX = "site-1"
LOCAL, AZURITE = "local", "azurite"
#: The phases measured for every method and target kind.
INITIAL, PASS, NEW = "initial", "pass", "new"
STARTUP = "startup"
#: Measured goals from the issue.
GOAL_PASS_SECONDS, GOAL_LAG_SECONDS, GOAL_RSS = 1.0, 5.0, 300 * MB


class BenchError(RuntimeError):
    """A measurement did not do what it claims (wrong count, non-zero exit, ...)."""


@dataclass(frozen=True)
class Method:
    """One way of mirroring: ours with a verify mode, or rclone (verify None)."""

    key: str
    label: str
    verify: str | None

    @property
    def ours(self) -> bool:
        return self.verify is not None


DEFAULT_VERIFY = "metadata"
METHODS = (
    Method("ours-md", "ours, verify=metadata", "metadata"),  # the default
    Method("ours-rb", "ours, verify=read-back", "read-back"),
    Method("rclone", "rclone copy / sync", None),
)
#: Not a method of its own: rclone's initial copy into a folder, then the target's file
#: system flushed (syncfs), timed together: the copy made as durable as ours before it counts.
RCLONE_DURABLE = Method("rclone-durable", "rclone copy, then syncfs", None)


@dataclass
class Target:
    """One fresh replication target, as our config and rclone name it."""

    kind: str
    url: str
    storage_options: dict[str, Any]
    rclone_dest: str
    count: Callable[[], int]
    remove: Callable[[], None]


@dataclass(frozen=True)
class Finished:
    """A timed process run: its Run (seconds, peak memory), exit code, stdout and log."""

    run: Run
    code: int
    stdout: str
    log: Path

    def failure(self, command: Sequence[str], what: str) -> BenchError:
        tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
        return BenchError(
            f"{' '.join(command)}: {what}\nstdout:\n{self.stdout.strip()}\n"
            f"end of {self.log}:\n{tail}"
        )


@dataclass(frozen=True)
class LagResult:
    """One lag run: ingest time, lags sampled while ingest ran, catch-up, replicator memory."""

    ingest_seconds: float
    catchup_seconds: float
    total_seconds: float
    lags: list[float]  # sampled between the move and the end of ingest
    max_lag: float  # over the whole run, until every instance was verified
    rss: int
    pss: int


@dataclass
class ScaleResult:
    """The scale test: preparation times, then runs of `replicate --once` and no-change passes."""

    rows: int
    fill_seconds: float
    mark_seconds: float
    ingest_seconds: float
    once: list[Run] = field(default_factory=list)
    passes: list[Run] = field(default_factory=list)


# --------------------------------------------------------------------------- processes


def timed(command: list[str], cwd: Path, name: str) -> Finished:
    """Run `command` to its end in `cwd`; wall time and peak RSS of its tree; output in files."""
    out_path, log_path = cwd / f"{name}.out", cwd / f"{name}.log"
    with out_path.open("wb") as out, log_path.open("wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=log
        )
        try:
            with PeakMemory(process.pid) as memory:
                code = process.wait()
                seconds = time.perf_counter() - started
        finally:
            if process.poll() is None:  # interrupted: never leave it running
                process.kill()
                process.wait()
    stdout = out_path.read_text(errors="replace")
    return Finished(Run(seconds, memory.rss, memory.pss), code, stdout, log_path)


def ours_once(config: Path, run_dir: Path, name: str, expect_verified: int) -> Run:
    """`vna replicate --once`, timed; it must exit 0 having verified exactly what was new."""
    command = replicate_command(config, once=True)
    done = timed(command, run_dir, name)
    if done.code != 0:
        raise done.failure(command, f"exited with code {done.code}")
    summary = parse_once(done.stdout)
    if summary is None or summary.verified != expect_verified or summary.failed:
        raise done.failure(
            command, f"expected {expect_verified} verified and no failed attempt, got {summary}"
        )
    return done.run


def rclone_run(config: Path, verb: str, source: Path, dest: str, run_dir: Path, name: str,
               transfers: int) -> Run:  # fmt: skip
    """`rclone copy|sync`, timed; it must exit 0."""
    command = rclone.command(config, verb, str(source), dest, transfers)
    done = timed(command, run_dir, name)
    if done.code != 0:
        raise done.failure(command, f"exited with code {done.code}")
    return done.run


def flush_seconds(folder: Path) -> float:
    """Time to write back everything still dirty on `folder`'s file system (syncfs; a sync of
    every file system where the kernel has no syncfs that reports errors)."""
    from vna.durability import syncfs

    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        started = time.perf_counter()
        try:
            syncfs(fd)
        except OSError as exc:
            if exc.errno != errno.ENOSYS:
                raise
            os.sync()
        return time.perf_counter() - started
    finally:
        os.close(fd)


def ingest_once(config: Path, run_dir: Path) -> float:
    """`vna ingest --once` (untimed preparation); every drop file must end in the archive."""
    command = ingest_command(config, once=True)
    done = timed(command, run_dir, "ingest")
    if done.code != 0:
        raise done.failure(command, f"exited with code {done.code}")
    left = count_files(run_dir / "drop")
    quarantine = run_dir / "quarantine"
    held = count_files(quarantine) if quarantine.exists() else 0
    if left or held:
        raise done.failure(command, f"{left} files left in drop, {held} in quarantine")
    return done.run.seconds


# --------------------------------------------------------------------------- the bench


class Bench:
    """What every run shares: folders, datasets, the base archive and index, Azurite, results."""

    def __init__(self, args: argparse.Namespace, work: Path, azurite: AzuriteServer | None):
        self.args = args
        self.work = work
        self.azurite = azurite
        self.base = work / "base"
        self.rclone_config = rclone.write_config(
            work / "rclone.conf", azurite.endpoint if azurite else None
        )
        self.kinds = [LOCAL] + ([AZURITE] if azurite else [])
        self.results: dict[tuple[str, str, str], list[Run]] = {}
        self.lag: list[LagResult] = []
        self.scale: ScaleResult | None = None
        self.data = self.new_study = self.lag_data = Dataset(work, [], 0)
        self.archive_bytes = 0
        self.load_at_start = os.getloadavg()

    # ------------------------------------------------------------------ preparation

    def prepare(self) -> None:
        """Generate the datasets and ingest the base one (untimed)."""
        args = self.args
        self.data = make_dataset(self.work / "dataset", args.instances, BASE_SEED)
        self.new_study = make_dataset(self.work / "new-study", args.new_study, NEW_STUDY_SEED)
        if not args.skip_lag:
            self.lag_data = make_dataset(self.work / "lag-export", args.instances, LAG_SEED)
        self.base.mkdir()
        (self.base / "drop").mkdir()
        link_tree(self.data.root, self.base / "drop" / "export")
        config = write_replicate_config(
            self.base, sqlite_url(self.base / "index.db"), (self.work / "unused").as_uri(),
            {}, "read-back", args.concurrency, args.workers,
        )  # fmt: skip
        seconds = ingest_once(config, self.base)
        studies = self.base / "archive" / "studies"
        files = [p for p in studies.rglob("*.dcm")]
        if len(files) != self.data.count:
            raise BenchError(f"base ingest archived {len(files)} of {self.data.count} instances")
        self.archive_bytes = sum(p.stat().st_size for p in files)
        print(
            f"ingested the dataset once into the base archive ({seconds:.1f} s): "
            f"{len(files)} files, {self.archive_bytes / MB:.1f} MB",
            flush=True,
        )
        from vna.index.engine import open_index

        open_index(sqlite_url(self.work / "empty" / "index.db")).dispose()

    def new_target(self, kind: str, run_dir: Path) -> Target:
        """A fresh, empty target of `kind` for one run."""
        if kind == LOCAL:
            folder = run_dir / "target"
            return Target(
                kind,
                folder.as_uri(),
                {},
                str(folder / "studies"),
                lambda: count_files(folder / "studies"),
                lambda: shutil.rmtree(folder, ignore_errors=True),
            )
        azurite = self.azurite
        if azurite is None:
            raise BenchError("Azurite is not running")
        container = azurite.new_container()
        return Target(
            kind,
            f"az://{container}/{AZ_PREFIX}",
            azurite.storage_options(),
            rclone.azure_path(container, f"{AZ_PREFIX}/studies"),
            lambda: azurite.count_blobs(container, f"{AZ_PREFIX}/studies/"),
            lambda: azurite.delete_container(container),
        )

    def prepare_run(
        self, run_dir: Path, kind: str, verify: str, index: Path | None = None
    ) -> tuple[Path, Target]:
        """A run folder: linked archive, its own index copy, a drop folder, a fresh target."""
        run_dir.mkdir(parents=True)
        if index is None:
            link_tree(self.base / "archive" / "studies", run_dir / "archive" / "studies")
            index = self.base / "index.db"
        copy_index(index, run_dir / "index.db")
        (run_dir / "drop").mkdir()
        target = self.new_target(kind, run_dir)
        config = write_replicate_config(
            run_dir, sqlite_url(run_dir / "index.db"), target.url, target.storage_options,
            verify, self.args.concurrency, self.args.workers,
        )  # fmt: skip
        return config, target

    def finish_run(self, run_dir: Path, target: Target | None) -> None:
        """Remove a run's target and folder (unless --keep), then flush, before the next run."""
        if self.args.keep:
            return
        if target is not None:
            with contextlib.suppress(Exception):  # a failed run must not hide its own error
                target.remove()
        shutil.rmtree(run_dir, ignore_errors=True)
        settle_disk()

    def record(self, phase: str, kind: str, key: str, run: Run) -> None:
        self.results.setdefault((phase, kind, key), []).append(run)

    def expect(self, target: Target, expected: int, what: str) -> None:
        found = target.count()
        if found != expected:
            raise BenchError(f"{what}: {found} objects on the {target.kind} target, not {expected}")

    # ------------------------------------------------------------------ phases 1-3

    def startup(self, kind: str, run_dir: Path) -> Run:
        """Our fixed cost: `vna replicate --once` on an empty (migrated) index, fresh target.

        Run twice, the first untimed, so the figure is a warm start like the passes it is
        subtracted from (each of those follows a run of the same command).
        """
        target = None
        try:
            config, target = self.prepare_run(
                run_dir, kind, "read-back", self.work / "empty" / "index.db"
            )
            ours_once(config, run_dir, f"{STARTUP}-warm-up", 0)  # untimed: files in page cache
            settle_disk()
            run = ours_once(config, run_dir, STARTUP, 0)
            self.record(STARTUP, kind, "ours", run)
            return run
        finally:
            self.finish_run(run_dir, target)

    def scenario(self, kind: str, method: Method, run_dir: Path) -> list[Run]:
        """Initial copy, no-change pass, one new study: one fresh target, three timed runs."""
        n, extra = self.data.count, self.new_study.count
        source = run_dir / "archive" / "studies"
        transfers = self.args.concurrency
        target = None
        try:
            config, target = self.prepare_run(run_dir, kind, method.verify or "read-back")
            runs: list[Run] = []
            for phase, expected, total in ((INITIAL, n, n), (PASS, 0, n), (NEW, extra, n + extra)):
                if phase == NEW:
                    link_tree(self.new_study.root, run_dir / "drop" / "new-study")
                    ingest_once(config, run_dir)
                settle_disk()
                if method.ours:
                    run = ours_once(config, run_dir, phase, expected)
                else:
                    verb = "copy" if phase == INITIAL else "sync"
                    run = rclone_run(
                        self.rclone_config, verb, source, target.rclone_dest, run_dir, phase,
                        transfers,
                    )  # fmt: skip
                    if phase == INITIAL and kind == LOCAL:
                        flushed = flush_seconds(Path(target.rclone_dest))
                        durable = Run(run.seconds + flushed, run.rss, run.pss)
                        self.record(phase, kind, RCLONE_DURABLE.key, durable)
                self.expect(target, total, f"{method.label}, {phase}")
                self.record(phase, kind, method.key, run)
                runs.append(run)
            return runs
        finally:
            self.finish_run(run_dir, target)

    # ------------------------------------------------------------------ phase 4

    def lag_run(self, run_dir: Path) -> LagResult:
        """Both daemons running; an export moved into the drop folder; lag sampled every 100 ms."""
        n = self.lag_data.count
        target = None
        try:
            config, target = self.prepare_run(run_dir, LOCAL, "read-back")
            ours_once(config, run_dir, "catch-up", self.data.count)  # untimed: target up to date
            staged = run_dir / "incoming" / "export"
            link_tree(self.lag_data.root, staged)
            warmup = make_warmup(run_dir / "incoming" / "warmup")
            drop = run_dir / "drop"
            url = sqlite_url(run_dir / "index.db")
            replicate = LoggedVnaProcess(replicate_command(config, False), run_dir, "replicate.log")
            ingest = LoggedVnaProcess(ingest_command(config, False), run_dir, "ingest.log")
            with replicate, ingest, ReplicaCounter(url) as counter:
                before = counter.max_id()
                wait_warm(ingest, warmup, drop, run_dir)
                wait_verified(replicate, counter, before, 1, STALL_TIMEOUT)  # both daemons live
                base = counter.max_id()
                settle_disk()
                with LagSampler(url, base) as sampler, PeakMemory(replicate.process.pid) as memory:
                    started = time.perf_counter()
                    os.rename(staged, drop / staged.name)
                    wait_ingested(ingest, counter, base, n, drop)
                    ingested = time.perf_counter()
                    wait_verified(replicate, counter, base, n, STALL_TIMEOUT)
                    verified = time.perf_counter()
                for daemon in (ingest, replicate):
                    if (code := daemon.stop()) != 0:
                        raise daemon.failure(f"exited with code {code} after SIGTERM")
            if sampler.error is not None:
                raise BenchError(f"lag sampler failed: {sampler.error!r}")
            self.expect(target, self.data.count + 1 + n, "lag run")
            during = [s.lag for s in sampler.samples if started <= s.at <= ingested]
            return LagResult(
                ingest_seconds=ingested - started,
                catchup_seconds=verified - ingested,
                total_seconds=verified - started,
                lags=during or [0.0],
                max_lag=max((s.lag for s in sampler.samples), default=0.0),
                rss=memory.rss,
                pss=memory.pss,
            )
        finally:
            self.finish_run(run_dir, target)

    # ------------------------------------------------------------------ phase 5

    def scale_run(self, run_dir: Path) -> ScaleResult:
        """A big index already replicated, N real instances new: `replicate --once` and a pass."""
        from synthetic_index import fill

        from vna.index.engine import open_index

        rows, n = self.args.scale_instances, self.data.count
        run_dir.mkdir(parents=True)
        url = sqlite_url(run_dir / "index.db")
        target = None
        try:
            engine = open_index(url)
            try:
                fill_seconds = fill(engine, rows)
                started = time.perf_counter()
                head = mark_replicated(engine)
                mark_seconds = time.perf_counter() - started
            finally:
                engine.dispose()
            print(
                f"scale: filled the index with {rows:,} synthetic instances "
                f"({fill_seconds:.1f} s), marked them verified on the target "
                f"({mark_seconds:.1f} s)",
                flush=True,
            )
            (run_dir / "drop").mkdir()
            target = self.new_target(LOCAL, run_dir)
            config = write_replicate_config(
                run_dir, url, target.url, {}, "read-back", self.args.concurrency, self.args.workers
            )
            link_tree(self.data.root, run_dir / "drop" / "export")
            ingest_seconds = ingest_once(config, run_dir)
            print(
                f"scale: ingested {n} real instances into it ({ingest_seconds:.1f} s)", flush=True
            )
            result = ScaleResult(rows, fill_seconds, mark_seconds, ingest_seconds)
            folder = run_dir / "target"
            for rep in range(1, self.args.repeat + 1):
                if rep > 1:
                    rewind_target(url, head)
                    shutil.rmtree(folder, ignore_errors=True)
                settle_disk()
                once = ours_once(config, run_dir, f"scale-once-{rep}", n)
                self.expect(target, n, "scale run")
                settle_disk()
                nochange = ours_once(config, run_dir, f"scale-pass-{rep}", 0)
                result.once.append(once)
                result.passes.append(nochange)
                print(
                    f"scale run {rep}/{self.args.repeat}: replicate --once {once.seconds:.3f} s "
                    f"(peak RSS {fmt_mb(once.rss)}), no-change pass {nochange.seconds:.3f} s "
                    f"(peak RSS {fmt_mb(nochange.rss)})",
                    flush=True,
                )
            return result
        finally:
            self.finish_run(run_dir, target)

    # ------------------------------------------------------------------ all

    def run(self) -> None:
        """Every phase, `--repeat` times, methods interleaved within each repetition."""
        args = self.args
        for rep in range(1, args.repeat + 1):
            for kind in self.kinds:
                run = self.startup(kind, self.work / f"startup-{kind}-{rep}")
                print(
                    f"run {rep}/{args.repeat} {kind} start-up baseline: {run.seconds:.3f} s",
                    flush=True,
                )
                for method in METHODS:
                    first, second, third = self.scenario(
                        kind, method, self.work / f"{kind}-{method.key}-{rep}"
                    )
                    print(
                        f"run {rep}/{args.repeat} {kind} {method.label}: "
                        f"initial {first.seconds:.3f} s, pass {second.seconds:.3f} s, "
                        f"new study {third.seconds:.3f} s "
                        f"(peak RSS {fmt_mb(first.rss)}/{fmt_mb(second.rss)}/{fmt_mb(third.rss)})",
                        flush=True,
                    )
            if not args.skip_lag:
                lag = self.lag_run(self.work / f"lag-{rep}")
                self.lag.append(lag)
                print(
                    f"run {rep}/{args.repeat} lag: ingest {lag.ingest_seconds:.2f} s, "
                    f"lag p50 {percentile(lag.lags, 50):.2f} s, max {max(lag.lags):.2f} s, "
                    f"catch-up {lag.catchup_seconds:.2f} s",
                    flush=True,
                )
        if not args.skip_scale:
            self.scale = self.scale_run(self.work / "scale")


# --------------------------------------------------------------------------- dataset


def make_dataset(folder: Path, instances: int, seed: int) -> Dataset:
    """Generate a CT-like export with our sample generator (untimed)."""
    from vna.sample import SampleSpec, generate

    started = time.monotonic()
    spec = SampleSpec(instances=instances, per_series=PER_SERIES, seed=seed)
    files = sorted(generate(folder, spec))
    total = sum(path.stat().st_size for path in files)
    print(
        f"generated {len(files)} instances (seed {seed}), {total / MB:.1f} MB in {folder} "
        f"({time.monotonic() - started:.1f} s)",
        flush=True,
    )
    return Dataset(root=folder, files=files, total_bytes=total)


# --------------------------------------------------------------------------- report


def fmt_mb(value: float) -> str:
    return f"{value / MB:.0f} MB"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: every figure is a sampled value)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(runs: Sequence[Run]) -> float:
    return statistics.median(run.seconds for run in runs)


def median_rss(runs: Sequence[Run]) -> float:
    return statistics.median(run.rss for run in runs)


def run_list(runs: Sequence[Run]) -> str:
    return " ".join(f"{run.seconds:.3f}" for run in runs)


def fmt_load(load: tuple[float, float, float]) -> str:
    return ", ".join(f"{x:.2f}" for x in load)


def machine_facts(
    work: Path, azurite: bool, load_at_start: tuple[float, float, float]
) -> list[str]:
    """CPUs, RAM, file system, versions and load: what the figures depend on."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = f"{rclone.rclone_version()}" + (f", Azurite {azurite_version()}" if azurite else "")
    return [
        f"machine: {os.cpu_count()} CPUs ({model}), "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        f"file system: {filesystem_of(work)}",
        f"peers: {versions}",
        f"load average (1, 5, 15 min) at the start: {fmt_load(load_at_start)} "
        f"(other work on this machine shows here: figures with a high load are disturbed)",
    ]


def print_table(bench: Bench, phase: str, files: int, data_bytes: int | None) -> None:
    """One phase: a row per target kind and method, median and rate, RSS, every run."""
    width = max(len(m.label) for m in (*METHODS, RCLONE_DURABLE))
    rate = f" {'files/s':>8} {'MB/s':>7}" if data_bytes else ""
    startup = "  excl. start-up" if phase == PASS else ""
    header = (
        f"{'target':<8} {'method':<{width}} {'median s':>9}{rate}{startup} {'peak RSS':>9}"
        "  runs (s)"
    )
    print(header)
    print("-" * len(header))
    for kind in bench.kinds:
        base = bench.results.get((STARTUP, kind, "ours"))
        for method in (*METHODS, RCLONE_DURABLE):
            runs = bench.results.get((phase, kind, method.key))
            if not runs:
                continue
            mid = median(runs)
            cells = f"{kind:<8} {method.label:<{width}} {mid:>9.3f}"
            if data_bytes:
                cells += f" {files / mid:>8.1f} {data_bytes / MB / mid:>7.1f}"
            if phase == PASS:
                own = f"{mid - median(base):.3f}" if method.ours and base else "-"
                cells += f"  {own:>15}"
            print(f"{cells} {fmt_mb(median_rss(runs)):>9}  {run_list(runs)}")


def print_report(bench: Bench) -> None:
    """Sections 1-5 and the goals, as described in the module docstring."""
    args, n, extra = bench.args, bench.data.count, bench.new_study.count
    size = bench.archive_bytes
    new_bytes = round(size / n * extra) if n else 0
    print()
    print(
        f"Replication benchmark: {n} instances, {size / MB:.1f} MB in the archive "
        f"(MB = 10^6 bytes), concurrency {args.concurrency}, {args.repeat} run(s) each, "
        "median reported"
    )
    for line in machine_facts(bench.work, AZURITE in bench.kinds, bench.load_at_start):
        print(line)
    print(
        "ours: vna replicate --once (SQLite index; local target: unnamed files, one syncfs "
        "per batch, then linked, each folder fsynced once per batch; xattr digest); "
        "verify=metadata (the default) takes the store's answer to each put as its proof (on "
        "Azure: the MD5 the store computed over what it kept; on a folder: every byte written), "
        "verify=read-back (optional) reads every object back and hashes it"
    )
    print(
        f"rclone: rclone copy (initial) / rclone sync (passes) --transfers {args.concurrency} "
        f"--checkers {args.concurrency}; no fsync; size+modtime to decide, MD5 after transfer"
    )
    print()
    print(f"1. initial copy of {n} instances into a fresh target")
    print_table(bench, INITIAL, n, size)
    print()
    print("2. no-change pass (nothing new since the previous run; ours: replicate --once, "
          "rclone: sync)")  # fmt: skip
    print_table(bench, PASS, n, None)
    for kind in bench.kinds:
        base = bench.results.get((STARTUP, kind, "ours"))
        if base:
            print(
                f"   start-up baseline {kind}: vna replicate --once on an empty index and a fresh "
                f"target: median {median(base):.3f} s (runs {run_list(base)}), "
                f"peak RSS {fmt_mb(median_rss(base))}"
            )
    print()
    print(f"3. one new study ({extra} instances ingested since the previous run): "
          "bring the target up to date")  # fmt: skip
    print_table(bench, NEW, extra, new_bytes)
    if bench.lag:
        print_lag(bench)
    if bench.scale:
        print_scale(bench.scale, n)
    print_goals(bench)
    print(f"load average (1, 5, 15 min) at the end: {fmt_load(os.getloadavg())}")


def print_lag(bench: Bench) -> None:
    n = bench.lag_data.count
    print()
    print(
        f"4. replication lag while ingest runs at full speed: {n} instances moved into the drop "
        f"folder at once; vna ingest (daemon, {bench.args.workers} workers, events, settle 0) and "
        "vna replicate (daemon, default settings but verify=read-back) to a local folder; "
        "lag sampled every 100 ms"
    )
    header = (
        f"{'run':<7} {'ingest s':>8} {'inst/s':>7} {'lag p50':>8} {'lag p95':>8} "
        f"{'lag max':>8} {'max overall':>11} {'catch-up s':>10} {'total s':>8} {'repl. RSS':>10}"
    )
    print(header)
    print("-" * len(header))
    columns = [
        [
            lag.ingest_seconds,
            n / lag.ingest_seconds,
            percentile(lag.lags, 50),
            percentile(lag.lags, 95),
            max(lag.lags),
            lag.max_lag,
            lag.catchup_seconds,
            lag.total_seconds,
            float(lag.rss),
        ]
        for lag in bench.lag
    ]
    rows = [(str(i), values) for i, values in enumerate(columns, 1)]
    rows.append(("median", [statistics.median(col) for col in zip(*columns, strict=True)]))
    for name, (ing, rate, p50, p95, top, overall, catch, total, rss) in rows:
        print(
            f"{name:<7} {ing:>8.2f} {rate:>7.1f} {p50:>8.2f} {p95:>8.2f} {top:>8.2f} "
            f"{overall:>11.2f} {catch:>10.2f} {total:>8.2f} {fmt_mb(rss):>10}"
        )
    print(
        "   lag p50/p95/max: over the samples between the move and the end of ingest (index "
        "holds every instance, drop folder empty); catch-up: from then until every new "
        "instance is verified"
    )


def print_scale(scale: ScaleResult, n: int) -> None:
    print()
    print(
        f"5. at scale: {scale.rows:,} synthetic instances in the index, all marked verified on "
        f"the target (fill {scale.fill_seconds:.1f} s, mark {scale.mark_seconds:.1f} s), then "
        f"{n} real instances ingested ({scale.ingest_seconds:.1f} s); local folder target, "
        "verify=read-back"
    )
    for label, runs in (
        (f"vna replicate --once ({n} new)", scale.once),
        ("no-change pass", scale.passes),
    ):
        print(
            f"   {label}: median {median(runs):.3f} s (runs {run_list(runs)}); peak RSS "
            f"{' '.join(fmt_mb(r.rss) for r in runs)}, PSS {' '.join(fmt_mb(r.pss) for r in runs)}"
        )


def print_goals(bench: Bench) -> None:
    """The issue's goals, each with the figure that decides it."""
    print()
    print("goals:")
    for kind in bench.kinds:
        for peer in (METHODS[2], RCLONE_DURABLE):
            theirs = bench.results.get((INITIAL, kind, peer.key))
            for method in METHODS[:2]:
                runs = bench.results.get((INITIAL, kind, method.key))
                if not runs or not theirs:
                    continue
                ratio = median(theirs) / median(runs)
                verdict = "met" if ratio >= 1 else "NOT met"
                if method.verify != DEFAULT_VERIFY:
                    verdict = f"information ({verdict} by this optional mode)"
                print(
                    f"  initial copy at least as fast as {peer.label}, {kind}, {method.label}: "
                    f"{ratio:.2f}x: {verdict}"
                )
    for kind in bench.kinds:
        base = bench.results.get((STARTUP, kind, "ours"))
        for method in METHODS[:2]:
            runs = bench.results.get((PASS, kind, method.key))
            if not runs or not base:
                continue
            mid = median(runs)
            verdict = "met" if mid < GOAL_PASS_SECONDS else "NOT met (start-up included)"
            print(
                f"  no-change pass < {GOAL_PASS_SECONDS:.0f} s, {kind}, {method.label}: "
                f"{mid:.3f} s, {mid - median(base):.3f} s excl. start-up: {verdict}"
            )
    if bench.scale:
        mid = median(bench.scale.passes)
        verdict = "met" if mid < GOAL_PASS_SECONDS else "NOT met (start-up included)"
        print(f"  no-change pass < 1 s at {bench.scale.rows:,} instances: {mid:.3f} s: {verdict}")
        peak = max(run.rss for run in bench.scale.once + bench.scale.passes)
        verdict = "met" if peak < GOAL_RSS else "NOT met"
        print(f"  peak RSS < {fmt_mb(GOAL_RSS)} at scale: {fmt_mb(peak)}: {verdict}")
    if bench.lag:
        worst = max(max(lag.lags) for lag in bench.lag)
        verdict = "met" if worst < GOAL_LAG_SECONDS else "NOT met"
        print(f"  lag < {GOAL_LAG_SECONDS:.0f} s while ingest runs: max {worst:.2f} s: {verdict}")


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--instances", type=int, default=1000, help="instances in the dataset")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method (median reported)")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="copies in flight (rclone: transfers, checkers)"
    )
    parser.add_argument(
        "--new-study", type=int, default=250, help="instances of the new study (phase 3)"
    )
    parser.add_argument("--workers", type=int, default=2, help="our ingest workers")
    parser.add_argument(
        "--scale-instances", type=int, default=1_000_000, help="synthetic index rows (phase 5)"
    )
    parser.add_argument("--skip-azurite", action="store_true", help="local folder targets only")
    parser.add_argument("--skip-lag", action="store_true", help="no lag measurement (phase 4)")
    parser.add_argument("--skip-scale", action="store_true", help="no scale test (phase 5)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    counts = (args.instances, args.repeat, args.concurrency, args.new_study, args.workers)
    if min(counts) < 1 or args.scale_instances < 0:
        parser.error("counts must be at least 1")
    return args


def preflight(args: argparse.Namespace) -> None:
    """Fail before any work when a tool or our CLI is missing."""
    problems = [why for why in (ours_runnable(), rclone.rclone_missing()) if why]
    if importlib.util.find_spec("replicator.cli") is None:
        problems.append("package 'replicator' is not importable from this interpreter")
    if not args.skip_azurite and (why := azurite_missing()):
        problems.append(f"{why} (or pass --skip-azurite)")
    if problems:
        sys.exit("bench_replicate: " + "\n  ".join(["cannot start:", *problems]))


def benchmark(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="vna-bench-replicate-"))
    print(f"work folder: {work}", flush=True)
    with contextlib.ExitStack() as stack:
        stack.callback(cleanup, work, args.keep)  # runs last, after Azurite stopped
        azurite = None
        if not args.skip_azurite:
            azurite = stack.enter_context(AzuriteServer(work / "azurite"))
            print(f"Azurite listens on {azurite.endpoint} (pid {azurite.pid})", flush=True)
        bench = Bench(args, work, azurite)
        bench.prepare()
        bench.run()
        print_report(bench)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    stop_on_sigterm()
    try:
        preflight(args)
        benchmark(args)
        return 0
    except (BenchError, OursError, PeerError) as exc:
        print(f"bench_replicate: FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_replicate: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
