"""DICOMweb benchmark: our gateway (`vna serve`) side by side with Orthanc's DICOMweb plugin.

Why side by side: a latency or a rate means little on its own; measured in the
same run, on the same instances, by the same client code, it can be read against
the server a site would otherwise put in front of a viewer (Orthanc 1.10 with its
DICOMweb plugin, Debian `orthanc` and `orthanc-dicomweb`), and the retrieve rate
against reading the same files in one thread (from disk, and from the page cache).

The dataset (generated with `vna.sample`, 512x512 16-bit CT-like instances):
- one study of 2 series of `--per-series` (500) instances: the series of every
  per-series measure is its first;
- `--extra-instances` (200) more in studies of 2 series of 50, so searches have
  several studies (and patients: Müller^Hans appears in three studies);
- one study with one series of `--big-series` (1000, ~525 MB) instances for the
  memory measure (0: use the 500-instance series).
Ours takes it in with `vna ingest --once` (fresh archive, SQLite index) and serves
it with `vna serve` (uvicorn, one process); Orthanc (fresh storage, default
settings, StorageCompression off) gets the same files through `POST /instances`.
The gateway's metadata preparer runs in the background after `vna serve` starts:
the measures wait until `instance_metadata` holds every instance, so metadata
figures of ours are warm ones; the first request of each server is timed too.

What is measured, each run (`--repeat`, default 3; medians over the runs are reported):
1. QIDO-RS study search: `PatientName=Müller*` as a browser sends it
   (`M%C3%BCller*`), fully percent-encoded (`M%C3%BCller%2A`), an ASCII wildcard
   (`Nguyen*`), an exact Patient ID, and OHIF's study list query; `--qido-requests`
   (200) each, p50/p95, and how many studies came back. A latency is compared only
   where both servers found as many studies (Orthanc's plugin finds nothing for
   `Müller*`, and finding nothing is not the same work).
2. Series metadata of the 500-instance series: `--metadata-requests` (20), p50/p95.
3. Series retrieve (`multipart/related; type="application/dicom"; transfer-syntax=*`),
   streamed and counted, MB/s; beside it, reading our 500 archived files from the
   layout in one thread, and the same bytes as one file from
   `python -m http.server` (what plain HTTP moves on this machine, same client).
   Twice: first from disk (as root, `/proc/sys/vm/drop_caches` is written before each
   contender, after a sync, so every one of them reads its files' and its index's data
   from the disk; file metadata stays cached), then warm (every stored file and index of
   both servers is read once, so the page cache holds all of them for every contender).
   The target (a share of reading the same bytes from disk) is judged on the first;
   the warm share is printed beside it.
4. Single frame (`.../frames/1`, octet-stream, `transfer-syntax=*`): `--frame-requests`
   (200) across the instances of the series, p50/p95.
5. Rendered (`.../rendered`, image/jpeg): `--rendered-requests` (100), p50/p95.
6. Load: `--load-clients` (50) concurrent clients (asyncio, one httpx.AsyncClient
   with as many keep-alive connections) for `--load-seconds` (60), each looping over
   study search (OHIF's list),
   series search (OHIF's), instance metadata and frame 1, across every instance of the
   archive: requests/s, errors, p50/p95; CPU used by server and client beside.
7. Memory: `--memory-clients` (10) clients retrieve the big series at once, while
   the server's process tree's RSS is sampled every 50 ms; peak RSS reported.
Sequential measures use one keep-alive `http.client` connection per server (httpx's
sync client cannot stream faster than ~500 MB/s here, see `Http`), the same code for
both; URLs are percent-encoded as httpx (and browsers) do. A response other than
200, or a body that is not what was asked for (a wrong part count, a short frame),
counts as an error and is printed.

Network: Orthanc 1.10 cannot bind loopback only. Unless `--skip-orthanc`, the
script needs root: it creates a network namespace holding only `lo` and runs
the whole measurement (both servers and all clients) inside it by re-executing
itself there; ours needs only SQLite and local files. Run from the repo root:
`.venv/bin/python scripts/bench_gateway.py [--repeat 3] ...`. The temporary
folder is made by `tempfile` (set TMPDIR to put it on another disk).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from bench_ingest import MB, PeakMemory, filesystem_of
from peers.gateway import (
    DICOMWEB_ROOT,
    LoadedArchive,
    ServeProcess,
    check_log_clean,
    load_archive,
    wait_metadata_prepared,
    wait_serving,
)
from peers.lifecycle import cleanup, stop_on_sigterm
from peers.orthanc import (
    DICOMWEB_PLUGIN,
    LOOPBACK,
    LoopbackNamespace,
    OrthancServer,
    PeerError,
    assert_loopback_only,
    free_port,
    missing_tools,
    run_inside,
)
from peers.ours import OursError, ours_runnable

#: Hidden flag: the measurement itself, run inside the loopback-only namespace.
INSIDE_FLAG = "--inside"
#: Where Debian's DICOMweb plugin answers (its default "Root").
ORTHANC_DICOMWEB_ROOT = "/dicom-web"
OURS, ORTHANC, DISK, PLAIN = "ours", "Orthanc", "disk", "plain"
ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ACCEPT_FRAME = "multipart/related; type=application/octet-stream; transfer-syntax=*"
ACCEPT_JSON = "application/dicom+json"
ACCEPT_JPEG = "image/jpeg"
#: Every client asks for bodies as they are. Orthanc compresses answers for clients that accept
#: gzip or deflate (HttpCompressionEnabled, on by default; browsers send it): measured with
#: httpx's default `Accept-Encoding: gzip, deflate`, Orthanc's frames took ~57 ms instead of ~3.
#: Ours never compresses. Same bytes for both: identity (http.client's default).
ACCEPT_ENCODING = "identity"
#: OHIF 3.13's study list and series list (DESIGN.md, "What a real viewer asks").
OHIF_STUDY_LIST = (
    "/studies?limit=101&offset=0&fuzzymatching=false"
    "&includefield=00081030%2C00080060%2C00080090%2C00100030"
)
OHIF_SERIES_LIST = "/series?includefield=00080021%2C00080031%2C0008103E%2C00200011"
#: The study searches of measure 1: key, label, query.
QIDO_QUERIES = (
    ("qido-raw", "PatientName=Müller* (browser-encoded)", "/studies?PatientName=Müller*"),
    ("qido-enc", "PatientName=M%C3%BCller%2A", "/studies?PatientName=M%C3%BCller%2A"),
    ("qido-ascii", "PatientName=Nguyen*", "/studies?PatientName=Nguyen*"),
    ("qido-id", "PatientID=P0100000", "/studies?PatientID=P0100000"),
    ("qido-ohif", "OHIF study list", OHIF_STUDY_LIST),
)
#: Study searches sent once to each server (untimed), to show which matching each supports.
QIDO_PROBES = (
    "/studies?PatientName=Müller^Hans",
    "/studies?PatientName=müller*",
    "/studies?PatientName=M*",
    "/studies?PatientName=Nguyen*",
    "/studies?PatientName=nguyen*",
    "/studies?PatientName=Ngu?en^Thi",
    "/studies?PatientName=*",
    "/studies?PatientID=P0100000",
    "/studies?00100020=P0100000",
)
#: The measures, in the order each run makes them (`--only` picks some).
MEASURES = ("qido", "metadata", "retrieve", "frames", "rendered", "load", "memory")
#: Targets printed next to the figures.
TARGET_SPEEDUP = 3.0
TARGET_DISK_SHARE = 0.70
TARGET_RSS = 300 * MB
HTTP_TIMEOUT = 300.0
CHUNK = 1 << 20
#: The plain-HTTP reference's file (the series' archived files, concatenated).
PLAIN_FILE = "series.bin"
#: Clients reuse a connection only while it was idle less than this: below both servers' idle
#: timeouts (uvicorn 5 s; Orthanc's CivetWeb 0.5 s), so no request races a server closing an
#: idle connection (with httpx's default of 5 s, Orthanc answered a few load requests with
#: "Server disconnected without sending a response").
KEEPALIVE_REUSE = 0.25
#: Written "1" after a sync, the kernel drops every clean page of the page cache.
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
#: The retrieve measures: key, how the page cache stood.
RETRIEVES = (
    ("retrieve-cold", "from disk: page cache dropped before each"),
    ("retrieve", "page cache warmed for all"),
)
#: One frame of the sample generator's default image (512x512, 16 bits allocated).
FRAME_BYTES = 512 * 512 * 2


class BenchError(RuntimeError):
    """A measurement could not run (a server did not start, the data is not as expected)."""


# --------------------------------------------------------------------------- figures


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear-interpolated percentile of `values` (pct in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Figures:
    """One measure on one server over all runs: named figures per run, and what came back."""

    values: dict[str, list[float]] = field(default_factory=dict)
    seen: Counter[str] = field(default_factory=Counter)
    errors: int = 0

    def add(self, **figures: float) -> None:
        for name, value in figures.items():
            self.values.setdefault(name, []).append(value)

    def median(self, name: str) -> float:
        runs = self.values.get(name)
        return statistics.median(runs) if runs else float("nan")

    def runs(self, name: str, scale: float = 1.0, fmt: str = "{:.1f}") -> str:
        return " ".join(fmt.format(v * scale) for v in self.values.get(name, []))


Results = dict[str, dict[str, Figures]]


def figures(results: Results, key: str, server: str) -> Figures:
    return results.setdefault(key, {}).setdefault(server, Figures())


def add_latencies(fig: Figures, seconds: Sequence[float]) -> None:
    fig.add(p50=percentile(seconds, 50), p95=percentile(seconds, 95))


# --------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class Dataset:
    """The generated export (one folder per part) and the UIDs the measures address."""

    root: Path
    files: list[Path]
    total_bytes: int
    study: str
    series: str
    big_study: str
    big_series: str
    big_count: int

    @property
    def count(self) -> int:
        return len(self.files)


def first_uids(path: Path) -> tuple[str, str]:
    """Study and series UID of a generated file (the first file is series 1 of study 1)."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


def make_dataset(root: Path, args: argparse.Namespace) -> Dataset:
    """Generate the three parts of the export (not timed)."""
    from vna.sample import SampleSpec, generate

    started = time.monotonic()
    main = generate(
        root / "main",
        SampleSpec(instances=2 * args.per_series, per_series=args.per_series, seed=1),
    )
    files = list(main)
    if args.extra_instances:
        files += generate(
            root / "extra", SampleSpec(instances=args.extra_instances, per_series=50, seed=2)
        )
    study, series = first_uids(main[0])
    big_study, big_series, big_count = study, series, args.per_series
    if args.big_series:
        big = generate(
            root / "big",
            SampleSpec(
                instances=args.big_series, per_series=args.big_series, series_per_study=1, seed=3
            ),
        )
        files += big
        (big_study, big_series), big_count = first_uids(big[0]), args.big_series
    total = sum(path.stat().st_size for path in files)
    print(
        f"generated {len(files)} instances, {total / MB:.1f} MB in {root} "
        f"({time.monotonic() - started:.1f} s)",
        flush=True,
    )
    return Dataset(root, sorted(files), total, study, series, big_study, big_series, big_count)


@dataclass(frozen=True)
class Catalogue:
    """UIDs from our index that requests are made of: the series' instances, and everything."""

    series_sops: list[str]
    instances: list[tuple[str, str, str]]  # (study, series, sop) of the whole archive


def catalogue(archive: LoadedArchive, data: Dataset) -> Catalogue:
    conn = sqlite3.connect(f"file:{archive.index_path}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT st.study_uid, se.series_uid, i.sop_uid FROM instances i "
            "JOIN series se ON i.series_pk = se.id JOIN studies st ON se.study_pk = st.id "
            "ORDER BY st.id, se.series_number, i.instance_number"
        ).fetchall()
    finally:
        conn.close()
    instances = [(str(a), str(b), str(c)) for a, b, c in rows]
    sops = [sop for _st, se, sop in instances if se == data.series]
    return Catalogue(sops, instances)


# --------------------------------------------------------------------------- servers


@dataclass(frozen=True)
class Server:
    """A DICOMweb server under test: its name, root URL and the process whose tree it is."""

    name: str
    root: str
    pid: int
    storage: list[Path]  # every stored file and its index, read into the page cache when warmed

    def series_url(self, data: Dataset) -> str:
        return f"{self.root}/studies/{data.study}/series/{data.series}"

    def instance_url(self, study: str, series: str, sop: str) -> str:
        return f"{self.root}/studies/{study}/series/{series}/instances/{sop}"


def orthanc_stored_files(orthanc: OrthancServer) -> list[Path]:
    return [
        p for d in ("storage", "index") for p in (orthanc.workdir / d).rglob("*") if p.is_file()
    ]


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its descendants so far."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for proc in tree:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def tree_rss(pid: int) -> int:
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in tree:
        with contextlib.suppress(psutil.Error):
            total += int(proc.memory_info().rss)
    return total


# --------------------------------------------------------------------------- client


@dataclass(frozen=True)
class Reply:
    """A response read whole: status, Content-Type and body."""

    status: int
    content_type: str
    body: bytes

    def json_count(self) -> int:
        """Entries of a JSON array body, -1 when it is not one."""
        try:
            value = json.loads(self.body)
        except ValueError:
            return -1
        return len(value) if isinstance(value, list) else -1

    def describe(self, what: str = "") -> str:
        """A short account for the `seen` counter."""
        text = f"HTTP {self.status}"
        if what:
            text += f", {what}"
        elif self.status != 200:
            text += f" {self.body[:80]!r}"
        return text


def request_target(url: str) -> str:
    """Path and query as sent on the wire: non-ASCII percent-encoded as browsers do (httpx's
    URL rules), characters like `*` and existing escapes left as they are."""
    return httpx.URL(url).raw_path.decode("ascii")


class Http:
    """One keep-alive HTTP/1.1 connection (stdlib http.client): the client of every
    sequential measure, the same code for both servers.

    Why http.client and not httpx here: streaming a body, httpx's sync client tops out near
    500 MB/s on this machine (64 KB reads through its parser), http.client's `readinto`
    with a 1 MB buffer near 1.6 GB/s: the retrieve measure must not measure the client.
    Like a browser, a GET that finds its kept-alive connection closed by the server is sent
    again once on a new connection, and counted (`reconnects`, printed at the end).
    """

    def __init__(self, base: str) -> None:
        parts = urllib.parse.urlsplit(base)
        self.host = parts.hostname or LOOPBACK
        self.port = parts.port or 80
        self.conn: http.client.HTTPConnection | None = None
        self.reconnects = 0
        self.last_used = 0.0
        self.buffer = bytearray(CHUNK)

    def __enter__(self) -> Http:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _ready(self) -> None:
        """A connection to send on: kept only while idle less than KEEPALIVE_REUSE (below
        both servers' idle timeouts), else a new one, connected before any clock starts."""
        idle = time.monotonic() - self.last_used
        if self.conn is not None and idle > KEEPALIVE_REUSE:
            self.close()
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=HTTP_TIMEOUT)
            self.conn.connect()

    def _send(self, url: str, accept: str) -> http.client.HTTPResponse:
        target = request_target(url)
        headers = {"Accept": accept, "Accept-Encoding": ACCEPT_ENCODING}
        for attempt in (1, 2):
            self._ready()
            assert self.conn is not None
            try:
                self.conn.request("GET", target, headers=headers)
                return self.conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionError):
                self.close()
                if attempt == 2:
                    raise
                self.reconnects += 1
        raise AssertionError("unreachable")

    def _done(self, response: http.client.HTTPResponse) -> None:
        self.last_used = time.monotonic()
        if response.will_close:
            self.close()

    def get(self, url: str, accept: str) -> tuple[float, Reply]:
        """GET with the body read; the seconds from sending to the last byte."""
        self._ready()
        started = time.perf_counter()
        response = self._send(url, accept)
        body = response.read()
        took = time.perf_counter() - started
        self._done(response)
        return took, Reply(response.status, response.getheader("content-type", ""), body)

    def stream(self, url: str, accept: str, multipart: bool) -> tuple[float, int, int, int]:
        """GET a body into a reused buffer; (seconds, bytes, multipart parts, HTTP status)."""
        self._ready()
        started = time.perf_counter()
        response = self._send(url, accept)
        if response.status != 200:
            response.read()
            self._done(response)
            return time.perf_counter() - started, 0, 0, response.status
        ctype = response.getheader("content-type", "")
        counter = PartCounter(ctype) if multipart else None
        size = 0
        view = memoryview(self.buffer)
        while n := response.readinto(view):
            size += n
            if counter:
                counter.feed(self.buffer, n)
        took = time.perf_counter() - started
        self._done(response)
        return took, size, counter.parts if counter else 1, 200


class PartCounter:
    """Counts multipart boundaries in a streamed body, across chunk edges."""

    def __init__(self, content_type: str) -> None:
        boundary = ""
        for param in content_type.split(";")[1:]:
            key, _, value = param.strip().partition("=")
            if key.lower() == "boundary":
                boundary = value.strip('"')
        if not boundary:
            raise BenchError(f"no boundary in Content-Type {content_type!r}")
        self.marker = b"\r\n--" + boundary.encode()
        self.tail = b"\r\n"  # the first delimiter has no CRLF in front of it
        self.delimiters = 0

    def feed(self, buf: bytearray, n: int) -> None:
        """Count the delimiters in `buf[:n]`, and those across the edge with the last chunk."""
        edge = len(self.marker) - 1
        joined = self.tail + bytes(buf[: min(edge, n)])
        # a marker within buf[:edge] alone is impossible (it is longer), so none counts twice
        self.delimiters += joined.count(self.marker) + buf.count(self.marker, 0, n)
        self.tail = joined[-edge:] if n < edge else bytes(buf[n - edge : n])

    @property
    def parts(self) -> int:
        """Parts seen: delimiters minus the closing one."""
        return max(self.delimiters - 1, 0)


@contextlib.contextmanager
def plain_http_server(folder: Path) -> Iterator[str]:
    """`python -m http.server` on loopback serving `folder`: what plain HTTP moves here."""
    port = free_port(8099)
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", LOOPBACK]
    proc = subprocess.Popen(
        [*argv, "--directory", str(folder)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://{LOOPBACK}:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/", timeout=5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError("python -m http.server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def concatenate(paths: Sequence[Path], target: Path) -> None:
    """The bytes of `paths` in one file (untimed), for the plain-HTTP reference."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as out:
        for path in paths:
            with path.open("rb") as fh:
                shutil.copyfileobj(fh, out, CHUNK)


# --------------------------------------------------------------------------- measures


def measure_qido(http: Http, server: Server, n: int, results: Results) -> None:
    for key, _label, query in QIDO_QUERIES:
        fig = figures(results, key, server.name)
        seconds = []
        for _ in range(n):
            took, reply = http.get(server.root + query, ACCEPT_JSON)
            seconds.append(took)
            if reply.status == 200:
                fig.seen[reply.describe(f"{reply.json_count()} studies")] += 1
            else:
                fig.errors += 1
                fig.seen[reply.describe()] += 1
        add_latencies(fig, seconds)


def probe_qido(http: Http, server: Server, results: Results) -> None:
    """Each probe once; what came back is reported beside the timed searches."""
    for query in QIDO_PROBES:
        _took, reply = http.get(server.root + query, ACCEPT_JSON)
        text = f"{reply.json_count()}" if reply.status == 200 else reply.describe()[:60]
        figures(results, "probe " + query, server.name).seen[text] += 1


def measure_metadata(
    http: Http, server: Server, data: Dataset, n: int, expected: int, results: Results
) -> None:
    fig = figures(results, "metadata", server.name)
    url = server.series_url(data) + "/metadata"
    seconds = []
    for _ in range(n):
        took, reply = http.get(url, ACCEPT_JSON)
        seconds.append(took)
        count = reply.json_count()
        if reply.status != 200 or count != expected:
            fig.errors += 1
        fig.seen[reply.describe(f"{count} instances, {len(reply.body) / MB:.1f} MB")] += 1
    add_latencies(fig, seconds)


def measure_first_metadata(
    http: Http, server: Server, data: Dataset, expected: int, results: Results
) -> None:
    """The first series metadata request a server sees (ours: already prepared)."""
    fig = figures(results, "metadata-first", server.name)
    took, reply = http.get(server.series_url(data) + "/metadata", ACCEPT_JSON)
    count = reply.json_count()
    if reply.status != 200 or count != expected:
        fig.errors += 1
    fig.seen[reply.describe(f"{count} instances")] += 1
    fig.add(seconds=took)


def warm_page_cache(servers: Sequence[Server]) -> None:
    """Read every stored file and index of every server once, so the page cache holds all of
    them (again, after the cold measures dropped it: the measures after them are warm ones)."""
    buf = bytearray(CHUNK)
    for server in servers:
        for path in server.storage:
            with path.open("rb", buffering=0) as fh:
                while fh.readinto(buf):
                    pass


def can_drop_caches() -> bool:
    return os.geteuid() == 0 and os.access(DROP_CACHES, os.W_OK)


def drop_page_cache() -> None:
    """Write dirty pages back, then drop every clean one: the next read of any file (served
    bytes, an index, a server's own database) comes from disk."""
    os.sync()
    DROP_CACHES.write_text("1\n")


def read_files(paths: Sequence[Path]) -> tuple[float, int]:
    """Read `paths` in one thread into a reused buffer; (seconds, bytes)."""
    buf = bytearray(CHUNK)
    size = 0
    started = time.perf_counter()
    for path in paths:
        with path.open("rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                size += n
    return time.perf_counter() - started, size


def measure_retrieve(
    http: Http, server: Server, data: Dataset, expected: int, results: Results, key: str
) -> None:
    fig = figures(results, key, server.name)
    seconds, size, parts, status = http.stream(server.series_url(data), ACCEPT_DICOM, True)
    if status != 200 or parts != expected:
        fig.errors += 1
    fig.seen[f"HTTP {status}, {parts} parts, {size / MB:.1f} MB"] += 1
    fig.add(mb_s=size / MB / seconds, seconds=seconds)


def measure_plain(url: str, results: Results) -> None:
    fig = figures(results, "retrieve", PLAIN)
    with Http(url) as http:
        seconds, size, _parts, status = http.stream(url, "*/*", False)
    fig.errors += status != 200
    fig.seen[f"HTTP {status}, {size / MB:.1f} MB"] += 1
    fig.add(mb_s=size / MB / seconds, seconds=seconds)


def measure_disk(paths: Sequence[Path], results: Results, key: str) -> None:
    fig = figures(results, key, DISK)
    seconds, size = read_files(paths)
    fig.seen[f"{len(paths)} files, {size / MB:.1f} MB"] += 1
    fig.add(mb_s=size / MB / seconds, seconds=seconds)


def measure_frames(
    http: Http, server: Server, data: Dataset, sops: Sequence[str], n: int, results: Results
) -> None:
    fig = figures(results, "frame", server.name)
    seconds = []
    for k in range(n):
        url = server.instance_url(data.study, data.series, sops[k % len(sops)]) + "/frames/1"
        took, reply = http.get(url, ACCEPT_FRAME)
        seconds.append(took)
        ok = reply.status == 200 and len(reply.body) >= FRAME_BYTES
        fig.errors += not ok
        fig.seen[reply.describe("frame" if ok else f"{len(reply.body)} bytes")] += 1
    add_latencies(fig, seconds)


def measure_rendered(
    http: Http, server: Server, data: Dataset, sops: Sequence[str], n: int, results: Results
) -> None:
    fig = figures(results, "rendered", server.name)
    seconds = []
    step = max(len(sops) // n, 1)
    for k in range(n):
        url = server.instance_url(data.study, data.series, sops[(k * step) % len(sops)])
        took, reply = http.get(url + "/rendered", ACCEPT_JPEG)
        seconds.append(took)
        ok = reply.status == 200 and reply.content_type.startswith("image/jpeg")
        fig.errors += not ok
        fig.seen[reply.describe(reply.content_type if ok else "")] += 1
    add_latencies(fig, seconds)


# -- load


@dataclass
class LoadTally:
    seconds: list[float] = field(default_factory=list)
    seen: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    error_at: list[float] = field(default_factory=list)  # seconds into the run


def load_requests(server: Server, cat: Catalogue) -> Callable[[int], tuple[str, str, str]]:
    """Request number k of the mix: (kind, url, accept)."""
    instances = cat.instances

    def request(k: int) -> tuple[str, str, str]:
        kind = k % 4
        study, series, sop = instances[(k // 4 * 7919) % len(instances)]
        if kind == 0:
            return "study search", server.root + OHIF_STUDY_LIST, ACCEPT_JSON
        if kind == 1:
            url = f"{server.root}/studies/{study}{OHIF_SERIES_LIST}"
            return "series search", url, ACCEPT_JSON
        if kind == 2:
            url = server.instance_url(study, series, sop) + "/metadata"
            return "instance metadata", url, ACCEPT_JSON
        url = server.instance_url(study, series, sop) + "/frames/1"
        return "frame", url, ACCEPT_FRAME

    return request


async def load_client(
    http: httpx.AsyncClient,
    request: Callable[[int], tuple[str, str, str]],
    first: int,
    deadline: float,
    tally: LoadTally,
) -> None:
    k = first
    began = time.perf_counter()
    while time.perf_counter() < deadline:
        kind, url, accept = request(k)
        k += 1
        started = time.perf_counter()
        try:
            response = await http.get(
                url, headers={"Accept": accept, "Accept-Encoding": ACCEPT_ENCODING}
            )
            status = f"HTTP {response.status_code}"
            ok = response.status_code == 200 and (kind != "frame" or len(response.content) > 1000)
        except httpx.HTTPError as exc:
            cause = exc.__cause__ or exc.__context__
            why = str(exc)[:60] or (repr(cause)[:60] if cause else "no message")
            status, ok = f"{type(exc).__name__} ({why})", False
        tally.seconds.append(time.perf_counter() - started)
        tally.seen[f"{kind}: {status}"] += 1
        if not ok:
            tally.errors += 1
            tally.error_at.append(started - began)


async def run_load(
    server: Server, cat: Catalogue, clients: int, seconds: float
) -> tuple[LoadTally, float]:
    tally = LoadTally()
    limits = httpx.Limits(
        max_connections=clients,
        max_keepalive_connections=clients,
        keepalive_expiry=KEEPALIVE_REUSE,
    )
    request = load_requests(server, cat)
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, limits=limits, trust_env=False) as http:
        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(
            *(load_client(http, request, i * 1009, deadline, tally) for i in range(clients))
        )
        elapsed = time.perf_counter() - started
    return tally, elapsed


def measure_load(
    server: Server, cat: Catalogue, args: argparse.Namespace, results: Results
) -> None:
    fig = figures(results, "load", server.name)
    server_cpu, client_cpu = tree_cpu_seconds(server.pid), time.process_time()
    tally, elapsed = asyncio.run(run_load(server, cat, args.load_clients, args.load_seconds))
    server_cpu = tree_cpu_seconds(server.pid) - server_cpu
    client_cpu = time.process_time() - client_cpu
    fig.seen.update(tally.seen)
    fig.errors += tally.errors
    if tally.error_at:
        when = ", ".join(f"{t:.1f}" for t in sorted(tally.error_at)[:12])
        fig.seen[f"errors at seconds into run {len(fig.values.get('rps', [])) + 1}: {when}"] += 1
    fig.add(
        rps=len(tally.seconds) / elapsed,
        p50=percentile(tally.seconds, 50),
        p95=percentile(tally.seconds, 95),
        requests=len(tally.seconds),
        errors=tally.errors,
        server_cpu=server_cpu / elapsed,
        client_cpu=client_cpu / elapsed,
    )


# -- memory


def measure_memory(server: Server, data: Dataset, clients: int, results: Results) -> None:
    """`clients` concurrent retrieves of the big series; peak RSS of the server's tree."""
    fig = figures(results, "memory", server.name)
    url = f"{server.root}/studies/{data.big_study}/series/{data.big_series}"
    outcomes: list[tuple[float, int, int, int]] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def one() -> None:
        with Http(url) as http:
            start.wait()
            outcome = http.stream(url, ACCEPT_DICOM, True)
        with lock:
            outcomes.append(outcome)

    idle = tree_rss(server.pid)
    threads = [threading.Thread(target=one, name=f"retrieve-{k}") for k in range(clients)]
    with PeakMemory(server.pid) as memory:
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
    total = 0
    for _took, size, parts, status in outcomes:
        total += size
        ok = status == 200 and parts == data.big_count
        fig.errors += not ok
        fig.seen[f"HTTP {status}, {parts} parts, {size / MB:.0f} MB"] += 1
    fig.add(rss=memory.rss, pss=memory.pss, idle=idle, mb_s=total / MB / seconds)


# --------------------------------------------------------------------------- report


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def ratio_text(value: float) -> str:
    return "-" if value != value or value in (float("inf"), 0.0) else f"{value:.2f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> None:
    """Print aligned columns; the first `left` columns are left-aligned, the rest right."""
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(widths[c]) if c < left else cell.rjust(widths[c])
            for c, cell in enumerate(cells)
        ).rstrip()

    print(line(header))
    print("-" * len(line(header)))
    for row in rows:
        print(line(row))


def print_seen(results: Results, keys: Sequence[str]) -> None:
    """What each server answered, counted over all runs, so anomalies are visible."""
    for key in keys:
        for server, fig in results.get(key, {}).items():
            if not fig.seen:
                continue
            seen = "; ".join(f"{text} x{count}" for text, count in fig.seen.most_common())
            errors = f" [{fig.errors} ERRORS]" if fig.errors else ""
            print(f"  {key} {server}: {seen}{errors}")


def latency_rows(results: Results, keys: Sequence[tuple[str, str]]) -> list[list[str]]:
    rows = []
    for key, label in keys:
        ours = figures(results, key, OURS)
        other = figures(results, key, ORTHANC)
        ratio = other.median("p50") / ours.median("p50") if other.values else float("nan")
        rows.append(
            [
                label,
                fmt_ms(ours.median("p50")),
                fmt_ms(ours.median("p95")),
                fmt_ms(other.median("p50")) if other.values else "-",
                fmt_ms(other.median("p95")) if other.values else "-",
                ratio_text(ratio),
            ]
        )
    return rows


LATENCY_HEADER = ["request", "ours p50", "ours p95", "Orthanc p50", "Orthanc p95", "ratio p50"]


def print_header(args: argparse.Namespace, info: dict[str, str]) -> None:
    runs = f"{args.repeat} run(s), medians over the runs; latencies in ms; MB = 10^6 bytes"
    print()
    print("=" * 100)
    print(f"DICOMweb benchmark: ours (vna serve) vs {info.get('orthanc', 'no Orthanc')}; {runs}")
    print(
        f"machine: {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"httpx {httpx.__version__}; load average at the end {info.get('loadavg', '?')}"
    )
    for key in ("dataset", "fs", "ours", "orthanc-load", "prepare"):
        if key in info:
            print(f"{key}: {info[key]}")
    print("ratio: Orthanc time / ours time, or ours rate / Orthanc rate: > 1 means ours is better")


def speedup(results: Results, key: str) -> float:
    """Orthanc's median p50 over ours (> 1: ours is faster)."""
    return figures(results, key, ORTHANC).median("p50") / figures(results, key, OURS).median("p50")


def report_qido(args: argparse.Namespace, results: Results) -> None:
    print(f"1. QIDO-RS study search, {args.qido_requests} requests per query per run")
    rows = latency_rows(results, [(key, label) for key, label, _q in QIDO_QUERIES])
    differ = []
    for row, (key, label, query) in zip(rows, QIDO_QUERIES, strict=True):
        wire = httpx.URL("http://h" + DICOMWEB_ROOT + query).raw_path.decode().split("?", 1)[1]
        row[0] += f"  [sent: ?{wire[:40]}{'...' if len(wire) > 40 else ''}]"
        found = {
            server: ",".join(
                sorted({text.split(", ")[1] for text in fig.seen if text.startswith("HTTP 200")})
            )
            for server, fig in results.get(key, {}).items()
        }
        row.insert(3, found.get(OURS) or "-")
        row.insert(6, found.get(ORTHANC) or "-")
        if ORTHANC in found and found[ORTHANC] != found.get(OURS):
            differ.append(label)
            row.append("not comparable: answers differ")
        else:
            ok = speedup(results, key) >= TARGET_SPEEDUP
            row.append(f">= {TARGET_SPEEDUP:.0f}x: {verdict(ok)}")
    header = [*LATENCY_HEADER]
    header.insert(3, "ours found")
    header.insert(6, "Orthanc found")
    table([*header, "target"], rows)
    if differ:
        print(
            "note: Orthanc's answer differs from ours for: " + "; ".join(differ) + " "
            "(its latency is for that answer)"
        )
    print_seen(results, [key for key, _l, _q in QIDO_QUERIES])
    rows = []
    for query in QIDO_PROBES:
        found = {
            server: ",".join(fig.seen) for server, fig in results.get("probe " + query, {}).items()
        }
        if found:
            rows.append([query, found.get(OURS, "-"), found.get(ORTHANC, "-")])
    if rows:
        print("probes, sent once each (untimed): studies found")
        table(["query", "ours", "Orthanc"], rows)


def report_metadata(args: argparse.Namespace, results: Results) -> None:
    print(
        f"2. Series metadata, the {args.per_series}-instance series, "
        f"{args.metadata_requests} requests per run (ours: prepared metadata, warm)"
    )
    rows = latency_rows(results, [("metadata", "GET .../series/{se}/metadata")])
    first_ours = figures(results, "metadata-first", OURS).median("seconds")
    first_other = figures(results, "metadata-first", ORTHANC).median("seconds")
    rows.append(
        [
            "first request of each server (once)",
            fmt_ms(first_ours),
            "",
            fmt_ms(first_other) if first_other == first_other else "-",
            "",
            ratio_text(first_other / first_ours),
        ]
    )
    ok = speedup(results, "metadata") >= TARGET_SPEEDUP
    rows[0].append(f">= {TARGET_SPEEDUP:.0f}x: {verdict(ok)}")
    rows[1].append("")
    table([*LATENCY_HEADER, "target"], rows)
    print_seen(results, ["metadata", "metadata-first"])


def report_retrieve(args: argparse.Namespace, results: Results) -> None:
    print(
        f"3. Series retrieve, the {args.per_series}-instance series, {ACCEPT_DICOM}, "
        "streamed; one per run"
    )
    if not results.get("retrieve-cold"):
        print("(from disk: not measured, dropping the page cache needs root)")
    judged = next(key for key, _how in RETRIEVES if results.get(key))
    for key, how in RETRIEVES:
        if results.get(key):
            report_retrieve_from(args, results, key, how, key == judged)
    print_seen(results, [key for key, _how in RETRIEVES])


def report_retrieve_from(
    args: argparse.Namespace, results: Results, key: str, how: str, judged: bool
) -> None:
    print(how)
    disk = figures(results, key, DISK)
    labels = {
        OURS: "ours, GET .../series/{se}",
        ORTHANC: "Orthanc, GET .../series/{se}",
        PLAIN: "plain HTTP: the same bytes as one file, python -m http.server",
        DISK: f"read our {args.per_series} archived files (1 thread)",
    }
    rows = []
    for server, label in labels.items():
        fig = figures(results, key, server)
        if fig.values:
            rows.append(
                [
                    label,
                    f"{fig.median('mb_s'):.1f}",
                    f"{fig.median('seconds'):.3f}",
                    f"{fig.median('mb_s') / disk.median('mb_s'):.2f}",
                    fig.runs("mb_s"),
                ]
            )
    table(["source", "MB/s", "seconds", "share of read", "runs MB/s"], rows)
    ours_mb = figures(results, key, OURS).median("mb_s")
    other_mb = figures(results, key, ORTHANC).median("mb_s")
    share = ours_mb / disk.median("mb_s")
    judgement = (
        f"target ours >= {TARGET_DISK_SHARE:.0%} of the read: {share:.0%}, "
        f"{verdict(share >= TARGET_DISK_SHARE)}"
        if judged
        else f"ours: {share:.0%} of the read (not the target's measure)"
    )
    print(f"ratio ours/Orthanc MB/s: {ratio_text(ours_mb / other_mb)}; {judgement}")


def report_frames(args: argparse.Namespace, results: Results) -> None:
    print(f"4. Single frame, frames/1, {ACCEPT_FRAME}, {args.frame_requests} per run")
    table(LATENCY_HEADER, latency_rows(results, [("frame", "GET .../instances/{i}/frames/1")]))
    print_seen(results, ["frame"])


def report_rendered(args: argparse.Namespace, results: Results) -> None:
    print(f"5. Rendered, Accept: {ACCEPT_JPEG}, {args.rendered_requests} per run")
    table(LATENCY_HEADER, latency_rows(results, [("rendered", "GET .../instances/{i}/rendered")]))
    print_seen(results, ["rendered"])


def report_load(args: argparse.Namespace, results: Results) -> None:
    print(
        f"6. Load: {args.load_clients} concurrent clients for {args.load_seconds:.0f} s per run, "
        "mix of study search (OHIF list), series search, instance metadata, frame"
    )
    rows = []
    for server in (OURS, ORTHANC):
        fig = figures(results, "load", server)
        if fig.values:
            rows.append(
                [
                    server,
                    f"{fig.median('rps'):.1f}",
                    f"{sum(fig.values['errors']):.0f}",
                    fmt_ms(fig.median("p50")),
                    fmt_ms(fig.median("p95")),
                    f"{fig.median('server_cpu'):.2f}",
                    f"{fig.median('client_cpu'):.2f}",
                    fig.runs("rps"),
                ]
            )
    header = ["server", "req/s", "errors", "p50", "p95", "server CPU", "client CPU", "runs req/s"]
    table(header, rows)
    print("(CPU: cores busy on average during the run: the server's process tree; this client)")
    ours, other = figures(results, "load", OURS), figures(results, "load", ORTHANC)
    errors = sum(ours.values.get("errors", []))
    print(
        f"ratio ours/Orthanc req/s: {ratio_text(ours.median('rps') / other.median('rps'))}"
        f"; p50 ratio: {ratio_text(other.median('p50') / ours.median('p50'))}"
        f"; target zero errors for ours: {verdict(errors == 0)}"
    )
    print_seen(results, ["load"])


def report_memory(args: argparse.Namespace, info: dict[str, str], results: Results) -> None:
    print(
        f"7. Memory: {args.memory_clients} clients retrieve the {info.get('big', '?')} at once; "
        "peak RSS of the server's process tree, sampled every 50 ms"
    )
    rows = []
    for server in (OURS, ORTHANC):
        fig = figures(results, "memory", server)
        if fig.values:
            rows.append(
                [
                    server,
                    f"{fig.median('idle') / MB:.0f}",
                    f"{fig.median('rss') / MB:.0f}",
                    f"{fig.median('pss') / MB:.0f}",
                    f"{fig.median('mb_s'):.1f}",
                    fig.runs("rss", 1 / MB, "{:.0f}"),
                ]
            )
    header = ["server", "RSS before MB", "peak RSS MB", "peak PSS MB", "total MB/s", "runs peak"]
    table(header, rows)
    ours = figures(results, "memory", OURS).median("rss")
    other = figures(results, "memory", ORTHANC).median("rss")
    print(
        f"ratio Orthanc/ours peak RSS: {ratio_text(other / ours)}; "
        f"target ours < {TARGET_RSS / MB:.0f} MB: {verdict(ours < TARGET_RSS)}"
    )
    print_seen(results, ["memory"])


def print_report(args: argparse.Namespace, info: dict[str, str], results: Results) -> None:
    """One table per measure run, in the order of the docstring."""
    print_header(args, info)
    sections: list[tuple[str, Callable[[], None]]] = [
        ("qido", lambda: report_qido(args, results)),
        ("metadata", lambda: report_metadata(args, results)),
        ("retrieve", lambda: report_retrieve(args, results)),
        ("frames", lambda: report_frames(args, results)),
        ("rendered", lambda: report_rendered(args, results)),
        ("load", lambda: report_load(args, results)),
        ("memory", lambda: report_memory(args, info, results)),
    ]
    for name, section in sections:
        if name in args.only:
            print()
            section()
    if results.get("reconnects"):
        print()
        print_seen(results, ["reconnects"])
    if info.get("log"):
        print()
        print("our serve log reported errors:")
        print(info["log"])


@contextlib.contextmanager
def ours_serving(archive: LoadedArchive, port: int) -> Iterator[tuple[Server, ServeProcess]]:
    serve = ServeProcess(archive.config, archive.run_dir)
    with serve:
        root = f"http://{LOOPBACK}:{port}{DICOMWEB_ROOT}"
        took = wait_serving(serve, root)
        print(f"ours: vna serve answers on {root} ({took:.1f} s after start)", flush=True)
        storage = sorted(archive.archive_root.glob("studies/*/series/*/instances/*.dcm"))
        storage += sorted(archive.run_dir.glob(f"{archive.index_path.name}*"))
        yield Server(OURS, root, serve.process.pid, storage), serve


def measure(args: argparse.Namespace) -> int:
    """Everything: dataset, both servers, the runs, the report (inside the namespace)."""
    work = Path(args.work)
    results: Results = {}
    info: dict[str, str] = {}
    data = make_dataset(work / "dataset", args)
    info["dataset"] = (
        f"{data.count} instances, {data.total_bytes / MB:.1f} MB: 1 study of 2 x {args.per_series}"
        f", {args.extra_instances} in studies of 2 x 50"
        + (f", 1 study of 1 x {args.big_series}" if args.big_series else "")
    )
    info["fs"] = filesystem_of(work)
    port = free_port(8080)
    archive = load_archive(data.root, work / "ours", data.count, args.workers, port)
    print(
        f"ours: vna ingest --once took in {archive.instances} instances "
        f"in {archive.ingest_seconds:.1f} s",
        flush=True,
    )
    cat = catalogue(archive, data)
    if len(cat.series_sops) != args.per_series:
        raise BenchError(f"series {data.series}: {len(cat.series_sops)} instances in our index")
    series_files = archive.series_files(data.study, data.series)
    big_bytes = sum(p.stat().st_size for p in archive.series_files(data.big_study, data.big_series))
    info["big"] = f"{data.big_count}-instance series ({big_bytes / MB:.0f} MB archived)"
    plain_file = work / "plain" / PLAIN_FILE
    concatenate(series_files, plain_file)
    with contextlib.ExitStack() as stack:
        plain_url = stack.enter_context(plain_http_server(work / "plain")) + "/" + PLAIN_FILE
        serve_started = time.monotonic()
        ours, serve = stack.enter_context(ours_serving(archive, port))
        servers = [ours]
        info["ours"] = (
            f"vna serve (uvicorn, 1 process), SQLite index, workers={args.workers} for ingest"
        )
        if not args.skip_orthanc:
            orthanc = OrthancServer(workdir=work / "orthanc", plugins=[DICOMWEB_PLUGIN])
            stack.enter_context(orthanc)
            started = time.perf_counter()
            orthanc.upload_rest(data.files, threads=4)
            orthanc.expect_instances(data.count)
            system = orthanc.get_json("/system")
            plugin = orthanc.get_json("/plugins/dicom-web")
            info["orthanc"] = (
                f"Orthanc {system.get('Version')} + DICOMweb plugin {plugin.get('Version')}"
            )
            info["orthanc-load"] = (
                f"Orthanc took {data.count} instances over REST (4 threads) in "
                f"{time.perf_counter() - started:.1f} s; default settings "
                "(HttpThreadsCount 50, KeepAlive, TcpNoDelay), StorageCompression off"
            )
            print(info["orthanc-load"], flush=True)
            servers.append(
                Server(
                    ORTHANC,
                    f"http://{LOOPBACK}:{orthanc.http_port}{ORTHANC_DICOMWEB_ROOT}",
                    orthanc.pid,
                    orthanc_stored_files(orthanc),
                )
            )
        wait_metadata_prepared(serve, archive.index_path, data.count)
        info["prepare"] = (
            f"our metadata preparer held all {data.count} instances "
            f"{time.monotonic() - serve_started:.1f} s after vna serve started"
            + ("" if args.skip_orthanc else " (Orthanc's upload ran meanwhile)")
        )
        print(info["prepare"], flush=True)
        if "metadata" in args.only:
            for server in servers:
                with Http(server.root) as http:
                    measure_first_metadata(http, server, data, args.per_series, results)
        for run in range(1, args.repeat + 1):
            print(f"run {run}/{args.repeat}", flush=True)
            one_run(args, data, cat, servers, series_files, (plain_url, plain_file), results)
        bad = check_log_clean(serve)
        if bad:
            info["log"] = "\n".join(bad[:40])
    info["loadavg"] = " ".join(f"{v:.1f}" for v in os.getloadavg())
    print_report(args, info, results)
    return 0


def one_run(
    args: argparse.Namespace,
    data: Dataset,
    cat: Catalogue,
    servers: Sequence[Server],
    series_files: Sequence[Path],
    plain: tuple[str, Path],
    results: Results,
) -> None:
    """Every measure once, each on every server in turn."""
    only = args.only

    def step(what: str) -> None:
        print(f"  {what}", flush=True)

    with contextlib.ExitStack() as stack:
        https = {s.name: stack.enter_context(Http(s.root)) for s in servers}
        if "qido" in only:
            step("QIDO-RS")
            for s in servers:
                measure_qido(https[s.name], s, args.qido_requests, results)
                if not results.get("probe " + QIDO_PROBES[0], {}).get(s.name):
                    probe_qido(https[s.name], s, results)
        if "metadata" in only:
            step("metadata")
            for s in servers:
                measure_metadata(
                    https[s.name], s, data, args.metadata_requests, args.per_series, results
                )
        if "retrieve" in only:
            step("retrieve")
            if can_drop_caches():
                drop_page_cache()
                measure_disk(series_files, results, "retrieve-cold")
                for s in servers:
                    drop_page_cache()
                    measure_retrieve(
                        https[s.name], s, data, args.per_series, results, "retrieve-cold"
                    )
            warm_page_cache(servers)
            read_files([*series_files, plain[1]])
            measure_disk(series_files, results, "retrieve")
            measure_plain(plain[0], results)
            for s in servers:
                measure_retrieve(https[s.name], s, data, args.per_series, results, "retrieve")
        if "frames" in only:
            step("frames")
            for s in servers:
                measure_frames(
                    https[s.name], s, data, cat.series_sops, args.frame_requests, results
                )
        if "rendered" in only:
            step("rendered")
            for s in servers:
                measure_rendered(
                    https[s.name], s, data, cat.series_sops, args.rendered_requests, results
                )
        for s in servers:
            if https[s.name].reconnects:
                note = "GETs sent again on a new connection (the kept-alive one was closed)"
                figures(results, "reconnects", s.name).seen[note] += https[s.name].reconnects
    if "load" in only:
        for s in servers:
            step(f"load {s.name}")
            measure_load(s, cat, args, results)
    if "memory" in only:
        for s in servers:
            step(f"memory {s.name}")
            measure_memory(s, data, args.memory_clients, results)


# --------------------------------------------------------------------------- main (outside)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=3, help="runs; medians are reported")
    parser.add_argument("--per-series", type=int, default=500, help="instances per main series")
    parser.add_argument(
        "--extra-instances", type=int, default=200, help="more instances, in series of 50"
    )
    parser.add_argument(
        "--big-series",
        type=int,
        default=1000,
        help="instances of the series the memory measure retrieves (0: the main series)",
    )
    parser.add_argument("--workers", type=int, default=2, help="our ingest workers")
    parser.add_argument("--qido-requests", type=int, default=200)
    parser.add_argument("--metadata-requests", type=int, default=20)
    parser.add_argument("--frame-requests", type=int, default=200)
    parser.add_argument("--rendered-requests", type=int, default=100)
    parser.add_argument("--load-clients", type=int, default=50)
    parser.add_argument("--load-seconds", type=float, default=60.0)
    parser.add_argument("--memory-clients", type=int, default=10)
    parser.add_argument(
        "--only",
        default=",".join(MEASURES),
        help=f"comma-separated measures to run (default all: {','.join(MEASURES)})",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--skip-orthanc", action="store_true", help="ours only (no root, no namespace)"
    )
    parser.add_argument(INSIDE_FLAG, action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    counts = (
        args.repeat,
        args.per_series,
        args.workers,
        args.qido_requests,
        args.metadata_requests,
        args.frame_requests,
        args.rendered_requests,
        args.load_clients,
        args.memory_clients,
    )
    if min(counts) < 1 or args.load_seconds <= 0:
        parser.error("counts and --load-seconds must be at least 1")
    args.only = [m.strip() for m in args.only.split(",") if m.strip()]
    if unknown := set(args.only) - set(MEASURES):
        parser.error(f"--only: unknown measures {sorted(unknown)}; choose from {MEASURES}")
    if min(args.extra_instances, args.big_series) < 0:
        parser.error("--extra-instances and --big-series must not be negative")
    return args


def preflight(args: argparse.Namespace) -> None:
    """Fail before any work when a tool, root or our CLI is missing."""
    problems: list[str] = []
    if not args.skip_orthanc:
        problems += missing_tools({"Orthanc": "orthanc", "ip": "iproute2"})
        if not DICOMWEB_PLUGIN.exists():
            problems.append(f"{DICOMWEB_PLUGIN} not found (Debian package 'orthanc-dicomweb')")
        if os.geteuid() != 0:
            problems.append(
                "measuring Orthanc needs root (a loopback-only network namespace); "
                "run as root or pass --skip-orthanc"
            )
    if why := ours_runnable():
        problems.append(f"our gateway cannot run: {why}")
    if problems:
        sys.exit("bench_gateway: " + "\n  ".join(["cannot start:", *problems]))


def benchmark(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Make the work folder and namespace, run the measurement inside, clean up."""
    work = Path(tempfile.mkdtemp(prefix="vna-bench-gateway-"))
    print(f"work folder: {work}", flush=True)
    try:
        if args.skip_orthanc:
            args.work = str(work)
            return measure(args)
        with LoopbackNamespace(f"vna-bench-gw-{os.getpid()}") as namespace:
            print(f"everything runs inside network namespace {namespace.name} (loopback only)")
            code = run_inside(
                namespace,
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    *argv,
                    INSIDE_FLAG,
                    "--work",
                    str(work),
                ],
            )
            if code == 130:
                raise KeyboardInterrupt
            return code
    finally:
        cleanup(work, args.keep)


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    stop_on_sigterm()
    try:
        if args.inside:
            if not args.skip_orthanc:
                assert_loopback_only()
            return measure(args)
        preflight(args)
        return benchmark(args, raw)
    except (BenchError, OursError, PeerError) as exc:
        print(f"bench_gateway: FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_gateway: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
