"""`vna run`: ingest and replication in one process, stopped cleanly by SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import create_engine, func, select
from sqlalchemy.exc import OperationalError

from tests.servers import free_port
from vna.index import schema
from vna.sample import SampleSpec, generate


def test_run_ingests_and_replicates_until_stopped(tmp_path: Path) -> None:
    cfg = tmp_path / "vna.toml"
    port = free_port()
    cfg.write_text(
        f"""
[gateway]
port = {port}
allow_anonymous = true
[index]
url = "sqlite:///index.db"
[ingest]
settle_seconds = 0
workers = 1
[replicator]
poll_seconds = 0.2
[[sources]]
name = "pacs-a"
drop = "drop"
[[targets]]
name = "nfs"
url = "file://replica"
"""
    )
    (tmp_path / "drop").mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "vna.cli.main", "--config", str(cfg), "run"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.5)
        generate(tmp_path / "drop" / "export", SampleSpec(instances=5, rows=16, columns=16))
        engine = create_engine(f"sqlite:///{tmp_path}/index.db")
        deadline = time.monotonic() + 90
        done = 0
        while time.monotonic() < deadline and done < 5:
            time.sleep(0.2)
            try:
                with engine.connect() as conn:
                    r = schema.replicas
                    done = conn.execute(
                        select(func.count()).where(r.c.target == "nfs", r.c.state == "verified")
                    ).scalar_one()
            except OperationalError:
                continue  # vna run has not created the schema yet (a slow start)
        assert done == 5
        assert len(list((tmp_path / "replica" / "studies").rglob("*.dcm"))) == 5
        import json
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/dicomweb/studies") as resp:
            assert len(json.loads(resp.read())) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "services: gateway, replicator" in err
