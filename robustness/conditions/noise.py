"""Noise conditions: ImageNet-C's Gaussian, shot and impulse noise and its extra speckle noise
(the family ``noise``; definitions in :mod:`ironsight.robustness.conditions`).
"""

from __future__ import annotations

import numpy as np

from ironsight.robustness.conditions import register_condition
from ironsight.robustness.conditions._ops import _albu, _albumentations


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
