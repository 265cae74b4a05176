"""The gateway's OpenAPI description, fuzzed with schemathesis: no input makes a 500.

The app is built at import time (schemathesis parametrizes from the schema at
collection), over a small archive in a temporary folder removed at exit.
"""

from __future__ import annotations

import atexit
import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings

from tests.conftest import make_archive
from viewer_gateway.app import create_app
from vna.sample import SampleSpec, generate
from vna.settings import GatewaySettings


def _app() -> Any:
    base = Path(tempfile.mkdtemp(prefix="vna-fuzz-"))
    atexit.register(shutil.rmtree, base, True)
    archive = make_archive(base, f"sqlite:///{base}/index.db")
    generate(archive.drop(), SampleSpec(instances=2, rows=16, columns=16))
    archive.ingest()
    gw = GatewaySettings(allow_anonymous=True)
    return create_app(dataclasses.replace(archive.settings, gateway=gw), archive.engine)


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())


@schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_makes_a_server_error(case: Any) -> None:
    response = case.call()
    assert response.status_code < 500, (
        case.path,
        case.query,
        response.status_code,
        response.text[:300],
    )
