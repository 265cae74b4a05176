"""The `vna` command line: status, quarantine list/retry, verify exit codes, clear errors."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from tests.conftest import write_config
from vna.cli.main import entry, main
from vna.sample import SampleSpec, generate


def vna(cfg: Path, *args: str) -> int:
    return main(["--config", str(cfg), *args])


def test_status_counts_per_source_and_outcome(
    tmp_path: Path, index_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, index_url)
    generate(tmp_path / "drop-a", SampleSpec(instances=3, rows=16, columns=16))
    generate(tmp_path / "drop-b", SampleSpec(instances=2, rows=16, columns=16, seed=7))
    (tmp_path / "drop-b" / "notes.txt").write_text("hello")
    assert vna(cfg, "ingest", "--once") == 0
    generate(tmp_path / "drop-a", SampleSpec(instances=1, rows=16, columns=16))  # a duplicate
    assert vna(cfg, "ingest", "--once") == 0
    capsys.readouterr()

    assert vna(cfg, "status", "--json") == 0

    report = json.loads(capsys.readouterr().out)
    a, b = report["sources"]["pacs-a"], report["sources"]["pacs-b"]
    assert (a["archived"], a["duplicates"], a["quarantined"]) == (3, 1, 0)
    assert (b["archived"], b["duplicates"], b["quarantined"]) == (2, 0, 1)
    assert b["quarantine_reasons"] == {"not-dicom": 1}
    assert report["totals"]["instances"] == 5 and report["totals"]["studies"] == 2
    assert vna(cfg, "status") == 0
    assert "pacs-b" in capsys.readouterr().out


def test_quarantine_retry_after_the_policy_changed(
    tmp_path: Path, index_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, index_url)
    generate(tmp_path / "drop-a", SampleSpec(instances=1, rows=16, columns=16))
    vna(cfg, "ingest", "--once")
    (f,) = generate(tmp_path / "drop-a", SampleSpec(instances=1, rows=16, columns=16))
    ds = pydicom.dcmread(f)
    ds.PatientName = "Corrected^Name"
    ds.save_as(f)
    vna(cfg, "ingest", "--once")
    capsys.readouterr()
    assert vna(cfg, "quarantine", "list", "--json") == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["reason"] == "duplicate-conflict"

    assert vna(cfg, "quarantine", "retry", entry["id"]) == 1  # same policy: still a conflict
    assert "0 taken in, 1 still quarantined" in capsys.readouterr().out
    cfg = write_config(tmp_path, index_url, policy="replace")
    assert vna(cfg, "quarantine", "retry", "--all") == 0
    out = capsys.readouterr().out
    assert "replaced" in out and "1 taken in" in out
    assert vna(cfg, "quarantine", "list", "--json") == 0
    held = json.loads(capsys.readouterr().out)
    assert [e["reason"] for e in held] == ["superseded"]  # the old version, kept
    assert not (tmp_path / "quarantine" / "pacs-a" / entry["id"]).exists()
    assert vna(cfg, "verify") == 0


def test_verify_exits_non_zero_with_a_list(
    tmp_path: Path, index_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, index_url)
    generate(tmp_path / "drop-a", SampleSpec(instances=2, rows=16, columns=16))
    vna(cfg, "ingest", "--once")
    victim = next((tmp_path / "archive" / "studies").rglob("*.dcm"))
    victim.unlink()
    capsys.readouterr()

    assert vna(cfg, "verify") == 1

    out = capsys.readouterr().out
    assert f"missing-file: {victim.relative_to(tmp_path / 'archive')}" in out
    assert "1 problem(s)" in out


def test_bad_config_is_a_clear_cli_error(tmp_path: Path) -> None:
    bad = tmp_path / "vna.toml"
    bad.write_text("[ingest]\nworkers = -1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "vna.cli.main", "--config", str(bad), "status"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "ingest.workers: expected a whole number >= 0, got -1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unreachable_index_is_exit_code_3(tmp_path: Path) -> None:
    cfg = tmp_path / "vna.toml"
    cfg.write_text(
        '[index]\nurl = "postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2"\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "vna.cli.main", "--config", str(cfg), "status"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 3, proc.stderr
    assert "index database unreachable" in proc.stderr


def test_report_capacity_writes_each_format(tmp_path: Path, index_url: str) -> None:
    cfg = write_config(tmp_path, index_url)
    generate(tmp_path / "drop-a", SampleSpec(instances=2, rows=16, columns=16))
    vna(cfg, "ingest", "--once")
    for fmt in ("html", "csv", "json"):
        out = tmp_path / f"capacity.{fmt}"
        assert vna(cfg, "report", "capacity", "--format", fmt, "--out", str(out)) == 0
        assert out.stat().st_size > 100
    assert (
        json.loads((tmp_path / "capacity.json").read_text())["by_source"]["pacs-a"]["instances"]
        == 2
    )


def test_every_service_unit_starts_a_real_command() -> None:
    from vna.cli.main import build_parser

    units = sorted((Path(__file__).resolve().parent.parent / "etc" / "systemd").glob("*.service"))
    assert {u.stem for u in units} >= {"vna-ingest", "vna-replicate", "vna-serve", "vna-scheduler"}
    parser = build_parser()
    for unit in units:
        (line,) = [x for x in unit.read_text().splitlines() if x.startswith("ExecStart=")]
        argv = line.split()[1:]
        args = parser.parse_args(argv)  # SystemExit (a failure) for an unknown command
        assert callable(args.handler), unit.name


def test_the_vna_command_writes_everything_before_its_fast_exit(
    tmp_path: Path, index_url: str
) -> None:
    """The installed command leaves its objects to the end of the process (`entry`): what
    it wrote is still all there, and its exit status is the command's."""
    cfg = write_config(tmp_path, index_url)
    generate(tmp_path / "drop-a", SampleSpec(instances=2, rows=16, columns=16))
    vna(cfg, "ingest", "--once")
    out = tmp_path / "capacity.json"
    command = Path(sys.executable).with_name("vna")
    args = ["--config", str(cfg), "report", "capacity", "--format", "json", "--out", str(out)]

    proc = subprocess.run([str(command), *args], capture_output=True, text=True)

    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["by_source"]["pacs-a"]["instances"] == 2
    bad = subprocess.run([str(command), "--config", str(tmp_path / "none.toml"), "status"])
    assert bad.returncode == 2


def test_entry_freezes_the_heap_once_the_command_is_done(
    tmp_path: Path, index_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = write_config(tmp_path, index_url)
    monkeypatch.setattr(sys, "argv", ["vna", "--config", str(cfg), "status"])
    try:
        assert entry() == 0
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
