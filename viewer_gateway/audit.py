"""The audit trail: one line per access to patient data, apart from the operational log."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

_logger = logging.getLogger("vna.audit")
_logger.propagate = False


def configure(path: Path | None) -> None:
    """Send audit lines to `path` (JSON lines); without a path they go to stderr."""
    for old in list(_logger.handlers):
        _logger.removeHandler(old)
        old.close()
    handler: logging.Handler
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    _logger.addHandler(handler)
    _logger.setLevel(logging.INFO)


def record(who: str, client: str, method: str, path: str, status: int) -> None:
    """Who, what, when, outcome."""
    _logger.info(
        json.dumps(
            {
                "at": dt.datetime.now(dt.UTC).isoformat(),
                "who": who,
                "client": client,
                "method": method,
                "resource": path,
                "status": status,
            }
        )
    )
