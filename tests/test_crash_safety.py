"""SIGKILL the ingest at random moments; the next start completes or rolls back.

Each trial drops a new export (and sometimes a re-export of an earlier one),
starts `vna ingest` as a real process group, kills the whole group with
SIGKILL at a random instant, and goes on. At the end one clean run drains
what is left, and the invariant must hold: every input archived, logged as a
duplicate or quarantined exactly once; nothing left in the drop folder; no
partial or orphaned file in the layout; `vna verify` clean.

VNA_SOAK_TRIALS raises the number of trials (default 20, what CI runs).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from vna.index import schema
from vna.index.engine import open_index
from vna.sample import SampleSpec, datasets, generate

TRIALS = int(os.environ.get("VNA_SOAK_TRIALS", "20"))
PER_TRIAL = 25


def write_config(base: Path, url: str) -> Path:
    cfg = base / "vna.toml"
    cfg.write_text(
        f"""
[archive]
root = "archive"
quarantine = "quarantine"
[index]
url = "{url}"
[ingest]
settle_seconds = 0
workers = 2
batch_size = 8
rescan_seconds = 1
[[sources]]
name = "pacs-a"
drop = "drop"
issuer_of_patient_id = "PACS_A"
"""
    )
    return cfg


def start(cfg: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vna.cli.main",
            "--config",
            str(cfg),
            "--log-level",
            "WARNING",
            "ingest",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


@pytest.mark.soak
def test_sigkill_at_random_moments_loses_nothing(tmp_path: Path, index_url: str) -> None:
    seed = int(os.environ.get("VNA_SOAK_SEED", str(int(time.time()))))
    rng = random.Random(seed)
    cfg = write_config(tmp_path, index_url)
    drop = tmp_path / "drop"
    expected: set[str] = set()
    bad_inputs = 0
    killed_mid_run = 0
    for trial in range(TRIALS):
        spec = SampleSpec(
            instances=PER_TRIAL, per_series=PER_TRIAL, rows=128, columns=128, seed=1000 + trial
        )
        generate(drop / f"export{trial:03d}", spec)
        expected |= {str(ds.SOPInstanceUID) for _, ds in datasets(spec)}
        if trial % 5 == 2:  # a re-export of an earlier study: duplicates
            generate(
                drop / f"reexport{trial:03d}",
                SampleSpec(instances=5, per_series=5, rows=128, columns=128, seed=1000),
            )
        if trial % 4 == 1:  # and some bad input
            (drop / f"export{trial:03d}" / "README.txt").write_text("not an image")
            bad_inputs += 1
        proc = start(cfg)
        time.sleep(rng.uniform(0.2, 2.5))
        if proc.poll() is None:
            killed_mid_run += 1
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    final = start(cfg, "--once")
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err.decode()

    assert killed_mid_run >= TRIALS // 2, f"seed {seed}: the kills did not hit running processes"
    engine = open_index(index_url)
    try:
        with engine.connect() as conn:
            archived = set(conn.execute(select(schema.instances.c.sop_uid)).scalars())
            reasons = list(conn.execute(select(schema.quarantine.c.reason)).scalars())
    finally:
        engine.dispose()
    assert archived == expected, f"seed {seed}"
    assert reasons == ["not-dicom"] * bad_inputs, f"seed {seed}"
    assert not [p for p in drop.rglob("*") if p.is_file()], f"seed {seed}: drop files left"
    entries = [d for d in (tmp_path / "quarantine" / "pacs-a").iterdir()]
    assert len(entries) == bad_inputs
    assert not list((tmp_path / "quarantine" / ".incoming").glob("*"))
    verify = subprocess.run(
        [sys.executable, "-m", "vna.cli.main", "--config", str(cfg), "verify"],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, f"seed {seed}: {verify.stdout}"
    assert f"verified {len(expected)} files against {len(expected)} index rows" in verify.stdout
