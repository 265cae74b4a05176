"""Instance bytes from tier 0, or from a verified replica when tier 0 fails.

Whatever tier they come from, bytes are hashed and compared with the index's
digest before a viewer sees them (DESIGN.md, invariant 5). A fallback is
logged, and with `gateway.restore_local` the verified bytes are written back
into the layout the same way ingest writes (staging file, fsync, rename).
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select

from vna import digest
from vna.errors import Corrupt, NotFound
from vna.index import schema
from vna.layout import Layout, check_uid
from vna.settings import Settings
from vna.targets.registry import open_target

logger = logging.getLogger("vna.gateway")


@dataclass(frozen=True)
class Located:
    """An archived instance, as the index knows it."""

    study_uid: str
    series_uid: str
    sop_uid: str
    path: str
    size: int
    digest: str
    transfer_syntax_uid: str
    sop_class_uid: str | None
    number_of_frames: int | None


class InstanceStore:
    """Finds instances in the index and reads their verified bytes."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.layout = Layout(settings.archive.root, settings.archive.fsync)
        self._targets: dict[str, Any] = {}
        self._lock = threading.Lock()

    def instances(
        self, study: str, series: str | None = None, sop: str | None = None
    ) -> list[Located]:
        """Instances of a study, a series or one instance, in series and instance order."""
        i, se, st = schema.instances, schema.series, schema.studies
        stmt = (
            select(
                st.c.study_uid, se.c.series_uid, i.c.sop_uid, i.c.path, i.c.size, i.c.digest,
                i.c.transfer_syntax_uid, i.c.sop_class_uid, i.c.number_of_frames,
            )
            .join(se, i.c.series_pk == se.c.id)
            .join(st, se.c.study_pk == st.c.id)
            .where(st.c.study_uid == check_uid(study, "StudyInstanceUID"))
            .order_by(se.c.series_number, se.c.id, i.c.instance_number, i.c.id)
        )  # fmt: skip
        if series is not None:
            stmt = stmt.where(se.c.series_uid == check_uid(series, "SeriesInstanceUID"))
        if sop is not None:
            stmt = stmt.where(i.c.sop_uid == check_uid(sop, "SOPInstanceUID"))
        with self.engine.connect() as conn:
            found = [Located(*row) for row in conn.execute(stmt)]
        if not found:
            what = "instance" if sop else "series" if series else "study"
            raise NotFound(f"no such {what} in the archive")
        return found

    def prefetch(self, insts: list[Located]) -> None:
        """Ask the kernel to start reading `insts` from tier 0 now, in the background.

        A retrieve reads its instances one after another; from a cold page cache each
        read would wait for the disk alone. Advised ahead of their turn, the files are
        read by the kernel while earlier ones are sent, several requests in flight at
        once. Only advice: a file that cannot be opened is left to `read`, and where the
        system has no posix_fadvise nothing is done.
        """
        if not hasattr(os, "posix_fadvise"):
            return
        for inst in insts:
            try:
                fd = os.open(self.layout.path(inst.path), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass
            finally:
                os.close(fd)

    def read(self, inst: Located) -> bytes:
        """The instance's bytes, proven against the index digest."""
        try:
            data = self.layout.path(inst.path).read_bytes()
            if digest.of_bytes(data) == inst.digest:
                return data
            problem = "does not match its digest"
        except FileNotFoundError:
            problem = "is missing"
        logger.warning("tier 0 copy of %s %s: reading a replica", inst.path, problem)
        data = self._from_replica(inst)
        if self.settings.gateway.restore_local:
            self._restore(inst, data)
        return data

    def _from_replica(self, inst: Located) -> bytes:
        r = schema.replicas
        with self.engine.connect() as conn:
            names = list(
                conn.execute(
                    select(r.c.target).where(
                        r.c.sop_uid == inst.sop_uid,
                        r.c.state == "verified",
                        r.c.digest == inst.digest,
                    )
                ).scalars()
            )
        for name in names:
            try:
                target = self._target(name)
                with target.open(inst.path) as fh:
                    data = bytes(fh.read())
            except Exception as exc:  # one unreachable replica: try the next
                logger.error("replica %s of %s unreadable: %s", name, inst.path, exc)
                continue
            if digest.of_bytes(data) == inst.digest:
                logger.warning("served %s from replica %s", inst.path, name)
                return data
            logger.error("replica %s of %s does not match its digest", name, inst.path)
        raise Corrupt(f"no intact copy of {inst.sop_uid}: tier 0 and the replicas failed")

    def _target(self, name: str) -> Any:
        with self._lock:
            if name not in self._targets:
                self._targets[name] = open_target(self.settings.target(name))
            return self._targets[name]

    def _restore(self, inst: Located, data: bytes) -> None:
        staging = self.layout.root / ".staging"
        staging.mkdir(parents=True, exist_ok=True)
        tmp = staging / f"restore-{uuid.uuid4().hex}.dcm"
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        dirs = self.layout.place(tmp, inst.path)
        self.layout.sync_dirs(dirs)
        logger.warning("restored tier 0 copy of %s from a replica", inst.path)
