"""What every benchmark does at its edges: clean up its work folder, treat SIGTERM as Ctrl-C."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path


def cleanup(work: Path, keep: bool) -> None:
    """Remove the benchmark's work folder, or say where it was kept."""
    if keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def stop_on_sigterm() -> None:
    """SIGTERM behaves like Ctrl-C, so every `finally` stops its processes and removes files."""
    signal.signal(signal.SIGTERM, _interrupt)
