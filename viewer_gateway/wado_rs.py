"""WADO-RS (PS3.18 10.4): retrieve instances, metadata, frames and bulk data.

Instances stream in batches of a few MB (a series is never held in memory
whole), each read through `tiers.InstanceStore`, so every byte sent matches the
digest in the index, from tier 0 or a replica.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import UID, ExplicitVRLittleEndian

from viewer_gateway.media import Choice, MediaRange, Multipart, choose_multipart
from viewer_gateway.threads import Workers
from viewer_gateway.tiers import InstanceStore, Located
from viewer_gateway.transcode import can_convert, convert
from vna.errors import Corrupt, InvalidInput, NotAcceptable, NotFound

_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}


#: A retrieve reads instances in batches of about this many bytes, one worker-thread hop per
#: batch instead of one per instance; a retrieve holds two batches at most (one being sent,
#: the next being read).
BATCH_BYTES = 2 << 20
#: Batches whose files a retrieve asks the kernel to read ahead of their turn (tiers.prefetch).
PREFETCH_BATCHES = 2
#: Frames answers up to this size go out as one body (no streaming machinery for a frame).
WHOLE_BYTES = 16 << 20


@dataclass
class Retrieval:
    """A planned multipart retrieve: its Content-Type, its length when every instance goes
    out as stored (so no chunked framing is needed), and its body as an async iterator.

    The first batch is read when the retrieve is planned, before the response starts, so
    an instance with no intact copy anywhere is an error status, not a cut-short body.
    """

    store: InstanceStore
    choice: Choice
    mp: Multipart
    batches: list[list[Located]]
    length: int | None
    first: list[bytes] = field(default_factory=list)

    @property
    def content_type(self) -> str:
        return self.mp.content_type

    def read(self, index: int) -> list[bytes]:
        """The pieces of batch `index`: each part's delimiter and headers, then its bytes
        (the bytes as read, never copied into a bigger buffer)."""
        # Batches are read in order: the first read advises its own batch and the next
        # PREFETCH_BATCHES, each later one the batch that comes into that window.
        start = 0 if index == 0 else index + PREFETCH_BATCHES
        for later in range(start, min(index + 1 + PREFETCH_BATCHES, len(self.batches))):
            self.store.prefetch(self.batches[later])
        pieces: list[bytes] = []
        for inst in self.batches[index]:
            data = self.store.read(inst)
            syntax = self.choice.transfer_syntax or inst.transfer_syntax_uid
            data = convert(data, inst.transfer_syntax_uid, syntax)
            if self.length is not None and len(data) != inst.size:
                raise Corrupt(f"instance {inst.sop_uid} is {len(data)} bytes, not {inst.size}")
            head = self.mp.head(len(data), _part_type(syntax))
            pieces += (head if not pieces and index == 0 else b"\r\n" + head, data)
        return pieces

    async def body(self, workers: Workers) -> AsyncIterator[bytes]:
        """The whole body. While one batch is sent, the next is read in a worker thread
        (file reads release the GIL), so reading and sending overlap."""
        ahead: asyncio.Future[list[bytes]] | None = None
        try:
            for index in range(len(self.batches)):
                if index == 0:
                    pieces, self.first = self.first, []
                else:
                    assert ahead is not None
                    pieces = await ahead
                ahead = None
                if index + 1 < len(self.batches):
                    ahead = asyncio.ensure_future(workers.run(self.read, index + 1))
                for piece in pieces:
                    yield piece
                pieces = []  # let the batch go before the next is awaited
            yield b"\r\n" + self.mp.end()
        finally:
            if ahead is not None:  # the client went away: the read in flight is not wanted
                ahead.cancel()
                ahead.add_done_callback(_discard)


def _discard(future: asyncio.Future[list[bytes]]) -> None:
    """Mark an abandoned read's outcome as seen (a failure was the client's loss only)."""
    if not future.cancelled():
        future.exception()


def retrieve(store: InstanceStore, found: list[Located], accept: list[MediaRange]) -> Retrieval:
    """A multipart/related of application/dicom parts, its first batch read (call in a thread)."""
    choice = choose_multipart(accept, ["application/dicom"], ExplicitVRLittleEndian)
    for inst in found:
        if choice.transfer_syntax and not can_convert(
            inst.transfer_syntax_uid, choice.transfer_syntax
        ):
            raise NotAcceptable(
                f"instance {inst.sop_uid} is stored as {inst.transfer_syntax_uid} and cannot be "
                f"converted to {choice.transfer_syntax}; ask with transfer-syntax=*"
            )
    mp = Multipart("application/dicom")
    as_stored = all(choice.transfer_syntax in (None, i.transfer_syntax_uid) for i in found)
    length = None
    if as_stored:  # sizes known from the index (and checked as each instance is read)
        heads = sum(len(mp.head(i.size, _part_type(i.transfer_syntax_uid))) for i in found)
        length = heads + sum(i.size for i in found) + 2 * len(found) + len(mp.end())
    batches: list[list[Located]] = [[]]
    size = 0
    for inst in found:
        if batches[-1] and size + inst.size > BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(inst)
        size += inst.size
    retrieval = Retrieval(store, choice, mp, batches, length)
    retrieval.first = retrieval.read(0)
    return retrieval


def _part_type(syntax: str) -> str:
    return f"application/dicom; transfer-syntax={syntax}"


def parse_frames(text: str) -> list[int]:
    try:
        numbers = [int(p) for p in text.split(",")]
    except ValueError:
        raise InvalidInput(
            f"frame list {text!r} is not a comma-separated list of numbers"
        ) from None
    if not numbers or any(n < 1 for n in numbers):
        raise InvalidInput("frame numbers start at 1")
    return numbers


def frames(
    store: InstanceStore, inst: Located, numbers: list[int], accept: list[MediaRange]
) -> tuple[str, bytes | Iterator[bytes]]:
    """Frames as multipart/related octet-stream (or the stored compressed type with `*`).

    The body is one `bytes` when the frames asked for are small (a viewer's usual single
    frame), so it goes out as a plain response; else an iterator of parts.
    """
    stored = UID(inst.transfer_syntax_uid)
    compressed = stored.is_compressed
    choice = choose_multipart(accept, ["application/octet-stream"], ExplicitVRLittleEndian)
    if (
        compressed
        and choice.transfer_syntax not in (None, str(stored))
        and not can_convert(str(stored), ExplicitVRLittleEndian)
    ):
        raise NotAcceptable(f"frames are stored as {stored}; ask with transfer-syntax=*")
    data = store.read(inst)
    ds = pydicom.dcmread(io.BytesIO(data))
    if "PixelData" not in ds:
        raise NotFound("this instance has no pixel data")
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if any(n > count for n in numbers):
        raise NotFound(f"the instance has {count} frame(s)")
    chosen = _choice_syntax(choice, stored)
    if compressed and chosen == str(stored):
        all_frames = list(generate_frames(ds.PixelData, number_of_frames=count))
        ctype = f"application/octet-stream; transfer-syntax={stored}"
    else:
        if compressed:
            ds.decompress()
        frame_len = len(ds.PixelData) // count
        all_frames = [ds.PixelData[k * frame_len : (k + 1) * frame_len] for k in range(count)]
        ctype = f"application/octet-stream; transfer-syntax={ExplicitVRLittleEndian}"
    mp = Multipart("application/octet-stream")
    chosen_frames = [(all_frames[n - 1], ctype) for n in numbers]
    if sum(len(f) for f, _ in chosen_frames) <= WHOLE_BYTES:
        return mp.content_type, mp.whole(chosen_frames)
    return mp.content_type, mp.stream(chosen_frames)


def _choice_syntax(choice: Choice, stored: UID) -> str:
    if choice.transfer_syntax is None:
        return str(stored)
    return choice.transfer_syntax


def bulkdata(store: InstanceStore, inst: Located, tag_hex: str) -> bytes:
    """The value of one top-level binary element."""
    try:
        tag = int(tag_hex, 16)
    except ValueError:
        raise InvalidInput(f"{tag_hex!r} is not a tag") from None
    ds: Dataset = pydicom.dcmread(io.BytesIO(store.read(inst)))
    if tag not in ds or ds[tag].VR not in _BINARY_VRS | {"OB or OW"}:
        raise NotFound(f"no bulk data element {tag_hex} in this instance")
    value = ds[tag].value
    return bytes(value)
