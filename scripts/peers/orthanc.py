"""Orthanc as a benchmark peer: loopback-only network namespace, start, feed, count, stop.

Why a network namespace: Orthanc 1.10 (Debian) binds its HTTP and DICOM ports on
every interface and has no option to bind loopback only. Benchmarks must never
send or accept traffic beyond 127.0.0.1, so Orthanc and its clients run in a
network namespace that holds nothing but `lo`. `LoopbackNamespace` creates one,
`run_inside()` re-executes a script inside it, and `OrthancServer.start()` refuses
to run at all in a namespace with any other interface.

Why REST and storescu: those are the two ways a site would push a folder of
files into Orthanc (its own upload API, and DICOM C-STORE from DCMTK), so both
are measured. The DICOMweb plugin can be loaded through `plugins=` for a later
DICOMweb benchmark (`DICOMWEB_PLUGIN`).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

LOOPBACK = "127.0.0.1"
ORTHANC_BINARY = "Orthanc"
#: Where Debian's `orthanc-dicomweb` package installs the plugin.
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
#: Executable -> Debian package that provides it, for a clear message when missing.
REQUIRED_TOOLS: dict[str, str] = {
    ORTHANC_BINARY: "orthanc",
    "storescu": "dcmtk",
    "ip": "iproute2",
}
#: Orthanc's usual ports; used when free, otherwise the kernel picks one.
DEFAULT_HTTP_PORT = 8042
DEFAULT_DICOM_PORT = 4242
#: How long a stopping Orthanc may take to flush its index before it is killed.
STOP_GRACE_SECONDS = 30.0
#: DCMTK >= 3.6.2 leaves Nagle's algorithm on unless this environment variable is 1.
#: Orthanc's own builds disable it at compile time ("Fix performance issue in DICOM
#: protocol by disabling Nagle's algorithm", Orthanc changeset of 2019-02-28); Debian's Orthanc uses
#: Debian's DCMTK, which does not. Measured here on loopback, 50 instances: ~2.5 s with
#: Nagle on either side, 0.3 s with it off on both (delayed-ACK stalls of ~40 ms per
#: C-STORE). A site tuning its Orthanc would set it, so the benchmark does, on both ends.
DCMTK_NO_NAGLE_ENV = {"TCP_NODELAY": "1"}


class PeerError(RuntimeError):
    """A peer could not be started, fed or checked; the message says what to look at."""


# --------------------------------------------------------------------------- tools


def missing_tools(tools: dict[str, str] | None = None) -> list[str]:
    """Messages naming each missing executable and the Debian package that provides it."""
    wanted = REQUIRED_TOOLS if tools is None else tools
    return [
        f"'{exe}' not found on PATH: install the Debian package '{package}' "
        f"(apt-get install {package})"
        for exe, package in wanted.items()
        if shutil.which(exe) is None and not Path("/usr/sbin", exe).exists()
    ]


def _which(exe: str) -> str:
    """Path of `exe`; Debian puts Orthanc in /usr/sbin, which a non-login PATH may lack."""
    found = shutil.which(exe)
    if found:
        return found
    candidate = Path("/usr/sbin", exe)
    if candidate.exists():
        return str(candidate)
    raise PeerError(
        f"'{exe}' not found; " + "; ".join(missing_tools({exe: REQUIRED_TOOLS.get(exe, exe)}))
    )


# --------------------------------------------------------------------------- namespace


def interfaces() -> list[str]:
    """Names of the network interfaces visible to this process (its network namespace)."""
    return sorted(name for _index, name in socket.if_nameindex())


def assert_loopback_only() -> None:
    """Fail unless this process sees only `lo`, so a peer bound to 0.0.0.0 stays local."""
    names = interfaces()
    if names != ["lo"]:
        raise PeerError(
            f"refusing to start a network peer: this network namespace has interfaces {names}, "
            "not only 'lo'. Run inside a loopback-only namespace (see LoopbackNamespace)."
        )


class LoopbackNamespace:
    """A uniquely named network namespace with only `lo` up, deleted on exit.

    Deleting it first kills whatever still runs inside (`ip netns pids`): those
    are processes this benchmark started, and an Orthanc left running would keep
    the namespace and its storage busy.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._ip = _which("ip")
        self.created = False

    def __enter__(self) -> LoopbackNamespace:
        self.create()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.delete()

    def create(self) -> None:
        """Create the namespace and bring its loopback interface up."""
        if os.geteuid() != 0:
            raise PeerError("creating a network namespace needs root (ip netns add)")
        subprocess.run([self._ip, "netns", "add", self.name], check=True)
        self.created = True
        self.run(["ip", "link", "set", "lo", "up"], check=True)

    def exec_prefix(self) -> list[str]:
        """Command prefix that runs a program inside the namespace."""
        return [self._ip, "netns", "exec", self.name]

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        """Run `argv` inside the namespace and wait for it."""
        return subprocess.run([*self.exec_prefix(), *argv], **kwargs)

    def pids(self) -> list[int]:
        """Processes currently running inside the namespace."""
        out = subprocess.run(
            [self._ip, "netns", "pids", self.name], capture_output=True, text=True, check=False
        ).stdout
        return [int(word) for word in out.split() if word.isdigit()]

    def kill_leftovers(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL, every process still inside the namespace."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.1)

    def delete(self) -> None:
        """Kill leftovers and delete the namespace; safe to call twice."""
        if not self.created:
            return
        self.kill_leftovers()
        subprocess.run([self._ip, "netns", "del", self.name], check=False)
        self.created = False


def run_inside(namespace: LoopbackNamespace, argv: Sequence[str]) -> int:
    """Run `argv` (typically this script again) inside `namespace`; return its exit code.

    SIGTERM to us is passed on to the child so it can stop its peers cleanly;
    Ctrl-C reaches the child directly (same foreground process group), so here we
    only wait for it to finish its own clean-up.
    """
    child = subprocess.Popen([*namespace.exec_prefix(), *argv])

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:
                # The child got the same SIGINT; give it time to stop Orthanc.
                try:
                    return child.wait(timeout=STOP_GRACE_SECONDS + 10)
                except subprocess.TimeoutExpired:
                    child.kill()
                    return child.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------- server


def free_port(preferred: int) -> int:
    """`preferred` if nothing listens there, else a port the kernel picks on loopback."""
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise PeerError("no free TCP port on loopback")


@dataclass
class OrthancServer:
    """One Orthanc process with its own storage and index below `workdir`.

    Defaults are Orthanc's own (SQLite index, SyncStorageArea, ...), except what
    a benchmark must pin: no compression, no authentication, any calling AET
    accepted, and only the plug-ins listed in `plugins` (none by default).
    """

    workdir: Path
    aet: str = "ORTHANC"
    plugins: Sequence[Path] = ()
    http_port: int = 0
    dicom_port: int = 0
    extra_config: dict[str, Any] = field(default_factory=dict)
    #: Disable Nagle's algorithm in DCMTK (server and storescu); see DCMTK_NO_NAGLE_ENV.
    dcmtk_no_nagle: bool = True
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.http_port = self.http_port or free_port(DEFAULT_HTTP_PORT)
        self.dicom_port = self.dicom_port or free_port(DEFAULT_DICOM_PORT)

    # -- life cycle

    @property
    def config_path(self) -> Path:
        return self.workdir / "orthanc.json"

    @property
    def log_path(self) -> Path:
        return self.workdir / "orthanc.log"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise PeerError("Orthanc is not running")
        return self.process.pid

    def config(self) -> dict[str, Any]:
        """The configuration JSON this server is started with."""
        for plugin in self.plugins:
            if not Path(plugin).exists():
                raise PeerError(
                    f"Orthanc plug-in {plugin} not found"
                    + (
                        " (Debian package 'orthanc-dicomweb')"
                        if Path(plugin) == DICOMWEB_PLUGIN
                        else ""
                    )
                )
        return {
            "Name": f"vna-bench-{self.aet}",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "StorageCompression": False,
            "Plugins": [str(p) for p in self.plugins],
            **self.extra_config,
        }

    def start(self, timeout: float = 60.0) -> None:
        """Write the configuration, start Orthanc and wait until its REST API answers."""
        assert_loopback_only()
        if self.process is not None:
            raise PeerError("Orthanc already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        # Own session: a Ctrl-C aimed at the benchmark must not kill Orthanc before
        # stop() lets it close its index; stop() and the namespace clean-up own it.
        self.process = subprocess.Popen(
            [_which(ORTHANC_BINARY), f"--logfile={self.log_path}", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=self._dcmtk_env(),
            start_new_session=True,
        )
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _dcmtk_env(self) -> dict[str, str]:
        """Our environment, plus the DCMTK switch that turns Nagle off when asked."""
        return {**os.environ, **(DCMTK_NO_NAGLE_ENV if self.dcmtk_no_nagle else {})}

    def wait_ready(self, timeout: float) -> None:
        """Poll `GET /system` until it answers 200, failing fast if Orthanc exits."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise PeerError(
                    f"Orthanc exited with code {self.process.returncode} while starting;\n"
                    + self.log_tail()
                )
            try:
                self.get_json("/system")
                return
            except (OSError, http.client.HTTPException, PeerError) as exc:
                last = exc
                time.sleep(0.1)
        raise PeerError(
            f"Orthanc did not answer GET /system within {timeout:.0f} s ({last});\n"
            + self.log_tail()
        )

    def stop(self) -> None:
        """SIGTERM (Orthanc closes its index cleanly), SIGKILL after a grace period."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> OrthancServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        """The end of Orthanc's log, to put into error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return f"(no log at {self.log_path})"
        return "\n".join(text.splitlines()[-lines:])

    # -- REST

    def connection(self, timeout: float = 120.0) -> http.client.HTTPConnection:
        """A keep-alive HTTP connection to this Orthanc on loopback."""
        return http.client.HTTPConnection(LOOPBACK, self.http_port, timeout=timeout)

    def get_json(self, path: str) -> Any:
        """GET `path` and decode the JSON answer; non-200 is a PeerError."""
        conn = self.connection(timeout=10.0)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise PeerError(f"GET {path}: HTTP {response.status}: {body[:200]!r}")
        return json.loads(body)

    def instance_count(self) -> int:
        """How many instances Orthanc holds (`GET /statistics` CountInstances)."""
        return int(self.get_json("/statistics")["CountInstances"])

    def expect_instances(self, expected: int) -> None:
        """Fail loudly unless Orthanc holds exactly `expected` instances."""
        count = self.instance_count()
        if count != expected:
            raise PeerError(
                f"Orthanc holds {count} instances, expected {expected};\n" + self.log_tail()
            )

    def upload_rest(self, files: Sequence[Path], threads: int = 4) -> None:
        """POST every file to `/instances` from `threads` clients, each on a keep-alive connection.

        Every answer must be HTTP 200 with Status "Success": on a fresh Orthanc
        anything else ("AlreadyStored", an error) means the run did not store what
        it claims to have stored.
        """
        local = threading.local()
        opened: list[http.client.HTTPConnection] = []
        lock = threading.Lock()

        def post(path: Path) -> None:
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = self.connection()
                with lock:
                    opened.append(conn)
            body = path.read_bytes()
            conn.request(
                "POST", "/instances", body=body, headers={"Content-Type": "application/dicom"}
            )
            response = conn.getresponse()
            answer = response.read()
            if response.status != 200:
                raise PeerError(f"POST /instances {path}: HTTP {response.status}: {answer[:200]!r}")
            status = json.loads(answer).get("Status")
            if status != "Success":
                raise PeerError(f"POST /instances {path}: Status {status!r}")

        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="orthanc-rest")
        try:
            for future in [pool.submit(post, path) for path in files]:
                future.result()
        finally:
            # On a failure or Ctrl-C, drop the uploads not started yet instead of sending them all.
            pool.shutdown(wait=True, cancel_futures=True)
            for conn in opened:
                conn.close()

    # -- DICOM

    def storescu(self, folder: Path, calling_aet: str = "BENCH") -> None:
        """Send every file below `folder` over one association with DCMTK's storescu.

        `+sd +r` makes storescu scan the folder recursively itself, so the files
        named without `.dcm` (as a PACS export names them) are sent as well.
        """
        argv = [
            _which("storescu"),
            "-aet", calling_aet,
            "-aec", self.aet,
            LOOPBACK, str(self.dicom_port),
            "+sd", "+r",
            str(folder),
        ]  # fmt: skip
        done = subprocess.run(
            argv, capture_output=True, text=True, check=False, env=self._dcmtk_env()
        )
        if done.returncode != 0:
            raise PeerError(
                f"storescu exited with code {done.returncode}: {' '.join(argv)}\n"
                f"{done.stdout[-2000:]}{done.stderr[-2000:]}\n" + self.log_tail()
            )


@contextlib.contextmanager
def running(workdir: Path, plugins: Sequence[Path] = ()) -> Iterator[OrthancServer]:
    """A started Orthanc with fresh storage in `workdir`, stopped on exit."""
    server = OrthancServer(workdir=workdir, plugins=plugins)
    with server:
        yield server


if __name__ == "__main__":  # a quick manual check: `python scripts/peers/orthanc.py`
    problems = missing_tools()
    print("\n".join(problems) or f"tools present; interfaces here: {interfaces()}", file=sys.stderr)
