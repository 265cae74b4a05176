"""Object-store targets through fsspec: Azure Blob/ADLS (adlfs), OCI (ocifs), S3 (s3fs).

The one place that knows fsspec. Each backend differs in how user metadata is
written and read, so a small `Flavor` per scheme says so; everything else is
the same. Objects are written so that a partial object is never visible: one
PUT for objects that fit in memory, else a streamed upload committed on close
(S3 multipart, Azure block list) and abandoned uncommitted on error.

A copy costs a put and a verification (and a stat first, when the object may
already be there), so for adlfs and s3fs those go straight to the filesystem's
own async client (`_Azure`, `_S3`), one request each (Azure reads an object
over 32 MiB in the SDK's 4 MiB ranges), where fsspec's generic calls spend
more: `open(path, "wb")` on adlfs sends Put Block + Put Block List even for a
small object; `info()` lists the "folder" whenever the object is missing, and
on s3fs needs a second HEAD for the metadata; a file opened for reading asks
for the size first and then reads in ranges. The calls run on fsspec's IO
loop, so every copier thread shares the one filesystem, its session and its
connection pool.

The answer to a put proves the copy where the store reports the MD5 it computed
over the bytes it kept (Azure's Content-MD5, S3's ETag of a single PutObject
without KMS encryption): equal to the MD5 of what was sent, no request more is
needed to verify by metadata.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib
import io
from collections.abc import Awaitable, Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

from vna.layout import STUDIES
from vna.targets.faults import Kind, TargetError, classify
from vna.targets.target import SINGLE_PUT_MAX, Capabilities, ObjectInfo, Readable

CHUNK = 8 * 1024 * 1024
META_KEY = "xxh3_128"
# Connections per filesystem: aiohttp's default, which the Azure SDK keeps; botocore's
# default of 10 would queue copies beyond the tenth. Connections open only when used.
POOL = 100


@dataclass(frozen=True)
class Body:
    """An object being downloaded by one GET; `read` returns b"" at the end."""

    size: int
    read: Callable[[int], Awaitable[bytes]]
    close: Callable[[], Awaitable[object]]

    async def take(self, n: int) -> bytes:
        """Up to `n` bytes, fewer only at the end: one hop to the IO loop per caller's read,
        however small the pieces the socket delivers."""
        parts = []
        while n > 0 and (part := await self.read(n)):
            parts.append(part)
            n -= len(part)
        return b"".join(parts)

    async def whole(self) -> bytes | None:
        """The whole object if it is small (then closed), else None and still open."""
        if self.size > CHUNK:
            return None
        try:
            return await self.take(self.size + 1)  # reading to the end checks the length
        finally:
            await self.close()


class Direct(Protocol):
    """The three calls every copy makes, each one request on the backend's own client."""

    async def head(self, path: str) -> tuple[int, dict[str, str]] | None: ...

    async def put(self, path: str, data: bytes, metadata: dict[str, str]) -> str | None:
        """Store one object; the hex MD5 the store reports for what it kept, if it does."""

    async def get(self, path: str) -> Body: ...

    async def names(self, folder: str) -> set[str]:
        """Names of the objects directly below `folder`: one listing request per
        thousand names or so, none to find out whether the folder exists."""


class _Azure:
    """adlfs' `service_client` (azure-storage-blob, async)."""

    def __init__(self, fs: Any) -> None:
        self.fs = fs
        # The site's timeout options, as adlfs keeps them and passes them on its own calls.
        self.timeouts: dict[str, Any] = dict(getattr(fs, "_timeout_kwargs", {}))

    def _client(self, path: str) -> Any:
        container, blob, _ = self.fs.split_path(path)
        return self.fs.service_client.get_blob_client(container, blob)

    async def head(self, path: str) -> tuple[int, dict[str, str]] | None:
        from azure.core.exceptions import ResourceNotFoundError

        async with self._client(path) as blob:
            try:
                props = await blob.get_blob_properties(**self.timeouts)
            except ResourceNotFoundError:
                return None
        return int(props.size), dict(props.metadata or {})

    async def put(self, path: str, data: bytes, metadata: dict[str, str]) -> str | None:
        # Up to the SDK's max_single_put_size (64 MiB, = SINGLE_PUT_MAX) this is one Put Blob;
        # "is_directory" is what adlfs writes on its own files, so its listings agree.
        async with self._client(path) as blob:
            answer = await blob.upload_blob(
                data,
                length=len(data),
                overwrite=True,
                metadata={**metadata, "is_directory": "false"},
                **self.timeouts,
            )
        md5 = answer.get("content_md5")  # computed by the service over the blob it stored
        return bytes(md5).hex() if md5 else None

    async def get(self, path: str) -> Body:
        from azure.core.exceptions import ResourceNotFoundError

        blob = self._client(path)
        try:
            # Up to max_single_get_size (32 MiB) the whole object comes in this one GET.
            download = await blob.download_blob(**self.timeouts)
        except BaseException as exc:
            await blob.close()
            if isinstance(exc, ResourceNotFoundError):
                raise FileNotFoundError(errno.ENOENT, "no such blob", path) from exc
            raise
        return Body(int(download.size), download.read, blob.close)

    async def names(self, folder: str) -> set[str]:
        container, prefix, _ = self.fs.split_path(folder)
        prefix = prefix.rstrip("/") + "/"
        client = self.fs.service_client.get_container_client(container)
        found = set()
        async with client:
            async for item in client.walk_blobs(name_starts_with=prefix, **self.timeouts):
                name = str(item.name)[len(prefix) :]
                if name and not name.endswith("/"):
                    found.add(name)
        return found


class _S3:
    """s3fs' `_call_s3`: aiobotocore, with s3fs' retries and its request-wide options."""

    def __init__(self, fs: Any) -> None:
        self.fs = fs

    async def head(self, path: str) -> tuple[int, dict[str, str]] | None:
        bucket, key, _ = self.fs.split_path(path)
        try:
            out = await self.fs._call_s3("head_object", Bucket=bucket, Key=key)
        except FileNotFoundError:
            return None
        return int(out["ContentLength"]), dict(out.get("Metadata") or {})

    async def put(self, path: str, data: bytes, metadata: dict[str, str]) -> str | None:
        bucket, key, _ = self.fs.split_path(path)
        out = await self.fs._call_s3(
            "put_object", Bucket=bucket, Key=key, Body=data, Metadata=metadata
        )
        if out.get("ServerSideEncryption") == "aws:kms" or out.get("SSECustomerAlgorithm"):
            return None  # the ETag is then not the MD5 of the object
        etag = str(out.get("ETag", "")).strip('"').lower()
        return etag if len(etag) == 32 else None

    async def get(self, path: str) -> Body:
        bucket, key, _ = self.fs.split_path(path)
        out = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
        body = out["Body"]
        return Body(int(out["ContentLength"]), body.read, body.aclose)

    async def names(self, folder: str) -> set[str]:
        bucket, prefix, _ = self.fs.split_path(folder)
        prefix = prefix.rstrip("/") + "/"
        found: set[str] = set()
        token: dict[str, str] = {}
        while True:
            out = await self.fs._call_s3(
                "list_objects_v2", Bucket=bucket, Prefix=prefix, Delimiter="/", **token
            )
            found.update(str(o["Key"])[len(prefix) :] for o in out.get("Contents", []))
            if not out.get("IsTruncated"):
                return found
            token = {"ContinuationToken": out["NextContinuationToken"]}


@dataclass(frozen=True)
class Flavor:
    protocol: str
    package: str  # what to install when the backend is missing
    metadata: bool
    direct: Callable[[Any], Direct] | None = None

    def options(self, given: dict[str, Any]) -> dict[str, Any]:
        """Storage options with our defaults under what the site configured."""
        options = {"skip_instance_cache": True, **given}
        if self.direct is not None:
            # Reconciliation compares listings with the index: a cached one would be stale.
            options.setdefault("use_listings_cache", False)
        if self.protocol == "s3":
            options["config_kwargs"] = {
                "max_pool_connections": POOL,
                **options.get("config_kwargs", {}),
            }
        return options

    def write_kwargs(self, digest: str) -> dict[str, Any]:
        """How the streamed (multipart, block list) upload of a large object gets its digest."""
        if self.protocol in ("az", "abfs"):
            return {"metadata": {META_KEY: digest, "is_directory": "false"}}
        if self.protocol == "s3":
            return {"Metadata": {META_KEY: digest}}  # s3fs' open() takes request kwargs as is
        return {}


FLAVORS = {
    "az": Flavor("az", "adlfs", True, _Azure),
    "abfs": Flavor("abfs", "adlfs", True, _Azure),
    "s3": Flavor("s3", "s3fs", True, _S3),
    "oci": Flavor("oci", "ocifs", False),
}


class FsspecTarget:
    """`az://container/prefix`, `s3://bucket/prefix`, `oci://bucket@namespace/prefix`."""

    def __init__(self, name: str, url: str, storage_options: dict[str, Any]) -> None:
        import fsspec

        self.name = name
        self.url = url
        scheme, _, rest = url.partition("://")
        self.flavor = FLAVORS[scheme]
        try:
            importlib.import_module(self.flavor.package)
        except ImportError:
            raise TargetError(
                f"target {name}: {scheme}:// needs the {self.flavor.package} package "
                f"(pip install {self.flavor.package})",
                Kind.FATAL,
            ) from None
        try:
            self.fs = fsspec.filesystem(scheme, **self.flavor.options(storage_options))
        except Exception as exc:
            raise TargetError(f"target {name}: cannot open {url}: {exc}", Kind.FATAL) from exc
        self.direct = self.flavor.direct(self.fs) if self.flavor.direct else None
        self.root = rest.strip("/")
        self.capabilities = Capabilities(metadata=self.flavor.metadata, atomic_put=True)

    def _path(self, relpath: str) -> str:
        return f"{self.root}/{relpath}"

    def _sync(self, call: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Await `call` on fsspec's IO loop: the filesystem's clients belong to that loop."""
        from fsspec.asyn import sync

        return sync(self.fs.loop, call, *args)

    def _fail(self, what: str, relpath: str, exc: BaseException) -> TargetError:
        if isinstance(exc, TargetError):
            return exc
        if isinstance(exc, FileNotFoundError):
            return TargetError(f"target {self.name}: {what} {relpath}: not found", Kind.SKIP)
        return TargetError(
            f"target {self.name}: {what} {relpath}: {type(exc).__name__}: {exc}", classify(exc)
        )

    def put(self, relpath: str, local: Path, digest: str, size: int, reader: Readable) -> bool:
        path = self._path(relpath)
        try:
            if size <= SINGLE_PUT_MAX:
                data = reader.read()
                if self.direct is not None:
                    reported = self._sync(self.direct.put, path, data, {META_KEY: digest})
                    return reported is not None and reported == hashlib.md5(data).hexdigest()
                self.fs.pipe_file(path, data)
                return False
            f = self.fs.open(path, "wb", **self.flavor.write_kwargs(digest))
            try:
                while chunk := reader.read(CHUNK):
                    f.write(chunk)
            except BaseException:
                _abandon(f)
                raise
            f.close()
            return False
        except FileNotFoundError as exc:
            # Only the bucket or container can be missing when writing: nothing to skip.
            raise TargetError(f"target {self.name}: writing {relpath}: {exc}", Kind.FATAL) from exc
        except Exception as exc:
            raise self._fail("writing", relpath, exc) from exc

    def settle(self, relpaths: Collection[str]) -> None:
        """Nothing to do: the store answered a put once it had kept the object."""

    def confirm(self, relpath: str) -> None:
        """Nothing to do: an object the store lists is kept."""

    def discard_partial(self, relpath: str) -> None:
        """Nothing to do: an upload killed midway was never committed, so never visible.
        Azure drops uncommitted blocks after a week; S3 drops incomplete multipart uploads
        by the bucket's lifecycle rule."""

    def stat(self, relpath: str) -> ObjectInfo | None:
        path = self._path(relpath)
        try:
            if self.direct is not None:
                found = self._sync(self.direct.head, path)
                if found is None:
                    return None
                size, meta = found
                return ObjectInfo(relpath, size, _digest_in(meta))
            info = self.fs.info(path)
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise self._fail("stat", relpath, exc) from exc
        return ObjectInfo(relpath, int(info.get("size") or 0), self._listed_digest(info))

    def open(self, relpath: str) -> BinaryIO:
        path = self._path(relpath)
        try:
            if self.direct is not None:
                body, whole = self._sync(_fetch, self.direct, path)
                if whole is not None:
                    return io.BytesIO(whole)
                return cast(BinaryIO, _Download(body, self._sync))
            return self.fs.open(path, "rb")  # type: ignore[no-any-return]
        except Exception as exc:
            raise self._fail("open", relpath, exc) from exc

    def read_range(self, relpath: str, start: int, end: int) -> bytes:
        try:
            return bytes(self.fs.cat_file(self._path(relpath), start=start, end=end))
        except Exception as exc:
            raise self._fail("read", relpath, exc) from exc

    def delete(self, relpath: str) -> None:
        try:
            self.fs.rm_file(self._path(relpath))
        except FileNotFoundError:
            return
        except Exception as exc:
            raise self._fail("delete", relpath, exc) from exc

    def names(self, folder: str) -> set[str]:
        try:
            if self.direct is not None:
                return cast(set[str], self._sync(self.direct.names, self._path(folder)))
            found = self.fs.ls(self._path(folder), detail=True)
        except FileNotFoundError:
            return set()
        except Exception as exc:
            raise self._fail("list", folder, exc) from exc
        return {
            str(info["name"]).rstrip("/").rpartition("/")[2]
            for info in found
            if info.get("type") != "directory"
        }

    def list(self, prefix: str = STUDIES) -> Iterator[ObjectInfo]:
        """Study by study, so memory holds one study's listing at a time."""
        base = self._path(prefix)
        try:
            studies = sorted(self.fs.ls(base, detail=False))
        except FileNotFoundError:
            return
        except Exception as exc:
            raise self._fail("list", prefix, exc) from exc
        cut = len(self.root) + 1
        for study in studies:
            try:
                found = self.fs.find(study, detail=True)
            except Exception as exc:
                raise self._fail("list", study[cut:], exc) from exc
            for path, info in sorted(found.items()):
                if info.get("type") == "directory":
                    continue
                rel = path.strip("/")[cut:]
                yield ObjectInfo(rel, int(info.get("size") or 0), self._listed_digest(info))

    def _listed_digest(self, info: dict[str, Any]) -> str | None:
        meta = info.get("metadata")
        return _digest_in(meta) if isinstance(meta, dict) else None


async def _fetch(direct: Direct, path: str) -> tuple[Body, bytes | None]:
    """Start the GET; a small object (most DICOM instances) comes back whole in this one
    hop to the IO loop, not one hop per read."""
    body = await direct.get(path)
    return body, await body.whole()


def _digest_in(meta: dict[str, Any]) -> str | None:
    # Some S3 servers hand user metadata keys back with "-" for "_".
    value = meta.get(META_KEY) or meta.get(META_KEY.replace("_", "-"))
    return str(value) if value else None


class _Download(io.RawIOBase):
    """A large object read front to back as its GET delivers it, for hashing or serving.

    Each read holds what the caller asks for (`digest.of_stream` asks 1 MiB at a time),
    so a large object never sits in memory whole; not seekable, as no caller seeks.
    """

    def __init__(self, body: Body, run: Callable[..., Any]) -> None:
        super().__init__()
        self._body = body
        self._run = run  # FsspecTarget._sync

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1, /) -> bytes:
        if size is None or size < 0:
            return self.readall()
        if self.closed:
            raise ValueError("read of a closed download")
        return bytes(self._run(self._body.take, size))

    def readall(self) -> bytes:
        parts = []
        while part := self.read(CHUNK):
            parts.append(part)
        return b"".join(parts)

    def readinto(self, buffer: Any, /) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            # Hands the connection back to the pool (or drops it if the body was not drained).
            with contextlib.suppress(Exception):
                self._run(self._body.close)
        super().close()


def _abandon(f: Any) -> None:
    """Drop an upload without committing it, so no partial object becomes visible."""
    discard = getattr(f, "discard", None)
    if callable(discard):
        with contextlib.suppress(Exception):
            discard()
    f.closed = True  # fsspec would otherwise commit on close() / __del__
