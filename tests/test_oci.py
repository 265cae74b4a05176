"""OCI Object Storage through ocifs: built and configured here; a real bucket when
credentials are present (OCI_CONFIG_FILE and VNA_TEST_OCI_URL set), never faked."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from vna import digest
from vna.settings import TargetSettings
from vna.targets.faults import Kind, TargetError
from vna.targets.registry import open_target


def test_oci_target_without_configuration_is_a_clear_fatal_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-oci-config"
    settings = TargetSettings(
        name="oci", url="oci://bucket@namespace/site-1", storage_options={"config": str(missing)}
    )
    with pytest.raises(TargetError) as err:
        open_target(settings)
    assert err.value.kind is Kind.FATAL
    assert "target oci" in str(err.value)


@pytest.mark.skipif(
    not (os.environ.get("OCI_CONFIG_FILE") and os.environ.get("VNA_TEST_OCI_URL")),
    reason="no OCI credentials on this machine (set OCI_CONFIG_FILE and VNA_TEST_OCI_URL)",
)
def test_real_oci_bucket_round_trip(tmp_path: Path) -> None:  # pragma: no cover - needs a tenancy
    settings = TargetSettings(
        name="oci",
        url=os.environ["VNA_TEST_OCI_URL"],
        storage_options={"config": os.environ["OCI_CONFIG_FILE"]},
    )
    target = open_target(settings)
    data = os.urandom(4096)
    rel = "studies/1.2/series/3.4/instances/5.6.dcm"
    target.put(rel, tmp_path / "x", digest.of_bytes(data), len(data), io.BytesIO(data))
    with target.open(rel) as fh:
        assert fh.read() == data
    target.delete(rel)
