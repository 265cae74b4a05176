"""rclone as a benchmark peer: a throw-away config, `rclone copy` and `rclone sync` commands.

rclone is the tool a site would otherwise use to mirror a folder tree to cloud
storage, so our replicator is measured against it on the same files and the
same targets. rclone decides what to copy by listing both sides and comparing
(size and modification time by default), and after each transfer compares the
MD5 of source and destination as each side reports it; it keeps no state
between runs, so every pass lists the whole tree.

The config is written per benchmark run and passed with `--config`, so the
user's own rclone.conf is never read. Azure Blob is reached through Azurite:
rclone 1.60 needs `use_emulator = true` and the account's `endpoint` together.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from peers.orthanc import PeerError

RCLONE = "rclone"
#: The remote name of the Azurite blob service in the written config.
AZURE_REMOTE = "azurite"


def rclone_missing() -> str | None:
    """None when rclone can be run, else why not."""
    if shutil.which(RCLONE) is None:
        return "'rclone' not found on PATH: install the Debian package 'rclone'"
    return None


def rclone_version() -> str:
    """The first line of `rclone version` (for the report)."""
    try:
        out = subprocess.run(
            [RCLONE, "version"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise PeerError(f"rclone version: {exc}") from exc
    return out.splitlines()[0].strip() if out else "unknown"


def write_config(path: Path, azure_endpoint: str | None) -> Path:
    """An rclone.conf with the Azurite remote (when an endpoint is given); local paths need none."""
    lines = ["# Written by scripts/bench_replicate.py; used only through --config."]
    if azure_endpoint:
        lines += [
            f"[{AZURE_REMOTE}]",
            "type = azureblob",
            "use_emulator = true",
            f"endpoint = {azure_endpoint}",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def azure_path(container: str, prefix: str) -> str:
    """The rclone path of `prefix` in a container of the Azurite remote."""
    return f"{AZURE_REMOTE}:{container}/{prefix}"


def command(config: Path, verb: str, source: str, dest: str, transfers: int) -> list[str]:
    """`rclone copy|sync SOURCE DEST` with `transfers` transfers and as many checkers."""
    if verb not in ("copy", "sync"):
        raise ValueError(f"rclone verb {verb!r}: copy or sync")
    return [
        RCLONE, "--config", str(config), verb, source, dest,
        "--transfers", str(transfers), "--checkers", str(transfers),
    ]  # fmt: skip
