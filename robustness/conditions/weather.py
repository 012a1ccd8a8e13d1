"""Weather conditions: ImageNet-C's snow, frost and fog and its extra spatter (the family
``weather``; definitions in :mod:`ironsight.robustness.conditions`). Their layers (flakes,
frost, drops) are drawn at ImageNet-C's 224 px size and fitted to the image.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from ironsight.robustness.conditions import register_condition
from ironsight.robustness.conditions._ops import _clipped_zoom, _gauss, _resize


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
