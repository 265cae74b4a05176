"""Object-store targets through fsspec: Azure Blob/ADLS (adlfs), OCI (ocifs), S3 (s3fs).

The one place that knows fsspec. Each backend differs in how user metadata is
written and read, so a small `Flavor` per scheme says so; everything else is
the same. Objects are written so that a partial object is never visible: one
PUT for objects that fit in memory, else a streamed upload committed on close
(S3 multipart, Azure block list) and abandoned uncommitted on error.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from vna.layout import STUDIES
from vna.targets.faults import Kind, TargetError, classify
from vna.targets.target import SINGLE_PUT_MAX, Capabilities, ObjectInfo, Readable

CHUNK = 8 * 1024 * 1024
META_KEY = "xxh3_128"


@dataclass(frozen=True)
class Flavor:
    protocol: str
    package: str  # what to install when the backend is missing
    metadata: bool

    def write_kwargs(self, digest: str) -> dict[str, Any]:
        if self.protocol in ("az", "abfs"):
            return {"metadata": {META_KEY: digest, "is_directory": "false"}}
        if self.protocol == "s3":
            return {"s3_additional_kwargs": {"Metadata": {META_KEY: digest}}}
        return {}

    def pipe_kwargs(self, digest: str) -> dict[str, Any] | None:
        """Keyword arguments for a single PUT carrying metadata; None where pipe cannot."""
        if self.protocol == "s3":
            return {"Metadata": {META_KEY: digest}}
        if self.protocol == "oci":
            return {}
        return None  # adlfs' pipe_file fixes its own metadata: use open() instead


FLAVORS = {
    "az": Flavor("az", "adlfs", True),
    "abfs": Flavor("abfs", "adlfs", True),
    "s3": Flavor("s3", "s3fs", True),
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
        options = dict(storage_options)
        options.setdefault("skip_instance_cache", True)
        try:
            self.fs = fsspec.filesystem(scheme, **options)
        except Exception as exc:
            raise TargetError(f"target {name}: cannot open {url}: {exc}", Kind.FATAL) from exc
        self.root = rest.strip("/")
        self.capabilities = Capabilities(metadata=self.flavor.metadata, atomic_put=True)

    def _path(self, relpath: str) -> str:
        return f"{self.root}/{relpath}"

    def _fail(self, what: str, relpath: str, exc: BaseException) -> TargetError:
        if isinstance(exc, TargetError):
            return exc
        if isinstance(exc, FileNotFoundError):
            return TargetError(f"target {self.name}: {what} {relpath}: not found", Kind.SKIP)
        return TargetError(
            f"target {self.name}: {what} {relpath}: {type(exc).__name__}: {exc}", classify(exc)
        )

    def put(self, relpath: str, local: Path, digest: str, size: int, reader: Readable) -> None:
        path = self._path(relpath)
        try:
            pipe = self.flavor.pipe_kwargs(digest)
            if size <= SINGLE_PUT_MAX and pipe is not None:
                self.fs.pipe_file(path, reader.read(), **pipe)
                return
            f = self.fs.open(path, "wb", **self.flavor.write_kwargs(digest))
            try:
                if size <= SINGLE_PUT_MAX:
                    f.write(reader.read())
                else:
                    while chunk := reader.read(CHUNK):
                        f.write(chunk)
            except BaseException:
                _abandon(f)
                raise
            f.close()
        except Exception as exc:
            raise self._fail("writing", relpath, exc) from exc

    def stat(self, relpath: str) -> ObjectInfo | None:
        path = self._path(relpath)
        try:
            info = self.fs.info(path)
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise self._fail("stat", relpath, exc) from exc
        return ObjectInfo(relpath, int(info.get("size") or 0), self._digest(path, info))

    def _digest(self, path: str, info: dict[str, Any]) -> str | None:
        if not self.flavor.metadata:
            return None
        meta = info.get("metadata")
        if isinstance(meta, dict) and META_KEY in meta:
            return str(meta[META_KEY])
        if self.flavor.protocol == "s3":
            try:
                found = self.fs.metadata(path)
            except Exception:
                return None
            value = found.get(META_KEY) or found.get(META_KEY.replace("_", "-"))
            return str(value) if value else None
        return None

    def open(self, relpath: str) -> BinaryIO:
        try:
            return self.fs.open(self._path(relpath), "rb")  # type: ignore[no-any-return]
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
        if isinstance(meta, dict) and META_KEY in meta:
            return str(meta[META_KEY])
        return None


def _abandon(f: Any) -> None:
    """Drop an upload without committing it, so no partial object becomes visible."""
    discard = getattr(f, "discard", None)
    if callable(discard):
        with contextlib.suppress(Exception):
            discard()
    f.closed = True  # fsspec would otherwise commit on close() / __del__
