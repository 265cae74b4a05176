"""The DICOMweb gateway through an in-process ASGI client, on SQLite and PostgreSQL."""

from __future__ import annotations

import email
import email.policy
import io
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient

from tests.conftest import Archive, make_archive
from viewer_gateway import matching
from viewer_gateway.app import create_app
from viewer_gateway.auth import hash_key
from vna.attributes import BY_KEYWORD, Level
from vna.sample import SampleSpec, datasets, generate

SPEC = SampleSpec(instances=6, per_series=3, rows=32, columns=32)
OCTETS = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


@pytest.fixture
def loaded(tmp_path: Path, index_url: str) -> Archive:
    archive = make_archive(tmp_path, index_url)
    generate(archive.drop(), SPEC)
    archive.ingest()
    return archive


def client(archive: Archive, **gateway: Any) -> TestClient:
    import dataclasses

    from vna.settings import ApiKeySettings, GatewaySettings

    keys = [ApiKeySettings(**k) for k in gateway.pop("keys", [])]
    gw = dataclasses.replace(GatewaySettings(allow_anonymous=True), keys=keys, **gateway)
    settings = dataclasses.replace(archive.settings, gateway=gw)
    return TestClient(create_app(settings, archive.engine))


def parts(response: Any) -> list[tuple[str, bytes]]:
    """Split a multipart/related body with the standard library's MIME parser."""
    raw = (
        b"Content-Type: "
        + response.headers["content-type"].encode()
        + b"\r\n\r\n"
        + response.content
    )
    msg = email.message_from_bytes(raw, policy=email.policy.HTTP)
    return [(p.get_content_type(), p.get_payload(decode=True)) for p in msg.iter_parts()]


def uids() -> tuple[str, list[str], list[str]]:
    items = [ds for _, ds in datasets(SPEC)]
    return (
        items[0].StudyInstanceUID,
        sorted({d.SeriesInstanceUID for d in items}),
        [d.SOPInstanceUID for d in items],
    )


def value(obj: dict[str, Any], tag: str) -> Any:
    return obj[tag]["Value"][0] if "Value" in obj.get(tag, {}) else None


def test_study_search_returns_default_attributes_and_counts(loaded: Archive) -> None:
    c = client(loaded)
    (study,) = c.get("/dicomweb/studies").json()
    assert value(study, "0020000D") == uids()[0]
    assert value(study, "00201206") == 2  # NumberOfStudyRelatedSeries
    assert value(study, "00201208") == 6  # NumberOfStudyRelatedInstances
    assert study["00080061"]["Value"] == ["CT"]  # ModalitiesInStudy
    assert study["00100010"]["Value"] == [{"Alphabetic": "Müller^Hans"}]
    assert value(study, "00081190").endswith(f"/dicomweb/studies/{uids()[0]}")


@pytest.mark.parametrize(
    ("query", "hits"),
    [
        ("PatientName=Müller*", 1),
        ("PatientName=m%C3%BCller*", 1),
        ("PatientName=M%C3%BCLLER%5EHANS", 1),
        ("PatientName=%2A", 1),
        ("PatientName=*", 1),
        ("PatientName=Smith*", 0),
        ("PatientName=hans&fuzzymatching=true", 1),
        ("00100020=P0100000", 1),
        ("PatientID=P01*", 1),
        ("PatientID=P0?00000", 1),
        ("PatientID=p0100000", 0),
        ("PatientID=p01*", 0),  # case-sensitive (PS3.4 C.2.2.2.4); SQLite's LIKE is not
        ("PatientID=P0[1]*", 0),  # a bracket is a character, not a set
        ("PatientID=*00000", 1),
        ("PatientID=P01*0", 1),
        ("StudyDate=20260101-20260131", 1),
        ("StudyDate=-20251231", 0),
        ("StudyDate=20260105-", 1),
        ("ModalitiesInStudy=CT", 1),
        ("ModalitiesInStudy=MR", 0),
        ("AccessionNumber=A010000000", 1),
    ],
)
def test_study_matching(loaded: Archive, query: str, hits: int) -> None:
    r = client(loaded).get(f"/dicomweb/studies?{query}")
    assert r.status_code == 200, r.text
    assert len(r.json()) == hits


def test_searches_of_one_shape_bind_their_own_values(loaded: Archive) -> None:
    """Each shape of search is compiled once and its values bound: searches that differ only
    in values, one after the other on one gateway, each get their own answer."""
    study, series, sops = uids()
    c = client(loaded)
    cases = [
        (f"/studies?StudyInstanceUID={study}%5C1.2.3", 1),
        ("/studies?StudyInstanceUID=1.2.3,1.2.4", 0),
        ("/studies?StudyTime=0759-0800", 1),
        ("/studies?StudyTime=0700-0759", 0),
        ("/studies?StudyTime=0801-", 0),
        ("/studies?StudyTime=-07:59", 0),
        ("/studies?PatientName=han&fuzzymatching=true", 1),
        ("/studies?PatientName=ans&fuzzymatching=true", 0),
        ("/studies?ReferringPhysicianName=*", 1),
        (f"/studies/{study}/series?SeriesNumber=2", 1),
        (f"/studies/{study}/series?SeriesNumber=3", 0),
        (f"/studies/{study}/series?Modality=C?", 2),
        (f"/studies/{study}/series?Modality=M?", 0),
        ("/studies/1.2.3/series", 0),
        (f"/series?SeriesInstanceUID={series[1]}", 1),
        (f"/studies/{study}/series/{series[1]}/instances", 3),
        (f"/studies/{study}/series/{series[1]}/instances?limit=2", 2),
        (f"/studies/{study}/series/{series[1]}/instances?limit=2&offset=2", 1),
        (f"/instances?SOPInstanceUID={sops[4]}", 1),
        (f"/instances?SOPInstanceUID={sops[4]}&SeriesInstanceUID={series[0]}", 0),
    ]
    for path, hits in cases:
        r = c.get("/dicomweb" + path)
        assert r.status_code == 200, (path, r.text)
        assert len(r.json()) == hits, path


@pytest.mark.parametrize("value", ["Müller*", "müller^hans", "M?ller^Hans"])
def test_patient_name_searches_are_served_by_the_name_index(loaded: Archive, value: str) -> None:
    """A name search with a fixed start reads the patient name index, not every study."""
    engine = loaded.engine
    (found,) = matching.terms(engine.dialect.name, [(BY_KEYWORD["PatientName"], value)], False)
    shape = ((found.key, found.form, len(found.values)),)
    compiled = matching._compiled_search(engine.dialect, Level.STUDY, shape)
    values = {f"t0_{n}": v for n, v in enumerate(found.values)}
    params = compiled.bind({"limit": 100, "offset": 0, **values})
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        if engine.dialect.name == "sqlite":
            cur.execute("EXPLAIN QUERY PLAN " + compiled.sql, params)
        else:  # a handful of rows: make the planner show whether the index can serve
            cur.execute("SET enable_seqscan = off")
            cur.execute("EXPLAIN " + compiled.sql, params)
        plan = str(cur.fetchall())
        cur.execute(compiled.sql, params)
        assert len(cur.fetchall()) == 1
    finally:
        raw.close()
    assert "ix_patients_patient_name_folded" in plan, plan


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the functions the gateway hands to its worker threads, in order."""
    from viewer_gateway.threads import Workers

    names: list[str] = []
    run = Workers.run

    async def counted(self: Workers, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        names.append(getattr(fn, "__name__", "?"))
        return await run(self, fn, *args, **kwargs)

    monkeypatch.setattr(Workers, "run", counted)
    return names


@pytest.mark.parametrize("budget", [0, None])
def test_a_search_over_its_budget_on_the_event_loop_is_answered_from_a_thread(
    loaded: Archive, budget: int | None, monkeypatch: pytest.MonkeyPatch, hops: list[str]
) -> None:
    """On SQLite a search runs on the event loop until it needs more work than the loop may
    give it; then it runs again in a worker thread, with the same answer."""
    from viewer_gateway import inline

    if budget is not None:
        monkeypatch.setattr(inline, "BUDGET", budget)
        monkeypatch.setattr(inline, "STEP", 1)
    c = client(loaded)
    (study,) = c.get("/dicomweb/studies?PatientName=m*").json()
    assert value(study, "00201208") == 6
    assert c.get("/dicomweb/studies?PatientName=nobody*").json() == []
    on_loop = loaded.engine.dialect.name == "sqlite" and budget is None
    expected = "search_body" if loaded.engine.dialect.name != "sqlite" else "in_thread"
    assert hops == ([] if on_loop else [expected, expected])


def test_after_a_search_on_the_event_loop_read_the_disk_threads_search_until_warm(
    loaded: Archive, monkeypatch: pytest.MonkeyPatch, hops: list[str]
) -> None:
    """A search on the loop that read the index from the disk sends searches to worker
    threads, until one there reads nothing from the disk."""
    from viewer_gateway import inline

    if loaded.engine.dialect.name != "sqlite":
        pytest.skip("only SQLite searches run on the event loop")
    # Blocks read: the first search on the loop reads one; after that, nothing more.
    reads = iter([0, 1])
    monkeypatch.setattr(inline, "_blocks_read", lambda: next(reads, 1))
    c = client(loaded)
    for _ in range(4):
        assert len(c.get("/dicomweb/studies?PatientName=m*").json()) == 1
    assert hops == ["in_thread"]  # the second; the third and fourth are on the loop again


def test_ohif_study_list_and_series_requests(loaded: Archive) -> None:
    c = client(loaded)
    r = c.get(
        "/dicomweb/studies?limit=101&offset=0&fuzzymatching=false&includefield=00081030%2C00080060%2C00080090%2C00100030"
    )
    (study,) = r.json()
    assert value(study, "00081030") == "CT CHEST ABDOMEN PELVIS"
    r = c.get(
        f"/dicomweb/studies/{uids()[0]}/series?includefield=00080021%2C00080031%2C0008103E%2C00200011"
    )
    series = r.json()
    assert [value(s, "00200011") for s in series] == [1, 2]
    assert all(value(s, "00201209") == 3 for s in series)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("limit=0", "limit must be between"),
        ("limit=99999999999", "limit must be between"),
        ("offset=-1", "offset must be between"),
        ("Nonsense=1", "unknown query parameter"),
        ("PixelData=1", "matching on PixelData is not supported"),
        ("StudyInstanceUID=../../etc", "not a valid UID"),
        ("StudyDate=yesterday", "is not a date"),
        ("fuzzymatching=maybe", "fuzzymatching must be"),
        ("SOPInstanceUID=1.2", "cannot be matched in a study search"),
        ("StudyInstanceUID=,", "a list of no UIDs"),
        ("StudyInstanceUID=%5C", "a list of no UIDs"),
    ],
)
def test_bad_search_parameters_are_400_with_a_message(
    loaded: Archive, query: str, message: str
) -> None:
    r = client(loaded).get(f"/dicomweb/studies?{query}")
    assert r.status_code == 400
    assert message in r.json()["message"]


@pytest.mark.parametrize(
    "path",
    [
        "/dicomweb/studies/..%2F..%2Fetc%2Fpasswd",
        "/dicomweb/studies/1.2.3%2F..%2F..",
        "/dicomweb/studies/abc/series",
        "/dicomweb/studies/1.2/series/x/instances/1/frames/1",
        "/dicomweb/studies/1.2/series/3.4/instances/5.6/frames/0",
        "/dicomweb/nothing-here",
    ],
)
def test_malformed_paths_are_4xx_never_a_file(loaded: Archive, path: str) -> None:
    r = client(loaded).get(path)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert "message" in r.json()


def test_retrieve_series_is_bit_exact_multipart(loaded: Archive) -> None:
    study, series, _ = uids()
    originals = {ds.SOPInstanceUID: ds for _, ds in datasets(SPEC)}
    for accept in (
        'multipart/related; type="application/dicom"',
        "multipart/related; type=application/dicom; transfer-syntax=*",
    ):
        r = client(loaded).get(
            f"/dicomweb/studies/{study}/series/{series[0]}", headers={"Accept": accept}
        )
        assert r.status_code == 200
        got = parts(r)
        assert len(got) == 3
        for ctype, body in got:
            assert ctype == "application/dicom"
            ds = pydicom.dcmread(io.BytesIO(body))
            assert ds.PixelData == originals[ds.SOPInstanceUID].PixelData


def test_frames_and_metadata_for_a_viewer(loaded: Archive) -> None:
    study, series, _ = uids()
    c = client(loaded)
    meta = c.get(f"/dicomweb/studies/{study}/series/{series[0]}/metadata").json()
    assert len(meta) == 3
    assert all("BulkDataURI" in m["7FE00010"] for m in meta)
    assert value(meta[0], "00280010") == 32
    sop = value(meta[0], "00080018")
    original = next(ds for _, ds in datasets(SPEC) if ds.SOPInstanceUID == sop)
    for accept in (OCTETS, "multipart/related; type=application/octet-stream; transfer-syntax=*"):
        r = c.get(
            f"/dicomweb/studies/{study}/series/{series[0]}/instances/{sop}/frames/1",
            headers={"Accept": accept},
        )
        assert r.status_code == 200
        ((ctype, body),) = parts(r)
        assert ctype == "application/octet-stream" and body == original.PixelData


def test_wado_uri_returns_the_object(loaded: Archive) -> None:
    study, series, _ = uids()
    sop = next(ds.SOPInstanceUID for _, ds in datasets(SPEC) if ds.SeriesInstanceUID == series[0])
    r = client(loaded).get(
        f"/dicomweb/wado?requestType=WADO&studyUID={study}&seriesUID={series[0]}&objectUID={sop}&contentType=application/dicom"
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    assert pydicom.dcmread(io.BytesIO(r.content)).SOPInstanceUID == sop
    bad = client(loaded).get(
        f"/dicomweb/wado?requestType=WADO&studyUID=../x&seriesUID={series[0]}&objectUID={sop}"
    )
    assert bad.status_code == 400


def test_unacceptable_accept_is_406(loaded: Archive) -> None:
    study, series, _ = uids()
    c = client(loaded)
    for accept in (
        "text/html",
        'multipart/related; type="image/png"',
        "multipart/related; type=application/dicom; transfer-syntax=1.2.840.10008.1.2.4.50",
    ):
        r = c.get(f"/dicomweb/studies/{study}/series/{series[0]}", headers={"Accept": accept})
        assert r.status_code == 406, accept
        assert r.json()["message"]


def test_credentials_are_required_unless_anonymous_is_on(loaded: Archive) -> None:
    key = "s3cret-key-for-tests"
    c = client(
        loaded,
        allow_anonymous=False,
        keys=[{"name": "viewer", "sha256": hash_key(key), "role": "read"}],
    )
    assert c.get("/dicomweb/studies").status_code == 401
    assert c.get("/dicomweb/studies", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/dicomweb/studies", headers={"Authorization": "Basic abc"}).status_code == 401
    r = c.get("/dicomweb/studies", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200 and len(r.json()) == 1


def test_cors_preflight_for_a_viewer_origin(loaded: Archive) -> None:
    c = client(loaded, cors_origins=["https://viewer.example.org"])
    r = c.options(
        "/dicomweb/studies/1.2/series/3.4/instances/5.6/frames/1",
        headers={
            "Origin": "https://viewer.example.org",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "accept",
        },
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://viewer.example.org"
    other = c.options(
        "/dicomweb/studies",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in other.headers


def test_audit_log_records_every_access(loaded: Archive, tmp_path: Path) -> None:
    import json

    log = tmp_path / "audit.jsonl"
    c = client(loaded, audit_log=log)
    c.get("/dicomweb/studies")
    c.get("/dicomweb/studies/1.2.3")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(x["resource"], x["status"], x["who"]) for x in lines] == [
        ("/dicomweb/studies", 200, "anonymous"),
        ("/dicomweb/studies/1.2.3", 404, "anonymous"),
    ]


def test_audit_log_follows_a_rotation(loaded: Archive, tmp_path: Path) -> None:
    import json
    import os

    log = tmp_path / "audit" / "audit.jsonl"
    umask = os.umask(0o022)
    try:
        c = client(loaded, audit_log=log)
        c.get("/dicomweb/studies")
        log.rename(log.with_suffix(".1"))  # what logrotate does
        c.get("/dicomweb/studies?PatientID=nobody")
    finally:
        os.umask(umask)
    old = [json.loads(line) for line in log.with_suffix(".1").read_text().splitlines()]
    new = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(x["resource"], x["status"]) for x in old] == [("/dicomweb/studies", 200)]
    assert [(x["resource"], x["status"]) for x in new] == [("/dicomweb/studies", 200)]
    assert log.stat().st_mode & 0o777 == 0o640  # patient access: not for every local user


def test_an_audit_log_that_cannot_be_written_stops_start_up_and_later_counts_losses(
    loaded: Archive, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from viewer_gateway.audit import AuditUnavailable

    folder = tmp_path / "a-folder"
    folder.mkdir()
    with pytest.raises(AuditUnavailable, match="a-folder"):
        client(loaded, audit_log=folder)  # a folder, not a file: no gateway without its audit
    log = tmp_path / "audit.jsonl"
    c = client(loaded, audit_log=log)
    log.unlink()
    log.mkdir()  # now it cannot be appended to
    study, _, _ = uids()
    for _ in range(3):
        assert c.get(f"/dicomweb/studies/{study}/series").status_code == 200
    errors = [r.getMessage() for r in caplog.records if r.name == "viewer_gateway.audit"]
    assert len(errors) == 1 and "1 line(s) lost" in errors[0]  # once a minute at most
    assert study not in errors[0]  # what was accessed stays out of the operational log


def test_every_route_is_in_the_conformance_statement(loaded: Archive) -> None:
    from starlette.routing import Route

    text = (
        Path(__file__).resolve().parent.parent / "viewer_gateway" / "CONFORMANCE.md"
    ).read_text()
    app = client(loaded).app
    paths = [r.path for r in app.routes if isinstance(r, Route) and r.path.startswith("/dicomweb")]  # type: ignore[attr-defined]
    assert len(paths) >= 15
    for path in paths:
        assert f"`GET {path}" in text, f"{path} is missing from CONFORMANCE.md"


def test_rendered_and_thumbnails_are_real_images(loaded: Archive) -> None:
    from PIL import Image

    study, series, _ = uids()
    sop = next(ds.SOPInstanceUID for _, ds in datasets(SPEC) if ds.SeriesInstanceUID == series[0])
    c = client(loaded)
    base = f"/dicomweb/studies/{study}/series/{series[0]}"
    r = c.get(f"{base}/instances/{sop}/rendered", headers={"Accept": "image/jpeg"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    img = Image.open(io.BytesIO(r.content))
    assert img.size == (32, 32) and img.getextrema() != (0, 0)  # not blank
    r = c.get(
        f"{base}/instances/{sop}/rendered?window=40,400&viewport=64,64&quality=50",
        headers={"Accept": "image/png"},
    )
    assert r.headers["content-type"] == "image/png" and Image.open(io.BytesIO(r.content)).size == (
        32,
        32,
    )
    r = c.get(f"{base}/instances/{sop}/frames/1/rendered?accept=image%2Fpng")
    assert r.headers["content-type"] == "image/png"
    r = c.get(f"{base}/thumbnail?accept=image%2Fjpeg")
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).format == "JPEG"
    r = c.get(
        f"/dicomweb/wado?requestType=WADO&studyUID={study}&seriesUID={series[0]}&objectUID={sop}"
    )
    assert r.headers["content-type"] == "image/jpeg"  # WADO-URI's default
    for bad in ("window=abc", "viewport=0,0", "quality=500"):
        assert c.get(f"{base}/instances/{sop}/rendered?{bad}").status_code == 400
    assert (
        c.get(f"{base}/instances/{sop}/rendered", headers={"Accept": "image/gif"}).status_code
        == 406
    )
    assert c.get(f"{base}/instances/{sop}/frames/9/rendered").status_code == 404


def test_compressed_instances_render_and_transcode(tmp_path: Path) -> None:
    import shutil

    from pydicom.data import get_testdata_file

    archive = make_archive(tmp_path, f"sqlite:///{tmp_path}/index.db")
    for name in ("JPEG2000.dcm", "SC_rgb_jpeg_gdcm.dcm", "MR_small_RLE.dcm"):
        shutil.copy(get_testdata_file(name), archive.drop() / name)
    archive.ingest()
    c = client(archive)
    for name in ("JPEG2000.dcm", "SC_rgb_jpeg_gdcm.dcm", "MR_small_RLE.dcm"):
        ds = pydicom.dcmread(get_testdata_file(name))
        base = (
            f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}"
        )
        assert c.get(f"{base}/rendered").status_code == 200, name
        r = c.get(base, headers={"Accept": 'multipart/related; type="application/dicom"'})  # EVLE
        assert r.status_code == 200, name
        ((_, body),) = parts(r)
        got = pydicom.dcmread(io.BytesIO(body))
        assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert (got.pixel_array == ds.pixel_array).all(), name


def test_metadata_is_prepared_from_the_change_feed_not_per_request(loaded: Archive) -> None:
    from sqlalchemy import func, select

    from vna.index import schema

    c = client(loaded)
    prepared = c.app.state.metadata  # type: ignore[attr-defined]
    assert prepared.catch_up() == 6
    assert prepared.catch_up() == 0  # by cursor: nothing new, nothing done
    with loaded.engine.connect() as conn:
        assert (
            conn.execute(select(func.count()).select_from(schema.instance_metadata)).scalar_one()
            == 6
        )
    study, series, _ = uids()
    for f in (loaded.settings.archive.root / "studies").rglob("*.dcm"):
        f.unlink()  # metadata no longer needs the files
    meta = c.get(
        f"/dicomweb/studies/{study}/series/{series[0]}/metadata",
        headers={"Host": "pacs.example.org"},
    ).json()
    assert len(meta) == 3
    assert meta[0]["7FE00010"]["BulkDataURI"].startswith(
        "http://pacs.example.org/dicomweb/studies/"
    )
    fwd = c.get(
        f"/dicomweb/studies/{study}/metadata",
        headers={
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "viewer.example.org",
            "X-Forwarded-Prefix": "/pacs",
        },
    ).json()
    assert fwd[0]["7FE00010"]["BulkDataURI"].startswith(
        "https://viewer.example.org/pacs/dicomweb/studies/"
    )


def test_study_counts_and_modalities_come_from_every_series_in_series_order(
    tmp_path: Path, index_url: str
) -> None:
    import datetime as dt

    from sqlalchemy import insert, select

    from vna.index import schema

    archive = make_archive(tmp_path, index_url)
    study, series, _ = uids()
    for rel, ds in datasets(SPEC):
        if ds.SeriesInstanceUID == series[1]:
            ds.Modality = "MR"
        (archive.drop() / rel).parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(archive.drop() / rel, enforce_file_format=True)
    archive.ingest()
    with archive.engine.begin() as conn:  # a series left without instances
        study_pk = conn.execute(
            select(schema.studies.c.id).where(schema.studies.c.study_uid == study)
        ).scalar_one()
        conn.execute(
            insert(schema.series).values(
                series_uid="1.2.3.4",
                study_pk=study_pk,
                modality="SR",
                created_at=dt.datetime.now(dt.UTC),
            )
        )

    (found,) = client(archive).get("/dicomweb/studies").json()

    assert found["00080061"]["Value"] == ["CT", "MR", "SR"]  # ModalitiesInStudy, series order
    assert value(found, "00201206") == 2  # NumberOfStudyRelatedSeries: those with instances
    assert value(found, "00201208") == 6  # NumberOfStudyRelatedInstances
    (empty,) = [
        s
        for s in client(archive).get(f"/dicomweb/studies/{study}/series").json()
        if value(s, "0020000E") == "1.2.3.4"
    ]
    assert value(empty, "00201209") == 0  # NumberOfSeriesRelatedInstances


def test_audit_log_records_streamed_and_failed_requests_once_they_end(
    loaded: Archive, tmp_path: Path
) -> None:
    import json

    log = tmp_path / "audit.jsonl"
    c = client(loaded, audit_log=log, allow_anonymous=False)
    study, series, _ = uids()
    base = f"/dicomweb/studies/{study}/series/{series[0]}"
    c.get(base)  # 401: no credentials
    c = client(
        loaded,
        audit_log=log,
        allow_anonymous=False,
        keys=[{"name": "ohif", "sha256": hash_key("k")}],
    )
    r = c.get(
        base,
        headers={"Authorization": "Bearer k", "Accept": OCTETS.replace("octet-stream", "dicom")},
    )
    assert r.status_code == 200 and len(parts(r)) == 3
    c.options(base)  # not patient data: not audited
    c.get("/not-dicomweb")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(x["who"], x["method"], x["resource"], x["status"]) for x in lines] == [
        ("-", "GET", base, 401),
        ("ohif", "GET", base, 200),
    ]
    assert all(x["client"] and x["at"] for x in lines)


def test_retrieve_as_stored_says_its_length_and_a_converted_one_does_not(
    tmp_path: Path,
) -> None:
    from pydicom.data import get_testdata_file

    archive = make_archive(tmp_path, f"sqlite:///{tmp_path}/index.db")
    generate(archive.drop(), SPEC)
    (archive.drop() / "j2k.dcm").write_bytes(Path(get_testdata_file("JPEG2000.dcm")).read_bytes())
    archive.ingest()
    c = client(archive)
    study, _, _ = uids()
    as_stored = "multipart/related; type=application/dicom; transfer-syntax=*"
    stored = c.get(f"/dicomweb/studies/{study}", headers={"Accept": as_stored})
    assert int(stored.headers["content-length"]) == len(stored.content)
    assert len(parts(stored)) == 6
    evle = c.get(
        f"/dicomweb/studies/{study}",
        headers={"Accept": 'multipart/related; type="application/dicom"'},
    )
    assert int(evle.headers["content-length"]) == len(evle.content)  # stored as EVLE: as is
    ds = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))
    converted = c.get(
        f"/dicomweb/studies/{ds.StudyInstanceUID}",
        headers={"Accept": 'multipart/related; type="application/dicom"'},
    )
    assert converted.status_code == 200 and "content-length" not in converted.headers
    ((_, body),) = parts(converted)
    assert pydicom.dcmread(io.BytesIO(body)).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"


def test_retrieve_in_batches_is_the_same_multipart(
    loaded: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    from viewer_gateway import wado_rs

    study, _, sops = uids()
    monkeypatch.setattr(wado_rs, "BATCH_BYTES", 1)  # one instance per batch
    r = client(loaded).get(
        f"/dicomweb/studies/{study}",
        headers={"Accept": "multipart/related; type=application/dicom; transfer-syntax=*"},
    )
    assert int(r.headers["content-length"]) == len(r.content)
    got = [pydicom.dcmread(io.BytesIO(body)).SOPInstanceUID for _, body in parts(r)]
    assert sorted(got) == sorted(sops)


def test_retrieve_advises_each_file_once_before_its_turn(
    loaded: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From a cold page cache, a retrieve reads at the disk's pace only if the files ahead
    are already being read by the kernel while earlier ones are sent."""
    from viewer_gateway import wado_rs
    from viewer_gateway.tiers import InstanceStore

    events: list[tuple[str, str]] = []
    advise, read = InstanceStore.prefetch, InstanceStore.read

    def record_prefetch(store: InstanceStore, insts: list[Any]) -> None:
        events.extend(("advised", inst.sop_uid) for inst in insts)
        advise(store, insts)

    def record_read(store: InstanceStore, inst: Any) -> bytes:
        events.append(("read", inst.sop_uid))
        return read(store, inst)

    monkeypatch.setattr(wado_rs, "BATCH_BYTES", 1)  # one instance per batch
    monkeypatch.setattr(InstanceStore, "prefetch", record_prefetch)
    monkeypatch.setattr(InstanceStore, "read", record_read)
    study, _, sops = uids()
    r = client(loaded).get(
        f"/dicomweb/studies/{study}",
        headers={"Accept": "multipart/related; type=application/dicom; transfer-syntax=*"},
    )
    assert r.status_code == 200 and len(parts(r)) == len(sops)
    advised = [sop for what, sop in events if what == "advised"]
    assert sorted(advised) == sorted(sops)  # every file once
    reads = [k for k, (what, _sop) in enumerate(events) if what == "read"]
    for turn, k in enumerate(reads):  # one instance per batch: batch `turn` is read at k
        advised_before = sum(1 for what, _sop in events[:k] if what == "advised")
        assert advised_before >= min(len(sops), turn + 1 + wado_rs.PREFETCH_BATCHES)
        assert ("advised", events[k][1]) in events[:k]


def test_a_single_frame_is_one_plain_response(loaded: Archive) -> None:
    study, series, _ = uids()
    sop = next(ds.SOPInstanceUID for _, ds in datasets(SPEC) if ds.SeriesInstanceUID == series[0])
    r = client(loaded).get(
        f"/dicomweb/studies/{study}/series/{series[0]}/instances/{sop}/frames/1",
        headers={"Accept": OCTETS},
    )
    assert r.status_code == 200 and int(r.headers["content-length"]) == len(r.content)
    ((ctype, body),) = parts(r)
    assert ctype == "application/octet-stream" and len(body) == 32 * 32 * 2


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("CT_small.dcm", {}),  # rescale, window from the data's range
        ("MR_small.dcm", {}),  # window from the file
        ("CT_small.dcm", {"PhotometricInterpretation": "MONOCHROME1"}),
        ("CT_small.dcm", {"modality_lut": True}),
    ],
)
def test_rendering_through_a_lookup_table_equals_rendering_each_pixel(
    name: str, change: dict[str, Any]
) -> None:
    import numpy as np
    from pydicom.data import get_testdata_file
    from pydicom.dataset import Dataset
    from pydicom.pixels.processing import apply_modality_lut

    from viewer_gateway import rendered

    ds = pydicom.dcmread(get_testdata_file(name))
    if change.pop("modality_lut", False):
        item = Dataset()
        item.LUTDescriptor = [256, 0, 16]
        item.LUTData = [k * 7 % 4096 for k in range(256)]  # not monotonic
        ds.ModalityLUTSequence = [item]
    for keyword, new in change.items():
        setattr(ds, keyword, new)
    pixels = ds.pixel_array
    mono1 = ds.PhotometricInterpretation == "MONOCHROME1"
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    for window in (None, (40.0, 400.0), (1000.0, 1.0)):
        chosen = window or rendered._file_window(ds) or rendered._range_window(values)
        expected = rendered._windowed(values, chosen, mono1)
        got = np.asarray(rendered._to_image(ds, pixels, window))
        assert np.array_equal(got, expected), (name, change, window)


def test_gateway_engine_pools_a_connection_per_worker_thread_with_the_index_settings(
    index_url: str,
) -> None:
    from sqlalchemy import text

    from viewer_gateway.engine import SQLITE_CACHE_KIB, WORKER_THREADS, gateway_engine
    from vna.index.engine import open_index, write_transaction

    index = open_index(index_url)
    engine = gateway_engine(index)
    try:
        assert engine is not index and engine.pool.size() == WORKER_THREADS  # type: ignore[attr-defined]
        if engine.dialect.name == "sqlite":
            pragmas = ("journal_mode", "synchronous", "foreign_keys", "busy_timeout", "cache_size")
            settings = []
            for e in (index, engine):
                with e.connect() as conn:
                    settings.append([conn.exec_driver_sql(f"PRAGMA {p}").scalar() for p in pragmas])
            assert settings[0][:-1] == settings[1][:-1]
            assert settings[1][-1] == -SQLITE_CACHE_KIB  # the one difference (engine.py)
        with write_transaction(engine) as conn:  # BEGIN IMMEDIATE on SQLite
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()
        index.dispose()


def test_series_and_study_rendered_are_one_image_per_instance(loaded: Archive) -> None:
    from PIL import Image

    study, series, sops = uids()
    c = client(loaded)
    r = c.get(
        f"/dicomweb/studies/{study}/series/{series[0]}/rendered", headers={"Accept": "image/png"}
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith('multipart/related; type="image/png"')
    images = parts(r)
    assert len(images) == 3 and {t for t, _ in images} == {"image/png"}
    for _, body in images:
        assert Image.open(io.BytesIO(body)).size == (32, 32)
    whole = c.get(f"/dicomweb/studies/{study}/rendered?viewport=16,16")
    assert [t for t, _ in parts(whole)] == ["image/jpeg"] * len(sops)
    assert Image.open(io.BytesIO(parts(whole)[0][1])).size == (16, 16)
    missing = c.get(f"/dicomweb/studies/{study}/series/1.2.3.4/rendered")
    assert missing.status_code == 404


def test_a_worker_call_that_raises_stopiteration_fails_instead_of_hanging() -> None:
    import asyncio

    from viewer_gateway.threads import Workers

    workers = Workers(1)

    async def main() -> None:
        with pytest.raises(RuntimeError, match="StopIteration"):
            await asyncio.wait_for(workers.run(next, iter([])), timeout=10)

    try:
        asyncio.run(main())
    finally:
        workers.close()
