"""Model cards: a YAML file that says what a weights file is and how to feed it.

A card lets users bring a model the registry does not name (a fine-tuned ResNet with 37
classes, a ``torch.export`` program) without writing Python. Fields:

| field                  | type                         | default / rule                                  |
|------------------------|------------------------------|-------------------------------------------------|
| ``name``               | str                          | required; shown in reports and output metadata   |
| ``format``             | ``safetensors``, ``state_dict``, ``torch_export``, ``torchscript`` | required |
| ``arch``               | registered model name        | required for ``safetensors`` and ``state_dict`` |
| ``weights``            | path or ``s3://`` URI        | required; relative paths start at the card's directory |
| ``input_size``         | int (side the model sees)    | the arch's; required without ``arch``            |
| ``resize``             | int (shorter side, then center crop ``input_size``) | see below          |
| ``weights_version``    | torchvision weight version   | the arch's DEFAULT (``IMAGENET1K_V2`` for resnet50); only with ``arch`` |
| ``mean`` / ``std``     | 3 floats                     | the arch's; required without ``arch`` unless ``normalization_inside`` |
| ``interpolation``      | ``bilinear`` or ``bicubic``  | the arch's, else ``bilinear``                    |
| ``class_names``        | list of str                  | or ``num_classes`` (names ``"0"``, ``"1"``, ...); else the arch's |
| ``num_classes``        | int                          | must equal ``len(class_names)`` if both are given |
| ``normalization_inside`` | bool                       | ``false``; ``true`` when an exported file already normalizes |
| ``description``        | str                          | optional, one line                               |

How an image becomes ``input_size`` x ``input_size`` (:class:`~ironsight.cluster.preprocess.Preprocess`):

| card                                   | geometry                                                   |
|----------------------------------------|------------------------------------------------------------|
| no ``arch``, no ``resize``             | the whole frame resized to ``input_size`` x ``input_size``, nothing cropped |
| ``resize: R`` (any card)               | shorter side resized to ``R``, then the center ``input_size`` crop (``R >= input_size``) |
| ``arch``, no ``input_size``/``resize`` | the arch's official transforms for ``weights_version`` (resnet50 V2: 232, crop 224) |
| ``arch`` and another ``input_size``    | the arch's resize/crop ratio kept: ``round(input_size * resize / crop)`` |

A card never crops unless it asks to (``resize:``) or names an ``arch`` whose official
transforms crop: a 32-px model trained on whole 32-px images sees whole 32-px images.

>>> card = ModelCard(name="shapes", format="safetensors", arch="demo_cnn",
...                  weights="demo_cnn.safetensors")
>>> card.preprocess().crop, len(card.resolved_class_names())
(64, 8)
"""

from __future__ import annotations

import posixpath
from dataclasses import replace
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from ironsight.cluster import storage
from ironsight.cluster.errors import InvalidInput, did_you_mean
from ironsight.cluster.models.registry import ModelInfo, get_model_info, list_models
from ironsight.cluster.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from ironsight.cluster.yamlfile import load_config, parse_yaml, validate_config

CardFormat = Literal["safetensors", "state_dict", "torch_export", "torchscript"]
Triple = tuple[float, float, float]


class ModelCard(BaseModel):
    """A validated model card; see the module docstring for the fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    format: CardFormat
    arch: str | None = None
    weights: str = Field(min_length=1)
    input_size: int | None = Field(default=None, gt=0)
    resize: int | None = Field(default=None, gt=0)
    weights_version: str | None = Field(default=None, min_length=1)
    mean: Triple | None = None
    std: Triple | None = None
    interpolation: Literal["bilinear", "bicubic"] | None = None
    class_names: list[str] | None = Field(default=None, min_length=1)
    num_classes: int | None = Field(default=None, gt=0)
    normalization_inside: bool = False
    description: str | None = None

    _uri: str | None = PrivateAttr(default=None)

    @field_validator("arch")
    @classmethod
    def _arch_registered(cls, arch: str | None) -> str | None:
        if arch is not None and arch not in list_models():
            close = did_you_mean(arch, list_models(), n=3, cutoff=0.5)
            hint = f" ({close.rstrip()})" if close else ""
            raise ValueError(
                f"{arch!r} is not a registered model{hint}; `ironsight models list` shows them"
            )
        return arch

    @field_validator("mean", "std", mode="before")
    @classmethod
    def _three_channels(cls, value: object) -> object:
        if isinstance(value, (list, tuple)) and len(value) != 3:
            raise ValueError(f"expected 3 numbers, one per R, G, B channel; got {list(value)}")
        return value

    @field_validator("std")
    @classmethod
    def _std_positive(cls, std: Triple | None) -> Triple | None:
        if std is not None and min(std) <= 0:
            raise ValueError(f"std must be positive, got {list(std)}")
        return std

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        if self.format in ("safetensors", "state_dict") and self.arch is None:
            raise ValueError(
                f"format {self.format!r} holds only tensors: set `arch` to the registered "
                "model they belong to (`ironsight models list`)"
            )
        if self.weights_version is not None and self.arch is None:
            raise ValueError(
                "`weights_version` picks the preprocessing of a registered `arch`'s torchvision "
                "weights; set `arch`, or drop it and give `input_size`/`resize`/`mean`/`std`"
            )
        if self.arch is None:
            if self.input_size is None:
                raise ValueError("set `input_size` (the side in pixels the model sees) or `arch`")
            if not self.normalization_inside and (self.mean is None or self.std is None):
                raise ValueError(
                    "set `mean` and `std` (or `arch`), or `normalization_inside: true` if the "
                    "exported network normalizes its [0, 1] input itself"
                )
            if self.class_names is None and self.num_classes is None:
                raise ValueError("set `class_names` (a list) or `num_classes`")
        if (
            self.class_names is not None
            and self.num_classes is not None
            and len(self.class_names) != self.num_classes
        ):
            raise ValueError(
                f"num_classes is {self.num_classes} but class_names lists "
                f"{len(self.class_names)} names; drop one of the two"
            )
        try:
            self._arch_info()
        except InvalidInput as exc:
            raise ValueError(f"weights_version: {exc}") from None
        try:
            self.preprocess()
        except ValueError as exc:
            raise ValueError(f"input_size/resize: {exc}") from None
        return self

    @property
    def uri(self) -> str | None:
        """Where the card was loaded from (``None`` if built in code)."""
        return self._uri

    def _arch_info(self) -> ModelInfo | None:
        return get_model_info(self.arch, self.weights_version) if self.arch else None

    def preprocess(self) -> Preprocess:
        """The card's preprocessing, filling gaps from ``arch`` (module docstring's table)."""
        base = self._arch_info()
        crop = self.input_size or (base.preprocess.crop if base else None)
        assert crop is not None  # checked by the validator
        resize: int | None
        if self.resize is not None:
            resize = self.resize  # asked for: shorter side, then the center crop
        elif base is None:
            resize = None  # the whole frame: never a crop the card did not ask for
        elif self.input_size in (None, base.preprocess.crop) or base.preprocess.resize is None:
            resize = base.preprocess.resize
        else:  # the arch's official resize/crop ratio at the card's size
            resize = round(crop * base.preprocess.resize / base.preprocess.crop)
        if self.normalization_inside:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # identity: the file normalizes
        else:
            mean = self.mean or (base.preprocess.mean if base else IMAGENET_MEAN)
            std = self.std or (base.preprocess.std if base else IMAGENET_STD)
        interpolation = self.interpolation or (
            base.preprocess.interpolation if base else "bilinear"
        )
        resolved = Preprocess(
            resize=resize, crop=crop, mean=tuple(mean), std=tuple(std),
            interpolation=interpolation,
        )
        if base is not None and base.preprocess.weights_version is not None:
            official = replace(base.preprocess, weights_version=None)
            if resolved == official:  # exactly those weights' transforms: say which
                return base.preprocess
        return resolved

    def resolved_class_names(self) -> tuple[str, ...]:
        """``class_names``, else ``"0"``..``"n-1"`` for ``num_classes``, else the arch's."""
        if self.class_names is not None:
            return tuple(self.class_names)
        if self.num_classes is not None:
            return tuple(str(i) for i in range(self.num_classes))
        base = self._arch_info()
        assert base is not None  # checked by the validator
        return base.class_names

    def weights_uri(self) -> str:
        """``weights`` as a URI: absolute and ``s3://`` as is, else relative to the card."""
        w = self.weights
        if w.startswith("s3://") or w.startswith("file://") or posixpath.isabs(w):
            return w
        if self._uri is None:
            return storage.resolve(w).uri
        base = self._uri.rsplit("/", 1)[0] if "/" in self._uri else "."
        return f"{base}/{w}"

    def to_yaml(self) -> str:
        """The card as YAML; unset fields are left out.

        >>> print(ModelCard(name="x", format="torchscript", weights="x.ts", input_size=32,
        ...                 num_classes=2, normalization_inside=True).to_yaml(), end="")
        name: x
        format: torchscript
        weights: x.ts
        input_size: 32
        num_classes: 2
        normalization_inside: true
        """
        data = self.model_dump(mode="json", exclude_none=True)
        if not self.normalization_inside:
            data.pop("normalization_inside")
        return yaml.safe_dump(data, sort_keys=False)


def parse_card(text: str, uri: str = "<string>") -> ModelCard:
    """Validate card YAML ``text``; errors name ``uri`` and each bad field's path.

    The YAML is read by :func:`ironsight.cluster.yamlfile.parse_yaml` (duplicate keys, alias bombs and
    deep nesting are refused), and a message quotes at most a clipped part of any value.

    >>> text = "name: x\\nformat: torchscript\\nweights: x.ts\\nwidth: 3\\n"
    >>> parse_card(text)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ironsight.cluster.yamlfile.ConfigInvalid: model card <string>: width: unknown key; valid keys: name, format, arch, weights, ...
    """
    data = parse_yaml(text, source=f"model card {uri}")
    return _validate_card(data, uri)


_CARD_SHAPE = "name: ..., format: ..., weights: ..."


def _validate_card(data: object, uri: str) -> ModelCard:
    card = validate_config(data, ModelCard, source=f"model card {uri}", shape=_CARD_SHAPE)
    card._uri = uri
    return card


def load_card(uri: str) -> ModelCard:
    """Read and validate the model card at ``uri`` (local path or ``s3://``).

    Only a regular file of at most :data:`ironsight.cluster.yamlfile.MAX_CONFIG_BYTES` is read: a FIFO,
    a device (``/dev/zero``) or a 10 MB file is refused before parsing (:func:`load_yaml`).
    """
    loc = storage.resolve(uri)
    card = load_config(loc.uri, ModelCard, what="model card", shape=_CARD_SHAPE)
    card._uri = loc.uri
    return card
