"""End to end: the bundled OHIF viewer in headless Chromium draws a study from the gateway.

Chromium is Debian's (/usr/bin/chromium), driven by Playwright with that
executable; the OHIF build comes from npm @ohif/app (tools/ohif, set up by
scripts/setup.sh). Both are required: a missing one fails the test.
"""

from __future__ import annotations

import dataclasses
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from PIL import Image, ImageStat

from tests.conftest import make_archive
from tests.servers import REPO, free_port
from viewer_gateway.app import create_app
from vna.sample import SampleSpec, datasets, generate
from vna.settings import GatewaySettings

CHROMIUM = Path("/usr/bin/chromium")
OHIF = REPO / "tools" / "ohif"
SPEC = SampleSpec(instances=6, per_series=6, rows=256, columns=256)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[str]:
    assert CHROMIUM.exists(), "Debian chromium is missing: run scripts/setup.sh"
    assert (OHIF / "index.html").exists(), "the OHIF build is missing: run scripts/setup.sh"
    archive = make_archive(tmp_path, f"sqlite:///{tmp_path}/index.db")
    generate(archive.drop(), SPEC)
    archive.ingest()
    port = free_port()
    gw = GatewaySettings(allow_anonymous=True, port=port, viewer=OHIF)
    app = create_app(dataclasses.replace(archive.settings, gateway=gw), archive.engine)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_ohif_opens_a_study_and_draws_the_image(gateway: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    study = next(ds.StudyInstanceUID for _, ds in datasets(SPEC))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--use-gl=swiftshader",
                "--enable-unsafe-swiftshader",
            ],
        )
        try:
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
        finally:
            browser.close()
    assert drawn, (
        f"the viewport stayed blank; see {tmp_path / 'ohif.png'}; failed requests: {failed}"
    )
    assert failed == []
