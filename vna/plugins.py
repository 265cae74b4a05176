"""Plug-ins by name: the parts other packages add to `vna` through entry points.

`vna` never imports the replicator or the gateway; they register their CLI
commands (`vna.commands`) and their services for `vna run` (`vna.services`),
and are loaded here when used.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from types import ModuleType

logger = logging.getLogger(__name__)


def load(group: str) -> list[ModuleType]:
    """Every module registered under `group`, by name; one that fails to import is reported."""
    found = []
    for entry in sorted(entry_points(group=group), key=lambda e: e.name):
        try:
            found.append(entry.load())
        except ImportError as exc:
            logger.error("%s %r is not available: %s", group, entry.name, exc)
    return found
