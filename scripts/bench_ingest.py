"""Ingest benchmark: our archive side by side with Orthanc and a plain copy, in one run.

Why side by side: an ingest rate means little on its own; measured in the same
run, on the same disk and the same files, it can be read against a known peer
(Orthanc, through its REST API and through DICOM C-STORE from DCMTK's storescu)
and against the physical limits of the disk (a plain copy, without and with an
fsync of each file; the durable copy is what an archive must do at least).

What is timed:
- ours warm (the primary figure, like for like with an already running Orthanc):
  `vna --config CFG ingest` runs as a daemon, started untimed with an empty drop
  folder and proven ready by a warm-up file (one 16x16 instance) that it must
  take in first. The dataset was copied beforehand, untimed, next to the drop
  folder on the same file system; the clock starts when that copy is moved into
  the drop folder with one `rename` of its folder (the daemon learns of it from
  inotify) and stops when the drop folder holds no file and the index holds
  every instance (polled every 20 ms, read-only, counting rows above the
  highest id before the move, so the poll stays cheap at any index size).
- ours cold: wall time of `vna --config CFG ingest --once` as a subprocess,
  Python start-up (~0.9 s), index open and worker start included.
  For both, peak RSS is the sum over the process tree, sampled every 50 ms
  (PSS every 0.5 s; for the daemon, only while the clock runs).
- Orthanc REST: `POST /instances` of every file from `--rest-threads` clients,
  Orthanc already running (started with empty storage, not timed).
- Orthanc storescu: one `storescu +sd +r` run over the export folder, with
  Nagle's algorithm off in DCMTK on both ends (TCP_NODELAY=1, as Orthanc's own
  builds have it; see peers.orthanc.DCMTK_NO_NAGLE_ENV; `--dcmtk-nagle` keeps
  Debian's default, which stalls every C-STORE on loopback by ~40 ms).
- copy: every file copied into a fresh folder by `--copy-threads` threads
  (default: as many as our ingest workers), without and with fsync per file.
Each measurement starts with fresh storage, after an untimed `sync`, and is
repeated `--repeat` times in turn (ours warm, ours cold, REST, storescu, copy,
copy+fsync, then again), so drift of the machine spreads over all of them; the
median is reported. Before each measurement the page cache is written back and
dropped (as root; `drop_page_cache` says why) and the whole dataset read again
(untimed), so every measurement starts from the same memory and reads its source
from the page cache, and the figures compare writing, not reading: ours reads the
drop copy it was given just before, the copies and Orthanc's clients read the
dataset itself, and a copy of it evicted from the page cache took 0.9 s instead of
0.26 s. Each run's line prints the share of the dataset the page cache held
(`fincore`). Each run also records the machine's CPU time while its clock ran (all
CPUs, user and system from /proc/stat, kernel threads such as write-back
included), printed per instance: it tells a run slowed by the machine (the same
work at a higher CPU cost, such as a copy into memory that spends 4x the system
time) from a run that did more work, and how far a contender is from being
CPU-bound. Like the time, it holds what the machine does while a contender's
clock runs: the write-back a copy without fsync leaves for later is not in it,
and the memory sampler's share (for ours warm, the poll's too) is, about 1%.

Our index: SQLite by default (a fresh file per run), or PostgreSQL with
`--index-url postgresql+psycopg://...` (a fresh schema per run, dropped after it).
`--prefill N` starts each of our runs with N synthetic instances already in the
index (untimed; see peers.ours.BenchIndex), to show whether ingest slows down at
archive scale. Orthanc and the copies always start empty.

Network: Orthanc 1.10 cannot bind loopback only, so when Orthanc is measured the
script needs root: it creates a network namespace holding only `lo`, runs each
Orthanc measurement (Orthanc and its clients) inside it by re-executing itself
there with `--orthanc-child`, and deletes the namespace at the end, also on error
or Ctrl-C. Everything else (our ingest, the copies) runs here, in the caller's
network namespace: it opens no network port, and a PostgreSQL index on
127.0.0.1 stays reachable (inside the namespace it would not be).

Run from the repo root: `.venv/bin/python scripts/bench_ingest.py [--instances N] ...`.
The temporary folder is made by `tempfile` (set TMPDIR to put it on another disk).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
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
from peers.lifecycle import cleanup, stop_on_sigterm
from peers.orthanc import (
    REQUIRED_TOOLS,
    LoopbackNamespace,
    OrthancServer,
    PeerError,
    assert_loopback_only,
    missing_tools,
    run_inside,
)
from peers.ours import (
    BenchIndex,
    InstanceCounter,
    OursError,
    VnaProcess,
    bench_index,
    check_run,
    make_warmup,
    ours_runnable,
    vna_command,
    wait_ingested,
    wait_warm,
    write_config,
)

#: Hidden flag: run one Orthanc measurement (inside the namespace) and write its result.
CHILD_FLAG = "--orthanc-child"
#: Where an Orthanc child writes its Run, as JSON, in its run folder.
RESULT_FILE = "result.json"
#: Sampling period of the peak-RSS sampler; short enough to catch a batch's peak.
RSS_SAMPLE_SECONDS = 0.05
#: Every this many RSS samples, the process tree is listed again and PSS is sampled. Both
#: are costly (listing reads every process's stat, PSS walks each process's page tables):
#: at every sample they took 4.6 ms of CPU per 50 ms from the machine being measured.
FULL_SAMPLE_EVERY = 10
#: Instances per series in the generated dataset (a typical thin-slice CT series).
PER_SERIES = 250
MB = 1_000_000
#: Free space wanted beyond the runs' outputs before they are all kept until the end.
DISK_MARGIN = 1.1


class BenchError(RuntimeError):
    """A measurement did not do what it claims (wrong count, non-zero exit, ...)."""


# --------------------------------------------------------------------------- measuring


class PeakMemory:
    """Peaks of the summed RSS and PSS of a process and all its descendants, sampled in a thread.

    Summing the tree matters because our ingest runs a pool of worker processes.
    RSS summed over forked processes counts their shared pages once per process,
    so the PSS sum (shared pages divided among their sharers) is kept beside it as
    the figure that adds up. RSS is sampled every `period` (a cheap read of statm);
    the tree is listed again and PSS sampled every FULL_SAMPLE_EVERY periods, so the
    sampler does not take the CPU of what it measures. A sample can miss a spike
    shorter than its period.
    """

    def __init__(self, pid: int, period: float = RSS_SAMPLE_SECONDS) -> None:
        self.pid = pid
        self.period = period
        self.rss = 0
        self.pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    @staticmethod
    def _tree(root: psutil.Process) -> list[psutil.Process]:
        try:
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    @staticmethod
    def _sample(tree: list[psutil.Process], full: bool) -> tuple[int, int]:
        rss = pss = 0
        for proc in tree:
            with contextlib.suppress(psutil.Error):  # exited between listing and sampling
                if full:
                    info = proc.memory_full_info()
                    rss += info.rss
                    pss += info.pss
                else:
                    rss += proc.memory_info().rss
        return rss, pss

    def _run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        tree: list[psutil.Process] = []
        samples = 0
        while not self._stop.is_set():
            full = samples % FULL_SAMPLE_EVERY == 0
            if full:
                tree = self._tree(root)
            rss, pss = self._sample(tree, full)
            self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)
            samples += 1
            self._stop.wait(self.period)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def machine_cpu() -> tuple[float, float]:
    """CPU seconds the whole machine spent so far, all CPUs: (user, system), from /proc/stat.

    System counts interrupts and kernel threads too (write-back, the file system's
    own work): much of what storing files costs is spent there, by whoever wrote.
    (0, 0) where /proc/stat is missing (not Linux).
    """
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    user, nice, system, _idle, _iowait, irq, softirq = (fields + [0] * 7)[:7]
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice) / tick, (system + irq + softirq) / tick


class Timed:
    """Wall seconds and the machine's CPU seconds (`machine_cpu`) of the `with` block.

    The machine's CPU, not the contender's: it takes in the kernel's work on the
    contender's behalf, and what else ran (for ours warm, this script's poll), the
    same way for every contender.
    """

    seconds = cpu_user = cpu_system = 0.0
    _stopped = False

    def __enter__(self) -> Timed:
        self._cpu = machine_cpu()
        self._started = time.perf_counter()
        return self

    def stop(self) -> None:
        """Stop the clock before the block ends (a second call changes nothing)."""
        if not self._stopped:
            self.seconds = time.perf_counter() - self._started
            user, system = machine_cpu()
            self.cpu_user, self.cpu_system = user - self._cpu[0], system - self._cpu[1]
            self._stopped = True

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Run:
    """One run of a method: wall seconds, peak memory in bytes when sampled (else 0), and
    the machine's CPU seconds while it ran (`Timed`)."""

    seconds: float
    rss: int = 0
    pss: int = 0
    cpu_user: float = 0.0
    cpu_system: float = 0.0

    @classmethod
    def of(cls, timed: Timed, memory: PeakMemory | None = None) -> Run:
        rss, pss = (memory.rss, memory.pss) if memory is not None else (0, 0)
        return cls(timed.seconds, rss, pss, timed.cpu_user, timed.cpu_system)

    @property
    def cpu(self) -> float:
        return self.cpu_user + self.cpu_system


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


def warm_source(data: Dataset) -> float | None:
    """Read the whole dataset into the page cache; return the share of it the page cache
    then holds, or None where `fincore` (util-linux) is missing."""
    buf = bytearray(1 << 20)
    for path in data.files:
        with path.open("rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass
    return page_cache_share(data.files)


def page_cache_share(files: Sequence[Path]) -> float | None:
    fincore = shutil.which("fincore")
    if fincore is None:
        return None
    resident = size = 0
    for i in range(0, len(files), 500):
        command = [fincore, "--bytes", "--noheadings", "--raw", "--output", "RES,SIZE"]
        out = subprocess.run(
            [*command, *map(str, files[i : i + 500])], capture_output=True, text=True, check=True
        ).stdout
        for line in out.splitlines():
            res, total = (int(v) for v in line.split())
            # Resident pages are whole pages: a file's last one counts past its end.
            resident, size = resident + min(res, total), size + total
    return resident / size if size else None


def settle_disk() -> None:
    """Flush dirty pages of the previous step, so it is not billed to the next one."""
    os.sync()


#: Memory `prime_memory` writes and frees before the first measurement, in datasets: a run
#: takes up to three times the dataset (ours: its drop copy, its archive and what it reads).
PRIME_DATASETS = 3


def prime_memory(work: Path, data: Dataset) -> None:
    """Write, then remove, a scratch file of PRIME_DATASETS times the dataset (untimed).

    From the second round on, every measurement starts with the page cache of the round
    before just dropped, memory the machine has written recently; the first round would
    otherwise start with little of it, and its first measurement (ours warm) wrote into
    memory not used since it was freed: it was our slowest run in each of three runs of
    seven (0.96 to 1.09 s, the others 0.82 to 0.99 s). Removed before it is written back,
    the file costs no disk.
    """
    scratch = work / "prime-memory"
    chunk = bytes(8 << 20)
    try:
        with scratch.open("wb") as fh:
            for _ in range(PRIME_DATASETS * data.total_bytes // len(chunk) + 1):
                fh.write(chunk)
    finally:
        scratch.unlink(missing_ok=True)


#: Where the kernel takes the order to drop clean page cache (root only).
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def drop_page_cache() -> bool:
    """Write back, then drop the page cache (and reclaimable slab); False if not allowed.

    Why before every measurement: every run's output is kept until the end (see
    `outputs_fit`), so the page cache grows by the dataset's size per run, and on the
    development VM writing into memory not used since it was freed there costs up to
    four times the CPU: a plain copy took 0.2 s with the cache dropped before it, and
    0.7 to 0.9 s from the fourth run on without. It slowed the copies and Orthanc,
    which take fresh memory for all they write, far more than our ingest, which frees
    each drop file as it goes; kept, it made our ratios look better than they are. The
    dataset is read into the page cache again right after.
    """
    settle_disk()
    try:
        DROP_CACHES.write_text("3")
    except OSError:
        return False
    return True


def outputs_fit(work: Path, data: Dataset, runs: int, extra: int = 0) -> bool:
    """Whether the output of every run fits on the disk at once (with a margin).

    Deleting a run's output right before the next run is measured bills part of
    the deletion (journal commit, discards on a `discard` mount) to that run: on
    the development VM (ext4 with `discard`) it made copies with fsync measure
    faster than copies without. So outputs are kept until the end when they fit.
    `extra` is what the runs keep besides their copy of the dataset (index files).
    """
    needed = (data.total_bytes * (runs + 1) + extra) * DISK_MARGIN  # +1: our drop copy
    return shutil.disk_usage(work).free > needed


def filesystem_of(path: Path) -> str:
    """Device, type and mount options of the file system holding `path`, for the report."""
    parts = [p for p in psutil.disk_partitions(all=True) if path.is_relative_to(p.mountpoint)]
    if not parts:
        return "unknown file system"
    best = max(parts, key=lambda part: len(part.mountpoint))
    return f"{best.device} {best.fstype} on {best.mountpoint} ({best.opts})"


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


def dataset_at(folder: Path) -> Dataset:
    """The dataset the parent generated, as an Orthanc child finds it."""
    files = sorted(files_below(folder))
    return Dataset(root=folder, files=files, total_bytes=sum(p.stat().st_size for p in files))


def files_below(folder: Path) -> list[Path]:
    """Every regular file below `folder`."""
    return [path for path in folder.rglob("*") if path.is_file()]


# --------------------------------------------------------------------------- ours


def run_ours_warm(data: Dataset, run_dir: Path, workers: int, index: BenchIndex) -> Run:
    """Move the dataset into the drop folder of an already running daemon; time until indexed."""
    run_dir.mkdir(parents=True)
    staged = run_dir / "incoming" / "export"
    shutil.copytree(data.root, staged)  # same file system as the drop folder: a rename moves it
    warmup = make_warmup(run_dir / "incoming" / "warmup")
    drop = run_dir / "drop"
    drop.mkdir()
    url = index.for_run(run_dir)
    try:
        config = write_config(run_dir, url, workers)
        with VnaProcess(vna_command(config, once=False), run_dir) as vna:
            wait_warm(vna, warmup, drop, run_dir)
            with InstanceCounter(url) as counter:
                base = counter.max_id()
                settle_disk()
                with PeakMemory(vna.process.pid) as memory, Timed() as timed:
                    os.rename(staged, drop / staged.name)
                    wait_ingested(vna, counter, base, data.count, drop)
                total = counter.total()
            code = vna.stop()
            if code != 0:
                raise vna.failure(f"exited with code {code} after SIGTERM")
        check_run(run_dir, data.count + 1, total, index.prefill + data.count + 1)
    finally:
        index.release(url)
    return Run.of(timed, memory)


def load_program(run_dir: Path, workers: int, index: BenchIndex) -> None:
    """Run `vna ingest --once` untimed over one small file, with an index of the same kind
    and an archive of its own, so that the timed start-up reads Python's and our code (a
    worker's included, and the database driver's) from the page cache, as it did before
    `drop_page_cache`: start-up is what ours cold includes, not a disk read of it."""
    folder = run_dir / "program-warmup"
    make_warmup(folder / "drop" / "warmup")
    url = index.scratch(folder)
    try:
        config = write_config(folder, url, workers)
        with VnaProcess(vna_command(config, once=True), folder) as vna:
            code = vna.wait()
            if code != 0:
                raise vna.failure(f"the untimed warm-up run exited with code {code}")
    finally:
        index.release(url)


def run_ours_cold(data: Dataset, run_dir: Path, workers: int, index: BenchIndex) -> Run:
    """Ingest a fresh copy of the dataset with `vna ingest --once`, start-up included, timed."""
    run_dir.mkdir(parents=True)
    load_program(run_dir, workers, index)
    shutil.copytree(data.root, run_dir / "drop")
    url = index.for_run(run_dir)
    try:
        config = write_config(run_dir, url, workers)
        settle_disk()
        with Timed() as timed, VnaProcess(vna_command(config, once=True), run_dir) as vna:
            with PeakMemory(vna.process.pid) as memory:
                code = vna.wait()
            timed.stop()
            if code != 0:
                raise vna.failure(f"exited with code {code}")
        with InstanceCounter(url, readonly=False) as counter:
            total = counter.total()
        check_run(run_dir, data.count, total, index.prefill + data.count)
    finally:
        index.release(url)
    return Run.of(timed, memory)


# --------------------------------------------------------------------------- Orthanc


def run_orthanc_rest(data: Dataset, run_dir: Path, threads: int) -> Run:
    """Upload every file through `POST /instances` into a fresh Orthanc, timed."""
    with OrthancServer(workdir=run_dir) as orthanc:
        settle_disk()
        with PeakMemory(orthanc.pid) as memory, Timed() as timed:
            orthanc.upload_rest(data.files, threads=threads)
        orthanc.expect_instances(data.count)
    return Run.of(timed, memory)


def run_orthanc_storescu(data: Dataset, run_dir: Path, no_nagle: bool) -> Run:
    """Send the export folder with storescu into a fresh Orthanc, timed."""
    with OrthancServer(workdir=run_dir, dcmtk_no_nagle=no_nagle) as orthanc:
        settle_disk()
        with PeakMemory(orthanc.pid) as memory, Timed() as timed:
            orthanc.storescu(data.root)
        orthanc.expect_instances(data.count)
    return Run.of(timed, memory)


def orthanc_child(args: argparse.Namespace) -> int:
    """Inside the namespace: one Orthanc measurement, its Run written to RESULT_FILE."""
    run_dir = Path(args.run_dir)
    data = dataset_at(Path(args.dataset))
    if args.orthanc_child == "rest":
        run = run_orthanc_rest(data, run_dir, args.rest_threads)
    else:
        run = run_orthanc_storescu(data, run_dir, not args.dcmtk_nagle)
    (run_dir / RESULT_FILE).write_text(json.dumps(dataclasses.asdict(run)))
    return 0


def run_orthanc_inside(
    namespace: LoopbackNamespace,
    method: str,
    data: Dataset,
    run_dir: Path,
    args: argparse.Namespace,
) -> Run:
    """Run one Orthanc measurement in the loopback-only namespace (this script, re-executed)."""
    run_dir.mkdir(parents=True)
    argv = [
        sys.executable, str(Path(__file__).resolve()),
        CHILD_FLAG, method,
        "--run-dir", str(run_dir),
        "--dataset", str(data.root),
        "--rest-threads", str(args.rest_threads),
        *(["--dcmtk-nagle"] if args.dcmtk_nagle else []),
    ]  # fmt: skip
    code = run_inside(namespace, argv)
    if code == 130:
        raise KeyboardInterrupt
    if code != 0:
        raise BenchError(f"Orthanc {method} run failed (exit code {code}; its message is above)")
    result = json.loads((run_dir / RESULT_FILE).read_text())
    return Run(**{f.name: result[f.name] for f in dataclasses.fields(Run)})


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
    with Timed() as timed:
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="copy")
        try:
            for future in [pool.submit(copy, path) for path in data.files]:
                future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # on failure, copy no further
    copied = files_below(run_dir)
    if len(copied) != data.count:
        raise BenchError(f"copy: {len(copied)} files copied, expected {data.count}")
    return Run.of(timed)


# --------------------------------------------------------------------------- report


def fmt_mb(value: int) -> str:
    return f"{value / MB:.0f} MB"


PEERS = (
    ("rest", "Orthanc REST"),
    ("storescu", "Orthanc storescu"),
    ("copy", "plain copy"),
    ("copy_fsync", "plain copy + fsync"),
)


def print_report(args: argparse.Namespace, data: Dataset, results: dict[str, Measurement]) -> None:
    """The table (median rates), every individual run, and our rates over each peer's."""
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
    if args.prefill and not args.skip_ours:
        print(
            f"prefill: each run of ours starts with {args.prefill:,} synthetic instances in its "
            "index; Orthanc and the copies start empty (Orthanc is not prefilled)"
        )
    width = max(len(m.label) for m in results.values())
    header = (
        f"{'method':<{width}} {'median s':>9} {'inst/s':>9} {'MB/s':>8} {'peak RSS':>10} "
        f"{'CPU ms/inst':>11} {'sys':>4}  runs (s)"
    )
    print(header)
    print("-" * len(header))
    for m in results.values():
        rss = fmt_mb(int(statistics.median(r.rss for r in m.runs))) if m.has_rss else "-"
        runs = " ".join(f"{s:.3f}" for s in m.seconds)
        cpu = statistics.median(r.cpu for r in m.runs)
        system = statistics.median(r.cpu_system / r.cpu if r.cpu else 0.0 for r in m.runs)
        print(
            f"{m.label:<{width}} {m.median():>9.3f} {m.rate(n):>9.1f} {m.mb_per_s(size):>8.1f} "
            f"{rss:>10} {cpu / n * 1000:>11.2f} {system:>4.0%}  {runs}"
        )
    print(
        f"CPU ms/inst: the machine's CPU time ({os.cpu_count()} CPUs, user + system, kernel "
        "threads included) while the clock ran, per instance, median; sys: its system share"
    )
    for m in results.values():
        print(
            f"CPU ms/inst of {m.label}, per run: "
            + " ".join(f"{r.cpu / n * 1000:.2f}" for r in m.runs)
        )
    for m in results.values():
        if m.has_rss:
            print(
                f"peak memory of {m.label} ({m.rss_note}), per run: RSS sum "
                + " ".join(fmt_mb(r.rss) for r in m.runs)
                + "; PSS sum "
                + " ".join(fmt_mb(r.pss) for r in m.runs)
            )
    peers = [(key, name) for key, name in PEERS if key in results]
    ours = [(key, name) for key, name in (("warm", "warm"), ("cold", "cold")) if key in results]
    if not ours or not peers:
        return
    print()
    print("ratios, ours / peer (instances/s, medians; > 1 means ours is faster):")
    for key, name in ours:
        primary = " (primary)" if key == "warm" else ""
        print(f"  ours {name}{primary}:")
        for peer, peer_name in peers:
            ratio = results[key].rate(n) / results[peer].rate(n)
            print(f"    ours {name} / {peer_name:<20} {ratio:6.3g}")


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
        "--prefill",
        type=int,
        default=0,
        help="synthetic instances already in our index at the start of each run (untimed)",
    )
    parser.add_argument(
        "--index-url",
        default="",
        help="our index on PostgreSQL (postgresql+psycopg://...; a fresh schema per run); "
        "default: a fresh SQLite file per run",
    )
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
    parser.add_argument(
        "--skip-cold", action="store_true", help="no cold run of ours (vna ingest --once)"
    )
    parser.add_argument(CHILD_FLAG, choices=("rest", "storescu"), help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.copy_threads is None:
        args.copy_threads = args.workers
    if min(args.instances, args.repeat, args.workers, args.rest_threads, args.copy_threads) < 1:
        parser.error("counts must be at least 1")
    if args.prefill < 0:
        parser.error("--prefill must not be negative")
    if args.index_url and not args.index_url.startswith("postgresql+psycopg://"):
        parser.error("--index-url: a postgresql+psycopg:// URL (SQLite is the default)")
    return args


def preflight(args: argparse.Namespace) -> None:
    """Fail before any work when a tool, root or our CLI is missing."""
    problems: list[str] = []
    if not args.skip_orthanc:
        problems += missing_tools(REQUIRED_TOOLS)
        if os.geteuid() != 0:
            problems.append(
                "measuring Orthanc needs root (a loopback-only network namespace); "
                "run as root or pass --skip-orthanc"
            )
    if not args.skip_ours and (why := ours_runnable()):
        problems.append(f"our ingest cannot run: {why} (pass --skip-ours to measure the rest)")
    if problems:
        sys.exit("bench_ingest: " + "\n  ".join(["cannot start:", *problems]))


def plan(
    args: argparse.Namespace,
    data: Dataset,
    index: BenchIndex,
    namespace: LoopbackNamespace | None,
) -> list[Measurement]:
    """The methods to measure, in the order each repetition runs them."""
    methods: list[Measurement] = []
    if not args.skip_ours:
        where = f"{args.workers} workers, {index.describe()}"
        methods.append(
            Measurement(
                "warm",
                f"ours warm: vna ingest daemon ({where})",
                lambda d: run_ours_warm(data, d, args.workers, index),
                rss_note="vna process tree, while the clock ran",
            )
        )
        if not args.skip_cold:
            methods.append(
                Measurement(
                    "cold",
                    f"ours cold: vna ingest --once, start-up included ({where})",
                    lambda d: run_ours_cold(data, d, args.workers, index),
                    rss_note="vna process tree",
                )
            )
    if namespace is not None:
        nagle = "Nagle on" if args.dcmtk_nagle else "TCP_NODELAY"
        methods.append(
            Measurement(
                "rest",
                f"Orthanc REST POST /instances ({args.rest_threads} thr)",
                lambda d: run_orthanc_inside(namespace, "rest", data, d, args),
                rss_note="Orthanc server",
            )
        )
        methods.append(
            Measurement(
                "storescu",
                f"Orthanc C-STORE, storescu (1 assoc, {nagle})",
                lambda d: run_orthanc_inside(namespace, "storescu", data, d, args),
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
    work = Path(tempfile.mkdtemp(prefix="vna-bench-ingest-"))
    print(f"work folder: {work}", flush=True)
    with contextlib.ExitStack() as stack:
        stack.callback(cleanup, work, args.keep)  # runs last: after the index and the namespace
        index = stack.enter_context(bench_index(args.index_url, args.prefill, work))
        namespace = None
        if not args.skip_orthanc:
            namespace = stack.enter_context(LoopbackNamespace(f"vna-bench-{os.getpid()}"))
            print(
                f"Orthanc runs inside network namespace {namespace.name} (loopback only)",
                flush=True,
            )
        data = make_dataset(work / "dataset", args.instances)
        if not args.skip_ours:
            index.prepare()
        methods = plan(args, data, index, namespace)
        ours_runs = sum(m.key in ("warm", "cold") for m in methods) * args.repeat
        extra = index.bytes_per_run() * ours_runs
        defer = args.keep or outputs_fit(work, data, args.repeat * len(methods), extra)
        print(f"file system: {filesystem_of(work)}", flush=True)
        if not defer:
            print(
                "note: not enough free space to keep every run's output until the end; "
                "deleting each run's output after it (the deletion may slow the next run)",
                flush=True,
            )
        if not args.skip_ours:
            print(f"ours: index {index.describe()}", flush=True)
            for once in (False, True):
                print("ours: " + " ".join(vna_command(Path("<run>/vna.toml"), once)), flush=True)
        prime_memory(work, data)
        dropped = drop_page_cache()
        if not dropped:
            print(
                f"note: cannot write {DROP_CACHES} (not root?): the page cache is not dropped "
                "before each measurement, and the runs' kept outputs may slow later runs",
                flush=True,
            )
        for run in range(1, args.repeat + 1):
            for measurement in methods:
                run_dir = work / f"{measurement.key}-{run}"
                if dropped:
                    drop_page_cache()
                cached = warm_source(data)
                result = measurement.measure(run_dir)
                measurement.runs.append(result)
                extra_text = f", machine CPU {result.cpu:.2f} s ({result.cpu_system:.2f} s system)"
                if result.rss:
                    extra_text += f", peak RSS {fmt_mb(result.rss)}"
                if cached is not None:
                    extra_text += f", source {cached:.0%} in the page cache before"
                print(
                    f"run {run}/{args.repeat} {measurement.label}: {result.seconds:.3f} s, "
                    f"{data.count / result.seconds:.1f} inst/s{extra_text}",
                    flush=True,
                )
                if not defer:
                    shutil.rmtree(run_dir, ignore_errors=True)
        print_report(args, data, {m.key: m for m in methods})


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    stop_on_sigterm()
    try:
        if args.orthanc_child:
            assert_loopback_only()
            return orthanc_child(args)
        preflight(args)
        benchmark(args)
        return 0
    except (BenchError, OursError, PeerError) as exc:
        print(f"bench_ingest: FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_ingest: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
