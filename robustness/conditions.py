"""Image conditions (corruptions) at five severities, in a registry.

Each condition is one pure function ``fn(x, severity, rng) -> x'`` on a float image
``(H, W, 3)`` in [0, 1], its severity table on its first line (the bethgelab/imagecorruptions
style), randomness drawn only from the explicit ``rng``. :func:`apply_condition` is the entry
point: it takes a ``uint8`` (or float [0, 1]) image, seeds ``rng`` from
``(seed, condition name, key)`` and returns the same dtype and shape.

| condition          | family    | definition                                                   |
|--------------------|-----------|--------------------------------------------------------------|
| low_light          | lighting  | ImageNet-3DCC ``low_light``: range to [0, c], gamma 2, then   |
|                    |           | Poisson-Gaussian sensor noise                                |
| overexposure       | lighting  | ImageNet-C ``brightness``: +c on HSV value                   |
| contrast           | lighting  | ImageNet-C ``contrast``: (x - mean) * c + mean               |
| gaussian_blur      | blur      | ImageNet-C ``gaussian_blur`` (albumentations GaussianBlur)   |
| defocus_blur       | blur      | ImageNet-C ``defocus_blur``: aliased disk, blurred kernel    |
| motion_blur        | blur      | ImageNet-C ``motion_blur``: one-sided Gaussian streak        |
| gaussian_noise     | noise     | ImageNet-C ``gaussian_noise`` (albumentations GaussNoise)    |
| shot_noise         | noise     | ImageNet-C ``shot_noise``: Poisson(x * c) / c                |
| impulse_noise      | noise     | ImageNet-C ``impulse_noise``: skimage-style s&p per channel  |
| occlusion          | occlusion | a black rectangle covering c of the image area               |
| partial_view       | occlusion | a crop keeping c of the area, resized back                   |
| noisy_background   | clutter   | random shapes and stripes blended into the border region     |
| jpeg_compression   | digital   | ImageNet-C ``jpeg_compression`` (albumentations, OpenCV JPEG)|
| pixelate           | digital   | ImageNet-C ``pixelate``: box down to c * size, back up       |

**Image size.** ImageNet-C's spatial parameters (blur sigmas and radii, motion lengths) are
defined for 224 px images. Here they are multiplied by ``s = min(H, W) / 224``, so a 64 px
image (``s = 0.286``) gets the blur that a 224 px image would get after being resized to 64 px.
Pixelate and JPEG are already relative to the image size and are not scaled; occlusion,
partial view and background clutter are defined as fractions of the image.

**Randomness.** ``rng`` is seeded from ``(seed, name, key)`` and *not* from the severity:
the five severities of one image share the same random draws (the same noise field, blur
angle, rectangle position, clutter), scaled by the severity table. This is "common random
numbers": the distortion of one image grows smoothly with severity instead of jumping with a
new noise draw per level, and the result is still a pure function of
``(key, name, severity, seed)``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

# albumentations 2.0.x asks PyPI for a newer version when imported (a network call, up to a
# 2 s timeout, on every worker); upstream asks libraries to opt out:
# albumentations-team/albumentations#2206
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402 - OpenCV comes with albumentations
import numpy as np  # noqa: E402
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

ConditionFn = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Condition:
    """A registered condition.

    Attributes:
        name: Registry key, e.g. ``"gaussian_noise"``.
        fn: ``fn(x, severity, rng)`` on an ``(H, W, 3)`` float image in [0, 1].
        description: One line for reports.
        family: ``lighting``, ``blur``, ``noise``, ``occlusion``, ``clutter`` or ``digital``.
        imagenet_c: True when the definition is ImageNet-C's (comparable to published numbers).
        stochastic: False when the output does not depend on ``rng`` (same for every key).
    """

    name: str
    fn: ConditionFn
    description: str
    family: str
    imagenet_c: bool = False
    stochastic: bool = True


_REGISTRY: dict[str, Condition] = {}


def register_condition(
    name: str, *, description: str, family: str, imagenet_c: bool = False,
    stochastic: bool = True,
) -> Callable[[ConditionFn], ConditionFn]:
    """Decorator adding ``fn`` to the registry under ``name``; a duplicate name raises.

    >>> @register_condition("doc_invert", description="negative", family="digital",
    ...                     stochastic=False)
    ... def doc_invert(x, severity, rng):
    ...     return 1.0 - x
    >>> get_condition("doc_invert").family
    'digital'
    >>> _ = _REGISTRY.pop("doc_invert")
    """

    def deco(fn: ConditionFn) -> ConditionFn:
        if name in _REGISTRY:
            raise ValueError(f"condition {name!r} is already registered; pick another name")
        _REGISTRY[name] = Condition(name, fn, description, family, imagenet_c, stochastic)
        return fn

    return deco


def list_conditions(filter: str | None = None) -> list[str]:
    """Registered condition names, sorted.

    Args:
        filter: A family name (``"blur"``), or a name pattern as in timm's ``list_models``
            (``"*noise"``); without wildcards, a substring of the name.

    >>> list_conditions("blur")
    ['defocus_blur', 'gaussian_blur', 'motion_blur']
    >>> list_conditions("*_noise")
    ['gaussian_noise', 'impulse_noise', 'shot_noise']
    """
    names = sorted(_REGISTRY)
    if filter:
        wild = any(ch in filter for ch in "*?[")
        names = [n for n in names if _REGISTRY[n].family == filter
                 or (fnmatch.fnmatchcase(n, filter) if wild else filter in n)]
    return names


def get_condition(name: str) -> Condition:
    """The registered condition ``name``; unknown names raise ``ValueError`` listing valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"condition {name!r} unknown; expected one of {', '.join(list_conditions())}"
        ) from None


def _stable_int(text: str) -> int:
    # Python's hash() is salted per process; workers must agree on the seed.
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def condition_rng(name: str, *, seed: int, key: str) -> np.random.Generator:
    """The generator a condition draws from: a pure function of ``(seed, name, key)``."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, _stable_int(name),
                                  _stable_int(key)])


def apply_condition(name: str, image: np.ndarray, severity: int, *, seed: int,
                    key: str) -> np.ndarray:
    """Apply condition ``name`` at ``severity`` to one image.

    Args:
        name: A registered condition (:func:`list_conditions`).
        image: ``(H, W, 3)`` uint8, or float in [0, 1].
        severity: One of :data:`SEVERITIES`.
        seed: Run seed.
        key: The image's stable id; different images get different random draws.

    Returns:
        The corrupted image, same shape; uint8 for uint8 input, else float32 in [0, 1].

    >>> img = np.full((32, 32, 3), 128, np.uint8)
    >>> out = apply_condition("contrast", img, 5, seed=0, key="img-0")
    >>> out.shape, out.dtype, int(out[0, 0, 0])
    ((32, 32, 3), dtype('uint8'), 128)
    """
    cond = get_condition(name)
    if severity not in SEVERITIES:
        raise ValueError(f"severity {severity!r} for condition {name!r} is out of range; "
                         f"expected one of {SEVERITIES}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image for condition {name!r} has shape {image.shape}; expected "
                         "(H, W, 3) RGB (convert grayscale/RGBA first)")
    if image.dtype == np.uint8:
        x = image.astype(np.float32) / 255.0
    elif np.issubdtype(image.dtype, np.floating):
        x = image.astype(np.float32)
        if x.size and (x.min() < 0.0 or x.max() > 1.0):
            raise ValueError(f"float image for condition {name!r} ranges over "
                             f"[{x.min():.3g}, {x.max():.3g}]; expected [0, 1] (divide 0-255 "
                             "values by 255)")
    else:
        raise ValueError(f"image for condition {name!r} is {image.dtype}; expected uint8 or "
                         "float in [0, 1]")
    out = cond.fn(x, severity, condition_rng(name, seed=seed, key=key))
    out = np.clip(np.asarray(out, np.float32), 0.0, 1.0)
    if out.shape != image.shape:
        raise AssertionError(f"condition {name!r} changed shape {image.shape} -> {out.shape}")
    if image.dtype == np.uint8:
        return np.rint(out * 255.0).astype(np.uint8)
    return out


# ----------------------------------------------------------------------------- helpers


def _scale(x: np.ndarray) -> float:
    """Spatial scale of ImageNet-C's 224 px parameters for this image."""
    return min(x.shape[0], x.shape[1]) / 224.0


def _albu(transform: A.BasicTransform, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Run one albumentations transform, strictly validated, seeded from ``rng``."""
    seed = int(rng.integers(2**31 - 1))
    return A.Compose([transform], strict=True, seed=seed)(image=x)["image"]


def _convolve(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve each channel of (H, W, 3) ``x`` with a 2-D kernel, reflecting the border.

    OpenCV's ``filter2D`` (a correlation, as torch's conv2d; the kernels here are symmetric):
    on one small image it is 10-30x faster than torch, whose per-op thread pool dominates.
    """
    kh, kw = kernel.shape
    # reflect padding needs pad < size; replicate works for any kernel on tiny images
    border = cv2.BORDER_REFLECT_101 if max(kh, kw) // 2 < min(x.shape[:2]) else cv2.BORDER_REPLICATE
    return cv2.filter2D(np.ascontiguousarray(x, dtype=np.float32), -1, kernel.astype(np.float32),
                        borderType=border)


def _gaussian_kernel1d(sigma: float) -> np.ndarray:
    radius = max(1, math.ceil(4 * sigma))  # skimage's truncate=4.0
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / max(sigma, 1e-6)) ** 2)
    return k / k.sum()


_CV2_RESIZE = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}


def _resize(x: np.ndarray, h: int, w: int, mode: str) -> np.ndarray:
    """Resize float (H, W, 3) ``x`` with OpenCV (per image, much faster than torch's ops).

    ``area`` averages the covered source pixels by their covered fraction: at non-integer
    factors it is closer to PIL's BOX, which ImageNet-C's pixelate uses, than torch's adaptive
    pooling was (mean abs difference 18 vs 28 grey levels at 64 -> 38 px on noise); at integer
    factors all three agree. ``bilinear`` uses half-pixel centres (torch's align_corners=False).
    """
    return cv2.resize(np.ascontiguousarray(x, dtype=np.float32), (w, h), interpolation=_CV2_RESIZE[mode])


# ----------------------------------------------------------------------------- lighting


@register_condition("low_light", family="lighting",
                    description="ImageNet-3DCC low light: darkened (gamma 2) plus sensor noise")
def low_light(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = (0.60, 0.50, 0.40, 0.30, 0.20)[severity - 1]
    lo, hi = float(x.min()), float(x.max())
    y = ((x - lo) / (hi - lo)) ** 2.0 * c if hi > lo else np.zeros_like(x)
    # sensor noise, ImageNet-3DCC poisson_gaussian_noise at the same severity
    photons = 10 * (60, 25, 12, 5, 3)[severity - 1]
    y = np.clip(rng.poisson(y * photons) / photons, 0, 1)
    read = 0.1 * (0.08, 0.12, 0.18, 0.26, 0.38)[severity - 1]
    return np.clip(y + rng.normal(size=x.shape) * read, 0, 1)


@register_condition("overexposure", family="lighting", imagenet_c=True, stochastic=False,
                    description="ImageNet-C brightness: +c on the HSV value channel")
def overexposure(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = (0.1, 0.2, 0.3, 0.4, 0.5)[severity - 1]
    hsv = rgb_to_hsv(np.clip(x, 0, 1))
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return hsv_to_rgb(hsv)


@register_condition("contrast", family="lighting", imagenet_c=True, stochastic=False,
                    description="ImageNet-C contrast: pixels pulled towards the channel means")
def contrast(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = (0.4, 0.3, 0.2, 0.1, 0.05)[severity - 1]
    means = x.mean(axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1)


# ----------------------------------------------------------------------------- blur


@register_condition("gaussian_blur", family="blur", imagenet_c=True, stochastic=False,
                    description="ImageNet-C gaussian blur (sigma scaled to the image size)")
def gaussian_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = (1, 2, 3, 4, 6)[severity - 1]
    sigma = c * _scale(x)
    # kernel of radius ceil(4 sigma) as skimage (ImageNet-C); albumentations' automatic size
    # rounds sub-pixel sigmas (64 px images) down to a 1x1 identity kernel
    ksize = 2 * max(1, math.ceil(4 * sigma)) + 1
    return _albu(A.GaussianBlur(blur_limit=(ksize, ksize), sigma_limit=(sigma, sigma), p=1.0),
                 x, rng)


@register_condition("defocus_blur", family="blur", imagenet_c=True, stochastic=False,
                    description="ImageNet-C defocus blur: aliased disk kernel")
def defocus_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))[severity - 1]
    # own kernel: albumentations Defocus takes an integer radius, which at 64 px (radius
    # 0.9..2.9) merges severities; ImageNet-C's disk takes a real radius
    radius, alias = c[0] * _scale(x), c[1]
    r = max(1, math.ceil(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = (xx**2 + yy**2 <= radius**2).astype(np.float64)
    if not disk.any():
        disk[r, r] = 1.0
    disk /= disk.sum()
    g = _gaussian_kernel1d(alias)  # ImageNet-C softens the disk's aliased edge
    pad = len(g) // 2
    disk = np.pad(disk, pad)
    disk = np.apply_along_axis(np.convolve, 0, disk, g, mode="same")
    disk = np.apply_along_axis(np.convolve, 1, disk, g, mode="same")
    return _convolve(x, disk / disk.sum())


@register_condition("motion_blur", family="blur", imagenet_c=True,
                    description="ImageNet-C motion blur: Gaussian-weighted streak, random angle")
def motion_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))[severity - 1]
    s = _scale(x)
    radius, sigma = max(1.0, c[0] * s), max(0.5, c[1] * s)
    angle = math.radians(rng.uniform(-45, 45))
    n = 2 * math.ceil(radius) + 1  # imagecorruptions' kernel width for a radius
    weights = np.exp(-0.5 * (np.arange(n) / sigma) ** 2)  # one-sided: the streak trails
    weights /= weights.sum()
    # a sum of shifted copies (the kernel is a line): O(n * H * W), not O(n^2 * H * W)
    h, w = x.shape[:2]
    padded = np.pad(x, ((n, n), (n, n), (0, 0)), mode="edge")
    out = np.zeros_like(x)
    for i, wt in enumerate(weights):
        dy, dx = round(i * math.sin(angle)), round(i * math.cos(angle))
        out += wt * padded[n + dy:n + dy + h, n + dx:n + dx + w]
    return out


# ----------------------------------------------------------------------------- noise


@register_condition("gaussian_noise", family="noise", imagenet_c=True,
                    description="ImageNet-C gaussian noise: additive, per pixel and channel")
def gaussian_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = (0.08, 0.12, 0.18, 0.26, 0.38)[severity - 1]
    return _albu(A.GaussNoise(std_range=(c, c), mean_range=(0.0, 0.0), per_channel=True,
                              noise_scale_factor=1.0, p=1.0), x, rng)


@register_condition("shot_noise", family="noise", imagenet_c=True,
                    description="ImageNet-C shot noise: Poisson photon counts")
def shot_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = (60, 25, 12, 5, 3)[severity - 1]
    return np.clip(rng.poisson(x * c) / c, 0, 1)


@register_condition("impulse_noise", family="noise", imagenet_c=True,
                    description="ImageNet-C impulse noise: salt and pepper per channel")
def impulse_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = (0.03, 0.06, 0.09, 0.17, 0.27)[severity - 1]
    # skimage random_noise(mode="s&p", amount=c): each value flips with probability c, half
    # to 0 and half to 1; drawing u once makes a higher severity flip a superset of values
    u, salt = rng.random(x.shape), rng.random(x.shape) < 0.5
    return np.where(u < c, salt.astype(np.float32), x)


# ----------------------------------------------------------------------------- occlusion


def _nested_box(h: int, w: int, frac: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a box of area ``frac``; with the same draws, a larger
    ``frac`` gives a box containing the smaller one (corner = u * free space)."""
    aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))  # width / height
    u, v = rng.random(), rng.random()
    bh = min(h, max(1, round(math.sqrt(frac * h * w / aspect))))
    bw = min(w, max(1, round(frac * h * w / bh)))
    return round(u * (h - bh)), round(v * (w - bw)), bh, bw


@register_condition("occlusion", family="occlusion",
                    description="a black rectangle covering 10-50% of the image")
def occlusion(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = (0.1, 0.2, 0.3, 0.4, 0.5)[severity - 1]
    top, left, bh, bw = _nested_box(x.shape[0], x.shape[1], c, rng)
    out = x.copy()
    out[top:top + bh, left:left + bw] = 0.0
    return out


@register_condition("partial_view", family="occlusion",
                    description="a crop keeping 90-30% of the image area, resized back")
def partial_view(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = (0.9, 0.75, 0.6, 0.45, 0.3)[severity - 1]
    h, w = x.shape[:2]
    side = math.sqrt(c)  # same aspect as the image
    ch, cw = max(1, round(h * side)), max(1, round(w * side))
    u, v = rng.random(), rng.random()
    top, left = round(u * (h - ch)), round(v * (w - cw))
    return _resize(x[top:top + ch, left:left + cw], h, w, "bilinear")


def _clutter(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) float32 clutter: stripes under random filled shapes in random colors."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    angle, freq = rng.uniform(0, math.pi), rng.uniform(4, 12)
    stripes = 0.5 + 0.5 * np.sin(2 * math.pi * freq * (xx * math.cos(angle) +
                                                       yy * math.sin(angle)))
    base = rng.uniform(0, 1, 3) * stripes[..., None] + rng.uniform(0, 1, 3) * (1 - stripes[
        ..., None])
    img = Image.fromarray((base * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(24):
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.05, 0.2) * max(h, w)
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse([cx - r, cy - r * 0.7, cx + r, cy + r * 0.7], fill=color)
        elif kind == 1:
            draw.rectangle([cx - r, cy - r * 0.5, cx + r, cy + r * 0.5], fill=color)
        else:
            pts = [(cx + r * math.cos(a), cy + r * math.sin(a))
                   for a in rng.uniform(0, 2 * math.pi, 3)]
            draw.polygon(pts, fill=color)
    return np.asarray(img, np.float32) / 255.0


@register_condition("noisy_background", family="clutter",
                    description="random shapes and stripes blended into the border, center kept")
def noisy_background(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = ((0.8, 0.3), (0.7, 0.45), (0.6, 0.6), (0.5, 0.75), (0.4, 0.9))[severity - 1]
    keep, alpha = c  # side of the kept center box (fraction of the image), clutter opacity
    h, w = x.shape[:2]
    clutter = _clutter(h, w, rng)
    # distance outside the centered box, in units of the image size; soft 5% ramp
    dy = np.abs((np.arange(h) + 0.5) / h - 0.5) - keep / 2
    dx = np.abs((np.arange(w) + 0.5) / w - 0.5) - keep / 2
    outside = np.maximum(dy[:, None], dx[None, :])
    mask = np.clip(outside / 0.05 + 1.0, 0, 1)[..., None] * alpha
    return x * (1 - mask) + clutter * mask


# ----------------------------------------------------------------------------- digital


@register_condition("jpeg_compression", family="digital", imagenet_c=True, stochastic=False,
                    description="ImageNet-C JPEG compression (quality 25 to 7)")
def jpeg_compression(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = (25, 18, 15, 10, 7)[severity - 1]
    out = _albu(A.ImageCompression(compression_type="jpeg", quality_range=(c, c), p=1.0),
                (np.rint(np.clip(x, 0, 1) * 255)).astype(np.uint8), rng)
    return out.astype(np.float32) / 255.0


@register_condition("pixelate", family="digital", imagenet_c=True, stochastic=False,
                    description="ImageNet-C pixelate: box-downsampled to 60-25% and back")
def pixelate(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = (0.6, 0.5, 0.4, 0.3, 0.25)[severity - 1]
    h, w = x.shape[:2]
    small = _resize(x, max(1, round(h * c)), max(1, round(w * c)), "area")  # PIL BOX
    return _resize(small, h, w, "nearest")


IMAGENET_C_CONDITIONS: tuple[str, ...] = tuple(
    n for n in list_conditions() if _REGISTRY[n].imagenet_c
)
