"""Named image classifiers and the metadata that travels with them.

A registered model is a *builder* (``num_classes -> bare network``, random init, no
normalization) plus its :class:`~ironsight.cluster.preprocess.Preprocess` and class names, the way
torchvision's ``Weights.meta`` and timm's ``PretrainedCfg`` keep preprocessing next to the
network. Job code asks the registry for mean/std and input size; it never retypes them.

>>> from ironsight.cluster.models import get_model_info, list_models
>>> "resnet50" in list_models("resnet*")
True
>>> get_model_info("demo_cnn").preprocess.crop
64
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ironsight.cluster.errors import InvalidInput
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
    """

    name: str
    preprocess: Preprocess
    class_names: tuple[str, ...]
    description: str
    builder: Builder

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str, *, preprocess: Preprocess, class_names: tuple[str, ...] | list[str], description: str
) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(num_classes) -> nn.Module`` under ``name``.

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
        _REGISTRY[name] = ModelInfo(
            name=name,
            preprocess=preprocess,
            class_names=tuple(class_names),
            description=description,
            builder=builder,
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


def get_model_info(name: str) -> ModelInfo:
    """The registered :class:`ModelInfo` for ``name``.

    Raises:
        InvalidInput: ``name`` is not registered; the message lists close matches.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
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
    lines = [
        f"{info.name}: {info.description}",
        f"  input size:    {p.crop}x{p.crop} (center crop)",
        f"  resize:        shorter side to {p.resize}",
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
