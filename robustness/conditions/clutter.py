"""Clutter conditions: random shapes and stripes blended into the background (the family
``clutter``; definitions in :mod:`ironsight.robustness.conditions`).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from ironsight.robustness.conditions import register_condition


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
