"""Digital conditions: ImageNet-C's JPEG compression, pixelate and elastic transform (the family
``digital``; definitions in :mod:`ironsight.robustness.conditions`).
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from ironsight.robustness.conditions import register_condition
from ironsight.robustness.conditions._ops import _albu, _albumentations, _gauss


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
