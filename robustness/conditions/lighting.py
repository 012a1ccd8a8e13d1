"""Lighting conditions: ImageNet-C's brightness and contrast, its extra saturate, ImageNet-3DCC's
low light (the family ``lighting``; definitions in :mod:`ironsight.robustness.conditions`).

Batched tensor definitions (``x`` (N, 3, H, W) in [0, 1], ``rng`` a
:class:`~ironsight.robustness.conditions.batch.BatchRng`). Brightness and saturate change one
HSV channel (matplotlib's ``rgb_to_hsv``/``hsv_to_rgb``, as ImageNet-C) through
:func:`rgb_to_hsv` and :func:`hsv_to_rgb`, batched tensor versions of those.

| condition    | definition                                                              |
|--------------|-------------------------------------------------------------------------|
| brightness   | HSV value + c, clipped to 1                                             |
| overexposure | brightness under its older name                                         |
| saturate     | HSV saturation * a + b, clipped to [0, 1]                               |
| contrast     | (x - m) c + m, m each image's channel means                             |
| low_light    | each image's range to [0, 1], squared, times c; Poisson(10 P y) / (10 P) |
|              | plus N(0, R) (ImageNet-3DCC poisson-gaussian), P and R shot and gaussian |
|              | noise's tables at the same severity; the normals are drawn once for all |
|              | severities, the counts as in shot noise                                 |
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ironsight.robustness.conditions import register_condition

if TYPE_CHECKING:
    import torch

    from ironsight.robustness.conditions.batch import BatchRng


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """matplotlib's ``rgb_to_hsv`` on (N, 3, H, W) RGB in [0, 1]: (N, 3, H, W) HSV in [0, 1].

    As there: hue 0 and saturation 0 where the pixel is grey, saturation 0 where it is black,
    and where two channels tie for the maximum blue wins over green over red.

    >>> import torch
    >>> hsv = rgb_to_hsv(torch.tensor([0.2, 0.4, 0.8]).reshape(1, 3, 1, 1))
    >>> [round(c, 4) for c in hsv.flatten().tolist()]
    [0.6111, 0.75, 0.8]
    """
    import torch

    r, g, b = x.unbind(1)
    v = x.amax(1)
    delta = v - x.amin(1)
    grey = delta <= 0
    s = torch.where(v > 0, delta / torch.where(v > 0, v, 1.0), 0.0)
    d = torch.where(grey, 1.0, delta)
    h = torch.where(v == b, 4.0 + (r - g) / d, torch.where(v == g, 2.0 + (b - r) / d, (g - b) / d))
    h = torch.where(grey, 0.0, (h / 6.0) % 1.0)
    return torch.stack([h, s, v], 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """matplotlib's ``hsv_to_rgb`` on (N, 3, H, W) HSV in [0, 1]: (N, 3, H, W) RGB.

    Its six hue sectors in closed form: channel = v - v s clip(min(k, 4 - k), 0, 1) with
    k = (n + 6 h) mod 6, n = 5, 3, 1 for red, green, blue.

    >>> import torch
    >>> hsv = torch.tensor([0.6111111, 0.75, 0.8]).reshape(1, 3, 1, 1)
    >>> [round(c, 4) for c in hsv_to_rgb(hsv).flatten().tolist()]
    [0.2, 0.4, 0.8]
    """
    import torch

    h, s, v = hsv[:, 0:1], hsv[:, 1:2], hsv[:, 2:3]
    n = torch.tensor([5.0, 3.0, 1.0], dtype=hsv.dtype, device=hsv.device).reshape(1, 3, 1, 1)
    k = (n + h * 6.0) % 6.0
    return v - v * s * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)


def _with_hsv_channel(x: torch.Tensor, channel: int, scale: float, shift: float) -> torch.Tensor:
    """``x`` with HSV channel ``channel`` (1 saturation, 2 value) set to clip(ch * scale + shift)."""
    hsv = rgb_to_hsv(x.clamp(0.0, 1.0))
    hsv[:, channel] = (hsv[:, channel] * scale + shift).clamp_(0.0, 1.0)
    return hsv_to_rgb(hsv)


@register_condition("brightness", family="lighting", imagenet_c=True, stochastic=False,
                    batched=True, description="ImageNet-C brightness: +c on the HSV value channel")
def brightness(x: torch.Tensor, severity: int, rng: BatchRng) -> torch.Tensor:
    c = (0.1, 0.2, 0.3, 0.4, 0.5)[severity - 1]
    return _with_hsv_channel(x, 2, 1.0, c)


# The same function under its older name, kept for suites that list it; untagged so that an
# audit listing both does not count ImageNet-C's brightness twice.
register_condition("overexposure", family="lighting", stochastic=False, batched=True,
                   description="same as brightness (ImageNet-C's), under its older name")(
    brightness)


@register_condition("saturate", family="lighting", imagenet_c_extra=True, stochastic=False,
                    batched=True, description="ImageNet-C extra saturate: HSV saturation * a + b")
def saturate(x: torch.Tensor, severity: int, rng: BatchRng) -> torch.Tensor:
    a, b = ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2))[severity - 1]
    return _with_hsv_channel(x, 1, a, b)


@register_condition("contrast", family="lighting", imagenet_c=True, stochastic=False,
                    batched=True,
                    description="ImageNet-C contrast: pixels pulled towards the channel means")
def contrast(x: torch.Tensor, severity: int, rng: BatchRng) -> torch.Tensor:
    c = (0.4, 0.3, 0.2, 0.1, 0.05)[severity - 1]
    means = x.mean(dim=(2, 3), keepdim=True)
    return ((x - means) * c + means).clamp_(0.0, 1.0)


@register_condition("low_light", family="lighting", batched=True,
                    description="ImageNet-3DCC low light: darkened (gamma 2) plus sensor noise")
def low_light(x: torch.Tensor, severity: int, rng: BatchRng) -> torch.Tensor:
    import torch

    c = (0.60, 0.50, 0.40, 0.30, 0.20)[severity - 1]
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    flat = hi <= lo  # a flat image goes black
    y = ((x - lo) / torch.where(flat, 1.0, hi - lo)).square_().mul_(c).masked_fill_(flat, 0.0)
    # sensor noise, ImageNet-3DCC poisson_gaussian_noise at the same severity
    photons = 10 * (60, 25, 12, 5, 3)[severity - 1]
    y = (rng.poisson(y * photons) / photons).clamp_(0.0, 1.0)
    read = 0.1 * (0.08, 0.12, 0.18, 0.26, 0.38)[severity - 1]
    return (y + rng.normal(*x.shape[1:]) * read).clamp_(0.0, 1.0)
