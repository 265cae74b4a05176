"""Preparing one drop file: parse, validate, coerce, write a staged archive copy, hash.

This runs in worker processes, so it takes and returns plain picklable
records and touches neither the index nor the layout: the committer in the
main process decides, with the index in hand, what becomes of the result.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import os
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any

from pydicom import config as pydicom_config
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from vna import digest, part10
from vna.attributes import ATTRIBUTES, Attribute, Match
from vna.errors import InvalidInput
from vna.index.writer import InstanceRecord
from vna.ingest.coerce import Rules, apply
from vna.layout import instance_relpath, is_valid_uid
from vna.quarantine import Reason

logger = logging.getLogger(__name__)

REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


class MissingUID(InvalidInput):
    reason = Reason.MISSING_UID.value


class BadUID(InvalidInput):
    reason = Reason.INVALID_UID.value


@dataclass(frozen=True)
class Job:
    """One file to take in: from a drop folder, or back out of quarantine (retry)."""

    source: str
    path: str  # absolute path of the file
    relpath: str  # path below the drop folder, kept in logs and quarantine
    rules: Rules
    staging: str
    durable: bool
    received: dt.datetime
    quarantine_id: str | None = None  # set when retrying a quarantined file
    # The staged copy's name, chosen with the job: if the worker dies, whoever made the job
    # can remove what it staged.
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def staged(self) -> str:
        return os.path.join(self.staging, f"{self.token}.dcm")

    def discard_staged(self) -> None:
        """Remove the staged copy, if there is one: it is never placed unless its batch
        commits."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.staged)


@dataclass
class Prepared:
    job: Job
    record: InstanceRecord
    stat: tuple[int, int]  # (size, mtime_ns) of the input when it was read

    @property
    def staged(self) -> str:
        return self.job.staged


@dataclass
class Rejected:
    job: Job
    reason: Reason
    detail: str
    digest: str
    size: int
    sop_uid: str | None


@dataclass
class Skipped:
    """Not taken this time (still being written, vanished, unreadable for now)."""

    job: Job
    why: str
    vanished: bool = False


Result = Prepared | Rejected | Skipped


def init_worker() -> None:
    """Worker process start-up: pydicom's warnings about odd values are not failures.

    Values read are not validated at all: a warning about them would be ignored
    anyway, and checking every element read cost about 3% of a worker's time.
    """
    warnings.filterwarnings("ignore", module="pydicom")
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE


def prepare(job: Job) -> Result:
    """Turn one input file into a staged archive copy, or a reason to quarantine it.

    Paths stay plain strings here: this runs once per file, and building Path
    objects cost more than the calls that take them.
    """
    path = job.path
    try:
        before = _stat(path)
    except FileNotFoundError:
        return Skipped(job, "vanished before it was read", vanished=True)
    except OSError as exc:
        return Skipped(job, f"cannot stat: {exc.strerror}")
    try:
        header = part10.read_header(path, keep=True, size=before[0])
        ds = header.dataset
        sop_uid = _validate_uids(ds)
        content = part10.content_digest(header, path)
        touched = apply(ds, job.rules, job.received, content)
        attributes = extract(ds)
        relpath = instance_relpath(ds.StudyInstanceUID, ds.SeriesInstanceUID, sop_uid)
        file_digest, size = part10.write_archived(header, path, job.staged, job.durable, touched)
    except FileNotFoundError:
        job.discard_staged()
        return Skipped(job, "vanished while it was read", vanished=True)
    except InvalidInput as exc:
        job.discard_staged()
        return _reject(job, path, _reason(exc), str(exc), _sop_uid_of(locals().get("ds")))
    except OSError as exc:
        job.discard_staged()
        return Skipped(job, f"I/O error: {exc}")
    except Exception as exc:  # a malformed file must never stop the daemon
        job.discard_staged()
        logger.debug("unexpected error preparing %s", path, exc_info=True)
        return _reject(job, path, Reason.UNREADABLE, f"{type(exc).__name__}: {exc}", None)
    try:
        after = _stat(path)
    except FileNotFoundError:
        job.discard_staged()
        return Skipped(job, "vanished while it was read", vanished=True)
    if after != before:
        job.discard_staged()
        return Skipped(job, "changed while it was read (still being written?)")
    record = InstanceRecord(
        attributes=attributes,
        path=relpath,
        size=size,
        digest=file_digest,
        content_digest=content,
        transfer_syntax_uid=str(header.transfer_syntax),
        source=job.source,
        received_at=job.received,
    )
    return Prepared(job, record, before)


def _stat(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _validate_uids(ds: Dataset) -> str:
    for keyword in REQUIRED_UIDS:
        value = ds.get(keyword)
        if value is None or str(value).strip() == "":
            raise MissingUID(f"{keyword} is missing or empty")
        if not is_valid_uid(str(value)):
            raise BadUID(
                f"{keyword} {str(value)[:80]!r} is not a valid UID (digits and dots, at most 64)"
            )
    return str(ds.SOPInstanceUID)


def _reason(exc: InvalidInput) -> Reason:
    try:
        return Reason(exc.reason)
    except ValueError:
        return Reason.UNREADABLE


def _sop_uid_of(ds: Any) -> str | None:
    if isinstance(ds, Dataset):
        value = str(ds.get("SOPInstanceUID", ""))
        return value if is_valid_uid(value) else None
    return None


def _reject(job: Job, path: str, reason: Reason, detail: str, sop_uid: str | None) -> Result:
    try:
        with open(path, "rb") as fh:
            file_digest = digest.of_stream(fh)
            size = os.fstat(fh.fileno()).st_size
    except FileNotFoundError:
        return Skipped(job, "vanished while it was read", vanished=True)
    except OSError as exc:
        return Skipped(job, f"I/O error: {exc}")
    return Rejected(job, reason, detail, file_digest, size, sop_uid)


_EXTRACTED = tuple((attr, int(Tag(attr.keyword))) for attr in ATTRIBUTES)


def extract(ds: Dataset) -> dict[str, Any]:
    """The index columns of `vna.attributes` from a dataset, cut to their stored length.

    The elements are looked up by plain int in a copy of the dataset's table
    (pydicom's tag type compares in Python), and one still as read is converted
    without going through the dataset's item access, which converts, stores and
    looks the element up three times more; none of these attributes has an
    ambiguous VR that the dataset would correct.
    The character set is the one the file was written in, which is what its raw
    values are encoded in. Most of these values repeat across the files of a
    series (patient, study, series attributes), so the column value of a short
    value as read is remembered (`_column_value`).
    """
    encoding = ds.original_character_set
    codecs = (encoding,) if isinstance(encoding, str) else tuple(encoding or ())
    out: dict[str, Any] = {}
    elements = {int(tag): elem for tag, elem in ds.items()}
    for index, (attr, tag) in enumerate(_EXTRACTED):
        elem = elements.get(tag)
        if elem is None:
            out[attr.column] = None
        elif isinstance(elem, RawDataElement):
            raw = elem.value
            if raw is not None and len(raw) <= REMEMBERED_VALUE_MAX:
                key = (elem.VR, raw, elem.is_implicit_VR, elem.is_little_endian)
                out[attr.column] = _column_value(index, key, codecs)
            else:
                out[attr.column] = _from_raw(attr, elem, codecs)
        else:
            out[attr.column] = _column(attr, elem.value)
    return out


#: Values as read up to this many bytes are remembered by `_column_value`.
REMEMBERED_VALUE_MAX = 256
RawKey = tuple[str | None, bytes, bool, bool]


@functools.lru_cache(maxsize=2048)
def _column_value(index: int, key: RawKey, codecs: tuple[str, ...]) -> Any:
    """`_from_raw` for a value as read, remembered: pydicom takes 6-8 µs to convert one."""
    attr, tag = _EXTRACTED[index]
    vr, raw, implicit, little = key
    elem = RawDataElement(Tag(tag), vr, len(raw), raw, 0, implicit, little)
    return _from_raw(attr, elem, codecs)


def _from_raw(attr: Attribute, elem: RawDataElement, codecs: tuple[str, ...]) -> Any:
    try:
        value = convert_raw_data_element(elem, encoding=list(codecs) or None).value
    except Exception:  # a malformed value is left out of the index, not fatal
        return None
    return _column(attr, value)


def _column(attr: Attribute, value: Any) -> Any:
    """An attribute's value as its index column holds it."""
    if value is None or value == "":
        return None
    if attr.match is Match.INTEGER:
        first = value[0] if isinstance(value, MultiValue) and len(value) else value
        try:
            return int(first)
        except (TypeError, ValueError):
            return None
    text = "\\".join(str(v) for v in value) if isinstance(value, MultiValue) else str(value)
    return text[: attr.length] or None
