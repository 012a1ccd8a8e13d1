"""How a model wants its pixels: the one preprocessing record every layer shares.

Pixels outside the model are always float in [0, 1] (or uint8 in [0, 255] before the
device); normalization (mean/std) is the model's first layer, so it is recorded here
only so the registry can build that layer.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to ``resize``, then center-crop ``crop`` x ``crop``.

    Attributes:
        resize: shorter-side length after resizing, in pixels.
        crop: side of the square center crop the model sees, in pixels.
        mean: per-channel mean of the normalization layer inside the model.
        std: per-channel std of the normalization layer inside the model.
        interpolation: ``"bilinear"`` or ``"bicubic"`` (torchvision's names).

    >>> Preprocess(resize=256, crop=224).input_shape
    (3, 224, 224)
    """

    resize: int
    crop: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.crop <= 0 or self.resize < self.crop:
            raise ValueError(f"need 0 < crop <= resize, got crop={self.crop} resize={self.resize}")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(
                f"interpolation {self.interpolation!r} unknown; expected 'bilinear' or 'bicubic'"
            )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image as the model receives it."""
        return (3, self.crop, self.crop)
