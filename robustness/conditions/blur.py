"""Blur conditions: ImageNet-C's defocus, glass, motion and zoom blur and its extra Gaussian
blur (the family ``blur``; definitions in :mod:`ironsight.robustness.conditions`).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from ironsight.robustness.conditions import register_condition
from ironsight.robustness.conditions._ops import (
    _albu,
    _albumentations,
    _clipped_zoom,
    _gauss,
    _scale,
)


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
