"""Shared fixtures: a fresh index on SQLite and on PostgreSQL, and a small archive.

PostgreSQL is a real server on 127.0.0.1:5432 (VNA_TEST_PG_URL); each test gets
its own schema, dropped afterwards. When the server cannot be reached the
PostgreSQL variants fail: they are never skipped.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import Engine, create_engine, text

from vna import settings as settings_mod
from vna.index.engine import open_index
from vna.ingest.commit import Outcome
from vna.ingest.daemon import IngestDaemon
from vna.settings import Settings

if TYPE_CHECKING:
    from tests.servers import Azurite, MotoS3

PG_URL = os.environ.get("VNA_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", "postgresql"])
def index_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty index database, once on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/index.db"
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@dataclass
class Archive:
    """An archive under a temporary folder, with sources `pacs-a` and `pacs-b`."""

    base: Path
    settings: Settings
    engine: Engine

    def drop(self, source: str = "pacs-a") -> Path:
        return self.settings.source(source).drop

    def ingest(self) -> list[Outcome]:
        """Drain the drop folders once; return every outcome, in order."""
        outcomes: list[Outcome] = []
        IngestDaemon(self.settings, self.engine, on_outcome=outcomes.append).run(once=True)
        return outcomes

    def config_file(self) -> Path:
        """A settings file for this archive's index and layout, for commands run by `main`."""
        s = self.settings
        path = self.base / "vna.toml"
        path.write_text(
            f"""
[archive]
root = "{s.archive.root}"
quarantine = "{s.archive.quarantine}"
[index]
url = "{s.index.url}"
[scheduler]
verify_days = {s.scheduler.verify_days}
keep_reports = {s.scheduler.keep_reports}
reports = "{s.scheduler.reports}"
"""
        )
        return path


def write_config(base: Path, url: str, policy: str = "quarantine", extra: str = "") -> Path:
    """A settings file with sources `pacs-a` (drop-a) and `pacs-b` (drop-b) below `base`,
    then `extra` TOML (more tables)."""
    p = base / "vna.toml"
    p.write_text(
        f"""
[archive]
root = "archive"
quarantine = "quarantine"
[index]
url = "{url}"
[ingest]
settle_seconds = 0
workers = 0
duplicate_policy = "{policy}"
[[sources]]
name = "pacs-a"
drop = "drop-a"
issuer_of_patient_id = "PACS_A"
[[sources]]
name = "pacs-b"
drop = "drop-b"
{extra}"""
    )
    return p


DEFAULT_SOURCES = [
    {"name": "pacs-a", "drop": "drop/pacs-a", "issuer_of_patient_id": "PACS_A"},
    {"name": "pacs-b", "drop": "drop/pacs-b", "issuer_of_patient_id": "PACS_B"},
]


def make_archive(
    base: Path,
    url: str,
    sources: list[dict[str, Any]] | None = None,
    targets: list[dict[str, Any]] | None = None,
    replicator: dict[str, Any] | None = None,
    scheduler: dict[str, Any] | None = None,
    **ingest: Any,
) -> Archive:
    """An archive below `base` on index `url`; call again to change its settings."""
    data: dict[str, Any] = {
        "archive": {"root": "archive", "quarantine": "quarantine"},
        "index": {"url": url},
        "ingest": {"settle_seconds": 0, "workers": 0, "batch_size": 16, **ingest},
        "sources": sources if sources is not None else DEFAULT_SOURCES,
        "targets": targets or [],
        "replicator": {"poll_seconds": 0.1, "backoff_max_seconds": 2.0, **(replicator or {})},
        "scheduler": {"reports": "reports", **(scheduler or {})},
    }
    settings = settings_mod.from_dict(data, base)
    for src in settings.sources:
        src.drop.mkdir(parents=True, exist_ok=True)
    return Archive(base, settings, open_index(url))


@pytest.fixture
def archive(tmp_path: Path, index_url: str) -> Iterator[Archive]:
    a = make_archive(tmp_path, index_url)
    yield a
    a.engine.dispose()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """Azurite on a free loopback port, for the whole test session (per xdist worker)."""
    from tests.servers import Azurite

    server = Azurite(tmp_path_factory.mktemp("azurite"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    """moto's S3 server on a free loopback port, for the whole test session."""
    from tests.servers import MotoS3

    server = MotoS3(tmp_path_factory.mktemp("moto"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["file", "azure", "s3"])
def target_config(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """A fresh, empty replication target of each kind, as a [[targets]] entry."""
    if request.param == "file":
        return {"name": "nfs", "url": f"file://{tmp_path}/replica"}
    if request.param == "azure":
        server = request.getfixturevalue("azurite")
        return {
            "name": "azure",
            "url": f"az://{server.new_container()}/site-1",
            "storage_options": server.storage_options(),
        }
    server = request.getfixturevalue("moto_s3")
    return {
        "name": "s3",
        "url": f"s3://{server.new_bucket()}/site-1",
        "storage_options": server.storage_options(),
    }


@contextmanager
def in_thread(run: Callable[[], object], stop: Callable[[], object]) -> Iterator[None]:
    """`run` in a daemon thread, stopped with `stop` (and proven stopped) on the way out."""
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop()
        thread.join(timeout=20)
        assert not thread.is_alive(), f"{run} did not stop"
