"""Image conditions (corruptions) at five severities, in a registry.

Each condition is one pure function ``fn(x, severity, rng) -> x'`` on a float image
``(H, W, 3)`` in [0, 1], its severity table on its first line (the bethgelab/imagecorruptions
style), randomness drawn only from the explicit ``rng``. :func:`apply_condition` is the entry
point: it takes a ``uint8`` (or float [0, 1]) image, seeds ``rng`` from
``(seed, condition name, key)`` and returns the same dtype and shape.

Tags: ``imagenet_c`` marks exactly ImageNet-C's 15 benchmark corruptions (Hendrycks &
Dietterich 2019; :data:`IMAGENET_C_CONDITIONS`, what its mCE averages), ``imagenet_c_extra``
its 4 held-out extras (:data:`IMAGENET_C_EXTRA_CONDITIONS`). Severity tables are the
reference code's, the ``imagecorruptions`` package (bethgelab), which
``tests/robustness/test_imagenet_c_reference.py`` runs beside these per severity. ms: one
224 px image on one shared CPU core (mean over severities 1-5).

| condition          | family    | tag    | definition                                          |   ms |
|--------------------|-----------|--------|-----------------------------------------------------|------|
| gaussian_noise     | noise     | IN-C   | + N(0, c) per pixel and channel (albumentations)    |    3 |
| shot_noise         | noise     | IN-C   | Poisson(x * c) / c                                  |   13 |
| impulse_noise      | noise     | IN-C   | skimage-style salt and pepper per channel           |    2 |
| speckle_noise      | noise     | extra  | x + x * N(0, c)                                     |    4 |
| defocus_blur       | blur      | IN-C   | aliased disk kernel, blurred                        |    7 |
| glass_blur         | blur      | IN-C   | blur, local pixel shuffles, blur (vectorised hops)  |    9 |
| motion_blur        | blur      | IN-C   | one-sided Gaussian streak, random angle             |   16 |
| zoom_blur          | blur      | IN-C   | mean of centre zooms up to 1.11-1.31x               |   10 |
| gaussian_blur      | blur      | extra  | Gaussian, sigma 1-6 (albumentations GaussianBlur)   |    2 |
| snow               | weather   | IN-C   | zoomed, streaked flakes over a greyed image         |   10 |
| frost              | weather   | IN-C   | c0 x + c1 frost; frost texture is procedural (*)    |    6 |
| fog                | weather   | IN-C   | diamond-square plasma fractal haze                  |    3 |
| spatter            | weather   | extra  | water drops (severity 1-3) or mud (4-5)             |    5 |
| brightness         | lighting  | IN-C   | +c on HSV value                                     |   14 |
| contrast           | lighting  | IN-C   | (x - mean) * c + mean                               |    2 |
| saturate           | lighting  | extra  | HSV saturation * a + b                              |   27 |
| overexposure       | lighting  |        | brightness under its older name (untagged)          |   27 |
| low_light          | lighting  |        | ImageNet-3DCC ``low_light``: range to [0, c], gamma |   18 |
|                    |           |        | 2, then Poisson-Gaussian sensor noise               |      |
| elastic_transform  | digital   | IN-C   | smooth random displacement (imagecorruptions')      |    2 |
| pixelate           | digital   | IN-C   | PIL box down to c * size, nearest back up           |    2 |
| jpeg_compression   | digital   | IN-C   | JPEG quality 25 to 7 (albumentations, OpenCV)       |    2 |
| occlusion          | occlusion |        | a black rectangle covering c of the image area      |  0.5 |
| partial_view       | occlusion |        | a crop keeping c of the area, resized back          |  0.7 |
| noisy_background   | clutter   |        | random shapes and stripes blended into the border   |    9 |

(*) ImageNet-C's frost blends in crops of five photographs that ship with the reference; they
are not copied. :func:`_frost_texture` synthesizes a seeded texture with the photographs'
measured mean colour and spread (fractal noise, ridged "ice veins", grain), so frost is an
approximation: its mean distortion is within 25% of the reference's per severity (tested),
its look is not the same. Glass blur's pixel shuffle is a vectorised stand-in for the
reference's sequential Python loop (~0.9 s per image): within 10% of its distortion.

**Image size.** ImageNet-C's spatial parameters (blur sigmas and radii, motion lengths, glass
shuffle distances) are defined for 224 px images. Here they are multiplied by
``s = min(H, W) / 224``, so a 64 px image (``s = 0.286``) gets the blur that a 224 px image
would get after being resized to 64 px. Snow, frost and spatter draw their layer at the
224 px size of the image (shorter side 224) with the published pixel parameters and resize
it to the image. Pixelate, JPEG, zoom blur, fog (a fractal as large as the image) and elastic
transform (imagecorruptions' version, in fractions of the image) are already relative to the
image size and are not scaled; occlusion, partial view and background clutter are defined as
fractions of the image.

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
from typing import TYPE_CHECKING

# albumentations 2.0.x asks PyPI for a newer version when imported (a network call, up to a
# 2 s timeout, on every worker); upstream asks libraries to opt out:
# albumentations-team/albumentations#2206
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402 - OpenCV comes with albumentations
import numpy as np  # noqa: E402
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from ironsight.cluster.errors import did_you_mean  # noqa: E402

if TYPE_CHECKING:
    import albumentations

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

ConditionFn = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Condition:
    """A registered condition.

    Attributes:
        name: Registry key, e.g. ``"gaussian_noise"``.
        fn: ``fn(x, severity, rng)`` on an ``(H, W, 3)`` float image in [0, 1].
        description: One line for reports.
        family: ``lighting``, ``blur``, ``noise``, ``weather``, ``occlusion``, ``clutter`` or
            ``digital``.
        imagenet_c: True on exactly ImageNet-C's 15 benchmark corruptions (the ones its mCE
            averages, comparable to published tables).
        stochastic: False when the output does not depend on ``rng`` (same for every key).
        imagenet_c_extra: True on ImageNet-C's 4 held-out extras (speckle_noise,
            gaussian_blur, spatter, saturate): ImageNet-C's definitions, not in its mCE.
    """

    name: str
    fn: ConditionFn
    description: str
    family: str
    imagenet_c: bool = False
    stochastic: bool = True
    imagenet_c_extra: bool = False


_REGISTRY: dict[str, Condition] = {}


def register_condition(
    name: str, *, description: str, family: str, imagenet_c: bool = False,
    stochastic: bool = True, imagenet_c_extra: bool = False,
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
        if imagenet_c and imagenet_c_extra:
            raise ValueError(f"condition {name!r} is tagged both ImageNet-C and ImageNet-C "
                             "extra; pick one")
        _REGISTRY[name] = Condition(name, fn, description, family, imagenet_c, stochastic,
                                    imagenet_c_extra)
        return fn

    return deco


def list_conditions(filter: str | None = None) -> list[str]:
    """Registered condition names, sorted.

    Args:
        filter: A family name (``"blur"``), or a name pattern as in timm's ``list_models``
            (``"*noise"``); without wildcards, a substring of the name.

    >>> list_conditions("blur")
    ['defocus_blur', 'gaussian_blur', 'glass_blur', 'motion_blur', 'zoom_blur']
    >>> list_conditions("*_noise")
    ['gaussian_noise', 'impulse_noise', 'shot_noise', 'speckle_noise']
    """
    names = sorted(_REGISTRY)
    if filter:
        wild = any(ch in filter for ch in "*?[")
        names = [n for n in names if _REGISTRY[n].family == filter
                 or (fnmatch.fnmatchcase(n, filter) if wild else filter in n)]
    return names


def get_condition(name: str) -> Condition:
    """The registered condition ``name``; unknown names raise ``ValueError`` with a
    did-you-mean (:func:`ironsight.cluster.errors.did_you_mean`) and the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        names = list_conditions()
        raise ValueError(
            f"condition {name!r} unknown; {did_you_mean(name, names)}expected one of {', '.join(names)}"
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


def _albumentations():  # noqa: ANN202 - returns the module
    """albumentations, imported on first use: it imports torch, which a CLI checking its
    flags (``SEVERITIES``) must not wait for."""
    import albumentations

    return albumentations


def _albu(transform: albumentations.BasicTransform, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Run one albumentations transform, strictly validated, seeded from ``rng``."""
    seed = int(rng.integers(2**31 - 1))
    return _albumentations().Compose([transform], strict=True, seed=seed)(image=x)["image"]


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


def _gauss_kernel(sigma: float, truncate: float) -> np.ndarray:
    """scipy.ndimage's Gaussian kernel: radius ``int(truncate * sigma + 0.5)``."""
    radius = int(truncate * sigma + 0.5)
    if sigma <= 0 or radius < 1:
        return np.ones(1, np.float32)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def _gauss(x: np.ndarray, sigma: float, sigma_x: float | None = None, *, truncate: float = 4.0,
           border: int = cv2.BORDER_REPLICATE) -> np.ndarray:
    """skimage ``gaussian`` (scipy ``gaussian_filter``) over the two image axes of ``x``.

    Defaults as skimage's: ``truncate=4``, ``mode="nearest"`` (``BORDER_REPLICATE``);
    ``BORDER_REFLECT`` is scipy's ``mode="reflect"``. ``sigma_x`` defaults to ``sigma``.
    """
    ky = _gauss_kernel(sigma, truncate)
    kx = ky if sigma_x is None else _gauss_kernel(sigma_x, truncate)
    if max(len(kx), len(ky)) // 2 >= min(x.shape[:2]):
        border = cv2.BORDER_REPLICATE  # reflection needs a kernel narrower than the image
    return cv2.sepFilter2D(np.ascontiguousarray(x, np.float32), -1, kx, ky, borderType=border)


def _frame(h: int, w: int) -> tuple[int, int]:
    """Shape of an (h, w) image seen at ImageNet-C's 224 px: shorter side 224, same aspect.

    Layers with a texture of their own (snow, frost, spatter) are drawn at this size with the
    published pixel parameters and resized to the image, which is what an image resized from
    224 px would show.
    """
    s = min(h, w) / 224.0
    return max(1, round(h / s)), max(1, round(w / s))


def _fit(layer: np.ndarray, h: int, w: int) -> np.ndarray:
    """``layer`` (drawn at :func:`_frame` size) resized to (h, w); area-averaged when
    shrinking, bilinear when enlarging, unchanged at 224 px."""
    if layer.shape[:2] == (h, w):
        return layer
    return _resize(layer, h, w, "area" if h < layer.shape[0] else "bilinear")


def _streak(img: np.ndarray, radius: int, sigma: float, angle: float) -> np.ndarray:
    """imagecorruptions' ``_motion_blur``: ``2 radius + 1`` edge-replicated shifts along
    ``angle`` (degrees) weighted by a one-sided Gaussian of ``sigma``."""
    width = 2 * radius + 1
    k = np.exp(-np.arange(width) ** 2 / (2 * sigma**2))
    k /= k.sum()
    sin, cos = math.sin(math.radians(angle)), math.cos(math.radians(angle))
    h, w = img.shape[:2]
    pad = [(width, width), (width, width)] + [(0, 0)] * (img.ndim - 2)
    padded = np.pad(img, pad, mode="edge")
    out = np.zeros_like(img, dtype=np.float32)
    for i in range(width):
        dy, dx = -math.ceil(i * sin - 0.5), -math.ceil(i * cos - 0.5)
        if abs(dy) >= h or abs(dx) >= w:
            break  # as the reference: the streak left the image
        out += k[i] * padded[width - dy:width - dy + h, width - dx:width - dx + w]
    return out


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


@register_condition("brightness", family="lighting", imagenet_c=True, stochastic=False,
                    description="ImageNet-C brightness: +c on the HSV value channel")
def brightness(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = (0.1, 0.2, 0.3, 0.4, 0.5)[severity - 1]
    hsv = rgb_to_hsv(np.clip(x, 0, 1))
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return hsv_to_rgb(hsv)


# The same function under its older name, kept for suites that list it; untagged so that an
# audit listing both does not count ImageNet-C's brightness twice.
register_condition("overexposure", family="lighting", stochastic=False,
                   description="same as brightness (ImageNet-C's), under its older name")(
    brightness)


@register_condition("saturate", family="lighting", imagenet_c_extra=True, stochastic=False,
                    description="ImageNet-C extra saturate: HSV saturation * a + b")
def saturate(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2))[severity - 1]
    hsv = rgb_to_hsv(np.clip(x, 0, 1))
    hsv[..., 1] = np.clip(hsv[..., 1] * c[0] + c[1], 0, 1)
    return hsv_to_rgb(hsv)


@register_condition("contrast", family="lighting", imagenet_c=True, stochastic=False,
                    description="ImageNet-C contrast: pixels pulled towards the channel means")
def contrast(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = (0.4, 0.3, 0.2, 0.1, 0.05)[severity - 1]
    means = x.mean(axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1)


# ----------------------------------------------------------------------------- blur


@register_condition("gaussian_blur", family="blur", imagenet_c_extra=True, stochastic=False,
                    description="ImageNet-C extra gaussian blur (sigma scaled to the image size)")
def gaussian_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = (1, 2, 3, 4, 6)[severity - 1]
    sigma = c * _scale(x)
    # kernel of radius ceil(4 sigma) as skimage (ImageNet-C); albumentations' automatic size
    # rounds sub-pixel sigmas (64 px images) down to a 1x1 identity kernel
    ksize = 2 * max(1, math.ceil(4 * sigma)) + 1
    return _albu(_albumentations().GaussianBlur(blur_limit=(ksize, ksize), sigma_limit=(sigma, sigma), p=1.0),
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


def _clipped_zoom(x: np.ndarray, zoom: float) -> np.ndarray:
    """imagecorruptions' ``clipped_zoom``: the centre ``1 / zoom`` of ``x`` magnified back to
    ``x``'s size (its first rows and columns, as there).

    One ``warpAffine`` with scipy ``zoom(order=1)``'s sampling grid (output pixel ``i`` reads
    input ``i * (n_in - 1) / (n_out - 1)``: corners aligned), bilinear.
    """
    h, w = x.shape[:2]
    ch, cw = math.ceil(h / zoom), math.ceil(w / zoom)
    top, left = (h - ch) // 2, (w - cw) // 2
    oh, ow = round(ch * zoom), round(cw * zoom)  # scipy's output shape
    sy = (ch - 1) / (oh - 1) if oh > 1 else 0.0
    sx = (cw - 1) / (ow - 1) if ow > 1 else 0.0
    m = np.array([[sx, 0.0, left], [0.0, sy, top]], np.float32)
    return cv2.warpAffine(np.ascontiguousarray(x, np.float32), m, (w, h),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


@register_condition("glass_blur", family="blur", imagenet_c=True,
                    description="ImageNet-C glass blur: blur, local pixel shuffles, blur")
def glass_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    # sigma, max_delta, iterations
    c = ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))[severity - 1]
    s = _scale(x)
    sigma, d = c[0] * s, max(1, round(c[1] * s))
    h, w = x.shape[:2]
    y = np.floor(np.clip(_gauss(x, sigma), 0, 1) * 255) / 255  # the reference's np.uint8()
    # The reference visits the pixels (i, j), i in (d, h - d], j in (d, w - d], bottom-right
    # first, and swaps each with the one at offset (dy, dx) in [-d, d - 1]^2, one at a time
    # (a Python loop, ~1 s per pass at 224 px). Swapped values are picked up again later in
    # the scan, so a value travels further than one offset; here each pass gathers every
    # visited pixel from such an offset twice in a row (once where d is 1: offsets are then
    # -1 or 0 and chains stay short), which matches the reference's distortion within 10% at
    # every severity (tested) without being a permutation.
    hops = 1 if d == 1 else 2
    ii, jj = np.mgrid[0:h, 0:w]
    inside = (ii > d) & (ii <= h - d) & (jj > d) & (jj <= w - d)
    for _ in range(c[2] * hops):
        dy = rng.integers(-d, d, size=(h, w))
        dx = rng.integers(-d, d, size=(h, w))
        src_i = np.where(inside, np.clip(ii + dy, 0, h - 1), ii)
        src_j = np.where(inside, np.clip(jj + dx, 0, w - 1), jj)
        y = y[src_i, src_j]
    return _gauss(y, sigma)


@register_condition("zoom_blur", family="blur", imagenet_c=True, stochastic=False,
                    description="ImageNet-C zoom blur: mean of centre zooms up to 1.11-1.31x")
def zoom_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    zooms = (np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01), np.arange(1, 1.21, 0.02),
             np.arange(1, 1.26, 0.02), np.arange(1, 1.31, 0.03))[severity - 1]
    out = np.zeros_like(x, dtype=np.float32)
    for z in zooms:  # relative to the image: no size scaling
        out += _clipped_zoom(x, float(z))
    return (x + out) / (len(zooms) + 1)


# ----------------------------------------------------------------------------- noise


@register_condition("gaussian_noise", family="noise", imagenet_c=True,
                    description="ImageNet-C gaussian noise: additive, per pixel and channel")
def gaussian_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = (0.08, 0.12, 0.18, 0.26, 0.38)[severity - 1]
    return _albu(_albumentations().GaussNoise(std_range=(c, c), mean_range=(0.0, 0.0), per_channel=True,
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


@register_condition("speckle_noise", family="noise", imagenet_c_extra=True,
                    description="ImageNet-C extra speckle noise: x + x * gaussian")
def speckle_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = (0.15, 0.2, 0.35, 0.45, 0.6)[severity - 1]
    return np.clip(x + x * rng.standard_normal(x.shape, dtype=np.float32) * c, 0, 1)


# ----------------------------------------------------------------------------- weather


@register_condition("snow", family="weather", imagenet_c=True,
                    description="ImageNet-C snow: zoomed, streaked flakes over a greyed image")
def snow(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    # loc, scale, zoom, threshold, streak radius, streak sigma, image weight
    c = ((0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
         (0.55, 0.3, 4, 0.9, 12, 8, 0.7), (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
         (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55))[severity - 1]
    h, w = x.shape[:2]
    fh, fw = _frame(h, w)
    flakes = c[0] + c[1] * rng.standard_normal((fh, fw), dtype=np.float32)
    flakes = _clipped_zoom(flakes, c[2])
    flakes[flakes < c[3]] = 0
    flakes = _streak(np.clip(flakes, 0, 1), c[4], c[5], rng.uniform(-135, -45))
    flakes = _fit(np.round(flakes * 255) / 255, h, w)[..., None]
    grey = cv2.cvtColor(np.ascontiguousarray(x, np.float32), cv2.COLOR_RGB2GRAY)[..., None]
    x = c[6] * x + (1 - c[6]) * np.maximum(x, grey * 1.5 + 0.5)
    return np.clip(x + flakes + np.rot90(flakes, k=2), 0, 1)


# Mean RGB of ImageNet-C's five frost photographs (the reference draws frost1..frost5), the
# spread of those means, and their mean per-pixel standard deviation; measured once.
_FROST_MEAN = (0.57, 0.66, 0.70)
_FROST_LEVEL_SPREAD = 0.19
_FROST_STD = 0.11


def _frost_texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A procedural stand-in for ImageNet-C's frost photographs, (h, w, 3) float32 in [0, 1].

    The reference crops one of five photographs of frost on glass, which ship as files with
    it; they are not copied here. This draws, from ``rng``:

    1. fractal value noise: six octaves of a Gaussian lattice (3, 6 ... 96 cells across)
       upsampled bicubically, amplitude 0.55 per octave (cloudy density, fine detail);
    2. ice veins: the ridges ``(1 - |tanh(1.5 n)|) ** 8`` of a second such field ``n`` made
       of the four finest octaves only (thin bright branching lines where it crosses 0);
    3. grain: white noise blurred at sigma 0.7 px.

    Their standardized sum (weights 0.5, 0.8, 0.3) is scaled to the photographs' measured
    per-pixel spread (:data:`_FROST_STD`) around a per-image level drawn uniformly within
    :data:`_FROST_LEVEL_SPREAD` of the photographs' mean RGB (:data:`_FROST_MEAN`: bluish
    white). It reproduces the photographs' first two moments and colour, not their look;
    frost results are an approximation of ImageNet-C's (the cross-check allows for it).
    """

    def fractal(octaves: range) -> np.ndarray:
        n = np.zeros((h, w), np.float32)
        for k in octaves:
            cells = 3 * 2**k
            g = rng.standard_normal((cells + 1, cells + 1), dtype=np.float32)
            n += cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC) * 0.55**k
        return n

    def standard(a: np.ndarray) -> np.ndarray:
        return (a - a.mean()) / max(float(a.std()), 1e-6)

    cloud = fractal(range(6))
    veins = (1 - np.abs(np.tanh(1.5 * standard(fractal(range(2, 6)))))) ** 8
    grain = _gauss(rng.standard_normal((h, w), dtype=np.float32), 0.7)
    tex = standard(0.5 * standard(cloud) + 0.8 * standard(veins) + 0.3 * standard(grain))
    level = np.asarray(_FROST_MEAN, np.float32) + rng.uniform(-1, 1) * _FROST_LEVEL_SPREAD
    return np.clip(level + _FROST_STD * tex[..., None], 0, 1)


@register_condition("frost", family="weather", imagenet_c=True,
                    description="ImageNet-C frost (procedural frost texture, approximate)")
def frost(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))[severity - 1]
    h, w = x.shape[:2]
    ice = _fit(_frost_texture(*_frame(h, w), rng), h, w)
    return np.clip(c[0] * x + c[1] * ice, 0, 1)


def _plasma_fractal(mapsize: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """imagecorruptions' ``plasma_fractal`` (diamond-square), drawing from ``rng``; (mapsize,
    mapsize) in [0, 1], ``mapsize`` a power of two."""
    a = np.zeros((mapsize, mapsize), np.float64)
    step, wibble = mapsize, 100.0
    while step >= 2:
        half = step // 2

        def wibbled(arr: np.ndarray, wibble: float = wibble) -> np.ndarray:
            return arr / 4 + wibble * rng.uniform(-wibble, wibble, arr.shape)

        corners = a[0:mapsize:step, 0:mapsize:step]  # squares: centre = corner mean + noise
        acc = corners + np.roll(corners, -1, axis=0)
        acc += np.roll(acc, -1, axis=1)
        a[half:mapsize:step, half:mapsize:step] = wibbled(acc)
        centres = a[half:mapsize:step, half:mapsize:step]  # diamonds
        corners = a[0:mapsize:step, 0:mapsize:step]
        left = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        a[0:mapsize:step, half:mapsize:step] = wibbled(left)
        top = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        a[half:mapsize:step, 0:mapsize:step] = wibbled(top)
        step //= 2
        wibble /= decay
    a -= a.min()
    return a / a.max()


@register_condition("fog", family="weather", imagenet_c=True,
                    description="ImageNet-C fog: plasma-fractal haze, image darkened to fit")
def fog(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))[severity - 1]
    h, w = x.shape[:2]
    # the fractal spans the next power of two of the longer side: already relative to size
    mapsize = 1 << (max(h, w) - 1).bit_length()
    haze = _plasma_fractal(mapsize, c[1], rng)[:h, :w, None].astype(np.float32)
    top = float(x.max())
    return np.clip((x + c[0] * haze) * top / (top + c[0]), 0, 1)


@register_condition("spatter", family="weather", imagenet_c_extra=True,
                    description="ImageNet-C extra spatter: water drops (1-3) or mud (4-5)")
def spatter(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    # loc, scale, sigma, threshold, intensity (water) or mask sigma (mud), mud?
    c = ((0.65, 0.3, 4, 0.69, 0.6, 0), (0.65, 0.3, 3, 0.68, 0.6, 0),
         (0.65, 0.3, 2, 0.68, 0.5, 0), (0.65, 0.3, 1, 0.65, 1.5, 1),
         (0.67, 0.4, 1, 0.65, 1.5, 1))[severity - 1]
    h, w = x.shape[:2]
    liquid = c[0] + c[1] * rng.standard_normal(_frame(h, w), dtype=np.float32)
    liquid = _gauss(liquid, c[2])
    liquid[liquid < c[3]] = 0
    if c[5] == 0:  # water: pale turquoise drops with bright rims (the reference's OpenCV chain)
        drops = (np.clip(liquid, 0, 1) * 255).astype(np.uint8)
        dist = cv2.distanceTransform(255 - cv2.Canny(drops, 50, 150), cv2.DIST_L2, 5)
        _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
        dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
        emboss = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], np.float32)
        dist = cv2.blur(cv2.filter2D(dist, cv2.CV_8U, emboss), (3, 3)).astype(np.float32)
        m = drops.astype(np.float32) * dist
        m = m / max(float(m.max()), 1e-6) * c[4]
        colour = np.array([175, 238, 238], np.float32) / 255
        return np.clip(x + _fit(m, h, w)[..., None] * colour, 0, 1)
    m = _gauss((liquid > c[3]).astype(np.float32), c[4])  # mud: opaque brown blots
    m[m < 0.8] = 0
    m = _fit(m, h, w)[..., None]
    colour = np.array([63, 42, 20], np.float32) / 255
    return np.clip(x * (1 - m) + colour * m, 0, 1)


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
    out = _albu(_albumentations().ImageCompression(compression_type="jpeg", quality_range=(c, c), p=1.0),
                (np.rint(np.clip(x, 0, 1) * 255)).astype(np.uint8), rng)
    return out.astype(np.float32) / 255.0


@register_condition("pixelate", family="digital", imagenet_c=True, stochastic=False,
                    description="ImageNet-C pixelate: box-downsampled to 60-25% and back")
def pixelate(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = (0.6, 0.5, 0.4, 0.3, 0.25)[severity - 1]
    h, w = x.shape[:2]
    size = (max(1, int(w * c)), max(1, int(h * c)))  # int() as the reference
    # PIL's BOX down and NEAREST up, as the reference, per channel on 32-bit float ("F")
    # images: OpenCV's INTER_AREA weighs the box edges differently at non-integer factors
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(x[..., i], np.float32))
                        .resize(size, Image.Resampling.BOX)
                        .resize((w, h), Image.Resampling.NEAREST)) for i in range(3)]
    return np.stack(chans, axis=-1)


@register_condition("elastic_transform", family="digital", imagenet_c=True,
                    description="ImageNet-C elastic transform: smooth random pixel displacement")
def elastic_transform(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    # imagecorruptions' version: sigma and displacement are fractions of the image size
    alpha = 250 * (0.05, 0.065, 0.085, 0.1, 0.12)[severity - 1]
    h, w = x.shape[:2]
    max_d = 0.005 * h
    sy, sx = 0.01 * h, 0.01 * w
    fields = rng.uniform(-max_d, max_d, size=(2, h, w)).astype(np.float32)
    dx = _gauss(fields[0], sy, sx, truncate=3, border=cv2.BORDER_REFLECT) * alpha
    dy = _gauss(fields[1], sy, sx, truncate=3, border=cv2.BORDER_REFLECT) * alpha
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return cv2.remap(np.ascontiguousarray(x, np.float32), xx + dx, yy + dy, cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REFLECT)


IMAGENET_C_CONDITIONS: tuple[str, ...] = tuple(
    n for n in list_conditions() if _REGISTRY[n].imagenet_c
)
IMAGENET_C_EXTRA_CONDITIONS: tuple[str, ...] = tuple(
    n for n in list_conditions() if _REGISTRY[n].imagenet_c_extra
)
