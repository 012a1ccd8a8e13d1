"""How a model wants its pixels: the one preprocessing record every layer shares.

Pixels outside the model are always float in [0, 1] (or uint8 in [0, 255] before the
device); normalization (mean/std) is the model's first layer, so it is recorded here
only so the registry can build that layer.

Two geometries, and nothing else:

| ``resize``  | what the model sees                                            | torchvision equivalent |
|-------------|----------------------------------------------------------------|------------------------|
| ``None``    | the whole frame, resized to ``crop`` x ``crop`` (aspect not kept, nothing cut) | ``Resize((crop, crop))`` |
| an int      | shorter side resized to ``resize``, then the center ``crop`` x ``crop`` | ``Resize(resize)``, ``CenterCrop(crop)`` |

The registry's torchvision models use the second (their weights' official transforms); a
model card without ``arch`` gets the first unless it asks for a crop with ``resize:``.
The record is printed at job start (:meth:`Preprocess.summary`) and stored with the
results (:meth:`Preprocess.to_dict`: the audit's ``report.json``, the classify output's
Parquet metadata), so a reader knows which pixels produced the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Resize (whole frame, or shorter side then center crop) to ``crop`` x ``crop``.

    Attributes:
        resize: shorter-side length before the center crop, in pixels; ``None``: no crop,
            the whole frame is resized to ``crop`` x ``crop``.
        crop: side of the square image the model sees, in pixels.
        mean: per-channel mean of the normalization layer inside the model.
        std: per-channel std of the normalization layer inside the model.
        interpolation: ``"bilinear"`` or ``"bicubic"`` (torchvision's names).
        weights_version: the torchvision weights enum member these values come from
            (``"IMAGENET1K_V2"``); ``None`` when they do not come from torchvision.

    >>> Preprocess(resize=256, crop=224).input_shape
    (3, 224, 224)
    >>> Preprocess(resize=None, crop=32).summary()
    'whole frame resized to 32x32 (no crop), bilinear, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)'
    """

    resize: int | None
    crop: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    weights_version: str | None = None

    def __post_init__(self) -> None:
        if self.crop <= 0 or (self.resize is not None and self.resize < self.crop):
            raise ValueError(f"need 0 < crop <= resize, got crop={self.crop} resize={self.resize}")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(
                f"interpolation {self.interpolation!r} unknown; expected 'bilinear' or 'bicubic'"
            )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image as the model receives it."""
        return (3, self.crop, self.crop)

    @property
    def mode(self) -> str:
        """``"whole_frame"`` (``resize is None``) or ``"resize_center_crop"``."""
        return "whole_frame" if self.resize is None else "resize_center_crop"

    def geometry(self) -> str:
        """The geometry in words.

        >>> Preprocess(resize=232, crop=224).geometry()
        'shorter side resized to 232, center crop 224x224'
        """
        if self.resize is None:
            return f"whole frame resized to {self.crop}x{self.crop} (no crop)"
        return f"shorter side resized to {self.resize}, center crop {self.crop}x{self.crop}"

    def summary(self) -> str:
        """One line: geometry, interpolation, mean/std and the weights version when known."""
        fmt = lambda v: "(" + ", ".join(f"{x:.4g}" for x in v) + ")"  # noqa: E731
        line = f"{self.geometry()}, {self.interpolation}, mean {fmt(self.mean)}, std {fmt(self.std)}"
        if self.weights_version:
            line += f", torchvision weights {self.weights_version}"
        return line

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record, as stored in ``report.json`` and the Parquet metadata.

        >>> Preprocess(resize=None, crop=32).to_dict()["mode"]
        'whole_frame'
        """
        return {
            "mode": self.mode,
            "resize": self.resize,
            "crop": self.crop,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
            "weights_version": self.weights_version,
        }
