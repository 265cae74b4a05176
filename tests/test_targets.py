"""One contract, every target: a local folder, Azurite (Azure Blob) and moto (S3)."""

from __future__ import annotations

import io
from typing import Any

import pytest

from vna import digest
from vna.settings import TargetSettings
from vna.targets.faults import TargetError
from vna.targets.registry import open_target

REL = "studies/1.2/series/3.4/instances/5.6.dcm"


def target_of(config: dict[str, Any]):  # type: ignore[no-untyped-def]
    return open_target(TargetSettings(**{k: v for k, v in config.items()}))


def test_put_stat_read_list_delete(target_config: dict[str, Any], tmp_path) -> None:  # type: ignore[no-untyped-def]
    target = target_of(target_config)
    data = bytes(range(256)) * 400
    local = tmp_path / "x.dcm"
    local.write_bytes(data)
    d = digest.of_bytes(data)
    assert target.stat(REL) is None

    target.put(REL, local, d, len(data), io.BytesIO(data))

    info = target.stat(REL)
    assert info is not None and info.size == len(data)
    if target.capabilities.metadata:
        assert info.digest == d  # the digest travels with the object
    with target.open(REL) as fh:
        assert fh.read() == data
    assert target.read_range(REL, 10, 20) == data[10:20]
    listed = list(target.list())
    assert [o.path for o in listed] == [REL]
    target.delete(REL)
    assert target.stat(REL) is None
    assert list(target.list()) == []


def test_failed_streamed_upload_leaves_no_object(
    target_config: dict[str, Any], tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    import vna.targets.objectstore as ft

    monkeypatch.setattr(ft, "SINGLE_PUT_MAX", 1024)
    monkeypatch.setattr(ft, "CHUNK", 1024)
    target = target_of(target_config)
    local = tmp_path / "big.dcm"
    local.write_bytes(b"x" * 10_000)

    class Breaks(io.BytesIO):
        def read(self, n: int = -1) -> bytes:
            if self.tell() >= 4096:
                raise OSError("the local disk went away")
            return super().read(n)

    with pytest.raises((TargetError, OSError)):
        target.put(REL, local, "0" * 32, 10_000, Breaks(b"x" * 10_000))

    assert target.stat(REL) is None
    assert list(target.list()) == []


def test_missing_object_reads_as_skip(target_config: dict[str, Any]) -> None:
    from vna.targets.faults import Kind

    target = target_of(target_config)
    with pytest.raises(TargetError) as err:
        target.open(REL).read()
    assert err.value.kind is Kind.SKIP
