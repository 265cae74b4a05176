"""Tiered reads: a missing or damaged tier-0 file is served from a verified replica."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient

from replicator.daemon import Replicator
from tests.conftest import make_archive
from tests.test_gateway import parts
from viewer_gateway.app import create_app
from vna import digest
from vna.sample import SampleSpec, datasets, generate
from vna.settings import GatewaySettings

SPEC = SampleSpec(instances=2, per_series=2, rows=32, columns=32)


@pytest.mark.parametrize("kind", ["file", "azure"])
@pytest.mark.parametrize("damage", ["delete", "corrupt"])
def test_damaged_local_copy_is_served_from_the_replica(
    tmp_path: Path, kind: str, damage: str, request: pytest.FixtureRequest
) -> None:
    if kind == "file":
        target: dict[str, Any] = {"name": "nfs", "url": f"file://{tmp_path}/replica"}
    else:
        server = request.getfixturevalue("azurite")
        target = {
            "name": "azure",
            "url": f"az://{server.new_container()}/site-1",
            "storage_options": server.storage_options(),
        }
    archive = make_archive(tmp_path, f"sqlite:///{tmp_path}/index.db", targets=[target])
    generate(archive.drop(), SPEC)
    archive.ingest()
    assert Replicator(archive.settings, archive.engine).run(once=True)
    ds0 = next(ds for _, ds in datasets(SPEC))
    local = next((tmp_path / "archive" / "studies").rglob(f"{ds0.SOPInstanceUID}.dcm"))
    good = local.read_bytes()
    if damage == "delete":
        local.unlink()
    else:
        local.write_bytes(good[:-4] + b"\0\0\0\0")
    gw = GatewaySettings(allow_anonymous=True, restore_local=True)
    c = TestClient(create_app(dataclasses.replace(archive.settings, gateway=gw), archive.engine))

    url = (
        f"/dicomweb/studies/{ds0.StudyInstanceUID}/series/{ds0.SeriesInstanceUID}"
        f"/instances/{ds0.SOPInstanceUID}"
    )
    r = c.get(
        url, headers={"Accept": "multipart/related; type=application/dicom; transfer-syntax=*"}
    )

    assert r.status_code == 200
    ((_, body),) = parts(r)
    assert digest.of_bytes(body) == digest.of_bytes(good)
    assert pydicom.dcmread(io.BytesIO(body)).PixelData == ds0.PixelData
    assert local.read_bytes() == good  # restored in tier 0


def test_no_intact_copy_anywhere_is_a_clear_error(tmp_path: Path) -> None:
    archive = make_archive(tmp_path, f"sqlite:///{tmp_path}/index.db")
    generate(archive.drop(), SPEC)
    archive.ingest()
    ds0 = next(ds for _, ds in datasets(SPEC))
    next((tmp_path / "archive" / "studies").rglob(f"{ds0.SOPInstanceUID}.dcm")).unlink()
    c = TestClient(
        create_app(
            dataclasses.replace(archive.settings, gateway=GatewaySettings(allow_anonymous=True)),
            archive.engine,
        )
    )

    r = c.get(
        f"/dicomweb/wado?requestType=WADO&studyUID={ds0.StudyInstanceUID}&seriesUID={ds0.SeriesInstanceUID}&objectUID={ds0.SOPInstanceUID}"
    )

    assert r.status_code == 502
    assert "no intact copy" in r.json()["message"]
