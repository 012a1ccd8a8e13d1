"""Loading a classifier: a picklable recipe (:class:`ModelSource`) and what it loads.

The driver validates a :class:`ModelSource` once (``validate()``, on CPU, before any work);
each Ray actor receives the same small recipe and calls ``load(device)`` once. Nothing
downloads: weights come from a local path or an ``s3://`` URI through :mod:`ironsight.cluster.storage`.

Which weights formats are read, and how, is :mod:`ironsight.cluster.models.formats`; how the
network formats (``.pt2``, TorchScript) are inspected so that no weights file runs code is
:mod:`ironsight.cluster.models.archive`.

Files are read whole through :func:`ironsight.cluster.storage.read_bytes`: FIFOs, sockets, devices and
``/proc``, ``/sys``, ``/dev`` paths are refused, and so is a file larger than 8 GiB, or than
``$IRONSIGHT_MAX_WEIGHTS_BYTES`` bytes when that is set.

Tensor formats need an architecture (a registered name, or a card's ``arch``); network
formats *are* the architecture, and the card or registered name only supplies preprocessing
and class names.

Every loaded model is ``nn.Sequential(Normalize(mean, std), network)`` in eval mode,
float32: pixels in [0, 1] in, logits out.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow.fs as pafs
import torch
from torch import nn

from ironsight.cluster import storage, storage_errors
from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.models.card import ModelCard, load_card
from ironsight.cluster.models.formats import (
    check_declared_format,
    fit_state_dict,
    load_network,
    max_weights_bytes,
    read_state_dict,
    shape_text,
    sniff_format,
)
from ironsight.cluster.models.registry import ModelInfo, Normalize, get_model_info
from ironsight.cluster.paths import check_within

RANDOM_INIT = "random-init"
_RANDOM_SEED = 0  # every actor loading random weights builds the same network


@dataclass
class LoadedModel:
    """A model ready for inference.

    Attributes:
        module: ``Normalize`` then the network; eval mode, float32, no parameter gradients.
            ``(N, 3, H, W)`` float in [0, 1] -> ``(N, num_classes)`` logits.
        info: the registered :class:`ModelInfo`, or one built from the model card.
        weights_sha256: hex sha256 of the weights file, or ``"random-init"``.
        source: the recipe this was loaded from.
    """

    module: nn.Module
    info: ModelInfo
    weights_sha256: str
    source: ModelSource


@dataclass(frozen=True)
class ModelSource:
    """A small, picklable recipe for a model; each Ray actor calls :meth:`load` once.

    Attributes:
        name: a registered model name; optional when ``card`` is given.
        weights: local path or ``s3://`` URI of the weights; overrides the card's.
        card: model card YAML path or URI.
        random_weights: build with deterministic random weights; only for tests and
            benchmarks.
        allowed_roots: normalised roots (:mod:`ironsight.cluster.paths`) the weights a card names must
            lie in; the spec checks ``weights`` and ``card`` themselves. Empty: no limit.
        weights_version: torchvision weight version of a registered ``name`` whose
            preprocessing to use (``"IMAGENET1K_V1"``); ``None``: the registry's default.
            A card names its own (``weights_version:``).

    >>> loaded = ModelSource("demo_cnn", random_weights=True).load()
    >>> loaded.module(torch.rand(2, 3, 64, 64)).shape, loaded.weights_sha256
    (torch.Size([2, 8]), 'random-init')
    """

    name: str | None = None
    weights: str | None = None
    card: str | None = None
    random_weights: bool = False
    allowed_roots: tuple[str, ...] = ()
    weights_version: str | None = None

    def _resolve(self) -> tuple[ModelInfo, ModelCard | None, str | None]:
        """The model's info, its card if any, and the weights URI to read (or ``None``)."""
        if self.card is not None:
            if self.weights_version is not None:
                raise InvalidInput(
                    f"--weights-version {self.weights_version} with a model card: set "
                    f"`weights_version: {self.weights_version}` in the card {self.card} instead"
                )
            card = load_card(self.card)
            if self.name is not None and self.name not in (card.name, card.arch):
                raise InvalidInput(
                    f"model {self.name!r} disagrees with model card {card.uri}, which "
                    f"describes {card.name!r}; pass only the card"
                )
            if self.weights is None and (outside := check_within(card.weights_uri(), self.allowed_roots)):
                raise InvalidInput(f"model card {card.uri}: weights: {outside}")
            return _info_from_card(card), card, self.weights or card.weights_uri()
        if self.name is None:
            raise InvalidInput(
                "no model given: pass a registered model name (`ironsight models list`) "
                "or --model-card"
            )
        return get_model_info(self.name, self.weights_version), None, self.weights

    def load(self, device: str | torch.device = "cpu") -> LoadedModel:
        """Build the model and move it to ``device``.

        Raises:
            InvalidInput: the name, card or weights file is missing, unreadable or does not
                fit; the message names the file and the fix.
        """
        info, card, weights_uri = self._resolve()
        if self.random_weights:
            if self.weights is not None:
                raise InvalidInput(
                    "pass either --weights or --random-weights, not both"
                )
            if card is not None and card.arch is None:
                raise InvalidInput(
                    f"model card {card.uri} describes a {card.format} file with no `arch`: "
                    "there is no architecture to build with random weights"
                )
            network, digest = _random_network(info), RANDOM_INIT
        elif weights_uri is None:
            raise InvalidInput(
                f"model {info.name!r} needs weights: pass --weights PATH_OR_URI "
                "(safetensors, state dict, .pt2 or TorchScript) or a --model-card; "
                "--random-weights exists only for tests and benchmarks"
            )
        else:
            network, digest = _network_from_file(info, card, weights_uri)
        p = info.preprocess
        module = nn.Sequential(Normalize(p.mean, p.std), network)
        module = module.float().eval().requires_grad_(False).to(device)
        return LoadedModel(module=module, info=info, weights_sha256=digest, source=self)

    def validate(self) -> LoadedModel:
        """Load on CPU and run a batch of 1 and of 2 images; raise a clear error if anything fails.

        Call this in the driver before submitting work, so a bad model fails in a second
        with exit code 2 instead of inside every actor.
        """
        loaded = self.load("cpu")
        info = loaded.info
        crop = info.preprocess.crop
        where = loaded.source.weights or loaded.source.card or "random weights"
        for batch in (1, 2):  # a program exported with a fixed batch size fails one of these
            x = torch.full((batch, 3, crop, crop), 0.5)  # (B, 3, crop, crop) float32 in [0, 1]
            try:
                with torch.no_grad():
                    out = loaded.module(x)
            except Exception as exc:
                raise InvalidInput(
                    f"model {info.name!r} ({where}) fails on a {shape_text(x.shape)} batch in "
                    f"[0, 1] ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                    "check input_size in the model card, and export programs with a dynamic "
                    "batch dimension (torch.export.Dim('batch', min=1))"
                ) from None
            if not isinstance(out, torch.Tensor) or out.shape != (batch, info.num_classes):
                got = shape_text(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise InvalidInput(
                    f"the classifier head of model {info.name!r} ({where}) gives {got} for a "
                    f"batch of {batch}, but it has {info.num_classes} class names; make the "
                    f"card's `class_names` (or `num_classes`) match the network's outputs"
                )
        return loaded


def _info_from_card(card: ModelCard) -> ModelInfo:
    arch = get_model_info(card.arch) if card.arch else None

    def builder(num_classes: int) -> nn.Module:
        if arch is None:
            raise InvalidInput(
                f"model card {card.uri} describes a {card.format} file with no `arch`: "
                "it cannot be rebuilt from code"
            )
        return arch.builder(num_classes)

    return ModelInfo(
        name=card.name,
        preprocess=card.preprocess(),
        class_names=card.resolved_class_names(),
        description=card.description or f"{card.format} model from card {card.uri}",
        builder=builder,
    )


def _network_from_file(
    info: ModelInfo, card: ModelCard | None, uri: str
) -> tuple[nn.Module, str]:
    loc = storage.resolve(uri)
    where = f" (named by model card {card.uri})" if card is not None else ""
    kind = storage_errors.with_retries(lambda: loc.fs.get_file_info(loc.path).type,
                                what=f"checking {loc.uri}")
    if kind == pafs.FileType.Directory:
        raise InvalidInput(f"weights path {loc.uri}{where} is a directory; pass the file in it")
    try:
        if kind == pafs.FileType.NotFound:
            raise FileNotFoundError(loc.uri)
        data = storage.read_bytes(loc, max_bytes=max_weights_bytes(), what="weights file")
    except FileNotFoundError:
        raise InvalidInput(f"weights file {loc.uri}{where} does not exist") from None
    digest = hashlib.sha256(data).hexdigest()
    fmt = sniff_format(data, loc.uri)
    check_declared_format(fmt, loc.uri, card)
    if fmt in ("torch_export", "torchscript"):
        return load_network(data, loc.uri, fmt), digest
    tensors = read_state_dict(data, loc.uri, fmt)
    arch = card.arch if card is not None else info.name
    network = _random_network(info)
    fit_state_dict(network, tensors, info, loc.uri, arch or info.name)
    return network, digest


def _random_network(info: ModelInfo) -> nn.Module:
    """``info``'s network with the same random weights in every process."""
    with torch.random.fork_rng(devices=[]):  # leaves the caller's RNG stream untouched
        torch.manual_seed(_RANDOM_SEED)
        return info.builder(info.num_classes)
