"""One contract, every target: a local folder, Azurite (Azure Blob) and moto (S3)."""

from __future__ import annotations

import dataclasses
import io
import os
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

    assert target.names(REL.rpartition("/")[0]) == set()

    proven = target.put(REL, local, d, len(data), io.BytesIO(data))
    info = target.stat(REL)  # what a verification sees: before `settle`, too
    assert info is not None and info.size == len(data)
    target.settle([REL])  # named (and durable) by now on every target

    # Object stores report the MD5 of what they kept, which proves the copy; a folder proves
    # it by taking and flushing every byte, with the digest beside them.
    assert proven is True
    info = target.stat(REL)
    assert info is not None and info.size == len(data)
    if target.capabilities.metadata:
        assert info.digest == d  # the digest travels with the object
    with target.open(REL) as fh:
        assert fh.read() == data
    assert target.read_range(REL, 10, 20) == data[10:20]
    assert target.names(REL.rpartition("/")[0]) == {REL.rpartition("/")[2]}
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


def test_large_object_is_streamed_both_ways(
    target_config: dict[str, Any], tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Too big for memory: a committed multipart / block list upload that still carries the
    digest, read back piece by piece as the caller asks."""
    import vna.targets.objectstore as ft

    monkeypatch.setattr(ft, "SINGLE_PUT_MAX", 1024)
    monkeypatch.setattr(ft, "CHUNK", 1024)
    target = target_of(target_config)
    data = bytes(range(256)) * 40
    local = tmp_path / "big.dcm"
    local.write_bytes(data)
    d = digest.of_bytes(data)

    target.put(REL, local, d, len(data), io.BytesIO(data))

    info = target.stat(REL)
    assert info is not None and info.size == len(data)
    if target.capabilities.metadata:
        assert info.digest == d
    with target.open(REL) as fh:
        assert fh.read(1000) == data[:1000]
        assert fh.read() == data[1000:]
    with target.open(REL) as fh:
        assert digest.of_stream(fh) == d


@pytest.mark.parametrize("kind", ["azure", "s3"])
def test_each_call_of_a_small_copy_is_one_request(
    kind: str, request: pytest.FixtureRequest, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """A copy is stat, put, then stat or read-back: each one round trip, the put carrying
    the digest, so replicating many small instances is bound by requests, not by extras."""
    from tests.servers import FlakyProxy

    server = request.getfixturevalue("azurite" if kind == "azure" else "moto_s3")
    proxy = FlakyProxy(server.port, failures=0)  # counts what reaches the server
    try:
        if kind == "azure":
            endpoint = server.connection_string.replace(f":{server.port}/", f":{proxy.port}/")
            config = {
                "url": f"az://{server.new_container()}/site-1",
                "storage_options": {"connection_string": endpoint},
            }
        else:
            config = {
                "url": f"s3://{server.new_bucket()}/site-1",
                "storage_options": server.storage_options(proxy.port),
            }
        target = target_of({"name": kind, **config})
        data = bytes(range(256)) * 400
        d = digest.of_bytes(data)

        def requests(call: Any) -> int:
            before = proxy.forwarded
            call()
            return proxy.forwarded - before

        assert requests(lambda: target.stat(REL)) == 1  # missing: no "folder" probe
        proven: list[bool] = []

        def put() -> None:
            proven.append(target.put(REL, tmp_path, d, len(data), io.BytesIO(data)))

        assert requests(put) == 1 and proven == [True]  # the answer proves it: no stat needed
        assert requests(lambda: target.stat(REL)) == 1
        info = target.stat(REL)
        assert info is not None and info.digest == d  # the metadata came with that one put

        def read_back() -> None:
            with target.open(REL) as fh:
                assert digest.of_stream(fh) == d

        assert requests(read_back) == 1
    finally:
        proxy.close()


@pytest.mark.parametrize("kind", ["azure", "s3"])
def test_missing_bucket_is_fatal(kind: str, request: pytest.FixtureRequest, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Retrying or skipping copy after copy would not bring the bucket back."""
    from vna.targets.faults import Kind

    server = request.getfixturevalue("azurite" if kind == "azure" else "moto_s3")
    scheme = "az" if kind == "azure" else "s3"
    target = target_of(
        {
            "name": kind,
            "url": f"{scheme}://nosuchbucket/site-1",
            "storage_options": server.storage_options(),
        }
    )
    data = b"x" * 100
    with pytest.raises(TargetError) as err:
        target.put(REL, tmp_path, digest.of_bytes(data), len(data), io.BytesIO(data))
    assert err.value.kind is Kind.FATAL


@pytest.mark.parametrize("unnamed", [True, False], ids=["unnamed-file", "temp-name"])
def test_folder_target_replaces_a_wrong_copy_and_leaves_no_temp_file(
    tmp_path, unnamed: bool
) -> None:  # type: ignore[no-untyped-def]
    """Both ways a folder target writes: O_TMPFILE then a link (local disks), or a temp name
    then a rename (NFS/SMB mounts, which have no unnamed files)."""
    target = target_of({"name": "nfs", "url": f"file://{tmp_path}/replica"})
    target._unnamed = unnamed
    wrong, right = b"w" * 5000, bytes(range(256)) * 30
    target.put(REL, tmp_path, digest.of_bytes(wrong), len(wrong), io.BytesIO(wrong))
    target.settle([REL])

    target.put(REL, tmp_path, digest.of_bytes(right), len(right), io.BytesIO(right))
    target.settle([REL])

    with target.open(REL) as fh:
        assert fh.read() == right
    info = target.stat(REL)
    assert info is not None and info.digest == digest.of_bytes(right)
    folder = (tmp_path / "replica" / REL).parent
    assert sorted(p.name for p in folder.iterdir()) == ["5.6.dcm"]


def test_folder_without_extended_attributes_proves_nothing_by_its_put(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Where the digest cannot travel with the file (many NFS/SMB mounts), the copy is
    verified by reading it back, never taken as proven."""
    target = target_of({"name": "nfs", "url": f"file://{tmp_path}/replica"})
    target.capabilities = dataclasses.replace(target.capabilities, metadata=False)
    data = b"d" * 3000

    proven = target.put(REL, tmp_path, digest.of_bytes(data), len(data), io.BytesIO(data))

    assert proven is False
    target.settle([REL])
    assert (tmp_path / "replica" / REL).read_bytes() == data


def test_folder_target_used_before_a_fork_writes_right_in_the_child(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Files are named through /proc/self/fd, opened once per process: a forked child must
    name its own descriptors, not its parent's."""
    target = target_of({"name": "local", "url": f"file://{tmp_path}/replica"})
    first = b"parent" * 500
    target.put(REL, tmp_path, digest.of_bytes(first), len(first), io.BytesIO(first))
    target.settle([REL])
    second = b"child" * 700
    other = REL.replace("5.6.dcm", "7.8.dcm")

    pid = os.fork()
    if pid == 0:  # the child: exit status says whether the put went through
        try:
            target.put(other, tmp_path, digest.of_bytes(second), len(second), io.BytesIO(second))
            target.settle([other])
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert (tmp_path / "replica" / other).read_bytes() == second
    assert (tmp_path / "replica" / REL).read_bytes() == first
