"""Targets by URL scheme, each backend imported only when a target uses it."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

from vna.settings import TargetSettings
from vna.targets.target import Target


def open_target(settings: TargetSettings) -> Target:
    """The target a configuration entry names (TargetError if it cannot be opened)."""
    scheme = settings.url.partition("://")[0]
    if scheme == "file":
        from vna.targets.local import LocalTarget

        return LocalTarget(
            settings.name, settings.url, Path(unquote(settings.url[len("file://") :]))
        )
    from vna.targets.objectstore import FsspecTarget

    return FsspecTarget(settings.name, settings.url, settings.storage_options)
