"""Real storage servers on loopback for the tests: Azurite (Azure Blob) and moto (S3).

Each is a separate process on a free port of 127.0.0.1, started and stopped
by the tests, and can be stopped and started again on the same port and data
folder to stage an outage. Nothing here listens anywhere but 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
AZURITE = REPO / "tools" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's fixed development account (public, documented by Microsoft).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


class Server:
    """A server process that can be stopped and started again on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        log = (self.workdir / "server.log").open("ab")
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


class Azurite(Server):
    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        if not AZURITE.exists():
            raise RuntimeError(
                f"{AZURITE} is missing: run scripts/setup.sh (npm install in tools/)"
            )

    def command(self) -> list[str]:
        return [
            str(AZURITE),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(self.port),
            "--location",
            str(self.workdir / "data"),
            "--silent",
            "--skipApiVersionCheck",
            "--loose",
            "--disableTelemetry",
        ]

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT};"
        )

    def storage_options(self) -> dict[str, Any]:
        return {"connection_string": self.connection_string}

    def new_container(self) -> str:
        import adlfs

        name = f"c{uuid.uuid4().hex[:12]}"
        adlfs.AzureBlobFileSystem(
            connection_string=self.connection_string, skip_instance_cache=True
        ).mkdir(name)
        return name


class MotoS3(Server):
    def command(self) -> list[str]:
        moto = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or "moto_server"
        return [moto, "-H", "127.0.0.1", "-p", str(self.port)]

    def storage_options(self, port: int | None = None) -> dict[str, Any]:
        return {
            "endpoint_url": f"http://127.0.0.1:{port or self.port}",
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"region_name": "eu-central-1"},
        }

    def new_bucket(self) -> str:
        import s3fs

        name = f"b{uuid.uuid4().hex[:12]}"
        s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options()).mkdir(name)
        return name


class FlakyProxy:
    """An HTTP proxy on loopback that answers 503 SlowDown (or 429) to the first
    `failures` requests, then forwards to the real server: a throttling target."""

    def __init__(self, upstream_port: int, failures: int, status: int = 503) -> None:
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        proxy = self
        self.failures = failures
        self.refused = 0
        self.forwarded = 0
        self.methods: Counter[str] = Counter()  # forwarded requests by HTTP method
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy._lock:
                    refuse = proxy.refused < proxy.failures
                    if refuse:
                        proxy.refused += 1
                    else:
                        proxy.forwarded += 1
                        proxy.methods[self.command] += 1
                if refuse:
                    payload = b"<Error><Code>SlowDown</Code><Message>Slow down</Message></Error>"
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.send_header("Retry-After", "1")
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = f"127.0.0.1:{upstream_port}"
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                skip = ("transfer-encoding", "connection") + (
                    () if self.command == "HEAD" else ("content-length",)
                )
                for k, v in resp.getheaders():
                    if k.lower() not in skip:
                        self.send_header(k, v)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
