"""The admin status page: right figures, admin only, and readable in a browser.

The browser test opens the page and the scheduled HTML report it links in
headless Chromium and checks that the charts are drawn; the report is also
opened from disk with the network cut off, since it must work offline.
"""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.browser import chromium, serving
from tests.conftest import Archive, make_archive
from viewer_gateway.app import create_app
from viewer_gateway.auth import hash_key
from vna.cli.main import main as vna_main
from vna.sample import SampleSpec, generate
from vna.scheduler import runs
from vna.settings import ApiKeySettings, GatewaySettings

ADMIN, READER = "admin-secret", "reader-secret"
KEYS = [
    ApiKeySettings(name="storage-admin", sha256=hash_key(ADMIN), role="admin"),
    ApiKeySettings(name="reading-room", sha256=hash_key(READER), role="read"),
]


@pytest.fixture
def site(tmp_path: Path, index_url: str) -> Archive:
    targets = [{"name": "cloud", "url": f"file://{tmp_path}/replica", "window": "0 20-6 * * *"}]
    archive = make_archive(tmp_path, index_url, targets=targets)
    generate(archive.drop(), SampleSpec(instances=6, per_series=3, rows=16, columns=16))
    (archive.drop() / "not-dicom.dcm").write_bytes(b"this is a PDF, not DICOM" * 10)
    archive.ingest()
    config = archive.config_file()
    assert vna_main(["--config", str(config), "jobs", "run", "report:capacity"]) == 0
    failed = runs.start(archive.engine, "reconcile:cloud", "schedule")
    runs.finish(archive.engine, failed, "failed", "TargetUnavailable: connection refused")
    return archive


def app_for(archive: Archive, **gateway: Any) -> Any:
    gw = dataclasses.replace(GatewaySettings(keys=KEYS), **gateway)
    return create_app(dataclasses.replace(archive.settings, gateway=gw), archive.engine)


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"admin:{key}".encode()).decode()


def test_the_status_figures_are_those_of_the_archive(site: Archive) -> None:
    client = TestClient(app_for(site))
    data = client.get("/admin/status.json", headers={"Authorization": f"Bearer {ADMIN}"}).json()
    assert data["archive"]["totals"]["instances"] == 6
    assert data["archive"]["sources"]["pacs-a"]["quarantined"] == 1
    assert sum(h["instances"] for h in data["intake"]["per_hour"].values()) == 6
    assert len(data["intake"]["per_hour"]) == 24
    assert data["intake"]["last_5_minutes"]["instances"] == 6
    (held,) = data["recent_quarantine"]
    assert held["file"].endswith("not-dicom.dcm") and held["reason"] == "not-dicom"
    cloud = data["replication"]["cloud"]
    assert cloud["verified"] == 0 and cloud["backlog"] == 6 and cloud["window"] == "0 20-6 * * *"
    jobs = {j["name"]: j for j in data["jobs"]["jobs"]}
    assert set(jobs) == {"verify", "report:capacity", "reconcile:cloud", "replicate:cloud"}
    assert jobs["report:capacity"]["last_run"]["outcome"] == "ok"
    assert jobs["reconcile:cloud"]["last_run"]["outcome"] == "failed"
    assert data["recent_failed_jobs"][0]["detail"] == "TargetUnavailable: connection refused"
    assert data["jobs"]["scheduler"]["running"] is False
    assert sorted(r["format"] for r in data["reports"]) == ["csv", "html", "json"]


def test_the_status_page_is_for_admins_only(site: Archive) -> None:
    client = TestClient(app_for(site, allow_anonymous=True))
    anonymous = client.get("/admin/status")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Basic")
    assert (
        client.get("/admin/status", headers={"Authorization": f"Bearer {READER}"}).status_code
        == 403
    )
    assert client.get("/admin/status", headers={"Authorization": basic("wrong")}).status_code == 401
    assert client.get("/admin/status", headers={"Authorization": "Basic %%%"}).status_code == 401
    not_utf8 = "Basic " + base64.b64encode(b"admin:\xff\xfe").decode()
    assert client.get("/admin/status", headers={"Authorization": not_utf8}).status_code == 401
    page = client.get("/admin/status", headers={"Authorization": basic(ADMIN)})
    assert page.status_code == 200 and "Archive status" in page.text
    assert page.headers["cache-control"] == "no-store"
    # DICOMweb keeps its Bearer challenge
    assert (
        TestClient(app_for(site)).get("/dicomweb/studies").headers["www-authenticate"] == "Bearer"
    )


def test_reports_are_served_by_name_only(site: Archive) -> None:
    client = TestClient(app_for(site))
    auth = {"Authorization": f"Bearer {ADMIN}"}
    name = client.get("/admin/status.json", headers=auth).json()["reports"][0]["name"]
    stem = name.rsplit(".", 1)[0]
    html = client.get(f"/admin/reports/{stem}.html", headers=auth)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "Capacity report" in html.text
    assert client.get(f"/admin/reports/{stem}.csv", headers=auth).text.startswith("section,")
    for bad in ("..%2Findex.db", "index.db", f"{stem}.exe", "capacity-x.html"):
        assert client.get(f"/admin/reports/{bad}", headers=auth).status_code == 404


@pytest.mark.parametrize("index_url", ["sqlite"], indirect=True)
def test_status_page_and_report_render_in_chromium(site: Archive, tmp_path: Path) -> None:
    with serving(app_for(site)) as url, chromium() as browser:
        context = browser.new_context(
            http_credentials={"username": "admin", "password": ADMIN},
            viewport={"width": 1200, "height": 900},
        )
        page = context.new_page()
        page.goto(f"{url}/admin/status")
        assert page.locator("h1").inner_text() == "Archive status"
        assert "6 instances" in page.locator(".kpi").first.inner_text()
        bars = page.locator("svg rect.bar")
        assert bars.count() >= 2  # intake per hour, and the cloud copy bar
        box = bars.first.bounding_box()
        assert box is not None and box["width"] > 0 and box["height"] > 0
        assert page.locator("td.failed").first.inner_text() == "failed"
        page.screenshot(path=str(tmp_path / "status.png"), full_page=True)
        with page.expect_navigation():
            page.locator('a[href$=".html"]').first.click()
        assert page.locator("h1").inner_text() == "Capacity report"
        assert page.locator("svg rect.bar").count() >= 3  # per month, source, modality
        assert page.locator("svg polyline.line").count() == 1  # the projection
        context.close()

        # Offline: every request other than the file itself is refused and counted.
        report = next(site.settings.scheduler.reports.glob("capacity-*.html"))
        offline = browser.new_context()
        outside: list[str] = []

        def refuse(route: Any) -> None:
            outside.append(route.request.url)
            route.abort()

        offline.route("http*://**", refuse)
        page = offline.new_page()
        page.goto(report.as_uri())
        assert page.locator("svg rect.bar").count() >= 3
        assert "6 instances" in page.locator(".kpi").first.inner_text()
        assert outside == []
        offline.close()
