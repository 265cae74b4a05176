"""The ingest intent journal: what a batch is about to place in the layout.

Written (and fsynced) before the first rename of a batch, removed after the
batch's index transaction committed. After a crash the next start replays it:
a placed file whose index row never committed is removed again (its drop file
is still there and will be taken anew), and a replaced file whose replacement
never committed gets its previous version back from quarantine. So the layout
never holds a file the index does not know, whatever instant the crash hit.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, select

from vna.index import schema
from vna.layout import JOURNAL, Layout, fsync_dir
from vna.quarantine import QuarantineStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Intent:
    path: str  # layout-relative
    kind: str  # created | replaced
    old_digest: str | None = None
    superseded_source: str | None = None
    superseded_id: str | None = None


def write(folder: Path, intents: list[Intent], durable: bool) -> None:
    """Record the intents of a batch durably, before any of them is carried out.

    The journal file lives as long as its staging folder (`prepare_file`), so
    one fdatasync of its content is enough: no new directory entry to sync. A
    crash in the middle of this write leaves a torn journal, and no rename
    followed it.
    """
    # vars(), not asdict(): a flat record of strings needs none of asdict's deep copy.
    text = "".join(json.dumps(vars(intent)) + "\n" for intent in intents).encode()
    fd = os.open(folder / JOURNAL, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, text)
        if durable:
            os.fdatasync(fd)
    finally:
        os.close(fd)


def prepare_file(folder: Path, durable: bool) -> None:
    """Create the (empty) journal file of a staging folder and make its name durable."""
    path = folder / JOURNAL
    if not path.exists():
        path.touch()
        if durable:
            fsync_dir(folder)


def clear(folder: Path) -> None:
    """The batch committed: its intents are facts now. Replaying them again is harmless."""
    path = folder / JOURNAL
    if path.exists():
        os.truncate(path, 0)


def read(folder: Path) -> list[Intent]:
    path = folder / JOURNAL
    if not path.exists():
        return []
    intents = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.strip()
            if line:
                try:
                    intents.append(Intent(**json.loads(line)))
                except (ValueError, TypeError):
                    # A torn journal was never completed, so no rename followed it.
                    return []
    return intents


def _restore_superseded(
    intent: Intent, layout: Layout, quarantine: QuarantineStore, touched: set[str | Path]
) -> bool:
    """Put back the version a replacement that never committed had pushed aside."""
    if not (intent.superseded_id and intent.superseded_source):
        return False
    entry_dir = quarantine.entry_dir(intent.superseded_source, intent.superseded_id)
    old = entry_dir / Path(intent.path).name
    if not old.exists():
        return False
    staged = layout.staging_dir() / f"restore-{intent.superseded_id}"
    staged.unlink(missing_ok=True)
    os.link(old, staged)
    touched |= layout.place(staged, intent.path)
    quarantine.release_dir(entry_dir)
    return True


def replay(folder: Path, engine: Engine, layout: Layout, quarantine: QuarantineStore) -> int:
    """Undo what a batch placed without committing; return how many files were undone."""
    intents = read(folder)
    undone = 0
    touched: set[str | Path] = set()
    t = schema.instances
    with engine.connect() as conn:
        for intent in intents:
            digest = conn.execute(
                select(t.c.digest).where(t.c.path == intent.path)
            ).scalar_one_or_none()
            target = layout.path(intent.path)
            if intent.kind == "created" and digest is None:
                if target.exists():
                    target.unlink()
                    touched.add(target.parent)
                    undone += 1
            elif (
                intent.kind == "replaced"
                and digest is not None
                and digest == intent.old_digest
                and _restore_superseded(intent, layout, quarantine, touched)
            ):
                undone += 1
    layout.sync_dirs(touched)
    clear(folder)
    if undone:
        logger.warning(
            "recovered an interrupted batch: %d file(s) rolled back in the layout", undone
        )
    return undone
