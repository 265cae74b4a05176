"""Real clients over a real socket: dicomweb-client against `vna serve`'s app in uvicorn."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from dicomweb_client.api import DICOMwebClient

from tests.conftest import Archive, make_archive
from tests.servers import free_port
from viewer_gateway.app import create_app
from vna.sample import SampleSpec, datasets, generate
from vna.settings import GatewaySettings

SPEC = SampleSpec(instances=6, per_series=3, rows=64, columns=64)


@pytest.fixture
def served(tmp_path: Path, index_url: str) -> Iterator[tuple[Archive, str]]:
    archive = make_archive(tmp_path, index_url)
    generate(archive.drop(), SPEC)
    archive.ingest()
    port = free_port()
    settings = dataclasses.replace(
        archive.settings, gateway=GatewaySettings(allow_anonymous=True, port=port)
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, archive.engine), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield archive, f"http://127.0.0.1:{port}/dicomweb"
    server.should_exit = True
    thread.join(timeout=10)


def test_dicomweb_client_searches_retrieves_and_reads_frames(served: tuple[Archive, str]) -> None:
    _, url = served
    client = DICOMwebClient(url)
    originals = {ds.SOPInstanceUID: ds for _, ds in datasets(SPEC)}
    (study,) = client.search_for_studies(search_filters={"PatientName": "Müller*"})
    study_uid = study["0020000D"]["Value"][0]
    series = client.search_for_series(study_uid)
    assert len(series) == 2
    series_uid = series[0]["0020000E"]["Value"][0]
    instances = client.search_for_instances(study_uid, series_uid)
    assert len(instances) == 3

    retrieved = client.retrieve_series(study_uid, series_uid)
    assert len(retrieved) == 3
    for ds in retrieved:
        assert ds.PixelData == originals[ds.SOPInstanceUID].PixelData  # bit-exact

    meta = client.retrieve_series_metadata(study_uid, series_uid)
    assert {m["00080018"]["Value"][0] for m in meta} == {ds.SOPInstanceUID for ds in retrieved}

    sop = retrieved[0].SOPInstanceUID
    (frame,) = client.retrieve_instance_frames(
        study_uid,
        series_uid,
        sop,
        frame_numbers=[1],
        media_types=(("application/octet-stream", "*"),),
    )
    assert frame == originals[sop].PixelData

    jpeg = client.retrieve_instance_rendered(
        study_uid, series_uid, sop, media_types=("image/jpeg",)
    )
    assert jpeg[:3] == b"\xff\xd8\xff"  # a JPEG stream
    png = client.retrieve_instance_rendered(study_uid, series_uid, sop, media_types=("image/png",))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    one = client.retrieve_instance(study_uid, series_uid, sop)
    assert one.SOPInstanceUID == sop and one.PixelData == originals[sop].PixelData
