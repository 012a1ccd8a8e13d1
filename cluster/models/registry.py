"""Named image classifiers and the metadata that travels with them.

A registered model is a *builder* (``num_classes -> bare network``, random init, no
normalization) plus its :class:`~ironsight.cluster.preprocess.Preprocess` and class names, the way
torchvision's ``Weights.meta`` and timm's ``PretrainedCfg`` keep preprocessing next to the
network. Job code asks the registry for mean/std and input size; it never retypes them.

A torchvision model may have several weight versions whose official preprocessing differs
(ResNet-50's ``IMAGENET1K_V1`` resizes to 256, ``IMAGENET1K_V2`` to 232, both crop 224). An
entry holds each version's :class:`~ironsight.cluster.preprocess.Preprocess` and uses
torchvision's ``DEFAULT`` unless asked for another (``get_model_info(name,
weights_version=...)``, ``--weights-version``, a card's ``weights_version``); the version is
recorded in ``Preprocess.weights_version``.

>>> from ironsight.cluster.models import get_model_info, list_models
>>> "resnet50" in list_models("resnet*")
True
>>> get_model_info("demo_cnn").preprocess.crop
64
>>> get_model_info("resnet50").preprocess.resize, get_model_info("resnet50", "IMAGENET1K_V1").preprocess.resize
(232, 256)
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from ironsight.cluster.errors import InvalidInput, did_you_mean
from ironsight.cluster.preprocess import Preprocess

Builder = Callable[[int], nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    """Everything about a model except its weights.

    Attributes:
        name: registry name (``resnet50``) or the model card's name.
        preprocess: resize, crop, interpolation and the mean/std of the normalization layer.
        class_names: one name per output logit, in logit order.
        description: one line for ``ironsight models list``.
        builder: ``num_classes -> nn.Module``: the bare network, random init, expecting
            normalized input.
        weights_versions: torchvision weight version (``"IMAGENET1K_V1"``) -> its
            preprocessing, for every version the builder's network accepts; empty when the
            model has no torchvision weights. The first is the registered default.
    """

    name: str
    preprocess: Preprocess
    class_names: tuple[str, ...]
    description: str
    builder: Builder
    weights_versions: Mapping[str, Preprocess] = field(default_factory=dict)

    def with_weights_version(self, version: str | None) -> ModelInfo:
        """This model with ``version``'s preprocessing (``None``: unchanged).

        Raises:
            InvalidInput: the model has no such version; the message lists those it has.
        """
        if version is None or version == self.preprocess.weights_version:
            return self
        if version not in self.weights_versions:
            if not self.weights_versions:
                raise InvalidInput(
                    f"model {self.name!r} has no torchvision weight versions; "
                    f"weights version {version!r} does not apply to it"
                )
            known = ", ".join(self.weights_versions)
            raise InvalidInput(
                f"model {self.name!r} has no weights version {version!r} that Ironsight can "
                f"build; choose one of {known} (`ironsight models show {self.name}`)"
            )
        return replace(self, preprocess=self.weights_versions[version])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    *,
    preprocess: Preprocess,
    class_names: tuple[str, ...] | list[str],
    description: str,
    weights_versions: Mapping[str, Preprocess] | None = None,
) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(num_classes) -> nn.Module`` under ``name``.

    ``weights_versions`` maps each torchvision weight version to its preprocessing;
    ``preprocess`` (the default) must be one of them when it is given.

    Raises:
        ValueError: ``name`` is already registered (as torchvision does; timm only warns).

    >>> @register_model("doc_linear", preprocess=Preprocess(8, 8), class_names=("a", "b"),
    ...                 description="doctest only")
    ... def doc_linear(num_classes):
    ...     return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, num_classes))
    >>> get_model_info("doc_linear").num_classes
    2
    >>> _ = _REGISTRY.pop("doc_linear")
    """

    def decorator(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        if not class_names:
            raise ValueError(f"model {name!r} needs at least one class name")
        versions = dict(weights_versions or {})
        if versions:
            if versions.get(preprocess.weights_version) != preprocess:
                raise ValueError(f"model {name!r}: the default preprocessing is none of its weight versions")
            # the default first: describe() and error messages list it first
            versions = {preprocess.weights_version: preprocess, **versions}
        _REGISTRY[name] = ModelInfo(
            name=name,
            preprocess=preprocess,
            class_names=tuple(class_names),
            description=description,
            builder=builder,
            weights_versions=versions,
        )
        return builder

    return decorator


def list_models(filter: str | None = None) -> list[str]:
    """Registered names, sorted, optionally matching the ``fnmatch`` pattern ``filter``.

    >>> list_models("mobilenet_v3_*")
    ['mobilenet_v3_large', 'mobilenet_v3_small']
    """
    names = sorted(_REGISTRY)
    if filter:
        names = [n for n in names if fnmatch.fnmatch(n, filter)]
    return names


def get_model_info(name: str, weights_version: str | None = None) -> ModelInfo:
    """The registered :class:`ModelInfo` for ``name``.

    Args:
        name: a registered model name.
        weights_version: a torchvision weight version (``"IMAGENET1K_V1"``) whose
            preprocessing to use; ``None``: the registered default (torchvision's DEFAULT).

    Raises:
        InvalidInput: ``name`` is not registered (the message lists close matches), or it
            has no such weights version (the message lists its versions).
    """
    try:
        return _REGISTRY[name].with_weights_version(weights_version)
    except KeyError:
        hint = did_you_mean(name, _REGISTRY, n=3, cutoff=0.5)
        raise InvalidInput(
            f"model {name!r} is not registered; {hint}"
            f"`ironsight models list` shows all {len(_REGISTRY)} models "
            f"(or pass --model-card for your own)"
        ) from None


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel: the first layer of every loaded model.

    Input ``(N, 3, H, W)`` float in [0, 1]; mean/std are buffers, so they move with
    ``.to(device)`` and are saved in a state dict.

    >>> n = Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    >>> n(torch.full((1, 3, 2, 2), 0.75)).unique().tolist()
    [1.0]
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 channels, got mean={mean} std={std}")
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) float32 in [0, 1]
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def count_parameters(info: ModelInfo) -> int:
    """Number of parameters of ``info``'s network, counted on the meta device (no memory)."""
    with torch.device("meta"):
        net = info.builder(info.num_classes)
    return sum(p.numel() for p in net.parameters())


def describe(info: ModelInfo) -> str:
    """What ``ironsight models show NAME`` prints.

    >>> print(describe(get_model_info("demo_cnn")).splitlines()[0])
    demo_cnn: small CNN for the 64x64 synthetic shapes (8 classes)
    """
    p = info.preprocess
    shown = 5
    names = ", ".join(info.class_names[:shown])
    if info.num_classes > shown:
        names += f", ... ({info.num_classes - shown} more)"
    fmt = lambda v: "(" + ", ".join(f"{x:.4g}" for x in v) + ")"  # noqa: E731
    lines = [f"{info.name}: {info.description}"]
    if p.weights_version is not None:
        default = next(iter(info.weights_versions), None)
        tag = lambda v: f"{v} (DEFAULT)" if v == default else v  # noqa: E731
        others = [tag(v) for v in info.weights_versions if v != p.weights_version]
        line = f"  weights:       torchvision {tag(p.weights_version)}"
        if others:
            line += f"; other versions (--weights-version): {', '.join(others)}"
        lines.append(line)
    if p.resize is None:
        lines += [
            f"  input size:    {p.crop}x{p.crop} (whole frame, no crop)",
            f"  resize:        whole frame to {p.crop}x{p.crop}",
        ]
    else:
        lines += [
            f"  input size:    {p.crop}x{p.crop} (center crop)",
            f"  resize:        shorter side to {p.resize}",
        ]
    lines += [
        f"  interpolation: {p.interpolation}",
        f"  mean:          {fmt(p.mean)}",
        f"  std:           {fmt(p.std)}",
        f"  classes:       {info.num_classes}: {names}",
    ]
    try:
        lines.append(f"  parameters:    {count_parameters(info):,}")
    except InvalidInput:
        pass  # a card's exported program has no builder to count
    return "\n".join(lines)


def summary_rows() -> list[tuple[str, str, str, str]]:
    """``(name, input, classes, description)`` per registered model, for ``models list``.

    >>> [r for r in summary_rows() if r[0] == "demo_cnn"][0][:3]
    ('demo_cnn', '3x64x64', '8')
    """
    rows = []
    for name in list_models():
        info = _REGISTRY[name]
        c, h, w = info.preprocess.input_shape
        rows.append((name, f"{c}x{h}x{w}", str(info.num_classes), info.description))
    return rows
