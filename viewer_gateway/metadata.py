"""WADO-RS metadata prepared once per instance, so a metadata request never parses files.

A background consumer of the change feed (cursor `gateway:metadata`) reads
each new instance's header once, turns it into DICOM JSON with BulkDataURIs
relative to a placeholder, and stores it compressed. A request fills in its
own base URL. An instance not prepared yet (the consumer is behind) is
prepared on the spot and stored for the next request.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import threading
import zlib
from typing import Any

import pydicom
from sqlalchemy import Engine, select, update

from viewer_gateway.tiers import InstanceStore, Located
from vna.index import schema
from vna.index.dialect import native_insert
from vna.index.engine import write_transaction

logger = logging.getLogger("vna.gateway")
BASE = "vna-base:"  # replaced by the request's base URL
CURSOR = "gateway:metadata"
BULK_THRESHOLD = 1024


def prepare(inst: Located, data: bytes) -> bytes:
    """Compressed DICOM JSON of one instance, URLs relative to BASE."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    url = f"{BASE}/studies/{inst.study_uid}/series/{inst.series_uid}/instances/{inst.sop_uid}"

    def bulk(elem: Any) -> str:
        return f"{url}/bulkdata/{elem.tag:08X}"

    item = ds.to_json_dict(bulk_data_threshold=BULK_THRESHOLD, bulk_data_element_handler=bulk)
    vr = "OB" if "1.2.840.10008.1.2.4" in inst.transfer_syntax_uid else "OW"
    item["7FE00010"] = {"vr": vr, "BulkDataURI": f"{url}/frames/1"}
    item.setdefault("00020010", {"vr": "UI", "Value": [inst.transfer_syntax_uid]})
    return zlib.compress(json.dumps(item, separators=(",", ":")).encode(), 6)


def _upsert(engine: Engine, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    m = schema.instance_metadata
    with write_transaction(engine) as conn:
        stmt = native_insert(conn, m)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["sop_uid"],
                set_={"digest": stmt.excluded.digest, "json": stmt.excluded.json},
            ),
            rows,
        )


class MetadataCache:
    """Prepared metadata: read it, and keep it prepared as instances arrive."""

    def __init__(self, store: InstanceStore, engine: Engine) -> None:
        self.store = store
        self.engine = engine

    def get(self, found: list[Located], base_url: str) -> bytes:
        """The metadata of `found` as one DICOM JSON array, URLs under `base_url`.

        The stored JSON is joined as bytes, never parsed and serialized again.
        """
        m = schema.instance_metadata
        prepared: dict[str, tuple[str, bytes]] = {}
        uids = [i.sop_uid for i in found]
        with self.engine.connect() as conn:
            for k in range(0, len(uids), 500):
                for sop, digest, blob in conn.execute(
                    select(m.c.sop_uid, m.c.digest, m.c.json).where(
                        m.c.sop_uid.in_(uids[k : k + 500])
                    )
                ):
                    prepared[sop] = (digest, blob)
        # Prepared from an older version of the instance (replaced since): prepare again.
        current = {
            i.sop_uid: prepared.pop(i.sop_uid)[1]
            for i in found
            if prepared.get(i.sop_uid, ("", b""))[0] == i.digest
        }
        missing = [i for i in found if i.sop_uid not in current]
        fresh = {i.sop_uid: (i.digest, prepare(i, self.store.read(i))) for i in missing}
        _upsert(self.engine, [dict(sop_uid=k, digest=d, json=j) for k, (d, j) in fresh.items()])
        current.update({k: j for k, (_, j) in fresh.items()})
        base = json.dumps(base_url)[1:-1].encode()  # as it must appear inside a JSON string
        items = (zlib.decompress(current[i.sop_uid]).replace(BASE.encode(), base) for i in found)
        return b"[" + b",".join(items) + b"]"

    def catch_up(self, limit: int = 500) -> int:
        """Prepare the instances of the next change-feed rows; return how many were prepared."""
        c, ch = schema.replication_cursors, schema.changes
        now = dt.datetime.now(dt.UTC)
        with write_transaction(self.engine) as conn:
            conn.execute(
                native_insert(conn, c)
                .values(target=CURSOR, seq=0, updated_at=now)
                .on_conflict_do_nothing(index_elements=["target"])
            )
            cursor = conn.execute(select(c.c.seq).where(c.c.target == CURSOR)).scalar_one()
            rows = conn.execute(
                select(ch).where(ch.c.seq > cursor).order_by(ch.c.seq).limit(limit)
            ).all()
        if not rows:
            return 0
        latest = {r.sop_uid: r for r in rows if r.kind in ("created", "replaced")}
        prepared = []
        for change in latest.values():
            try:
                (inst,) = self.store.instances(change.study_uid, change.series_uid, change.sop_uid)
                if inst.digest != change.digest:
                    continue  # replaced again since; a later change row covers it
                prepared.append(
                    dict(
                        sop_uid=inst.sop_uid,
                        digest=inst.digest,
                        json=prepare(inst, self.store.read(inst)),
                    )
                )
            except Exception as exc:  # one bad instance must not stall the rest
                logger.error("metadata of %s not prepared: %s", change.sop_uid, exc)
        _upsert(self.engine, prepared)
        with write_transaction(self.engine) as conn:
            conn.execute(
                update(c).where(c.c.target == CURSOR).values(seq=rows[-1].seq, updated_at=now)
            )
        return len(prepared)

    def run(self, stop: threading.Event, poll_seconds: float = 1.0) -> None:
        """Keep metadata prepared until `stop` is set."""
        while not stop.is_set():
            try:
                busy = self.catch_up()
            except Exception:
                logger.exception("preparing metadata failed; retrying")
                busy = 0
            if not busy:
                stop.wait(poll_seconds)
