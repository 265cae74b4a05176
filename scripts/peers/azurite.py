"""Azurite (Microsoft's Azure Blob emulator) as a benchmark target: start, containers, stop.

Azurite stands in for Azure Blob Storage, so that our replicator (through adlfs)
and rclone (its `azureblob` backend) upload to the same kind of object store in
the same run. It listens on a free port of 127.0.0.1 only (`--blobHost`), keeps
its data in a folder of the benchmark's own, and is stopped on exit, also on
error or Ctrl-C. Each measurement gets a fresh container (`new_container`).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

from peers.orthanc import PeerError

if TYPE_CHECKING:
    from azure.storage.blob import BlobServiceClient

REPO = Path(__file__).resolve().parents[2]
#: Installed by scripts/setup.sh (npm package `azurite` in tools/).
AZURITE = REPO / "tools" / "node_modules" / ".bin" / "azurite-blob"
#: Azurite's fixed development account and key (public, documented by Microsoft).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
LOOPBACK = "127.0.0.1"
#: How long Azurite may take to listen, and to stop before it is killed.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


def azurite_missing() -> str | None:
    """None when Azurite can be started, else why not."""
    if not AZURITE.exists():
        return f"{AZURITE} is missing: run scripts/setup.sh (npm install in tools/)"
    return None


def azurite_version() -> str:
    """Azurite's version, from its npm package (for the report)."""
    package = REPO / "tools" / "node_modules" / "azurite" / "package.json"
    try:
        return str(json.loads(package.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "unknown"


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


class AzuriteServer:
    """`azurite-blob` on a free loopback port, its data and log below `workdir`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.log_path = workdir / "azurite.log"
        self._log: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ process

    def start(self) -> None:
        if why := azurite_missing():
            raise PeerError(why)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        command = [
            str(AZURITE),
            "--blobHost", LOOPBACK,
            "--blobPort", str(self.port),
            "--location", str(self.workdir / "data"),
            "--silent",
            "--skipApiVersionCheck",
            "--loose",
            "--disableTelemetry",
        ]  # fmt: skip
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            command, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._listening():
            if self._process.poll() is not None:
                raise PeerError(
                    f"Azurite exited with code {self._process.returncode} at start; "
                    f"see {self.log_path}"
                )
            if time.monotonic() > deadline:
                raise PeerError(f"Azurite does not listen after {START_TIMEOUT:.0f} s")
            time.sleep(0.05)

    def _listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex((LOOPBACK, self.port)) == 0

    @property
    def pid(self) -> int:
        if self._process is None:
            raise PeerError("Azurite is not running")
        return self._process.pid

    def stop(self) -> None:
        """SIGTERM, SIGKILL after STOP_TIMEOUT; safe to call twice."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> AzuriteServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ clients

    @property
    def endpoint(self) -> str:
        """The blob service URL of the development account."""
        return f"http://{LOOPBACK}:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.endpoint};"
        )

    def storage_options(self) -> dict[str, Any]:
        """fsspec (adlfs) options reaching this server."""
        return {"connection_string": self.connection_string}

    def _service(self) -> BlobServiceClient:
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)

    def new_container(self, prefix: str = "bench") -> str:
        """Create an empty container with a unique name (3-63 lower-case letters, digits, -)."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        with self._service() as service:
            service.create_container(name)
        return name

    def count_blobs(self, container: str, prefix: str = "") -> int:
        """Blobs whose names start with `prefix` in `container` (one listing, streamed)."""
        with self._service() as service:
            listing = service.get_container_client(container).list_blobs(name_starts_with=prefix)
            return sum(1 for _blob in listing)

    def delete_container(self, container: str) -> None:
        """Remove a container and everything in it (Azurite frees the space later)."""
        with self._service() as service:
            service.delete_container(container)
