"""Weights file formats: tell which one a file is, and read its tensors or its network.

The format is what the model card's ``format`` says, else what the file's extension says
(:data:`EXTENSION_FORMATS`: ``.safetensors``, ``.pt2``, ``.ts``; ``.pt`` and ``.pth`` may be a
state dict or TorchScript); the content is sniffed (:func:`sniff_format`) only to catch a
file that disagrees (refused: ``x.safetensors`` holding a torch.export archive) and to decide
for other names (``weights.bin``, no extension):

| format         | recognized by                                | loaded with                         | holds      |
|----------------|----------------------------------------------|-------------------------------------|------------|
| ``safetensors``| 8-byte header length, then ``{``             | ``safetensors.torch.load``          | tensors    |
| ``state_dict`` | zip with ``data.pkl`` (or a legacy pickle)   | ``torch.load(weights_only=True)``   | tensors    |
| ``torch_export``| zip with ``archive_format`` (``.pt2``)      | ``torch.export.load(...).module()`` | a network  |
| ``torchscript``| zip with ``code/`` and ``constants.pkl``     | ``torch.jit.load``                  | a network  |

Tensor formats never unpickle beyond ``weights_only=True``; the two network formats are
inspected by :mod:`ironsight.cluster.models.archive` before torch sees them
(:func:`load_network`). Files are read whole (:mod:`ironsight.cluster.models.weights`),
at most :func:`max_weights_bytes`.

A state dict may be wrapped as ``{"state_dict": ...}`` or ``{"model": ...}`` (training
checkpoints) and may carry DataParallel's ``module.`` prefix (:func:`read_state_dict`);
:func:`fit_state_dict` says which keys or shapes disagree with the architecture.
"""

from __future__ import annotations

import io
import os
import pickle  # only for its exception type: files are never unpickled by us
import warnings
import zipfile

import torch
from torch import nn

from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.models.archive import RESAVE, inspect_torch_export, inspect_torchscript
from ironsight.cluster.models.card import ModelCard
from ironsight.cluster.models.registry import ModelInfo

FORMATS = ("safetensors", "state_dict", "torch_export", "torchscript")
_SHOWN = 5  # missing/unexpected keys named in an error; the rest are counted
_DEFAULT_MAX_BYTES = 8 << 30  # 8 GiB: larger than any classifier Ironsight serves
MAX_BYTES_ENV = "IRONSIGHT_MAX_WEIGHTS_BYTES"
#: Extension -> the formats a file so named may hold (``torch.save`` and ``torch.jit.save``
#: both write ``.pt``/``.pth``). Other names: the content decides.
EXTENSION_FORMATS: dict[str, tuple[str, ...]] = {
    ".safetensors": ("safetensors",),
    ".pt2": ("torch_export",),
    ".ts": ("torchscript",),
    ".torchscript": ("torchscript",),
    ".pt": ("state_dict", "torchscript"),
    ".pth": ("state_dict", "torchscript"),
    ".ckpt": ("state_dict",),
}
_FORMAT_WORDS = {
    "safetensors": "a safetensors file", "state_dict": "a torch.save state dict",
    "torch_export": "a torch.export archive", "torchscript": "a TorchScript archive",
}


def max_weights_bytes() -> int:
    """The largest weights file Ironsight reads: ``$IRONSIGHT_MAX_WEIGHTS_BYTES`` or 8 GiB."""
    text = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not text:
        return _DEFAULT_MAX_BYTES
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise InvalidInput(f"{MAX_BYTES_ENV}={text!r} must be a positive whole number of bytes")
    return value


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


def declared_formats(uri: str) -> tuple[str, ...] | None:
    """The formats a weights file named ``uri`` may hold, or ``None`` for an unknown extension.

    >>> declared_formats("s3://b/net.PT2"), declared_formats("weights.bin")
    (('torch_export',), None)
    """
    name = uri.rsplit("/", 1)[-1].lower()
    dot = name.rfind(".")
    return EXTENSION_FORMATS.get(name[dot:]) if dot > 0 else None


def check_declared_format(fmt: str, uri: str, card: ModelCard | None) -> None:
    """Refuse a file whose content (``fmt``) disagrees with its card's ``format`` or its name.

    The card decides when there is one; else the extension; an unknown extension lets the
    content decide (the network formats are inspected just the same).
    """
    if card is not None:
        if card.format != fmt:
            raise InvalidInput(
                f"model card {card.uri} says format {card.format!r} but weights file {uri} "
                f"is {fmt!r}; fix `format` in the card (the file holds {_FORMAT_WORDS[fmt]}) "
                "or point `weights` at the right file"
            )
        return
    allowed = declared_formats(uri)
    if allowed is not None and fmt not in allowed:
        ext = uri.rsplit("/", 1)[-1]
        ext = ext[ext.rfind("."):]
        raise InvalidInput(
            f"weights file {uri} is named {ext} but holds {_FORMAT_WORDS[fmt]}; Ironsight "
            f"takes the format from the name: rename it (.pt2 for torch.export, .safetensors, "
            f".pt for a state dict or TorchScript) or describe it with a model card whose "
            f"`format` is {fmt!r}"
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
            f"tensors: {RESAVE} (torch.load(weights_only=True) refused it: {detail.strip()})"
        ) from None
    except Exception as exc:
        raise InvalidInput(
            f"weights file {uri} is not a readable torch.save file ({exc}); copy it again, "
            f"or {RESAVE}"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise InvalidInput(
            f"weights file {uri} holds a {type(obj).__name__}, not a state dict of tensors; "
            f"{RESAVE}"
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise InvalidInput(f"weights file {uri} holds no tensors; {RESAVE}")
    if all(k.startswith("module.") for k in tensors):  # saved from DataParallel/DDP
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def shape_text(t: torch.Tensor | torch.Size) -> str:
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
            f"({', '.join(f'{k} {shape_text(tensors[k].shape)}' for k in head)}) but model "
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
            f"{k} file {shape_text(tensors[k].shape)} vs model {shape_text(expected[k].shape)}"
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
    """The network stored in a ``torch.export`` program or a TorchScript archive.

    The archive is inspected first (:func:`inspect_torch_export`, :func:`inspect_torchscript`)
    and refused with :class:`InvalidInput` if loading it could run code.
    """
    if fmt == "torch_export":
        inspect_torch_export(data, uri)
    elif fmt == "torchscript":
        inspect_torchscript(data, uri)
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
