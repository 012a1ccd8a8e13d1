"""Noise conditions: ImageNet-C's Gaussian, shot and impulse noise and its extra speckle noise
(the family ``noise``; definitions in :mod:`ironsight.robustness.conditions`).

Batched tensor definitions (``x`` (N, 3, H, W) in [0, 1], ``rng`` a
:class:`~ironsight.robustness.conditions.batch.BatchRng`). The normal and uniform draws are
made before the severity is used, so the five severities of one image share them (common
random numbers): the same noise field scaled by the severity, the same values flipped (a
superset at a higher severity). Poisson counts depend on their rates, so on the severity;
each severity draws them from the same generator state (``BatchRng.poisson``), as NumPy's did.

| condition      | draws per value          | definition                                     |
|----------------|--------------------------|------------------------------------------------|
| gaussian_noise | one normal z             | x + c z (albumentations GaussNoise, per chan.) |
| shot_noise     | one Poisson count        | Poisson(x c) / c                               |
| impulse_noise  | two uniforms u, s        | 1[s < 1/2] where u < c, else x (skimage s&p)   |
| speckle_noise  | one normal z             | x + x c z                                      |
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ironsight.robustness.conditions import register_condition

if TYPE_CHECKING:
    import torch

    from ironsight.robustness.conditions.batch import BatchRng


@register_condition("gaussian_noise", family="noise", imagenet_c=True, batched=True,
                    description="ImageNet-C gaussian noise: additive, per pixel and channel")
def gaussian_noise(x: torch.Tensor, severity: int, rng: BatchRng) -> torch.Tensor:
    import torch

    c = (0.08, 0.12, 0.18, 0.26, 0.38)[severity - 1]
    return torch.add(x, rng.normal(*x.shape[1:]), alpha=c).clamp_(0.0, 1.0)


@register_condition("shot_noise", family="noise", imagenet_c=True, batched=True,
                    description="ImageNet-C shot noise: Poisson photon counts")
def shot_noise(x: torch.Tensor, severity: int, rng: BatchRng) -> torch.Tensor:
    c = (60, 25, 12, 5, 3)[severity - 1]
    return (rng.poisson(x * c) / c).clamp_(0.0, 1.0)


@register_condition("impulse_noise", family="noise", imagenet_c=True, batched=True,
                    description="ImageNet-C impulse noise: salt and pepper per channel")
def impulse_noise(x: torch.Tensor, severity: int, rng: BatchRng) -> torch.Tensor:
    import torch

    c = (0.03, 0.06, 0.09, 0.17, 0.27)[severity - 1]
    # skimage random_noise(mode="s&p", amount=c): each value flips with probability c, half
    # to 0 and half to 1; drawing u once makes a higher severity flip a superset of values
    u, salt = rng.rand(*x.shape[1:]), rng.rand(*x.shape[1:]) < 0.5
    return torch.where(u < c, salt.to(x.dtype), x)


@register_condition("speckle_noise", family="noise", imagenet_c_extra=True, batched=True,
                    description="ImageNet-C extra speckle noise: x + x * gaussian")
def speckle_noise(x: torch.Tensor, severity: int, rng: BatchRng) -> torch.Tensor:
    c = (0.15, 0.2, 0.35, 0.45, 0.6)[severity - 1]
    return (x + x * rng.normal(*x.shape[1:]) * c).clamp_(0.0, 1.0)
