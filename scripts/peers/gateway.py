"""Our DICOMweb gateway as a benchmark subject: load an archive, `vna serve` it, wait until ready.

The same shape as `peers.orthanc` (start, feed, check, stop), for our side of the
DICOMweb benchmark; the timing itself stays in the benchmark script.

- `load_archive`: a fresh archive and SQLite index in a run folder, filled by one
  `vna --config CFG ingest --once` over hard links of the export (ingest writes its
  own copy into the layout and removes only the links), checked complete.
- `ServeProcess`: `vna --config CFG serve` as a subprocess logging to `serve.log`
  (audit lines go to `audit.jsonl` beside it), stopped by SIGTERM.
- `wait_serving`: polls `GET /dicomweb/studies` until it answers 200.
- `wait_metadata_prepared`: the gateway prepares WADO-RS metadata in the background
  (a change-feed consumer filling `instance_metadata`); a metadata benchmark must
  wait until every instance has its row, or it would time the on-the-spot path.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from peers.orthanc import LOOPBACK
from peers.ours import (
    InstanceCounter,
    OursError,
    VnaProcess,
    check_run,
    sqlite_url,
    vna_command,
    write_config,
)

#: The DICOMweb root of `vna serve` (viewer_gateway.app.ROOT).
DICOMWEB_ROOT = "/dicomweb"
#: `vna serve` must answer within this time after its start.
SERVE_TIMEOUT = 60.0
#: The background preparer must make progress at least this often.
PREPARE_STALL_TIMEOUT = 120.0

GATEWAY_SECTION = """
[gateway]
host = "{host}"
port = {port}
allow_anonymous = true
audit_log = {audit}
"""


@dataclass(frozen=True)
class LoadedArchive:
    """A run folder holding a filled archive: its settings file and index."""

    run_dir: Path
    config: Path
    index_path: Path
    instances: int
    ingest_seconds: float

    @property
    def archive_root(self) -> Path:
        return self.run_dir / "archive"

    def series_files(self, study_uid: str, series_uid: str) -> list[Path]:
        """The archived files of one series in the layout (DESIGN.md: the layout mirrors URLs)."""
        folder = self.archive_root / "studies" / study_uid / "series" / series_uid / "instances"
        return sorted(folder.glob("*.dcm"))


def write_gateway_config(run_dir: Path, url: str, workers: int, port: int) -> Path:
    """Our ingest settings (peers.ours.write_config) plus a `[gateway]` section on loopback."""
    config = write_config(run_dir, url, workers)
    audit = json.dumps(str((run_dir / "audit.jsonl").resolve()))
    with config.open("a") as fh:
        fh.write(GATEWAY_SECTION.format(host=LOOPBACK, port=port, audit=audit))
    return config


def link_tree(source: Path, target: Path) -> None:
    """`target` as a tree of hard links to `source` (copied where linking is refused)."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link)


def load_archive(
    export: Path, run_dir: Path, expected: int, workers: int, port: int
) -> LoadedArchive:
    """Ingest the export into a fresh archive with `vna ingest --once`; fail unless complete."""
    run_dir.mkdir(parents=True)
    link_tree(export, run_dir / "drop")
    index_path = run_dir / "index.db"
    url = sqlite_url(index_path)
    config = write_gateway_config(run_dir, url, workers, port)
    started = time.perf_counter()
    with VnaProcess(vna_command(config, once=True), run_dir) as vna:
        code = vna.wait()
        if code != 0:
            raise vna.failure(f"exited with code {code}")
    seconds = time.perf_counter() - started
    with InstanceCounter(url, readonly=False) as counter:
        total = counter.total()
    check_run(run_dir, expected, total, expected)
    return LoadedArchive(run_dir, config, index_path, total, seconds)


def serve_command(config: Path) -> list[str]:
    """`vna --config CFG serve`, from the venv this script runs in."""
    script = Path(sys.executable).with_name("vna")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "vna.cli.main"]
    return [*head, "--config", str(config), "serve"]


class ServeProcess(VnaProcess):
    """`vna serve` as a subprocess with its log in `serve.log`; SIGTERM on exit."""

    def __init__(self, config: Path, run_dir: Path) -> None:
        super().__init__(serve_command(config), run_dir)
        self.log_path = run_dir / "serve.log"


def wait_serving(serve: ServeProcess, root_url: str, timeout: float = SERVE_TIMEOUT) -> float:
    """Poll `GET {root}/studies` until 200; return the seconds it took."""
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < timeout:
        serve.check_running("starting")
        try:
            with urllib.request.urlopen(f"{root_url}/studies", timeout=5) as response:
                if response.status == 200:
                    return time.monotonic() - started
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise serve.failure(
        f"GET {root_url}/studies did not answer 200 within {timeout:.0f} s ({last})"
    )


def prepared_count(index_path: Path) -> int:
    """Rows of `instance_metadata` (SQLite, opened read-only: a WAL reader never blocks)."""
    conn = sqlite3.connect(f"file:{index_path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM instance_metadata").fetchone()[0])
    except sqlite3.OperationalError:  # the table does not exist yet (migration running)
        return 0
    finally:
        conn.close()


def wait_metadata_prepared(serve: ServeProcess, index_path: Path, expected: int) -> float:
    """Wait until the gateway's preparer holds metadata for `expected` instances; the seconds."""
    started = time.monotonic()
    seen, progressed = -1, started
    while True:
        count = prepared_count(index_path)
        if count >= expected:
            return time.monotonic() - started
        now = time.monotonic()
        if count > seen:
            seen, progressed = count, now
        elif now - progressed > PREPARE_STALL_TIMEOUT:
            raise serve.failure(
                f"metadata preparation stalled at {count} of {expected} instances "
                f"for {PREPARE_STALL_TIMEOUT:.0f} s"
            )
        serve.check_running("preparing metadata")
        time.sleep(0.2)


def check_log_clean(serve: ServeProcess) -> list[str]:
    """Lines of the serve log that report errors (tracebacks, ERROR, 500s), for the report."""
    try:
        text = serve.log_path.read_text(errors="replace")
    except OSError:
        return []
    return [
        line
        for line in text.splitlines()
        if "ERROR" in line or "Traceback" in line or "Exception" in line
    ]


__all__ = [
    "DICOMWEB_ROOT",
    "LoadedArchive",
    "OursError",
    "ServeProcess",
    "check_log_clean",
    "load_archive",
    "prepared_count",
    "wait_metadata_prepared",
    "wait_serving",
]
