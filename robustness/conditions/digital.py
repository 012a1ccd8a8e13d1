"""Digital conditions: ImageNet-C's JPEG compression, pixelate and elastic transform (the family
``digital``; definitions in :mod:`ironsight.robustness.conditions`).

Batched tensor definitions (``x`` (N, 3, H, W) in [0, 1] on any device, ``rng`` a
:class:`~ironsight.robustness.conditions.batch.BatchRng`; operations in :mod:`._torch_ops`).
All three are relative to the image size (no 224 px scaling).

| condition         | draws per image          | definition                                     |
|-------------------|--------------------------|------------------------------------------------|
| jpeg_compression  | none                     | rounded to 8 bits, JPEG at quality 25 to 7 and |
|                   |                          | back (libjpeg; nvjpeg on a GPU)                |
| pixelate          | none                     | PIL BOX down to c of each side, NEAREST back   |
| elastic_transform | 2 uniforms per pixel     | displacement field: uniform, Gaussian-smoothed |
|                   |                          | (sigma 1% of the side), times alpha; bilinear, |
|                   |                          | border reflect (imagecorruptions' version)     |
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from ironsight.robustness.conditions import register_condition
from ironsight.robustness.conditions._torch_ops import displace, gaussian, pil_resize

if TYPE_CHECKING:
    import torch

    from ironsight.robustness.conditions.batch import BatchRng


@register_condition("jpeg_compression", family="digital", imagenet_c=True, stochastic=False,
                    batched=True, description="ImageNet-C JPEG compression (quality 25 to 7)")
def jpeg_compression(x: torch.Tensor, severity: int, rng: BatchRng) -> torch.Tensor:
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

    c = (25, 18, 15, 10, 7)[severity - 1]
    images = x.clamp(0, 1).mul(255).round().to(torch.uint8)
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its image codecs in favour of TorchCodec; they still
        # take a whole batch (nvjpeg on CUDA tensors)
        warnings.simplefilter("ignore", DeprecationWarning)
        encoded = encode_jpeg(list(images), quality=c)
        if x.device.type == "cuda":
            encoded = [e.cpu() for e in encoded]  # decode_jpeg reads its bytes from the CPU
        decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=x.device)
    return torch.stack(decoded).to(x.dtype) / 255.0


@register_condition("pixelate", family="digital", imagenet_c=True, stochastic=False, batched=True,
                    description="ImageNet-C pixelate: box-downsampled to 60-25% and back")
def pixelate(x: torch.Tensor, severity: int, rng: BatchRng) -> torch.Tensor:
    c = (0.6, 0.5, 0.4, 0.3, 0.25)[severity - 1]
    h, w = x.shape[-2:]
    # PIL's BOX down and NEAREST up as the reference (OpenCV's INTER_AREA weighs the box
    # edges differently at non-integer factors); int() as the reference
    small = pil_resize(x, max(1, int(h * c)), max(1, int(w * c)), "box")
    return pil_resize(small, h, w, "nearest")


@register_condition("elastic_transform", family="digital", imagenet_c=True, batched=True,
                    description="ImageNet-C elastic transform: smooth random pixel displacement")
def elastic_transform(x: torch.Tensor, severity: int, rng: BatchRng) -> torch.Tensor:
    # imagecorruptions' version: sigma and displacement are fractions of the image size
    alpha = 250 * (0.05, 0.065, 0.085, 0.1, 0.12)[severity - 1]
    h, w = x.shape[-2:]
    max_d = 0.005 * h
    fields = (rng.rand(2, h, w) * 2 - 1) * max_d  # uniform in [-max_d, max_d): (N, 2, h, w)
    dx, dy = (gaussian(fields, 0.01 * h, 0.01 * w, truncate=3, mode="reflect") * alpha).unbind(1)
    return displace(x, dx, dy)
