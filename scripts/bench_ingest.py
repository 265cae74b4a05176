"""Ingest benchmark: our archive side by side with Orthanc and a plain copy, in one run.

Why side by side: an ingest rate means little on its own; measured in the same
run, on the same disk and the same files, it can be read against a known peer
(Orthanc, through its REST API and through DICOM C-STORE from DCMTK's storescu)
and against the physical limits of the disk (a plain copy, without and with an
fsync of each file; the durable copy is what an archive must do at least).

What is timed:
- ours: wall time of `vna --config CFG ingest --once` as a subprocess, start-up
  included; its peak RSS is the sum over the process tree, sampled every 50 ms.
- Orthanc REST: `POST /instances` of every file from `--rest-threads` clients,
  Orthanc already running (started with empty storage, not timed).
- Orthanc storescu: one `storescu +sd +r` run over the export folder, with
  Nagle's algorithm off in DCMTK on both ends (TCP_NODELAY=1, as Orthanc's own
  builds have it; see peers.orthanc.DCMTK_NO_NAGLE_ENV; `--dcmtk-nagle` keeps
  Debian's default, which stalls every C-STORE on loopback by ~40 ms).
- copy: every file copied into a fresh folder by `--copy-threads` threads
  (default: as many as our ingest workers), without and with fsync per file.
Each measurement starts with fresh storage, after an untimed `sync`, and is
repeated `--repeat` times in turn (ours, REST, storescu, copy, copy+fsync, then
again), so drift of the machine spreads over all of them; the median is reported.
The source files are read from the page cache in every case (the dataset is
generated just before), so the figures compare writing, not reading.

Network: Orthanc 1.10 cannot bind loopback only, so when Orthanc is measured the
script needs root: it creates a network namespace holding only `lo`, re-executes
itself inside it, and deletes the namespace at the end, also on error or Ctrl-C.

Run from the repo root: `.venv/bin/python scripts/bench_ingest.py [--instances N] ...`.
The temporary folder is made by `tempfile` (set TMPDIR to put it on another disk).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from peers.orthanc import (
    REQUIRED_TOOLS,
    LoopbackNamespace,
    OrthancServer,
    PeerError,
    assert_loopback_only,
    missing_tools,
    run_inside,
)

INSIDE_FLAG = "--inside"
#: Sampling period of the peak-RSS sampler; short enough to catch a batch's peak.
RSS_SAMPLE_SECONDS = 0.05
#: Instances per series in the generated dataset (a typical thin-slice CT series).
PER_SERIES = 250
MB = 1_000_000


class BenchError(RuntimeError):
    """A measurement did not do what it claims (wrong count, non-zero exit, ...)."""


# --------------------------------------------------------------------------- measuring


class PeakMemory:
    """Peaks of the summed RSS and PSS of a process and all its descendants, sampled in a thread.

    Summing the tree matters because our ingest runs a pool of worker processes.
    RSS summed over forked processes counts their shared pages once per process,
    so the PSS sum (shared pages divided among their sharers) is kept beside it as
    the figure that adds up. A sample can miss a spike shorter than the period.
    """

    def __init__(self, pid: int, period: float = RSS_SAMPLE_SECONDS) -> None:
        self.pid = pid
        self.period = period
        self.rss = 0
        self.pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _sample(self, root: psutil.Process) -> tuple[int, int]:
        rss = pss = 0
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0, 0
        for proc in tree:
            with contextlib.suppress(psutil.Error):  # exited between listing and sampling
                full = proc.memory_full_info()
                rss += full.rss
                pss += full.pss
        return rss, pss

    def _run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            rss, pss = self._sample(root)
            self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)
            self._stop.wait(self.period)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class Run:
    """One run of a method: wall seconds, and peak memory in bytes when sampled (else 0)."""

    seconds: float
    rss: int = 0
    pss: int = 0


#: One run of a method into the fresh folder it is given.
Measure = Callable[[Path], Run]


@dataclass
class Measurement:
    """One method and all its runs; rates are derived from the median run time."""

    key: str
    label: str
    measure: Measure
    runs: list[Run] = field(default_factory=list)
    rss_note: str = ""

    @property
    def seconds(self) -> list[float]:
        return [run.seconds for run in self.runs]

    @property
    def has_rss(self) -> bool:
        """Whether this method's memory was sampled (not for the in-process copy)."""
        return any(run.rss for run in self.runs)

    def median(self) -> float:
        return statistics.median(self.seconds)

    def rate(self, instances: int) -> float:
        return instances / self.median()

    def mb_per_s(self, total_bytes: int) -> float:
        return total_bytes / MB / self.median()


@dataclass(frozen=True)
class Dataset:
    """The generated export folder and what it holds."""

    root: Path
    files: list[Path]
    total_bytes: int

    @property
    def count(self) -> int:
        return len(self.files)


def settle_disk() -> None:
    """Flush dirty pages of the previous step, so it is not billed to the next one."""
    os.sync()


def remove(path: Path, keep: bool) -> None:
    """Delete a finished run's output unless the user asked to keep it."""
    if not keep:
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- dataset


def make_dataset(folder: Path, instances: int) -> Dataset:
    """Generate the CT-like export with our sample generator (not timed)."""
    from vna.sample import SampleSpec, generate

    started = time.monotonic()
    files = generate(folder, SampleSpec(instances=instances, per_series=PER_SERIES))
    total = sum(path.stat().st_size for path in files)
    print(
        f"generated {len(files)} instances, {total / MB:.1f} MB in {folder} "
        f"({time.monotonic() - started:.1f} s)",
        flush=True,
    )
    return Dataset(root=folder, files=sorted(files), total_bytes=total)


def files_below(folder: Path) -> list[Path]:
    """Every regular file below `folder`."""
    return [path for path in folder.rglob("*") if path.is_file()]


# --------------------------------------------------------------------------- ours

CONFIG_TEMPLATE = """\
# Written by scripts/bench_ingest.py; relative paths resolve against this folder.
[archive]
root = "archive"
quarantine = "quarantine"

[index]
url = "sqlite:///index.db"

[ingest]
settle_seconds = 0
workers = {workers}
batch_size = 64

[[sources]]
name = "bench"
drop = "drop"
issuer_of_patient_id = "BENCH"
"""


def vna_command(config: Path) -> list[str]:
    """`vna --config CFG ingest --once`, from the venv this script runs in."""
    script = Path(sys.executable).with_name("vna")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "vna.cli.main"]
    return [*head, "--config", str(config), "ingest", "--once"]


def ours_runnable() -> str | None:
    """None when our CLI can be started, else why not."""
    if importlib.util.find_spec("vna") is None:
        return "package 'vna' is not importable from this interpreter"
    if importlib.util.find_spec("vna.cli.main") is None:
        return "module vna.cli.main does not exist yet"
    return None


def run_ours(data: Dataset, run_dir: Path, workers: int) -> Run:
    """Ingest a fresh copy of the dataset with a fresh archive and index, timed."""
    run_dir.mkdir(parents=True)
    shutil.copytree(data.root, run_dir / "drop")
    config = run_dir / "vna.toml"
    config.write_text(CONFIG_TEMPLATE.format(workers=workers))
    command = vna_command(config)
    log_path = run_dir / "ingest.log"
    settle_disk()
    with log_path.open("wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            command, cwd=run_dir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            with PeakMemory(process.pid) as memory:
                code = process.wait()
            seconds = time.perf_counter() - started
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    if code != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise BenchError(f"{' '.join(command)} exited with code {code}:\n{tail}")
    check_ours(run_dir, data.count)
    return Run(seconds, memory.rss, memory.pss)


def check_ours(run_dir: Path, expected: int) -> None:
    """Fail loudly unless every instance is in the layout and nothing stayed behind."""
    archived = list((run_dir / "archive").glob("studies/*/series/*/instances/*.dcm"))
    left = files_below(run_dir / "drop")
    quarantined = files_below(run_dir / "quarantine") if (run_dir / "quarantine").exists() else []
    if len(archived) != expected or left or quarantined:
        raise BenchError(
            f"ours: {len(archived)} instances in the layout (expected {expected}), "
            f"{len(left)} files left in drop, {len(quarantined)} files in quarantine "
            f"(e.g. {[str(p) for p in (left + quarantined)[:3]]}); see {run_dir / 'ingest.log'}"
        )


# --------------------------------------------------------------------------- Orthanc


def run_orthanc_rest(data: Dataset, run_dir: Path, threads: int) -> Run:
    """Upload every file through `POST /instances` into a fresh Orthanc, timed."""
    with OrthancServer(workdir=run_dir) as orthanc:
        settle_disk()
        with PeakMemory(orthanc.pid) as memory:
            started = time.perf_counter()
            orthanc.upload_rest(data.files, threads=threads)
            seconds = time.perf_counter() - started
        orthanc.expect_instances(data.count)
    return Run(seconds, memory.rss, memory.pss)


def run_orthanc_storescu(data: Dataset, run_dir: Path, no_nagle: bool) -> Run:
    """Send the export folder with storescu into a fresh Orthanc, timed."""
    with OrthancServer(workdir=run_dir, dcmtk_no_nagle=no_nagle) as orthanc:
        settle_disk()
        with PeakMemory(orthanc.pid) as memory:
            started = time.perf_counter()
            orthanc.storescu(data.root)
            seconds = time.perf_counter() - started
        orthanc.expect_instances(data.count)
    return Run(seconds, memory.rss, memory.pss)


# --------------------------------------------------------------------------- plain copy


def run_copy(data: Dataset, run_dir: Path, threads: int, fsync: bool) -> Run:
    """Copy every file into a fresh folder (same relative paths), in this process."""

    def copy(source: Path) -> None:
        target = run_dir / source.relative_to(data.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        with source.open("rb") as fin, target.open("wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            if fsync:
                fout.flush()
                os.fsync(fout.fileno())

    run_dir.mkdir(parents=True)
    settle_disk()
    started = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="copy")
    try:
        for future in [pool.submit(copy, path) for path in data.files]:
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on failure, copy no further
    seconds = time.perf_counter() - started
    copied = files_below(run_dir)
    if len(copied) != data.count:
        raise BenchError(f"copy: {len(copied)} files copied, expected {data.count}")
    return Run(seconds)


# --------------------------------------------------------------------------- report


def fmt_mb(value: int) -> str:
    return f"{value / MB:.0f} MB"


def print_report(args: argparse.Namespace, data: Dataset, results: dict[str, Measurement]) -> None:
    """The table (median rates), every individual run, and our rate over each peer's."""
    n, size = data.count, data.total_bytes
    print()
    print(
        f"Ingest benchmark: {n} instances, {size / MB:.1f} MB "
        f"(MB = 10^6 bytes), {args.repeat} run(s) each, median reported"
    )
    print(
        f"machine: {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )
    width = max(len(m.label) for m in results.values())
    header = (
        f"{'method':<{width}} {'median s':>9} {'inst/s':>9} {'MB/s':>8} {'peak RSS':>10}  runs (s)"
    )
    print(header)
    print("-" * len(header))
    for m in results.values():
        rss = fmt_mb(int(statistics.median(r.rss for r in m.runs))) if m.has_rss else "-"
        runs = " ".join(f"{s:.3f}" for s in m.seconds)
        print(
            f"{m.label:<{width}} {m.median():>9.3f} {m.rate(n):>9.1f} {m.mb_per_s(size):>8.1f} "
            f"{rss:>10}  {runs}"
        )
    for m in results.values():
        if m.has_rss:
            print(
                f"peak memory of {m.label} ({m.rss_note}), per run: RSS sum "
                + " ".join(fmt_mb(r.rss) for r in m.runs)
                + "; PSS sum "
                + " ".join(fmt_mb(r.pss) for r in m.runs)
            )
    ours = results.get("ours")
    if ours is None:
        return
    print()
    print("ratios, ours / peer (instances/s, medians; > 1 means ours is faster):")
    for key, name in (
        ("rest", "Orthanc REST"),
        ("storescu", "Orthanc storescu"),
        ("copy", "plain copy"),
        ("copy_fsync", "plain copy + fsync"),
    ):
        if key in results:
            print(f"  ours / {name:<20} {ours.rate(n) / results[key].rate(n):6.3g}")


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--instances", type=int, default=1000, help="instances to generate (512x512 16-bit)"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per method; the median is reported"
    )
    parser.add_argument("--workers", type=int, default=2, help="our ingest workers")
    parser.add_argument(
        "--rest-threads", type=int, default=4, help="concurrent REST clients to Orthanc"
    )
    parser.add_argument(
        "--copy-threads",
        type=int,
        default=None,
        help="threads of the plain copy (default: --workers)",
    )
    parser.add_argument(
        "--dcmtk-nagle", action="store_true", help="keep Nagle on in DCMTK (Debian's default)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--skip-orthanc", action="store_true", help="no Orthanc (no root needed)")
    parser.add_argument("--skip-ours", action="store_true", help="no run of our ingest")
    parser.add_argument(INSIDE_FLAG, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.copy_threads is None:
        args.copy_threads = args.workers
    if min(args.instances, args.repeat, args.workers, args.rest_threads, args.copy_threads) < 1:
        parser.error("counts must be at least 1")
    return args


def preflight(args: argparse.Namespace) -> None:
    """Fail before any work when a tool, root or our CLI is missing."""
    problems: list[str] = []
    if not args.skip_orthanc:
        problems += missing_tools(REQUIRED_TOOLS)
        if os.geteuid() != 0 and not args.inside:
            problems.append(
                "measuring Orthanc needs root (a loopback-only network namespace); "
                "run as root or pass --skip-orthanc"
            )
    if not args.skip_ours and (why := ours_runnable()):
        problems.append(f"our ingest cannot run: {why} (pass --skip-ours to measure the rest)")
    if problems:
        sys.exit("bench_ingest: " + "\n  ".join(["cannot start:", *problems]))


def plan(args: argparse.Namespace, data: Dataset) -> list[Measurement]:
    """The methods to measure, in the order each repetition runs them."""
    methods: list[Measurement] = []
    if not args.skip_ours:
        methods.append(
            Measurement(
                "ours",
                f"ours: vna ingest --once ({args.workers} workers)",
                lambda d: run_ours(data, d, args.workers),
                rss_note="vna process tree",
            )
        )
    if not args.skip_orthanc:
        nagle = "Nagle on" if args.dcmtk_nagle else "TCP_NODELAY"
        methods.append(
            Measurement(
                "rest",
                f"Orthanc REST POST /instances ({args.rest_threads} thr)",
                lambda d: run_orthanc_rest(data, d, args.rest_threads),
                rss_note="Orthanc server",
            )
        )
        methods.append(
            Measurement(
                "storescu",
                f"Orthanc C-STORE, storescu (1 assoc, {nagle})",
                lambda d: run_orthanc_storescu(data, d, not args.dcmtk_nagle),
                rss_note="Orthanc server",
            )
        )
    threads = args.copy_threads
    methods.append(
        Measurement(
            "copy",
            f"plain copy, no fsync ({threads} thr)",
            lambda d: run_copy(data, d, threads, fsync=False),
        )
    )
    methods.append(
        Measurement(
            "copy_fsync",
            f"plain copy + fsync each file ({threads} thr)",
            lambda d: run_copy(data, d, threads, fsync=True),
        )
    )
    return methods


def benchmark(args: argparse.Namespace) -> None:
    """Generate the dataset, run every method `--repeat` times in turn, print the report."""
    if not args.skip_orthanc:
        assert_loopback_only()
    work = Path(tempfile.mkdtemp(prefix="vna-bench-ingest-"))
    print(f"work folder: {work}", flush=True)
    try:
        data = make_dataset(work / "dataset", args.instances)
        methods = plan(args, data)
        if not args.skip_ours:
            print("ours: " + " ".join(vna_command(Path("<run>/vna.toml"))), flush=True)
        for run in range(1, args.repeat + 1):
            for measurement in methods:
                run_dir = work / f"{measurement.key}-{run}"
                result = measurement.measure(run_dir)
                measurement.runs.append(result)
                extra = f", peak RSS {fmt_mb(result.rss)}" if result.rss else ""
                print(
                    f"run {run}/{args.repeat} {measurement.label}: {result.seconds:.3f} s, "
                    f"{data.count / result.seconds:.1f} inst/s{extra}",
                    flush=True,
                )
                remove(run_dir, args.keep)
        print_report(args, data, {m.key: m for m in methods})
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _interrupt(_signum: int, _frame: object) -> None:
    """SIGTERM behaves like Ctrl-C, so every `finally` stops its Orthanc and removes its files."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    preflight(args)
    if args.skip_orthanc or args.inside:
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        if args.skip_orthanc or args.inside:
            benchmark(args)
            return 0
        with LoopbackNamespace(f"vna-bench-{os.getpid()}") as namespace:
            print(f"running inside network namespace {namespace.name} (loopback only)", flush=True)
            return run_inside(
                namespace, [sys.executable, str(Path(__file__).resolve()), *raw, INSIDE_FLAG]
            )
    except (BenchError, PeerError) as exc:
        print(f"bench_ingest: FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_ingest: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
