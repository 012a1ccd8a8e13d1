"""Lighting conditions: ImageNet-C's brightness and contrast, its extra saturate, ImageNet-3DCC's
low light (the family ``lighting``; definitions in :mod:`ironsight.robustness.conditions`).
"""

from __future__ import annotations

import numpy as np
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

from ironsight.robustness.conditions import register_condition


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
