"""Image bytes to model-sized uint8 pixels: the CPU hot path of bulk labeling.

:func:`decode_image` turns one encoded image into a ``(crop, crop, 3)`` uint8 RGB array with
the geometry of torchvision's official transforms (``Resize(resize)`` on the shorter side,
then ``CenterCrop(crop)``; ``Resize((crop, crop))`` of the whole frame when
``Preprocess.resize`` is None), in one resampling pass: the crop box is mapped back onto the
source and only that region is resized (``Image.resize(box=...)``), which is the same
arithmetic as resizing everything and cropping, without the large intermediate image.

What is handled, and how:

| input                               | handling                                           |
|-------------------------------------|----------------------------------------------------|
| EXIF orientation 2..8               | applied (same result as ``ImageOps.exif_transpose``) |
| L, 1, CMYK, YCbCr, P without alpha  | converted to RGB (L is resized first, then expanded) |
| RGBA, LA, PA, P/L/RGB + transparency| composited over white :data:`BACKGROUND`           |
| 16-bit ``I;16*`` and 32-bit ``I``   | top 8 bits of the 16-bit range (``v >> 8``), gray   |
| animated GIF / WebP                 | first frame                                        |
| JPEG much larger than the target    | DCT-domain downscale with ``Image.draft`` first    |

Failures raise :class:`DecodeError` whose ``reason`` is one short code:

| reason            | meaning                                                     |
|-------------------|-------------------------------------------------------------|
| ``empty``         | zero bytes                                                  |
| ``null_image``    | no bytes at all (null in the corpus)                        |
| ``not_an_image``  | bytes in no supported image format (HTML, random bytes)     |
| ``truncated``     | a supported format whose data ends early                    |
| ``too_many_pixels`` | header says more than ``max_pixels``; nothing was decoded |
| ``corrupt``       | any other decoding failure                                  |
| ``missing_object``| (from the corpus reader) the referenced file does not exist |
| ``not_a_regular_file`` | (corpus reader) the path names a FIFO, device, ``/proc`` file...; never opened |
| ``too_large``     | (corpus reader) the file is over ``reader.MAX_IMAGE_BYTES``  |
| ``unreadable``    | (corpus reader) the OS refused the read (EIO, EACCES, ...)   |
| ``path_outside_allowed_roots`` | (corpus reader) the path is outside the allowed roots; never opened |

Only the formats in :data:`FORMATS` are tried: Pillow's long tail (EPS runs Ghostscript,
for one) is not something a labeling job should feed untrusted bytes to. Pillow's global
``LOAD_TRUNCATED_IMAGES`` is never touched: a truncated image is an error row, not a
half-grey picture.
"""

from __future__ import annotations

import functools
import io
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ironsight.cluster import corpus as corpus_mod
from ironsight.cluster import reader
from ironsight.cluster.preprocess import Preprocess

# Pillow's own warning threshold (1 GiB / 4 bytes / 3 channels, ~89.5 MP, ~256 MiB as RGB):
# larger images are decompression bombs or outside what an image classifier is fed.
DEFAULT_MAX_PIXELS = 89_478_485
BACKGROUND = (255, 255, 255)  # transparent pixels become white, as on a web page
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "PPM")
REASONS = (
    "empty", "null_image", "not_an_image", "truncated", "too_many_pixels", "corrupt",
    "missing_object", "not_a_regular_file", "too_large", "unreadable", "path_outside_allowed_roots",
)
# Rows per decoded batch a decode task yields: 256 images of 224x224x3 uint8 are 38 MB, far
# below Ray Data's 128 MiB target block size.
DECODE_BLOCK_ROWS = 256

_JPEG_DRAFT = True  # switched off only by the benchmark that measures what it buys
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
# EXIF orientation -> the transpose that makes the stored image upright (exif_transpose's table)
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"RIFF", b"BM",
          b"II*\x00", b"MM\x00*")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class DecodeError(ValueError):
    """An image that cannot become pixels; ``reason`` is one of :data:`REASONS`.

    >>> str(DecodeError("empty", "zero-length image"))
    'empty: zero-length image'
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@functools.cache
def _formats() -> tuple[str, ...]:
    Image.init()
    return tuple(f for f in FORMATS if f in Image.OPEN)


def decode_image(
    data: bytes | None, pre: Preprocess, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode, orient, resize the shorter side to ``pre.resize``, center-crop ``pre.crop``
    (or, when ``pre.resize`` is None, resize the whole frame to ``pre.crop`` x ``pre.crop``).

    Args:
        data: the encoded image (JPEG, PNG, WebP, GIF, BMP, TIFF, ...).
        pre: the model's preprocessing; only ``resize``, ``crop``, ``interpolation`` are used.
        max_pixels: images whose header declares more pixels are rejected before decoding.
            Pillow itself refuses more than ``2 * PIL.Image.MAX_IMAGE_PIXELS`` regardless.

    Returns:
        ``(crop, crop, 3)`` uint8 RGB array (writable).

    Raises:
        DecodeError: with a ``reason`` from :data:`REASONS`.

    >>> import io
    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.new("RGB", (64, 48), (255, 0, 0)).save(buf, "PNG")
    >>> px = decode_image(buf.getvalue(), Preprocess(resize=32, crop=24))
    >>> px.shape, px.dtype.name, px[0, 0].tolist()
    ((24, 24, 3), 'uint8', [255, 0, 0])
    """
    return np.array(_decode(data, pre, max_pixels))


def decode_batch(
    blobs: Sequence[bytes | None], pre: Preprocess, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, list[str | None]]:
    """Decode many images; a bad one becomes an error string, never an exception.

    Returns:
        ``(N, crop, crop, 3)`` uint8 pixels (rows that failed are zero) and, per row, ``None``
        or ``"reason: detail"``.

    >>> pixels, errors = decode_batch([b"", None], Preprocess(resize=8, crop=8))
    >>> pixels.shape, [e.split(":")[0] for e in errors]
    ((2, 8, 8, 3), ['empty', 'null_image'])
    """
    out = np.zeros((len(blobs), pre.crop, pre.crop, 3), np.uint8)  # (N, H, W, 3) uint8
    errors: list[str | None] = [None] * len(blobs)
    for i, data in enumerate(blobs):
        try:
            out[i] = _decode(data, pre, max_pixels)
        except DecodeError as exc:
            errors[i] = str(exc)
    return out, errors


def as_error(value: Any) -> str | None:
    """An error cell as ``str`` or ``None``.

    Columns cross Ray's object store as Arrow: a null may come back as ``None``, NaN or a
    null-typed value, so "is this row an error" means "is this cell a non-empty string".

    >>> as_error("empty: zero-length image"), as_error(float("nan")), as_error("")
    ('empty: zero-length image', None, None)
    """
    return value if isinstance(value, str) and value else None


def error_reason(error: str) -> str:
    """The reason of an error cell (``"reason: detail"``, the format of :data:`REASONS` and of
    the read errors): the part before the first colon, what ``errors_by_reason`` counts.

    >>> error_reason("too_large: 9000x9000 pixels"), error_reason("null_image")
    ('too_large', 'null_image')
    """
    return error.split(":", 1)[0]


def count_reasons(errors: Iterable[str | None], counts: Counter[str] | None = None) -> Counter[str]:
    """How many error cells have each reason (:func:`error_reason`); ``None`` cells are not
    errors. Adds to ``counts`` when given (a running count over batches) and returns it.

    The one count behind ``errors_by_reason`` in classify's summary and the audit's report.

    >>> dict(count_reasons(["empty: zero-length", None, "empty: zero-length", "decode_failed: x"]))
    {'empty': 2, 'decode_failed': 1}
    """
    counts = Counter() if counts is None else counts
    counts.update(error_reason(e) for e in errors if e is not None)
    return counts


def worker_identity() -> str:
    """Where this process runs: ``<node>/<pid>``, ``<node>`` the first 8 hex digits of the Ray
    node id (``local`` outside a Ray worker). The decode tasks stamp it on every row they
    emit (``decode_worker``) and the predictors add their GPUs (``pred_worker``), so an
    output row says which node decoded it and which actor predicted it.

    Reads Ray only when this process is already a Ray worker: a decode task imports no Ray.

    >>> worker_identity() == f"local/{os.getpid()}"
    True
    """
    ray = sys.modules.get("ray")
    node = "local"
    try:
        if ray is not None and ray.is_initialized():
            node = ray.get_runtime_context().get_node_id()[:8]
    except Exception:  # noqa: BLE001 - a worker shutting down has no context to read
        pass
    return f"{node}/{os.getpid()}"


def decode_rows(
    blobs, read_errors, preprocess: Preprocess, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, list[str | None]]:
    """Decode a corpus batch: (N, H, W, 3) uint8 and one error (or None) per row.

    A row that already failed to read (null image, missing object) keeps that error; otherwise
    a decode failure becomes its error.

    >>> pixels, errors = decode_rows([None, b""], ["missing_object: a.jpg", None], Preprocess(8, 8))
    >>> pixels.shape, [e.split(":")[0] for e in errors]
    ((2, 8, 8, 3), ['missing_object', 'empty'])
    """
    images, decode_errors = decode_batch(blobs, preprocess, max_pixels=max_pixels)
    return images, [as_error(e) or d for e, d in zip(read_errors, decode_errors, strict=True)]


def read_and_decode(
    items: dict[str, np.ndarray],
    *,
    plan: corpus_mod.CorpusPlan,
    preprocess: Preprocess,
    max_pixels: int,
    block_rows: int = DECODE_BLOCK_ROWS,
) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data UDF of the decode stage: for each shard index in ``items``, stream its rows
    as decoded batches.

    Yields ``{"shard", "row", "id", "image" (N, H, W, 3) uint8, "error", "decode_worker"}``
    (+ ``label_true``); ``decode_worker`` is :func:`worker_identity`.
    A corrupt image becomes an error row; nothing here raises for bad image bytes.

    It lives here, not in :mod:`ironsight.cluster.pipeline`, so that a decode worker imports only this
    module, :mod:`ironsight.cluster.reader` and Pillow (0.4 s) and never torch, torchvision or Ray Data's
    driver side (10-20 s of CPU on a busy 2-core machine, taken from the predictor actor
    starting beside it).
    """
    for shard_index in items["shard"]:
        shard = plan.shards[int(shard_index)]
        for batch in reader.iter_shard(plan, shard, batch_rows=block_rows):
            images, errors = decode_rows(batch["image"], batch["error"], preprocess, max_pixels)
            out = {
                "shard": np.full(len(errors), shard.index, np.int64),
                "row": np.asarray(batch["row"], np.int64),
                "id": np.asarray(batch["id"], dtype=object),
                "image": images,
                "error": np.asarray(errors, dtype=object),
                "decode_worker": np.full(len(errors), worker_identity(), dtype=object),
            }
            if "label" in batch:
                out["label_true"] = np.asarray(batch["label"], np.int64)
            yield out


def _decode(data: bytes | None, pre: Preprocess, max_pixels: int) -> np.ndarray:
    """Read-only ``(crop, crop, 3)`` uint8 view of the final image."""
    img = _open(data, max_pixels)
    try:
        return np.asarray(_process(img, pre))
    except DecodeError:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error...
        raise _classify(exc) from exc
    finally:
        img.close()


def _open(data: bytes | None, max_pixels: int) -> Image.Image:
    if data is None:
        raise DecodeError("null_image", "no image bytes (null in the corpus)")
    if len(data) == 0:
        raise DecodeError("empty", "zero-length image")
    try:
        img = Image.open(io.BytesIO(data), formats=_formats())
    except Image.DecompressionBombError as exc:
        raise DecodeError("too_many_pixels", str(exc)) from exc
    except UnidentifiedImageError as exc:
        if bytes(data[:8]).startswith(_MAGIC):
            # A known signature Pillow could not parse: the header itself is cut or broken.
            reason = "truncated" if len(data) < 64 else "corrupt"
            raise DecodeError(reason, f"{len(data)} bytes start like an image but no header "
                                      "could be parsed") from exc
        raise DecodeError(
            "not_an_image",
            f"{len(data)} bytes in none of {', '.join(_formats())}; {_looks_like(data)}",
        ) from exc
    except Exception as exc:
        raise _classify(exc) from exc
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise DecodeError("too_many_pixels", f"{w}x{h} is {w * h} pixels > max_pixels {max_pixels}")
    if w <= 0 or h <= 0:
        img.close()
        raise DecodeError("corrupt", f"image header says {w}x{h}")
    return img


def _looks_like(data: bytes) -> str:
    """What non-image bytes seem to be, without quoting them: a corpus path may name any
    readable file (a credentials file, say), and error details end up in OUTPUT.

    >>> _looks_like(b"<!DOCTYPE html><html>"), _looks_like(b"\\x00\\x01")
    ('looks like HTML (an error page?)', 'binary data')
    """
    head = bytes(data[:512]).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<")):
        return "looks like HTML (an error page?)" if b"html" in head else "looks like XML"
    if head.startswith(b"{"):
        return "looks like JSON"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "binary data"
    return "text" if all(c.isprintable() or c.isspace() for c in text) else "binary data"


def _classify(exc: Exception) -> DecodeError:
    msg = str(exc) or type(exc).__name__
    if "truncated" in msg.lower():
        return DecodeError("truncated", msg)
    return DecodeError("corrupt", f"{type(exc).__name__}: {msg}")


def _process(img: Image.Image, pre: Preprocess) -> Image.Image:
    if _JPEG_DRAFT and img.format in ("JPEG", "MPO"):
        w, h = img.size
        short = min(w, h)
        target = pre.crop if pre.resize is None else pre.resize
        if short >= 2 * target:
            # libjpeg decodes at 1/2, 1/4 or 1/8 scale straight from DCT coefficients; the
            # result is never smaller than the resize target, so the final resize still
            # does the last (< 2x) step with the requested filter.
            if pre.resize is None:  # whole frame: each side at least crop
                img.draft("RGB", (pre.crop, pre.crop))
            else:
                img.draft("RGB", (-(-w * pre.resize // short), -(-h * pre.resize // short)))
    img.load()
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # a malformed EXIF block should not cost a decodable image
        orientation = 1
    method = _TRANSPOSE.get(orientation)
    if img.mode not in ("RGB", "L") or "transparency" in img.info:
        img = _to_rgb_or_l(img)

    # Geometry in upright coordinates, as torchvision computes it.
    sw, sh = img.size  # stored
    uw, uh = (sh, sw) if method in _SWAPS else (sw, sh)
    if pre.resize is None:  # whole frame to crop x crop, nothing cut (Resize((crop, crop)))
        nw = nh = pre.crop
        box = (0.0, 0.0, float(sw), float(sh))
    else:
        short, long = (uw, uh) if uw <= uh else (uh, uw)
        new_short, new_long = pre.resize, int(pre.resize * long / short)
        nw, nh = (new_short, new_long) if uw <= uh else (new_long, new_short)
        top = int(round((nh - pre.crop) / 2.0))
        left = int(round((nw - pre.crop) / 2.0))
        sx, sy = uw / nw, uh / nh
        box = (left * sx, top * sy, (left + pre.crop) * sx, (top + pre.crop) * sy)
        box = _to_stored(box, method, sw, sh)

    if (nw, nh) == (uw, uh):  # already at the target scale: crop only, no resampling
        if (sw, sh) != (pre.crop, pre.crop):
            img = img.crop(tuple(int(round(v)) for v in box))
    else:
        img = img.resize((pre.crop, pre.crop), _RESAMPLE[pre.interpolation], box=box)
    if method is not None:
        img = img.transpose(method)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


_SWAPS = (
    Image.Transpose.TRANSPOSE,
    Image.Transpose.ROTATE_270,
    Image.Transpose.TRANSVERSE,
    Image.Transpose.ROTATE_90,
)


def _to_stored(box: tuple[float, float, float, float], method, sw: int, sh: int):
    """Map a box in upright pixel-edge coordinates back onto the stored image."""
    x0, y0, x1, y1 = box
    if method is None:
        return box
    points = []
    for x, y in ((x0, y0), (x1, y1)):
        if method == Image.Transpose.FLIP_LEFT_RIGHT:
            points.append((sw - x, y))
        elif method == Image.Transpose.ROTATE_180:
            points.append((sw - x, sh - y))
        elif method == Image.Transpose.FLIP_TOP_BOTTOM:
            points.append((x, sh - y))
        elif method == Image.Transpose.TRANSPOSE:
            points.append((y, x))
        elif method == Image.Transpose.ROTATE_270:  # upright = stored turned 90 clockwise
            points.append((y, sh - x))
        elif method == Image.Transpose.TRANSVERSE:
            points.append((sw - y, sh - x))
        else:  # ROTATE_90: upright = stored turned 90 counter-clockwise
            points.append((sw - y, x))
    (ax, ay), (bx, by) = points
    return (min(ax, bx), min(ay, by), max(ax, bx), max(ay, by))


def _to_rgb_or_l(img: Image.Image) -> Image.Image:
    """Any Pillow mode to "RGB" or "L", alpha composited over :data:`BACKGROUND`."""
    mode = img.mode
    if mode in _SIXTEEN_BIT:
        px = np.asarray(img)  # (H, W) uint16 or int32, 16-bit range
        if px.dtype != np.uint16:
            px = np.clip(px, 0, 65535)
        return Image.fromarray((px >> 8).astype(np.uint8))
    if mode == "F":
        return Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8))
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", img.size, BACKGROUND)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    if mode == "1":
        return img.convert("L")
    return img.convert("RGB")
