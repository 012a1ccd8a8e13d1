"""Occlusion conditions: a black rectangle and a partial view (the family ``occlusion``;
definitions in :mod:`ironsight.robustness.conditions`).

Batched tensor definitions (``x`` (N, 3, H, W) in [0, 1], ``rng`` a
:class:`~ironsight.robustness.conditions.batch.BatchRng`); each image draws its own box, once
for all severities, so a higher severity's box grows from the same place.

| condition    | draws per image           | definition                                            |
|--------------|---------------------------|-------------------------------------------------------|
| occlusion    | aspect, two positions     | a black box of area c (aspect 1/2 to 2); the box of a |
|              |                           | lower severity lies inside the higher's               |
| partial_view | two positions             | a crop of area c (the image's aspect), resized back   |
|              |                           | bilinearly (OpenCV INTER_LINEAR's half-pixel grid)    |
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ironsight.robustness.conditions import register_condition

if TYPE_CHECKING:
    import torch

    from ironsight.robustness.conditions.batch import BatchRng


def _nested_box(h: int, w: int, frac: float, draws: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(top, left, height, width), each (N,) int64, of a box of area ``frac`` per image.

    ``draws`` (N, 3) uniforms: aspect (width / height, log-uniform in [1/2, 2]) and the
    corner as a fraction of the free space; with the same draws a larger ``frac`` gives a box
    containing the smaller one.
    """
    d = draws.double()
    aspect = (math.log(0.5) + (math.log(2.0) - math.log(0.5)) * d[:, 0]).exp()
    bh = (frac * h * w / aspect).sqrt().round().clamp(1, h)
    bw = (frac * h * w / bh).round().clamp(1, w)
    top, left = (d[:, 1] * (h - bh)).round(), (d[:, 2] * (w - bw)).round()
    return top.long(), left.long(), bh.long(), bw.long()


@register_condition("occlusion", family="occlusion", batched=True,
                    description="a black rectangle covering 10-50% of the image")
def occlusion(x: torch.Tensor, severity: int, rng: BatchRng) -> torch.Tensor:
    import torch

    c = (0.1, 0.2, 0.3, 0.4, 0.5)[severity - 1]
    h, w = x.shape[-2:]
    top, left, bh, bw = _nested_box(h, w, c, rng.rand(3))
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    inside_r = (rows >= top[:, None]) & (rows < (top + bh)[:, None])  # (N, H)
    inside_c = (cols >= left[:, None]) & (cols < (left + bw)[:, None])  # (N, W)
    keep = ~(inside_r[:, :, None] & inside_c[:, None, :])  # (N, H, W)
    return x * keep[:, None].to(x.dtype)


@register_condition("partial_view", family="occlusion", batched=True,
                    description="a crop keeping 90-30% of the image area, resized back")
def partial_view(x: torch.Tensor, severity: int, rng: BatchRng) -> torch.Tensor:
    import torch
    import torch.nn.functional as F

    c = (0.9, 0.75, 0.6, 0.45, 0.3)[severity - 1]
    h, w = x.shape[-2:]
    side = math.sqrt(c)  # same aspect as the image
    ch, cw = max(1, round(h * side)), max(1, round(w * side))
    uv = rng.rand(2).double()
    top, left = (uv[:, 0] * (h - ch)).round().long(), (uv[:, 1] * (w - cw)).round().long()
    # every (ch, cw) window as a view; each image's own one copied out
    crops = x.unfold(2, ch, 1).unfold(3, cw, 1)[torch.arange(len(x), device=x.device), :, top, left]
    # half-pixel centres, edges repeated within the crop: OpenCV's INTER_LINEAR; channels-last
    # is torch's fast path on the CPU (the result is an ordinary (N, 3, H, W) tensor)
    crops = crops.contiguous(memory_format=torch.channels_last)
    return F.interpolate(crops, size=(h, w), mode="bilinear", align_corners=False)
