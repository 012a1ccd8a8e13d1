"""Occlusion conditions: a black rectangle and a partial view (the family ``occlusion``;
definitions in :mod:`ironsight.robustness.conditions`).
"""

from __future__ import annotations

import math

import numpy as np

from ironsight.robustness.conditions import register_condition
from ironsight.robustness.conditions._ops import _resize


def _nested_box(h: int, w: int, frac: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a box of area ``frac``; with the same draws, a larger
    ``frac`` gives a box containing the smaller one (corner = u * free space)."""
    aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))  # width / height
    u, v = rng.random(), rng.random()
    bh = min(h, max(1, round(math.sqrt(frac * h * w / aspect))))
    bw = min(w, max(1, round(frac * h * w / bh)))
    return round(u * (h - bh)), round(v * (w - bw)), bh, bw


@register_condition("occlusion", family="occlusion",
                    description="a black rectangle covering 10-50% of the image")
def occlusion(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = (0.1, 0.2, 0.3, 0.4, 0.5)[severity - 1]
    top, left, bh, bw = _nested_box(x.shape[0], x.shape[1], c, rng)
    out = x.copy()
    out[top:top + bh, left:left + bw] = 0.0
    return out


@register_condition("partial_view", family="occlusion",
                    description="a crop keeping 90-30% of the image area, resized back")
def partial_view(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = (0.9, 0.75, 0.6, 0.45, 0.3)[severity - 1]
    h, w = x.shape[:2]
    side = math.sqrt(c)  # same aspect as the image
    ch, cw = max(1, round(h * side)), max(1, round(w * side))
    u, v = rng.random(), rng.random()
    top, left = round(u * (h - ch)), round(v * (w - cw))
    return _resize(x[top:top + ch, left:left + cw], h, w, "bilinear")
