"""decode_image / decode_batch: geometry, pixel modes, orientation and every failure reason."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from ironsight.cluster.decode import REASONS, DecodeError, decode_batch, decode_image
from ironsight.cluster.preprocess import Preprocess

PRE = Preprocess(resize=32, crop=24)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def smooth(w: int, h: int, seed: int = 0) -> np.ndarray:
    """(h, w, 3) uint8: smooth gradients plus a bright corner block; asymmetric on purpose."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0.2, 0.8, 3)
    img = base + 0.3 * np.stack([xx / w, yy / h, (xx + yy) / (w + h)], axis=-1)
    img[: h // 3, : w // 4] = (1.0, 0.1, 0.1)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def png_header_only(w: int, h: int) -> bytes:
    """A valid PNG signature + IHDR declaring w x h, with a few rows of data: a tiny bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + 3 * w) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def reference(img: Image.Image, pre: Preprocess) -> np.ndarray:
    """torchvision's official transforms on the same PIL image."""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Resize

    mode = InterpolationMode(pre.interpolation)
    return np.asarray(Compose([Resize(pre.resize, mode), CenterCrop(pre.crop)])(img))


# ---- failures ----------------------------------------------------------------------------

def _truncated(fmt: str) -> bytes:
    data = encode(Image.fromarray(smooth(200, 150)), fmt)
    return data[: len(data) // 2]


BAD = {
    "zero-bytes": (b"", "empty"),
    "null": (None, "null_image"),
    "truncated-jpeg": (_truncated("JPEG"), "truncated"),
    "truncated-png": (_truncated("PNG"), "truncated"),
    "jpeg-header-only": (encode(Image.fromarray(smooth(64, 64)), "JPEG")[:20], "truncated"),
    "random-bytes": (np.random.default_rng(1).bytes(5000), "not_an_image"),
    "html-as-jpg": (b"<!DOCTYPE html><html><head><title>404 Not Found</title></head>"
                    b"<body><h1>Not Found</h1></body></html>\n", "not_an_image"),
    "bomb-30000x30000-png": (png_header_only(30000, 30000), "too_many_pixels"),
    "jpeg-garbage-body": (encode(Image.fromarray(smooth(64, 64)), "JPEG")[:200]
                          + b"\x00" * 2000, "corrupt"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_raises_reason(case):
    data, reason = BAD[case]
    with pytest.raises(DecodeError) as info:
        decode_image(data, PRE)
    assert info.value.reason == reason
    assert reason in REASONS
    assert str(info.value).startswith(f"{reason}: ")


@pytest.mark.parametrize("max_pixels, size", [(None, (30000, 30000)), (1_000_000, (5000, 5000))])
def test_bomb_rejected_from_header_fast(max_pixels, size):
    data = png_header_only(*size)
    assert len(data) < 20_000
    kw = {} if max_pixels is None else {"max_pixels": max_pixels}
    start = time.perf_counter()
    with pytest.raises(DecodeError) as info:
        decode_image(data, PRE, **kw)
    assert time.perf_counter() - start < 1.0  # decoding 900 MP would take seconds and GBs
    assert info.value.reason == "too_many_pixels"


def test_max_pixels_boundary():
    data = encode(Image.fromarray(smooth(100, 50)), "PNG")
    assert decode_image(data, PRE, max_pixels=5000).shape == (24, 24, 3)
    with pytest.raises(DecodeError, match="too_many_pixels"):
        decode_image(data, PRE, max_pixels=4999)


def test_batch_keeps_order_and_zeroes_bad_rows():
    good = encode(Image.new("RGB", (40, 40), (10, 200, 30)), "PNG")
    pixels, errors = decode_batch([good, b"", None, b"<html>", good], PRE)
    assert pixels.shape == (5, 24, 24, 3) and pixels.dtype == np.uint8
    assert [e.split(":")[0] if e else None for e in errors] == [
        None, "empty", "null_image", "not_an_image", None]
    assert (pixels[1:4] == 0).all()
    assert (pixels[[0, 4]] == (10, 200, 30)).all()


# ---- geometry ---------------------------------------------------------------------------

@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(640, 480), (480, 640), (300, 300), (257, 1000), (70, 33)])
def test_matches_torchvision_resize_center_crop(size, interpolation):
    pre = Preprocess(resize=64, crop=56, interpolation=interpolation)
    img = Image.fromarray(smooth(*size))
    out = decode_image(encode(img, "PNG"), pre)
    want = reference(img, pre)
    assert out.shape == want.shape == (56, 56, 3)
    assert np.abs(out.astype(int) - want.astype(int)).max() <= 1


def test_exact_size_rgb_passes_pixels_through():
    px = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    out = decode_image(encode(Image.fromarray(px), "PNG"), Preprocess(resize=24, crop=24))
    assert np.array_equal(out, px)
    assert out.flags.writeable


def test_large_jpeg_dct_downscale_stays_close_to_full_decode():
    img = Image.fromarray(smooth(1024, 768))
    data = encode(img, "JPEG", quality=95)
    pre = Preprocess(resize=128, crop=112)
    want = reference(Image.open(io.BytesIO(data)).convert("RGB"), pre)
    out = decode_image(data, pre)
    assert np.abs(out.astype(float) - want).mean() < 2.0


@pytest.mark.parametrize("size", [(1, 1), (10000, 40), (40, 10000)])
def test_extreme_aspect_and_tiny(size):
    img = Image.new("RGB", size, (200, 100, 50))
    out = decode_image(encode(img, "PNG"), PRE)
    assert out.shape == (24, 24, 3)
    assert (out == (200, 100, 50)).all()


# ---- pixel modes -------------------------------------------------------------------------

def _cmyk_jpeg() -> bytes:
    return encode(Image.new("RGB", (40, 40), (255, 0, 0)).convert("CMYK"), "JPEG", quality=95)


def _png16() -> bytes:
    return encode(Image.fromarray(np.full((40, 40), 0x8040, np.uint16)), "PNG")


def _palette_transparent() -> bytes:
    img = Image.new("P", (40, 40), 0)
    img.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 black, index 1 blue
    img.paste(1, (0, 0, 40, 20))  # top half blue, bottom half index 0 (transparent)
    return encode(img, "PNG", transparency=0)


def _rgba() -> bytes:
    px = np.zeros((40, 40, 4), np.uint8)
    px[:20] = (0, 255, 0, 255)  # top half opaque green, bottom half transparent black
    return encode(Image.fromarray(px), "PNG")


def _la() -> bytes:
    return encode(Image.new("LA", (40, 40), (50, 0)), "PNG")


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    return data


MODES = {
    # name: (bytes, expected top-left pixel, expected bottom-right pixel, tolerance)
    "grayscale": (encode(Image.new("L", (40, 40), 77), "PNG"), (77, 77, 77), (77, 77, 77), 0),
    "bilevel": (encode(Image.new("1", (40, 40), 1), "PNG"), (255,) * 3, (255,) * 3, 0),
    "cmyk-jpeg": (_cmyk_jpeg(), (255, 0, 0), (255, 0, 0), 6),
    "16-bit-png": (_png16(), (0x80,) * 3, (0x80,) * 3, 0),
    "palette-transparency": (_palette_transparent(), (0, 0, 255), (255, 255, 255), 0),
    "rgba-over-white": (_rgba(), (0, 255, 0), (255, 255, 255), 0),
    "la-transparent": (_la(), (255, 255, 255), (255, 255, 255), 0),
    "animated-gif-first-frame": (_animated_gif(), (255, 0, 0), (255, 0, 0), 0),
    "webp-lossless": (encode(Image.new("RGB", (40, 40), (9, 99, 199)), "WEBP", lossless=True),
                      (9, 99, 199), (9, 99, 199), 0),
    "webp-lossy": (encode(Image.new("RGB", (40, 40), (9, 99, 199)), "WEBP", quality=90),
                   (9, 99, 199), (9, 99, 199), 6),
    "bmp": (encode(Image.new("RGB", (40, 40), (1, 2, 3)), "BMP"), (1, 2, 3), (1, 2, 3), 0),
    "jpeg-broken-exif": (encode(Image.new("RGB", (40, 40), (90, 60, 30)), "JPEG", quality=95,
                                exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x7f"),
                         (90, 60, 30), (90, 60, 30), 6),
}


@pytest.mark.parametrize("case", sorted(MODES))
def test_pixel_modes_become_rgb(case):
    data, top_left, bottom_right, tol = MODES[case]
    out = decode_image(data, Preprocess(resize=40, crop=40))
    assert out.shape == (40, 40, 3) and out.dtype == np.uint8
    assert np.abs(out[2, 2].astype(int) - top_left).max() <= tol
    assert np.abs(out[-3, -3].astype(int) - bottom_right).max() <= tol


def test_int32_mode_uses_16_bit_range():
    img = Image.fromarray(np.full((40, 40), 0x4000, np.int32), mode="I")
    out = decode_image(encode(img, "TIFF"), PRE)
    assert (out == 0x40).all()


# ---- EXIF orientation ---------------------------------------------------------------------

# The transpose that turns the upright image into the stored one, per EXIF orientation
# (the inverse of what a viewer applies).
STORE = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def _stored(upright: Image.Image, orientation: int, fmt: str, **kw) -> bytes:
    method = STORE[orientation]
    img = upright.transpose(method) if method is not None else upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, fmt, exif=exif.tobytes(), **kw)


@pytest.mark.parametrize("orientation", sorted(STORE))
def test_exif_orientation_png_matches_upright_exactly(orientation):
    # Noise and an odd margin (72 - 41, 48 - 41): a crop box off by one pixel would show.
    upright = Image.fromarray(np.random.default_rng(3).integers(0, 256, (60, 90, 3), np.uint8))
    pre = Preprocess(resize=48, crop=41)
    out = decode_image(_stored(upright, orientation, "PNG"), pre)
    assert np.abs(out.astype(int) - reference(upright, pre).astype(int)).max() <= 1


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_jpeg_matches_upright(orientation):
    upright = Image.fromarray(smooth(320, 240))
    pre = Preprocess(resize=64, crop=56)
    out = decode_image(_stored(upright, orientation, "JPEG", quality=95), pre).astype(float)
    want = decode_image(encode(upright, "JPEG", quality=95), pre).astype(float)
    unrotated = np.asarray(
        Image.open(io.BytesIO(_stored(upright, orientation, "JPEG", quality=95)))
        .convert("RGB").resize((56, 56)), dtype=float)
    assert np.abs(out - want).mean() < 3.0
    assert np.abs(unrotated - want).mean() > 10.0  # the stored image really is rotated


def test_the_decode_stage_imports_neither_torch_nor_ray_data():
    # Ray ships the decode UDF by reference: a worker imports the module that defines it.
    # Importing torch and torchvision took 20 s of a 2-core machine under load, taken from
    # the predictor actor starting beside it; the decode stage needs neither.
    import subprocess
    import sys

    from ray import cloudpickle

    import ironsight.cluster.pipeline
    from ironsight.cluster.decode import read_and_decode

    assert ironsight.cluster.pipeline.read_and_decode is read_and_decode
    assert b"ironsight.cluster.decode" in cloudpickle.dumps(read_and_decode)  # by reference
    fresh = (
        "import sys; from ironsight.cluster.decode import read_and_decode;"
        "print([m for m in ('torch', 'torchvision', 'ray') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", fresh], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


def test_read_and_decode_streams_a_shard_as_uint8_blocks_with_error_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ironsight.cluster.corpus import plan_corpus
    from ironsight.cluster.decode import read_and_decode

    good = encode(Image.fromarray(smooth(40, 30)), "JPEG")
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(5)], "image": [good, b"", None, good, good]}),
                   tmp_path / "a.parquet")
    plan = plan_corpus(str(tmp_path))
    blocks = list(read_and_decode({"shard": np.array([0])}, plan=plan, preprocess=PRE,
                                  max_pixels=10**6, block_rows=2))
    assert [len(b["row"]) for b in blocks] == [2, 2, 1]
    image = np.concatenate([b["image"] for b in blocks])
    errors = [e.split(":")[0] if e else None for b in blocks for e in b["error"]]
    assert image.shape == (5, 24, 24, 3) and image.dtype == np.uint8
    assert errors == [None, "empty", "null_image", None, None]
    assert [i for b in blocks for i in b["id"]] == ["r0", "r1", "r2", "r3", "r4"]
    assert np.concatenate([b["row"] for b in blocks]).tolist() == [0, 1, 2, 3, 4]
