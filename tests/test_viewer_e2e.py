"""End to end: the bundled OHIF viewer in headless Chromium draws a study from the gateway.

Chromium is Debian's (/usr/bin/chromium), driven by Playwright with that
executable; the OHIF build comes from npm @ohif/app (tools/ohif, set up by
scripts/setup.sh). Both are required: a missing one fails the test.
"""

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from tests.browser import chromium, serving
from tests.conftest import make_archive
from tests.servers import REPO
from viewer_gateway.app import create_app
from vna.sample import SampleSpec, datasets, generate
from vna.settings import GatewaySettings

OHIF = REPO / "tools" / "ohif"
SPEC = SampleSpec(instances=6, per_series=6, rows=256, columns=256)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[str]:
    assert (OHIF / "index.html").exists(), "the OHIF build is missing: run scripts/setup.sh"
    archive = make_archive(tmp_path, f"sqlite:///{tmp_path}/index.db")
    generate(archive.drop(), SPEC)
    archive.ingest()
    gw = GatewaySettings(allow_anonymous=True, viewer=OHIF)
    with serving(
        create_app(dataclasses.replace(archive.settings, gateway=gw), archive.engine)
    ) as url:
        yield url


def test_ohif_opens_a_study_and_draws_the_image(gateway: str, tmp_path: Path) -> None:
    study = next(ds.StudyInstanceUID for _, ds in datasets(SPEC))
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        failed: list[str] = []
        page.on(
            "response",
            lambda r: (
                failed.append(f"{r.status} {r.url}")
                if "/dicomweb/" in r.url and r.status >= 400
                else None
            ),
        )
        page.goto(f"{gateway}/viewer?StudyInstanceUIDs={study}", wait_until="domcontentloaded")
        canvas = page.locator("canvas").first
        canvas.wait_for(state="visible", timeout=60_000)
        drawn = False
        deadline = time.monotonic() + 60
        shot = b""
        while time.monotonic() < deadline and not drawn:
            page.wait_for_timeout(1000)
            shot = canvas.screenshot()
            stat = ImageStat.Stat(Image.open(io.BytesIO(shot)).convert("L"))
            drawn = stat.stddev[0] > 5 and stat.extrema[0][1] > 50  # an image, not a blank box
        (tmp_path / "ohif.png").write_bytes(page.screenshot())
    assert drawn, (
        f"the viewport stayed blank; see {tmp_path / 'ohif.png'}; failed requests: {failed}"
    )
    assert failed == []
