"""The tensor operations of the batched conditions (robustness/conditions/_torch_ops.py) against
the NumPy, SciPy, OpenCV and PIL operations they stand for, and the blur and digital
definitions built on them."""

from __future__ import annotations

import io
import math

import cv2
import numpy as np
import pytest
from PIL import Image

from ironsight.cluster.synthetic import render_image
from ironsight.robustness.conditions import _torch_ops as ops
from ironsight.robustness.conditions import get_condition

torch = pytest.importorskip("torch")
ndimage = pytest.importorskip("scipy.ndimage")


def _random(*shape: int, seed: int = 0):
    return torch.from_numpy(np.random.default_rng(seed).random(shape, dtype=np.float32))


def _smooth_image(size: int = 64) -> np.ndarray:
    """A synthetic photo-like image (H, W, 3) float32: shapes and gradients, not white noise."""
    return np.asarray(render_image(7, 3, size)[0]).astype(np.float32) / 255.0


@pytest.mark.parametrize(("mode", "numpy_mode"), [("replicate", "edge"), ("reflect", "symmetric"),
                                                  ("reflect101", "reflect")])
@pytest.mark.parametrize("n", [1, 2, 5])
def test_pad_matches_numpy_pad_at_any_width(mode, numpy_mode, n):
    row = torch.arange(float(n)).view(1, 1, 1, n)
    for before, after in [(0, 1), (2, 3), (7, 12)]:  # wider than the row: reflected again
        got = ops.pad(row, 0, 0, before, after, mode)[0, 0, 0].numpy()
        want = np.pad(np.arange(float(n)), (before, after), mode=numpy_mode)
        np.testing.assert_array_equal(got, want, err_msg=f"{mode} {before} {after}")


def test_unknown_border_is_refused():
    with pytest.raises(ValueError, match="border 'wrap' unknown; expected one of replicate"):
        ops.pad(torch.zeros(1, 1, 2, 2), 1, 1, 1, 1, "wrap")


@pytest.mark.parametrize(("mode", "scipy_mode"), [("replicate", "nearest"), ("reflect", "reflect"),
                                                  ("reflect101", "mirror")])
@pytest.mark.parametrize(("sigma", "sigma_x", "truncate"), [(0.7, None, 4.0), (2.24, 3.1, 3.0),
                                                            (1.5, 0.2, 4.0)])
def test_gaussian_matches_scipy(mode, scipy_mode, sigma, sigma_x, truncate):
    x = _random(2, 3, 31, 40)
    got = ops.gaussian(x, sigma, sigma_x, truncate=truncate, mode=mode).numpy()
    sx = sigma if sigma_x is None else sigma_x
    want = ndimage.gaussian_filter(x.numpy().astype(np.float64), sigma=(0, 0, sigma, sx),
                                   mode=scipy_mode, truncate=truncate)
    np.testing.assert_allclose(got, want, atol=2e-6)


@pytest.mark.parametrize("size", [5, 15])  # direct below 11 x 11, the FFT from there
def test_correlate_matches_opencv_filter2d(size):
    x = _random(2, 3, 37, 29)
    kernel = np.random.default_rng(1).random((size, size))  # not symmetric: a correlation
    kernel /= kernel.sum()
    got = ops.correlate(x, kernel, "reflect101").numpy()
    for n in range(2):
        want = cv2.filter2D(np.ascontiguousarray(x[n].permute(1, 2, 0).numpy()), -1,
                            kernel.astype(np.float32), borderType=cv2.BORDER_REFLECT_101)
        np.testing.assert_allclose(got[n].transpose(1, 2, 0), want, atol=1e-5)


@pytest.mark.parametrize("zoom", [1.01, 1.17, 1.3])
@pytest.mark.parametrize(("h", "w"), [(50, 37), (224, 224)])
def test_clipped_zoom_matches_scipy_zoom(zoom, h, w):
    x = _random(1, 2, h, w)
    got = ops.clipped_zoom(x, zoom)[0].numpy()
    ch, cw = math.ceil(h / zoom), math.ceil(w / zoom)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[0, :, top:top + ch, left:left + cw].numpy().astype(np.float64)
    want = ndimage.zoom(crop, (1, zoom, zoom), order=1)[:, :h, :w]  # imagecorruptions' call
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize(("n_in", "n_out", "resample"), [
    (224, 134, "box"), (224, 56, "box"), (64, 19, "box"), (40, 1, "box"), (57, 30, "box"),
    (134, 224, "nearest"), (19, 64, "nearest"), (30, 57, "nearest"),
])
def test_pil_resize_matches_pil(n_in, n_out, resample):
    x = _random(1, 1, n_in, n_in + 3, seed=2)
    h, w = n_out, max(1, n_out - 1)
    got = ops.pil_resize(x, h, w, resample)[0, 0].numpy()
    method = {"box": Image.Resampling.BOX, "nearest": Image.Resampling.NEAREST}[resample]
    want = np.asarray(Image.fromarray(x[0, 0].numpy()).resize((w, h), method))
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_displace_matches_opencv_remap_reflect():
    img = _smooth_image(64)
    h, w = img.shape[:2]
    rng = np.random.default_rng(3)
    # shifts up to 6 px, so samples leave the image on every side
    dx = ndimage.gaussian_filter(rng.uniform(-60, 60, (h, w)), 4).astype(np.float32)
    dy = ndimage.gaussian_filter(rng.uniform(-60, 60, (h, w)), 4).astype(np.float32)
    assert np.abs(dx).max() > 3 and np.abs(dy).max() > 3
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    want = cv2.remap(img, xx + dx, yy + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    got = ops.displace(torch.from_numpy(img).permute(2, 0, 1)[None], torch.from_numpy(dx)[None],
                       torch.from_numpy(dy)[None])[0].permute(1, 2, 0).numpy()
    diff = np.abs(got - want)
    # OpenCV rounds coordinates to 1/32 px: a small difference on a smooth image, none elsewhere
    assert diff.mean() < 2e-3 and diff.max() < 0.05, (diff.mean(), diff.max())


class _FixedAngles:
    """A stand-in for BatchRng whose one draw, motion blur's angle, is given."""

    def __init__(self, degrees: list[float]) -> None:
        self.degrees = degrees

    def uniform(self, low: float, high: float):
        assert (low, high) == (-45, 45)
        return torch.tensor(self.degrees, dtype=torch.float32)


@pytest.mark.parametrize("severity", [1, 5])
def test_motion_blur_is_a_one_sided_streak_along_each_images_angle(severity):
    """Each image of a batch gets its own angle: the streak computed with NumPy slicing per
    image (the NumPy definition's sum of shifted copies, edge pixels repeated)."""
    size = 48
    imgs = np.stack([_smooth_image(size), _smooth_image(size)[::-1].copy(), _smooth_image(size)])
    degrees = [0.0, 30.0, -45.0]
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()
    got = get_condition("motion_blur").batched(x, severity, _FixedAngles(degrees))
    c = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))[severity - 1]
    radius, sigma = max(1.0, c[0] * size / 224), max(0.5, c[1] * size / 224)
    n = 2 * math.ceil(radius) + 1
    weights = np.exp(-0.5 * (np.arange(n) / sigma) ** 2)
    weights /= weights.sum()
    for img, deg, out in zip(imgs, degrees, got, strict=True):
        padded = np.pad(img, ((n, n), (n, n), (0, 0)), mode="edge")
        want = np.zeros_like(img)
        for i, wt in enumerate(weights):
            dy, dx = round(i * math.sin(math.radians(deg))), round(i * math.cos(math.radians(deg)))
            want += wt * padded[n + dy:n + dy + size, n + dx:n + dx + size]
        np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), want, atol=1e-5)


@pytest.mark.parametrize("severity", [1, 5])
def test_jpeg_compression_is_libjpeg_at_the_table_quality(severity):
    """The same JPEG as PIL's (libjpeg, 4:2:0) at ImageNet-C's quality for the severity, within
    codec builds' rounding; the next severity's quality is measurably further away."""
    img = np.array(render_image(7, 5, 96)[0])
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    got = get_condition("jpeg_compression").batched(x, severity, None)[0].permute(1, 2, 0).numpy() * 255

    def pil_jpeg(quality: int) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=quality)
        return np.asarray(Image.open(buf).convert("RGB")).astype(np.float32)

    quality = (25, 18, 15, 10, 7)[severity - 1]
    same = np.abs(got - pil_jpeg(quality)).mean()
    other = np.abs(got - pil_jpeg(quality + 10)).mean()
    assert same < 0.5 and other > 2 * same, (same, other)


BLUR_AND_DIGITAL = ("gaussian_blur", "defocus_blur", "motion_blur", "zoom_blur", "glass_blur",
                    "pixelate", "jpeg_compression", "elastic_transform")


@pytest.mark.parametrize("name", BLUR_AND_DIGITAL)
def test_a_channels_last_batch_gives_the_same_variants(name):
    """The audit's batches come channels-last (Predictor.to_device): same variants as NCHW."""
    from ironsight.robustness.conditions.batch import corrupt_batch

    assert get_condition(name).batched is not None and get_condition(name).fn is None
    imgs = np.stack([np.asarray(render_image(7, i, 40)[0]) for i in range(3)])
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(255.0)
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    keys = ["a", "b", "c"]
    a = dict(corrupt_batch(name, x, (1, 5), seed=0, keys=keys))
    b = dict(corrupt_batch(name, x.contiguous(), (1, 5), seed=0, keys=keys))
    for s in (1, 5):
        assert float((a[s] - b[s]).abs().max()) <= 1 / 255 + 1e-6, (name, s)
