"""Procedurally generated labeled images, written as Parquet corpora.

The demo, the tests and the benchmarks need real images with known labels and nothing may
be downloaded, so we draw them: one of :data:`CLASS_NAMES` shapes in a random vivid color,
at a random position, scale and rotation, over a textured background (gradients, stripes,
blotches and noise). Labels are the shape; color and background are nuisances, so a model
must learn shape to score well, and corruptions hurt it the way they hurt real classifiers.

Every image is a pure function of ``(seed, index)``: splits made with different seeds never
share images, and a rerun writes the same bytes.

Corpus layout written by :func:`write_corpus`:

| column       | type                                  | note                                   |
|--------------|---------------------------------------|----------------------------------------|
| ``id``       | string                                | ``{prefix}{index:08d}``                |
| ``image``    | binary, or ``struct<bytes, path>``    | layout ``bytes`` / ``hf`` (Hugging Face) |
| ``content``  | binary (+ ``path`` string)            | layout ``spark`` (Spark ``binaryFile``)  |
| ``label``    | int64                                 | index into :data:`CLASS_NAMES`          |
| ``label_name`` | string                              |                                        |
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from ironsight.cluster import storage

CLASS_NAMES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "diamond",
    "star",
    "cross",
    "ring",
    "hexagon",
)
LAYOUTS = ("bytes", "hf", "spark")
_SUPERSAMPLE = 4  # draw the mask at 4x and box-downsample: anti-aliased edges, no vector library


def _polygon(cx: float, cy: float, r: float, n: int, rot: float, inner: float | None = None):
    pts = []
    steps = n * 2 if inner else n
    for k in range(steps):
        rad = r if (inner is None or k % 2 == 0) else r * inner
        a = rot + 2 * math.pi * k / steps
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float32 in [0, 1]: a gradient, optional stripes, blotches and noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = rng.uniform(0.1, 0.9, 3), rng.uniform(0.1, 0.9, 3)
    angle = rng.uniform(0, 2 * math.pi)
    t = (np.cos(angle) * xx + np.sin(angle) * yy + 1.5) / 3.0
    bg = c0 * (1 - t[..., None]) + c1 * t[..., None]
    if rng.random() < 0.5:
        freq = rng.uniform(3, 10)
        phase = rng.uniform(0, 2 * math.pi)
        stripes = 0.5 + 0.5 * np.sin(2 * math.pi * freq * (xx * np.cos(angle + 1) + yy) + phase)
        bg = bg * (0.8 + 0.2 * stripes[..., None])
    cell = max(2, size // 8)
    blotch = rng.normal(0, 1, (size // cell + 1, size // cell + 1, 3)).astype(np.float32)
    blotch = blotch.repeat(cell, 0).repeat(cell, 1)[:size, :size]
    bg = bg + 0.06 * blotch + rng.normal(0, 0.03, bg.shape).astype(np.float32)
    return np.clip(bg, 0, 1).astype(np.float32)


def render_image(seed: int, index: int, size: int = 64) -> tuple[Image.Image, int]:
    """Draw image ``index`` of the split ``seed``; returns (RGB image, label).

    >>> img, label = render_image(0, 0, size=32)
    >>> img.size, 0 <= label < len(CLASS_NAMES)
    ((32, 32), True)
    """
    rng = np.random.default_rng([seed, index])
    label = int(rng.integers(len(CLASS_NAMES)))
    big = size * _SUPERSAMPLE
    bg = Image.fromarray((_background(rng, size) * 255).astype(np.uint8))
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    r = big * rng.uniform(0.22, 0.36)
    cx = big / 2 + rng.uniform(-1, 1) * (big / 2 - r) * 0.6
    cy = big / 2 + rng.uniform(-1, 1) * (big / 2 - r) * 0.6
    rot = rng.uniform(0, 2 * math.pi)
    name = CLASS_NAMES[label]
    if name == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif name == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        draw.ellipse([cx - r * 0.55, cy - r * 0.55, cx + r * 0.55, cy + r * 0.55], fill=0)
    elif name == "square":
        draw.polygon(_polygon(cx, cy, r, 4, rot), fill=255)
    elif name == "diamond":
        pts = [(cx + r * math.cos(rot), cy + r * math.sin(rot)),
               (cx - 0.55 * r * math.sin(rot), cy + 0.55 * r * math.cos(rot)),
               (cx - r * math.cos(rot), cy - r * math.sin(rot)),
               (cx + 0.55 * r * math.sin(rot), cy - 0.55 * r * math.cos(rot))]
        draw.polygon(pts, fill=255)
    elif name == "triangle":
        draw.polygon(_polygon(cx, cy, r, 3, rot), fill=255)
    elif name == "star":
        draw.polygon(_polygon(cx, cy, r, 5, rot, inner=0.42), fill=255)
    elif name == "hexagon":
        draw.polygon(_polygon(cx, cy, r, 6, rot), fill=255)
    elif name == "cross":
        w = r * 0.32
        for a in (rot, rot + math.pi / 2):
            dx, dy = math.cos(a), math.sin(a)
            px, py = -dy * w, dx * w
            draw.polygon([(cx - dx * r + px, cy - dy * r + py), (cx + dx * r + px, cy + dy * r + py),
                          (cx + dx * r - px, cy + dy * r - py), (cx - dx * r - px, cy - dy * r - py)],
                         fill=255)
    hue = rng.uniform(0, 1)
    color = tuple(int(255 * v) for v in _hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.55, 1.0)))
    fg = Image.new("RGB", (size, size), color)
    # Only the shape's edge needs supersampling: downsample the mask (box filter = coverage).
    return Image.composite(fg, bg, mask.resize((size, size), Image.Resampling.BOX)), label


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def encode(img: Image.Image, fmt: str = "jpeg", quality: int = 90) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, format="JPEG", quality=quality)
    elif fmt == "png":
        img.save(buf, format="PNG")
    elif fmt == "webp":
        img.save(buf, format="WEBP", quality=quality)
    else:
        raise ValueError(f"image format {fmt!r} unknown; expected jpeg, png or webp")
    return buf.getvalue()


def render_arrays(seed: int, start: int, count: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(count, size, size, 3) uint8 images and (count,) int64 labels, for training."""
    imgs = np.empty((count, size, size, 3), np.uint8)
    labels = np.empty(count, np.int64)
    for k in range(count):
        img, labels[k] = render_image(seed, start + k, size)
        imgs[k] = np.asarray(img)
    return imgs, labels


def _table(seed: int, start: int, count: int, size: int, fmt: str, layout: str, prefix: str) -> pa.Table:
    ids, blobs, labels = [], [], []
    for k in range(start, start + count):
        img, label = render_image(seed, k, size)
        ids.append(f"{prefix}{k:08d}")
        blobs.append(encode(img, fmt))
        labels.append(label)
    cols: dict[str, pa.Array] = {"id": pa.array(ids, pa.string())}
    if layout == "bytes":
        cols["image"] = pa.array(blobs, pa.binary())
    elif layout == "hf":
        cols["image"] = pa.StructArray.from_arrays(
            [pa.array(blobs, pa.binary()), pa.array([f"{i}.{fmt}" for i in ids], pa.string())],
            names=["bytes", "path"],
        )
    elif layout == "spark":
        cols["path"] = pa.array([f"file:/images/{i}.{fmt}" for i in ids], pa.string())
        cols["content"] = pa.array(blobs, pa.binary())
    else:
        raise ValueError(f"layout {layout!r} unknown; expected one of {LAYOUTS}")
    cols["label"] = pa.array(labels, pa.int64())
    cols["label_name"] = pa.array([CLASS_NAMES[i] for i in labels], pa.string())
    return pa.table(cols)


def iter_tables(n: int, *, seed: int, rows_per_file: int, size: int, fmt: str, layout: str,
                prefix: str) -> Iterator[tuple[int, pa.Table]]:
    for file_index, start in enumerate(range(0, n, rows_per_file)):
        yield file_index, _table(seed, start, min(rows_per_file, n - start), size, fmt, layout, prefix)


def write_corpus(
    uri: str,
    n: int,
    *,
    seed: int = 0,
    rows_per_file: int = 1000,
    row_group_size: int = 250,
    size: int = 64,
    fmt: str = "jpeg",
    layout: str = "bytes",
    prefix: str = "img-",
    progress: bool = False,
) -> list[str]:
    """Write ``n`` labeled images as Parquet files under ``uri`` (local dir or ``s3://``).

    Returns the URIs written (``part-00000.parquet`` ...). Files are published atomically.
    """
    loc = storage.resolve(uri)
    storage.makedirs(loc)
    written = []
    files = math.ceil(n / rows_per_file) if n else 0
    bar = None
    if progress:  # a bar on a terminal, a line every 10 s in a log
        from ironsight.cluster.progress import progress as progress_display

        bar = progress_display(n, None, desc=f"generating {os.path.basename(loc.uri) or loc.uri}",
                               noun="images")
    for file_index, table in iter_tables(n, seed=seed, rows_per_file=rows_per_file, size=size,
                                         fmt=fmt, layout=layout, prefix=prefix):
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, row_group_size=row_group_size)
        target = loc.join(f"part-{file_index:05d}.parquet")
        storage.publish_bytes(target, sink.getvalue())
        written.append(target.uri)
        if bar is not None:
            bar.update(table.num_rows)
    if bar is not None:
        bar.close()
    assert len(written) == files
    return written
