"""Rendered images (PS3.18 10.4.1.1.3, 8.3.5): JPEG or PNG for people and thumbnails.

Pixels are decoded by pydicom (with pylibjpeg for the JPEG family), passed
through the Modality LUT (rescale) and a VOI window (the request's `window`,
else the file's, else the data's range), inverted for MONOCHROME1, and scaled
to the requested `viewport`. Colour images keep their colours.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut

from viewer_gateway.media import Multipart
from viewer_gateway.tiers import InstanceStore, Located
from vna.errors import InvalidInput, NotAcceptable, NotFound

THUMBNAIL = (128, 128)


@dataclass(frozen=True)
class Options:
    media_type: str = "image/jpeg"
    quality: int = 90
    window: tuple[float, float] | None = None  # (center, width)
    viewport: tuple[int, int] | None = None  # (width, height)


def parse_options(
    accept_types: list[str], window: str | None, viewport: str | None, quality: str | None
) -> Options:
    """Read a rendered request's Accept and parameters; InvalidInput or NotAcceptable if wrong."""
    media = next((t for t in accept_types if t in ("image/jpeg", "image/png")), None)
    if media is None:
        if any(t in ("*/*", "image/*") for t in accept_types):
            media = "image/jpeg"
        else:
            raise NotAcceptable("rendered images are offered as image/jpeg or image/png")
    q = 90
    if quality is not None:
        try:
            q = int(quality)
        except ValueError:
            raise InvalidInput(f"quality must be 1-100, not {quality!r}") from None
        if not 1 <= q <= 100:
            raise InvalidInput(f"quality must be 1-100, not {q}")
    win = None
    if window:
        parts = window.split(",")
        try:
            center, width = float(parts[0]), float(parts[1])
        except (ValueError, IndexError):
            raise InvalidInput(f"window must be center,width[,function], not {window!r}") from None
        if width <= 0:
            raise InvalidInput("window width must be positive")
        win = (center, width)
    view = None
    if viewport:
        try:
            vw, vh = (int(v) for v in viewport.split(",")[:2])
        except ValueError:
            raise InvalidInput(f"viewport must be width,height, not {viewport!r}") from None
        if not (0 < vw <= 4096 and 0 < vh <= 4096):
            raise InvalidInput("viewport sides must be between 1 and 4096")
        view = (vw, vh)
    return Options(media, q, win, view)


def render(data: bytes, frame: int, options: Options) -> bytes:
    """One frame of an instance as an encoded image."""
    ds = pydicom.dcmread(io.BytesIO(data))
    if "PixelData" not in ds:
        raise NotFound("this instance has no pixel data to render")
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if not 1 <= frame <= count:
        raise NotFound(f"the instance has {count} frame(s)")
    try:
        pixels = ds.pixel_array if count == 1 else ds.pixel_array[frame - 1]
    except Exception as exc:
        raise NotAcceptable(
            f"cannot decode {ds.file_meta.TransferSyntaxUID} pixel data here: {exc}"
        ) from None
    image = _to_image(ds, pixels, options.window)
    if options.viewport:
        image.thumbnail(options.viewport, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if options.media_type == "image/png":
        image.save(out, format="PNG")
    else:
        image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode).save(
            out, format="JPEG", quality=options.quality
        )
    return out.getvalue()


def each(
    store: InstanceStore, found: list[Located], options: Options
) -> tuple[Multipart, Iterator[bytes]]:
    """A study or series rendered: one part per instance (its first frame), in order.

    Instances that have nothing to render (reports, presentation states) or that
    cannot be decoded here are left out, as a viewer showing the images would; if
    none can be rendered, the first item raises the reason.
    """
    mp = Multipart(options.media_type)

    def parts() -> Iterator[bytes]:
        sent, last_error = 0, None
        for inst in found:
            try:
                image = render(store.read(inst), 1, options)
            except (NotFound, NotAcceptable) as exc:
                last_error = exc
                continue
            sent += 1
            yield mp.part(image, options.media_type)
        if not sent:
            raise last_error or NotFound("nothing to render")
        yield mp.end()

    return mp, parts()


#: Integer pixels whose stored values span at most this many are windowed through a lookup
#: table: the same arithmetic, done once per stored value instead of once per pixel.
LUT_SPAN = 1 << 16


def _to_image(ds: Dataset, pixels: np.ndarray, window: tuple[float, float] | None) -> Image.Image:
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):  # colour, already RGB from pydicom
        arr = pixels.astype(np.float64)
        if arr.max() > 255:
            arr = arr / arr.max() * 255
        return Image.fromarray(arr.clip(0, 255).astype(np.uint8)[..., :3], "RGB")
    mono1 = ds.get("PhotometricInterpretation") == "MONOCHROME1"
    if pixels.dtype.kind in "iu" and pixels.size:
        lo, hi = int(pixels.min()), int(pixels.max())
        if hi - lo < LUT_SPAN:
            # Every stored value from lo to hi, through the same Modality LUT (elementwise,
            # so each entry equals what the pixel-by-pixel path computes for that value).
            domain = apply_modality_lut(np.arange(lo, hi + 1, dtype=pixels.dtype), ds)
            values = domain.astype(np.float64)
            if hi - lo <= np.iinfo(pixels.dtype).max:  # the offsets fit: no wider copy
                offsets = pixels - pixels.dtype.type(lo)
            else:
                offsets = pixels.astype(np.int64) - lo
            if window is None:
                window = _file_window(ds) or _range_window(np.take(values, offsets))
            return Image.fromarray(np.take(_windowed(values, window, mono1), offsets), "L")
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    window = window or _file_window(ds) or _range_window(values)
    return Image.fromarray(_windowed(values, window, mono1), "L")


def _windowed(values: np.ndarray, window: tuple[float, float], mono1: bool) -> np.ndarray:
    """8-bit display values: the VOI window, linear (PS3.3 C.11.2.1.2), inverted for
    MONOCHROME1."""
    center, width = window
    low = center - 0.5 - (width - 1) / 2
    scaled = ((values - low) / max(width - 1, 1e-9)).clip(0, 1) * 255
    if mono1:
        scaled = 255 - scaled
    return scaled.astype(np.uint8)


def _file_window(ds: Dataset) -> tuple[float, float] | None:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    c = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
    w = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
    return (c, w) if w > 0 else None


def _range_window(values: np.ndarray) -> tuple[float, float]:
    lo, hi = float(values.min()), float(values.max())
    return (lo + hi) / 2, max(hi - lo, 1.0)
