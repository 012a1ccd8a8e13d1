"""Loading a classifier: a picklable recipe (:class:`ModelSource`) and what it loads.

The driver validates a :class:`ModelSource` once (``validate()``, on CPU, before any work);
each Ray actor receives the same small recipe and calls ``load(device)`` once. Nothing
downloads: weights come from a local path or an ``s3://`` URI through :mod:`cluster.storage`.

Weights formats, recognized by content first and extension second:

| format         | recognized by                                | loaded with                         | holds      |
|----------------|----------------------------------------------|-------------------------------------|------------|
| ``safetensors``| 8-byte header length, then ``{``             | ``safetensors.torch.load``          | tensors    |
| ``state_dict`` | zip with ``data.pkl`` (or a legacy pickle)   | ``torch.load(weights_only=True)``   | tensors    |
| ``torch_export``| zip with ``archive_format`` (``.pt2``)      | ``torch.export.load(...).module()`` | a network  |
| ``torchscript``| zip with ``code/`` and ``constants.pkl``     | ``torch.jit.load``                  | a network  |

A state dict may be wrapped as ``{"state_dict": ...}`` or ``{"model": ...}`` (training
checkpoints) and may carry DataParallel's ``module.`` prefix. Tensor formats need an
architecture (a registered name, or a card's ``arch``); network formats *are* the
architecture, and the card or registered name only supplies preprocessing and class names.

Every loaded model is ``nn.Sequential(Normalize(mean, std), network)`` in eval mode,
float32: pixels in [0, 1] in, logits out.
"""

from __future__ import annotations

import hashlib
import io
import pickle  # only for its exception type: files are never unpickled by us
import warnings
import zipfile
from dataclasses import dataclass

import pyarrow.fs as pafs
import torch
from torch import nn

from cluster import storage
from cluster.errors import InvalidInput
from cluster.models.card import ModelCard, load_card
from cluster.models.registry import ModelInfo, Normalize, get_model_info
from cluster.paths import check_within

FORMATS = ("safetensors", "state_dict", "torch_export", "torchscript")
RANDOM_INIT = "random-init"
_RANDOM_SEED = 0  # every actor loading random weights builds the same network
_SHOWN = 5  # missing/unexpected keys named in an error; the rest are counted
_RESAVE = (
    "re-save as safetensors with `safetensors.torch.save_file(model.state_dict(), "
    "'model.safetensors')` where the model's code is available"
)


def sniff_format(data: bytes, uri: str) -> str:
    """Which of :data:`FORMATS` the bytes ``data`` of file ``uri`` are.

    >>> from safetensors.torch import save
    >>> sniff_format(save({"w": torch.zeros(2)}), "w.bin")
    'safetensors'
    """
    if data[:4] == b"PK\x03\x04":
        try:
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        except zipfile.BadZipFile as exc:
            raise InvalidInput(
                f"weights file {uri} is a damaged zip archive ({exc}): it was probably cut "
                "short while copying; copy or download it again"
            ) from None
        if any(n.rsplit("/", 1)[-1] == "archive_format" for n in names):
            return "torch_export"
        if any("/code/" in n or n.endswith("constants.pkl") for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "state_dict"
        raise InvalidInput(
            f"weights file {uri} is a zip archive that torch did not write "
            f"(entries: {', '.join(names[:_SHOWN])}); expected one of {', '.join(FORMATS)}"
        )
    header = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
    if data[8:9] == b"{" and header > 1:
        return "safetensors"
    if data[:1] == b"\x80":
        return "state_dict"  # torch.save's legacy (pre-1.6) format is a raw pickle stream
    lower = uri.lower()
    if lower.endswith(".safetensors"):
        return "safetensors"
    if lower.endswith(".pt2"):
        return "torch_export"
    raise InvalidInput(
        f"cannot tell the format of weights file {uri} ({len(data)} bytes): expected "
        "safetensors, a torch.save state dict, a torch.export .pt2 program or TorchScript"
    )


def read_state_dict(data: bytes, uri: str, fmt: str) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a ``torch.save`` state dict, on CPU.

    Checkpoint wrappers (``{"state_dict": ...}``, ``{"model": ...}``) are unwrapped and a
    ``module.`` prefix on every key is removed.
    """
    if fmt == "safetensors":
        from safetensors.torch import load

        try:
            return load(data)
        except Exception as exc:  # SafetensorError is not exported under a stable name
            raise InvalidInput(
                f"weights file {uri} is not a readable safetensors file ({exc}): it is "
                "truncated or corrupt; copy or download it again"
            ) from None
    if fmt != "state_dict":
        raise ValueError(f"{fmt!r} files hold a network, not a state dict")
    try:
        obj = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()
        detail = next((line for line in reason if "Unsupported" in line), reason[0] if reason else "")
        detail = detail.split(". Please use")[0]  # torch's allowlisting advice is not ours
        raise InvalidInput(
            f"weights file {uri} contains pickled Python objects; Ironsight loads only "
            f"tensors: {_RESAVE} (torch.load(weights_only=True) refused it: {detail.strip()})"
        ) from None
    except Exception as exc:
        raise InvalidInput(
            f"weights file {uri} is not a readable torch.save file ({exc}); copy it again, "
            f"or {_RESAVE}"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise InvalidInput(
            f"weights file {uri} holds a {type(obj).__name__}, not a state dict of tensors; "
            f"{_RESAVE}"
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise InvalidInput(f"weights file {uri} holds no tensors; {_RESAVE}")
    if all(k.startswith("module.") for k in tensors):  # saved from DataParallel/DDP
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def _shape(t: torch.Tensor | torch.Size) -> str:
    return "(" + ", ".join(str(d) for d in t) + ")"


def fit_state_dict(net: nn.Module, tensors: dict[str, torch.Tensor], info: ModelInfo, uri: str,
                   arch: str) -> None:
    """Copy ``tensors`` into ``net``, or raise :class:`InvalidInput` saying what disagrees."""
    expected = net.state_dict()
    # Checkpoints from before BatchNorm tracked batches lack these counters; they are unused.
    missing = [k for k in expected if k not in tensors and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in tensors if k not in expected]
    mismatched = [k for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if not (missing or unexpected or mismatched):
        net.load_state_dict(tensors, strict=False)
        return
    n = info.num_classes
    head = [
        k for k in mismatched
        if expected[k].shape[:1] == (n,) and tensors[k].shape[1:] == expected[k].shape[1:]
    ]
    if head and head == mismatched and not (missing or unexpected):
        outputs = tensors[head[0]].shape[0]
        raise InvalidInput(
            f"the classifier head in weights file {uri} has {outputs} outputs "
            f"({', '.join(f'{k} {_shape(tensors[k].shape)}' for k in head)}) but model "
            f"{info.name!r} has {n} class names; describe the file with a model card "
            f"(--model-card) whose `class_names` list {outputs} names (or `num_classes: "
            f"{outputs}`)"
        )

    def some(keys: list[str]) -> str:
        more = f", ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
        return ", ".join(keys[:_SHOWN]) + more

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {some(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {some(unexpected)}")
    if mismatched:
        shapes = [
            f"{k} file {_shape(tensors[k].shape)} vs model {_shape(expected[k].shape)}"
            for k in mismatched
        ]
        parts.append(f"{len(mismatched)} shape mismatches: {some(shapes)}")
    raise InvalidInput(
        f"weights file {uri} does not fit architecture {arch!r}: " + "; ".join(parts)
        + ". Pass the model name the weights were trained as (`ironsight models list`), "
        "or a model card whose `arch` matches"
    )


class _Program(nn.Module):
    """Holds a loaded ``torch.export`` / TorchScript network; returns its logits tensor.

    ``ExportedProgram.module()`` raises on ``train()``/``eval()`` (its mode is fixed at export
    time; torch/export/exported_program.py), so mode changes do not recurse into it.
    A network returning a tuple (a scripted Inception's ``InceptionOutputs``) gives its
    first element.
    """

    def __init__(self, network: nn.Module, fmt: str) -> None:
        super().__init__()
        self.network = network
        self.fmt = fmt

    def train(self, mode: bool = True) -> _Program:
        self.training = mode
        if self.fmt == "torchscript":
            self.network.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out


def load_network(data: bytes, uri: str, fmt: str) -> nn.Module:
    """The network stored in a ``torch.export`` program or a TorchScript archive."""
    try:
        if fmt == "torch_export":
            network = torch.export.load(io.BytesIO(data)).module()
        elif fmt == "torchscript":
            with warnings.catch_warnings():
                # torch.jit is deprecated in favour of torch.export, but archives still hold it
                warnings.simplefilter("ignore", FutureWarning)
                network = torch.jit.load(io.BytesIO(data), map_location="cpu")
        else:
            raise ValueError(f"{fmt!r} files hold tensors, not a network")
    except (InvalidInput, ValueError):
        raise
    except Exception as exc:
        raise InvalidInput(
            f"weights file {uri} could not be loaded as {fmt} ({type(exc).__name__}: {exc}); "
            "it is corrupt or was written by an incompatible torch version"
        ) from None
    return _Program(network, fmt)


def _random_network(info: ModelInfo) -> nn.Module:
    """``info``'s network with the same random weights in every process."""
    with torch.random.fork_rng(devices=[]):  # leaves the caller's RNG stream untouched
        torch.manual_seed(_RANDOM_SEED)
        return info.builder(info.num_classes)


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
        allowed_roots: normalised roots (:mod:`cluster.paths`) the weights a card names must
            lie in; the spec checks ``weights`` and ``card`` themselves. Empty: no limit.

    >>> loaded = ModelSource("demo_cnn", random_weights=True).load()
    >>> loaded.module(torch.rand(2, 3, 64, 64)).shape, loaded.weights_sha256
    (torch.Size([2, 8]), 'random-init')
    """

    name: str | None = None
    weights: str | None = None
    card: str | None = None
    random_weights: bool = False
    allowed_roots: tuple[str, ...] = ()

    def _resolve(self) -> tuple[ModelInfo, ModelCard | None, str | None]:
        """The model's info, its card if any, and the weights URI to read (or ``None``)."""
        if self.card is not None:
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
        return get_model_info(self.name), None, self.weights

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
                    f"model {info.name!r} ({where}) fails on a {_shape(x.shape)} batch in "
                    f"[0, 1] ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                    "check input_size in the model card, and export programs with a dynamic "
                    "batch dimension (torch.export.Dim('batch', min=1))"
                ) from None
            if not isinstance(out, torch.Tensor) or out.shape != (batch, info.num_classes):
                got = _shape(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
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
    kind = storage.with_retries(lambda: loc.fs.get_file_info(loc.path).type,
                                what=f"checking {loc.uri}")
    if kind == pafs.FileType.Directory:
        raise InvalidInput(f"weights path {loc.uri}{where} is a directory; pass the file in it")
    try:
        if kind == pafs.FileType.NotFound:
            raise FileNotFoundError(loc.uri)
        data = storage.read_bytes(loc)
    except FileNotFoundError:
        raise InvalidInput(f"weights file {loc.uri}{where} does not exist") from None
    digest = hashlib.sha256(data).hexdigest()
    fmt = sniff_format(data, loc.uri)
    if card is not None and card.format != fmt:
        raise InvalidInput(
            f"model card {card.uri} says format {card.format!r} but weights file {loc.uri} "
            f"is {fmt!r}; fix `format` in the card"
        )
    if fmt in ("torch_export", "torchscript"):
        return load_network(data, loc.uri, fmt), digest
    tensors = read_state_dict(data, loc.uri, fmt)
    arch = card.arch if card is not None else info.name
    network = _random_network(info)
    fit_state_dict(network, tensors, info, loc.uri, arch or info.name)
    return network, digest
