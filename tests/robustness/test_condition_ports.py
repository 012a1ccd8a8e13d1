"""The batched tensor definitions of the noise, lighting and occlusion conditions
(robustness/conditions/noise.py, lighting.py, occlusion.py) against the NumPy/OpenCV/matplotlib
formulas they replace, and their common random numbers across severities."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from matplotlib.colors import hsv_to_rgb as mpl_hsv_to_rgb
from matplotlib.colors import rgb_to_hsv as mpl_rgb_to_hsv

from ironsight.cluster.synthetic import render_image
from ironsight.robustness.conditions import SEVERITIES, apply_condition, get_condition
from ironsight.robustness.conditions.batch import BatchRng, corrupt_batch

torch = pytest.importorskip("torch")
stats = pytest.importorskip("scipy.stats")

from ironsight.robustness.conditions.lighting import hsv_to_rgb, rgb_to_hsv  # noqa: E402

PORTED = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "brightness",
          "overexposure", "contrast", "saturate", "low_light", "occlusion", "partial_view")


def _images(size: int = 64, n: int = 3) -> np.ndarray:
    return np.stack([np.asarray(render_image(5, i, size)[0]) for i in range(n)])


def _tensor(images: np.ndarray):
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0)


def _awkward_pixels() -> np.ndarray:
    """Random colours plus greys, black, white and two- and three-way channel ties."""
    rng = np.random.default_rng(0)
    x = rng.random((4000, 3)).astype(np.float32)
    x[:50] = x[:50, :1]  # grey
    x[50] = 0.0
    x[51] = 1.0
    x[52:200, 1] = x[52:200, 0]  # red and green tie
    x[200:350, 2] = x[200:350, 1]  # green and blue tie
    x[350:500, 2] = x[350:500, 0]  # red and blue tie
    return x


def test_every_ported_condition_is_batched_only():
    for name in PORTED:
        cond = get_condition(name)
        assert cond.batched is not None and cond.fn is None, name
    assert get_condition("overexposure").batched is get_condition("brightness").batched


def test_hsv_matches_matplotlib():
    px = _awkward_pixels()
    t = torch.from_numpy(px).T.reshape(1, 3, -1, 1)
    ours = rgb_to_hsv(t).reshape(3, -1).T.numpy()
    np.testing.assert_allclose(ours, mpl_rgb_to_hsv(px), atol=1e-6)
    hsv = mpl_rgb_to_hsv(px)
    back = hsv_to_rgb(torch.from_numpy(hsv).T.reshape(1, 3, -1, 1)).reshape(3, -1).T.numpy()
    np.testing.assert_allclose(back, mpl_hsv_to_rgb(hsv), atol=1e-6)
    np.testing.assert_allclose(back, px, atol=1e-6)


@pytest.mark.parametrize(("name", "channel", "table"), [
    ("brightness", 2, [(1, .1), (1, .2), (1, .3), (1, .4), (1, .5)]),
    ("saturate", 1, [(.3, 0), (.1, 0), (2, 0), (5, .1), (20, .2)]),
])
def test_hsv_conditions_are_imagenet_c_formulas(name, channel, table):
    """ImageNet-C's formula through matplotlib's HSV (the NumPy definition this replaces)."""
    px = _awkward_pixels().reshape(40, 100, 3)
    for severity, (a, b) in zip(SEVERITIES, table, strict=True):
        hsv = mpl_rgb_to_hsv(px)
        hsv[..., channel] = np.clip(hsv[..., channel] * a + b, 0, 1)
        ref = np.clip(mpl_hsv_to_rgb(hsv), 0, 1)
        got = apply_condition(name, px, severity, seed=0, key="k")
        np.testing.assert_allclose(got, ref, atol=1e-5, err_msg=f"{name} {severity}")


@pytest.mark.parametrize("name", ["shot_noise", "low_light"])
def test_poisson_draws_repeat_for_each_severity(name):
    """Each severity starts an image's Poisson draws from the same state (as NumPy's fresh
    generator per severity did): severities 2 and 4 after 1 and 3 equal them alone."""
    x = _tensor(_images())
    keys = ["a", "b", "c"]
    together = dict(corrupt_batch(name, x, SEVERITIES, seed=4, keys=keys))
    for severity in (2, 4):
        alone = dict(corrupt_batch(name, x, (severity,), seed=4, keys=keys))[severity]
        assert torch.equal(together[severity], alone), severity


def test_shot_noise_counts_are_poisson():
    x = torch.full((2, 3, 100, 100), 0.1)
    rates = x * 60
    counts = BatchRng("shot_noise", ["a", "b"], seed=0).poisson(rates).flatten().numpy()
    observed = np.bincount(counts.astype(int), minlength=20)[:20] / counts.size
    np.testing.assert_allclose(observed, stats.poisson.pmf(np.arange(20), 6.0), atol=0.005)


@pytest.mark.parametrize("name", ["gaussian_noise", "speckle_noise"])
def test_gaussian_fields_are_shared_by_the_severities(name):
    """The same normal draw scaled by the severity table (where no value was clipped)."""
    x = _tensor(_images())
    table = {"gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
             "speckle_noise": (0.15, 0.2, 0.35, 0.45, 0.6)}[name]
    rng = BatchRng(name, ["a", "b", "c"], seed=0)
    fields = []
    for severity in (1, 5):
        rng.rewind()
        out = get_condition(name).batched(x, severity, rng)
        delta = (out - x) / table[severity - 1]
        fields.append(delta if name == "gaussian_noise" else delta / x.clamp_min(1e-3))
    kept = (x > 0.1) & (x < 0.9) & ((fields[1] * table[4]).abs() < 0.09)
    assert kept.float().mean() > 0.1
    torch.testing.assert_close(fields[0][kept], fields[1][kept], atol=1e-3, rtol=1e-3)


def test_impulse_noise_flips_a_superset_at_higher_severity():
    x = torch.full((2, 3, 48, 48), 0.5)
    out = dict(corrupt_batch("impulse_noise", x, SEVERITIES, seed=0, keys=["a", "b"]))
    flipped = [(out[s] == 0) | (out[s] == 1) for s in SEVERITIES]
    for low, high in zip(flipped, flipped[1:], strict=False):
        assert bool((high | ~low).all())  # low implies high


def test_occlusion_boxes_are_nested_and_per_image():
    x = torch.ones(4, 3, 64, 80)
    out = dict(corrupt_batch("occlusion", x, SEVERITIES, seed=0, keys=list("abcd")))
    black = [(out[s] == 0).all(1) for s in SEVERITIES]  # (N, H, W)
    for s, low, high in zip(SEVERITIES, black, black[1:], strict=False):
        assert bool((high | ~low).all()), s
    for s, mask in zip(SEVERITIES, black, strict=True):
        frac = mask.float().mean((1, 2))
        assert torch.allclose(frac, torch.full((4,), 0.1 * s), atol=0.03), (s, frac)
        rows, cols = mask.any(2), mask.any(1)  # a rectangle: its rows x its columns
        assert torch.equal(mask, rows[:, :, None] & cols[:, None, :])
    assert len({tuple(m.nonzero()[0].tolist()) for m in black[0]}) > 1  # each image its own box


def test_partial_view_is_the_crop_resized_by_opencv():
    """The old definition: the crop at the drawn offset, cv2.resize INTER_LINEAR back."""
    images = _images(64).astype(np.float32) / 255.0
    images = np.ascontiguousarray(images[:, :50, :])  # 50 x 64: non-square
    keys = ["a", "b", "c"]
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    for severity, c in zip(SEVERITIES, (0.9, 0.75, 0.6, 0.45, 0.3), strict=True):
        rng = BatchRng("partial_view", keys, seed=2)
        out = get_condition("partial_view").batched(x, severity, rng).permute(0, 2, 3, 1).numpy()
        rng.rewind()
        uv = rng.rand(2).double().numpy()
        h, w = 50, 64
        ch, cw = max(1, round(h * c ** 0.5)), max(1, round(w * c ** 0.5))
        for i, (u, v) in enumerate(uv):
            top, left = round(u * (h - ch)), round(v * (w - cw))
            ref = cv2.resize(images[i, top:top + ch, left:left + cw], (w, h),
                             interpolation=cv2.INTER_LINEAR)
            np.testing.assert_allclose(out[i], ref, atol=1e-4, err_msg=f"severity {severity} image {i}")


def test_low_light_of_a_flat_image_is_sensor_noise_on_black():
    flat = np.full((32, 32, 3), 0.4, np.float32)
    out = apply_condition("low_light", flat, 5, seed=0, key="k")
    assert out.mean() < 0.02 and out.max() > 0  # black plus clipped read noise
