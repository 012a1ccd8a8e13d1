"""Blur conditions: ImageNet-C's defocus, glass, motion and zoom blur and its extra Gaussian
blur (the family ``blur``; definitions in :mod:`ironsight.robustness.conditions`).

Batched tensor definitions (``x`` (N, 3, H, W) in [0, 1] on any device, ``rng`` a
:class:`~ironsight.robustness.conditions.batch.BatchRng`; operations in :mod:`._torch_ops`).
Radii and sigmas are ImageNet-C's for 224 px times ``s = min(H, W) / 224``; zoom blur is
relative to the image. Random numbers are drawn without the severity (common random numbers):
one angle per image, and per shuffle pass one uniform per pixel and axis, the same k-th pass
at every severity.

| condition     | draws per image          | definition                                         |
|---------------|--------------------------|----------------------------------------------------|
| gaussian_blur | none                     | Gaussian sigma c s, radius ceil(4 sigma), border   |
|               |                          | reflect101 (albumentations GaussianBlur)           |
| defocus_blur  | none                     | disk of radius c s, its edge softened by a         |
|               |                          | Gaussian (sigma 0.1-0.5), border reflect101        |
| motion_blur   | an angle in [-45, 45] deg| one-sided Gaussian streak along the angle: a sum   |
|               |                          | of copies shifted by whole pixels, edges repeated  |
|               |                          | (a line kernel per image, through the FFT)         |
| glass_blur    | 2 uniforms per pixel and | Gaussian, floor to 256 levels, local pixel hops,   |
|               | shuffle pass             | Gaussian (skimage's kernel and border)             |
| zoom_blur     | none                     | mean of the image and its centre zooms (clipped    |
|               |                          | zoom, scipy's bilinear)                            |
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ironsight.robustness.conditions import register_condition
from ironsight.robustness.conditions._torch_ops import (
    clipped_zoom,
    correlate,
    fft_correlate,
    gaussian,
    pad,
    scale,
    sep_correlate,
    tensor_like,
)

if TYPE_CHECKING:
    import torch

    from ironsight.robustness.conditions.batch import BatchRng


def _gaussian_kernel1d(sigma: float) -> np.ndarray:
    """A Gaussian of radius ``max(1, ceil(4 sigma))`` (skimage's truncate=4, rounded up as
    albumentations' kernel size here), normalized."""
    radius = max(1, math.ceil(4 * sigma))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / max(sigma, 1e-6)) ** 2)
    return k / k.sum()


@register_condition("gaussian_blur", family="blur", imagenet_c_extra=True, stochastic=False,
                    batched=True,
                    description="ImageNet-C extra gaussian blur (sigma scaled to the image size)")
def gaussian_blur(x: torch.Tensor, severity: int, rng: BatchRng) -> torch.Tensor:
    c = (1, 2, 3, 4, 6)[severity - 1]
    # radius ceil(4 sigma) as skimage (ImageNet-C); an automatic kernel size would round
    # sub-pixel sigmas (64 px images) down to a 1x1 identity kernel
    k = _gaussian_kernel1d(c * scale(x))
    return sep_correlate(x, k, k, "reflect101")


def _defocus_kernel(radius: float, alias: float) -> np.ndarray:
    """ImageNet-C's aliased disk of a real ``radius``, its edge softened by a Gaussian."""
    r = max(1, math.ceil(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = (xx**2 + yy**2 <= radius**2).astype(np.float64)
    if not disk.any():
        disk[r, r] = 1.0
    disk /= disk.sum()
    g = _gaussian_kernel1d(alias)
    disk = np.pad(disk, len(g) // 2)
    disk = np.apply_along_axis(np.convolve, 0, disk, g, mode="same")
    disk = np.apply_along_axis(np.convolve, 1, disk, g, mode="same")
    return disk / disk.sum()


@register_condition("defocus_blur", family="blur", imagenet_c=True, stochastic=False, batched=True,
                    description="ImageNet-C defocus blur: aliased disk kernel")
def defocus_blur(x: torch.Tensor, severity: int, rng: BatchRng) -> torch.Tensor:
    c = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))[severity - 1]
    # a real radius (ImageNet-C's disk): an integer one would merge severities at 64 px
    return correlate(x.contiguous(), _defocus_kernel(c[0] * scale(x), c[1]), "reflect101")


@register_condition("motion_blur", family="blur", imagenet_c=True, batched=True,
                    description="ImageNet-C motion blur: Gaussian-weighted streak, random angle")
def motion_blur(x: torch.Tensor, severity: int, rng: BatchRng) -> torch.Tensor:
    import torch

    c = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))[severity - 1]
    s = scale(x)
    radius, sigma = max(1.0, c[0] * s), max(0.5, c[1] * s)
    angle = torch.deg2rad(rng.uniform(-45, 45).double())  # (N,), one per image
    n = 2 * math.ceil(radius) + 1  # imagecorruptions' kernel width for a radius
    weights = np.exp(-0.5 * (np.arange(n) / sigma) ** 2)  # one-sided: the streak trails
    weights /= weights.sum()
    # Tap i reads the pixel (round(i sin a), round(i cos a)) away, edge pixels repeated: a
    # line kernel per image, dx in [0, n) (|a| <= 45 deg) and |dy| <= reach, correlated with
    # the padded batch through the FFT (one kernel per image, one pass for the whole batch)
    x = x.contiguous()  # the audit's batches are channels-last: padding and FFT want NCHW
    b, _, h, w = x.shape
    reach = math.ceil((n - 1) * math.sin(math.pi / 4))
    taps = torch.arange(n, dtype=torch.float64, device=x.device)
    dy = torch.round(taps * torch.sin(angle)[:, None]).long()  # (N, n)
    dx = torch.round(taps * torch.cos(angle)[:, None]).long()
    kernel = torch.zeros(b, (2 * reach + 1) * n, dtype=x.dtype, device=x.device)
    kernel.scatter_add_(1, (reach + dy) * n + dx, tensor_like(weights, x).expand(b, n).contiguous())
    padded = pad(x, reach, reach, 0, n - 1, "replicate")
    return fft_correlate(padded, kernel.view(b, 1, 2 * reach + 1, n), h, w)


@register_condition("glass_blur", family="blur", imagenet_c=True, batched=True,
                    description="ImageNet-C glass blur: blur, local pixel shuffles, blur")
def glass_blur(x: torch.Tensor, severity: int, rng: BatchRng) -> torch.Tensor:
    import torch

    # sigma, max_delta, iterations
    c = ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))[severity - 1]
    s = scale(x)
    sigma, d = c[0] * s, max(1, round(c[1] * s))
    b, ch, h, w = x.shape
    y = gaussian(x, sigma).clamp_(0, 1).mul_(255).floor_().div_(255)  # the reference's np.uint8()
    # The reference visits the pixels (i, j), i in (d, h - d], j in (d, w - d], bottom-right
    # first, and swaps each with the one at offset (dy, dx) in [-d, d - 1]^2, one at a time
    # (a Python loop, ~1 s per pass at 224 px). Swapped values are picked up again later in
    # the scan, so a value travels further than one offset; here each pass gathers every
    # visited pixel from such an offset twice in a row (once where d is 1: offsets are then
    # -1 or 0 and chains stay short), which matches the reference's distortion within 10% at
    # every severity (tested) without being a permutation.
    hops = 1 if d == 1 else 2
    ii = torch.arange(h, device=x.device).view(h, 1)
    jj = torch.arange(w, device=x.device).view(1, w)
    inside = ((ii > d) & (ii <= h - d) & (jj > d) & (jj <= w - d)).to(x.dtype)
    base = ii * w + jj  # a visited pixel's source stays in the image: i + dy in [1, h - 1]
    y = y.reshape(b, ch, h * w)
    for _ in range(c[2] * hops):
        # uniforms, not integers in [-d, d): the k-th pass draws the same at every severity
        u = torch.floor(rng.rand(2, h, w) * (2 * d)) - d  # (N, 2, h, w): dy, dx, exact in float
        offset = (u[:, 0] * w + u[:, 1]) * inside
        index = (base + offset.long()).reshape(b, 1, h * w).expand(b, ch, -1)
        y = y.gather(2, index)
    return gaussian(y.reshape(b, ch, h, w), sigma)


@register_condition("zoom_blur", family="blur", imagenet_c=True, stochastic=False, batched=True,
                    description="ImageNet-C zoom blur: mean of centre zooms up to 1.11-1.31x")
def zoom_blur(x: torch.Tensor, severity: int, rng: BatchRng) -> torch.Tensor:
    zooms = (np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01), np.arange(1, 1.21, 0.02),
             np.arange(1, 1.26, 0.02), np.arange(1, 1.31, 0.03))[severity - 1]
    x = x.contiguous()  # the audit's batches are channels-last; grid_sample's output is not
    out = x.clone()
    for z in zooms:  # relative to the image: no size scaling
        out += clipped_zoom(x, float(z))
    return out / (len(zooms) + 1)
