"""Loading a classifier: a picklable recipe (:class:`ModelSource`) and what it loads.

The driver validates a :class:`ModelSource` once (``validate()``, on CPU, before any work);
each Ray actor receives the same small recipe and calls ``load(device)`` once. Nothing
downloads: weights come from a local path or an ``s3://`` URI through :mod:`ironsight.cluster.storage`.

Weights formats. The format is what the model card's ``format`` says, else what the file's
extension says (:data:`EXTENSION_FORMATS`: ``.safetensors``, ``.pt2``, ``.ts``; ``.pt`` and
``.pth`` may be a state dict or TorchScript); the content is sniffed only to catch a file
that disagrees (refused: ``x.safetensors`` holding a torch.export archive) and to decide for
other names (``weights.bin``, no extension):

| format         | recognized by                                | loaded with                         | holds      |
|----------------|----------------------------------------------|-------------------------------------|------------|
| ``safetensors``| 8-byte header length, then ``{``             | ``safetensors.torch.load``          | tensors    |
| ``state_dict`` | zip with ``data.pkl`` (or a legacy pickle)   | ``torch.load(weights_only=True)``   | tensors    |
| ``torch_export``| zip with ``archive_format`` (``.pt2``)      | ``torch.export.load(...).module()`` | a network  |
| ``torchscript``| zip with ``code/`` and ``constants.pkl``     | ``torch.jit.load``                  | a network  |

No weights file runs code in Ironsight. Tensor formats never unpickle beyond
``weights_only=True``. The two network formats are inspected before torch sees them, without
executing anything, and refused with :class:`InvalidInput` naming the file and the member:

| archive                 | refused when                                                      |
|-------------------------|-------------------------------------------------------------------|
| any zip                 | duplicate or non-ASCII names, entries outside one root folder     |
| ``.pt2`` pickles        | a ``*.pt`` member (sample inputs, legacy weights) is not a zip whose ``data.pkl`` uses only protocol-2 opcodes and torch's tensor rebuilders (read with ``pickletools.genops``) |
| ``.pt2`` configs        | a weight or constant is marked ``use_pickle``, or a constant is an ``opaque_obj_``/``custom_obj_`` pickle |
| ``.pt2`` layout         | ``data/aotinductor/`` (a shared library) or any unknown member      |
| ``.pt2`` program JSON   | a shape expression (sympy ``eval``s it) or guard (``.module()`` ``exec``s it) that is not plain arithmetic; a string input; a call that is not an aten/prims operator, or is ``from_file``/``save`` |
| TorchScript ``code/``   | calls to ``save``, ``from_file``, ``load_tensor`` or torch.distributed classes (TorchScript's own C++ unpickler resolves only tensor rebuilders and TorchScript classes, so its pickles need no check) |

Files are read whole through :func:`ironsight.cluster.storage.read_bytes`: FIFOs, sockets, devices and
``/proc``, ``/sys``, ``/dev`` paths are refused, and so is a file larger than 8 GiB, or than
``$IRONSIGHT_MAX_WEIGHTS_BYTES`` bytes when that is set.

A state dict may be wrapped as ``{"state_dict": ...}`` or ``{"model": ...}`` (training
checkpoints) and may carry DataParallel's ``module.`` prefix. Tensor formats need an
architecture (a registered name, or a card's ``arch``); network formats *are* the
architecture, and the card or registered name only supplies preprocessing and class names.

Every loaded model is ``nn.Sequential(Normalize(mean, std), network)`` in eval mode,
float32: pixels in [0, 1] in, logits out.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import io
import json
import os
import pickle  # only for its exception type: files are never unpickled by us
import pickletools
import re
import warnings
import zipfile
from dataclasses import dataclass

import pyarrow.fs as pafs
import torch
from torch import nn

from ironsight.cluster import storage
from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.models.card import ModelCard, load_card
from ironsight.cluster.models.registry import ModelInfo, Normalize, get_model_info
from ironsight.cluster.paths import check_within

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


# ---------------------------------------------------------------------------------------------
# Inspecting network archives before torch reads them
# ---------------------------------------------------------------------------------------------

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

# Pickle opcodes torch.save (protocol 2) writes for tensors and containers; torch's own
# weights-only unpickler supports no more. Notably absent: STACK_GLOBAL, INST, OBJ, NEWOBJ,
# BUILD, EXT*, and every string opcode a protocol-0 GLOBAL could hide behind.
_PICKLE_OPCODES = frozenset({
    "PROTO", "STOP", "GLOBAL", "REDUCE", "MARK", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
    "EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "APPEND", "APPENDS", "SETITEM",
    "SETITEMS", "NONE", "NEWFALSE", "NEWTRUE", "BININT", "BININT1", "BININT2", "LONG1",
    "BINFLOAT", "BINUNICODE", "SHORT_BINSTRING", "BINPERSID", "BINGET", "LONG_BINGET",
    "BINPUT", "LONG_BINPUT",
})
# Members of a torch.save zip (besides data/<key> storages); only data.pkl is unpickled.
_TORCH_SAVE_MEMBERS = frozenset({
    "data.pkl", "byteorder", "version", ".format_version", ".storage_alignment",
    ".data/version", ".data/serialization_id",
})
# Top-level entries torch.export.save writes; data/aotinductor (a compiled shared library
# that load_pt2 would dlopen), data/executorch and anything else are refused.
_PT2_FILES = frozenset({"archive_format", "archive_version", "byteorder", "version"})
_PT2_DIRS = ("models/", "data/weights/", "data/constants/", "data/sample_inputs/", "extra/",
             ".data/")
# Graph operators that read or write files; every other call is an operator of these
# namespaces (no Python callable can be named in a .pt2 graph).
_GRAPH_NAMESPACES = ("torch.ops.aten.", "torch.ops.prims.", "torch.ops.higher_order.",
                     "_operator.", "math.", "torch.sym_", "torch._sym_")
_FILE_OPS = frozenset({"from_file", "save", "load_tensor"})
# Names a torch.export shape expression (sympy srepr, given to sympy.sympify = eval) may use.
_SYMPY_NAMES = frozenset({
    "Symbol", "Integer", "Rational", "Float", "Half", "One", "Zero", "NegativeOne",
    "Infinity", "NegativeInfinity", "oo", "true", "false", "BooleanTrue", "BooleanFalse",
    "Add", "Mul", "Pow", "Max", "Min", "Mod", "Abs", "floor", "ceiling", "sqrt",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality", "StrictLessThan",
    "StrictGreaterThan", "LessThan", "GreaterThan", "And", "Or", "Not",
    "Piecewise", "ExprCondPair",
    # torch.utils._sympy.functions (the deserializer's own list)
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt",
    "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv",
    "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
    "RoundToInt", "RoundDecimal", "ToFloat", "Identity",
})
# Names an input guard (Python source that ExportedProgram.module() exec()s) may use.
_GUARD_NAMES = frozenset({"L", "math", "torch", "IsNonOverlappingAndDenseIndicator",
                          "cast_symbool_to_symint_guardless"})
_GUARD_ATTRS = frozenset({"size", "stride", "storage_offset", "dim", "numel", "shape",
                          "floor", "ceil", "trunc", "isnan", "isinf", "inf", "sqrt",
                          "sym_max", "sym_min", "sym_not", "sym_float", "sym_int", "sym_ite"})
_MAX_EXPR = 10_000  # characters in one shape expression or guard
_MAX_INT = 1 << 64
# TorchScript code calling an operator that reads or writes files, or a torch.distributed
# class (c10d stores write files): ``torch.save(x, "/home/u/.bashrc")`` compiles and runs.
_TS_FORBIDDEN = re.compile(
    r"\b(?:[A-Za-z_]\w*\.)*(?:from_file|save|load_tensor)(?=\s*\()"
    r"|\btorch\.classes\.(?:c10d|dist)\w*|\bops\.debugprims\b"
)


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


def _refuse(uri: str, member: str, why: str) -> InvalidInput:
    return InvalidInput(
        f"weights file {uri}: member {member} {why}; Ironsight does not load it, because "
        "loading it could run code. Export the model again with torch.export.save (plain "
        f"tensors only), or {_RESAVE}"
    )


def _open_zip(data: bytes, uri: str, member: str) -> tuple[zipfile.ZipFile, str]:
    """An archive whose entries torch and :mod:`zipfile` read alike, and its root folder.

    Refused: duplicate or non-ASCII names, entries outside one root folder (torch reads only
    the first entry's folder, an older loader the top level), data before the first entry.
    """
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise _refuse(uri, member, f"is a damaged zip archive ({exc})") from None
    names = [i.filename for i in infos]
    if not names:
        raise _refuse(uri, member, "is an empty zip archive")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise _refuse(uri, member, f"names entry {dup} twice")
    if infos[0].header_offset != 0 or any(not n.isascii() for n in names):
        raise _refuse(uri, member, "is not laid out as torch writes zip archives")
    root = names[0].split("/", 1)[0]
    stray = next((n for n in names if not n.startswith(root + "/") or "/../" in f"/{n}"), None)
    if not root or stray is not None:
        raise _refuse(uri, member, f"has entry {stray or names[0]} outside one root folder")
    return zf, root + "/"


def _check_pickle(data: bytes, uri: str, member: str) -> None:
    """Refuse a pickle that calls or names anything but torch's tensor rebuilders.

    Reads the opcodes with :func:`pickletools.genops`; nothing is executed.
    """
    allowed = _allowed_globals()
    try:
        for op, arg, _pos in pickletools.genops(data):
            if op.name not in _PICKLE_OPCODES:
                raise _refuse(uri, member, f"is a pickle using opcode {op.name}, which tensors "
                                           "never need")
            if op.name == "GLOBAL" and tuple(str(arg).split(" ", 1)) not in allowed:
                raise _refuse(uri, member, f"is a pickle naming Python global "
                                           f"{str(arg).replace(' ', '.')}")
    except InvalidInput:
        raise
    except Exception as exc:  # genops: ValueError on a truncated or malformed stream
        raise _refuse(uri, member, f"is not a readable pickle ({exc})") from None


@functools.cache
def _allowed_globals() -> frozenset[tuple[str, str]]:
    dtypes = {str(t).split(".", 1)[1] for t in vars(torch).values() if isinstance(t, torch.dtype)}
    storages = {t.__name__ for t in torch._storage_classes if t.__module__ == "torch"}
    return frozenset(
        {("torch._utils", n) for n in ("_rebuild_tensor", "_rebuild_tensor_v2",
                                       "_rebuild_parameter")}
        | {("collections", "OrderedDict"), ("torch", "Size"), ("torch", "device")}
        | {("torch", n) for n in storages | dtypes}
    )


def _check_torch_save(data: bytes, uri: str, member: str) -> None:
    """A ``torch.save`` zip inside an archive: tensor pickles and raw storages only."""
    if data[:4] != b"PK\x03\x04":
        raise _refuse(uri, member, "is not a zip-format torch.save file (an old pickle or tar "
                                   "stream, which torch unpickles in full)")
    zf, root = _open_zip(data, uri, member)
    for name in zf.namelist():
        rel = name[len(root):]
        if rel not in _TORCH_SAVE_MEMBERS and not re.fullmatch(r"data/\w+", rel):
            raise _refuse(uri, member, f"holds unexpected entry {rel} (torch.save writes "
                                       "data.pkl and tensor data only)")
    if root + "data.pkl" not in zf.namelist():
        raise _refuse(uri, member, "has no data.pkl")
    _check_pickle(zf.read(root + "data.pkl"), uri, f"{member}/data.pkl")


def inspect_torch_export(data: bytes, uri: str) -> None:
    """Refuse a ``.pt2`` archive unless ``torch.export.load`` can read it without running code.

    What torch would otherwise execute (torch/export/pt2_archive/_package.py,
    torch/_export/serde/serialize.py, torch/export/_unlift.py):

    | archive content                              | torch does                        |
    |----------------------------------------------|-----------------------------------|
    | ``data/sample_inputs/*.pt``, legacy ``*.pt`` | torch.load, weights_only=False if weights_only=True fails |
    | a weight/constant with ``use_pickle``        | torch.load(weights_only=False)    |
    | ``opaque_obj_*`` / ``custom_obj_*`` constant | pickle.loads / TorchScript unpickle |
    | ``data/aotinductor/``                        | loads a compiled shared library   |
    | a shape expression (``expr_str``)            | sympy.sympify, which is eval()    |
    | ``guards_code``, string graph inputs         | exec() in ``.module()``           |

    Every ``*.pt`` member must be a zip whose only pickle uses tensor rebuilders
    (:func:`_check_pickle`); configs must not ask for pickles; expressions and guards must
    parse to plain arithmetic over the names above; graph calls must be operators.
    """
    zf, root = _open_zip(data, uri, "(archive)")
    names = [n[len(root):] for n in zf.namelist()]
    for rel in names:
        if rel not in _PT2_FILES and not rel.startswith(_PT2_DIRS):
            raise _refuse(uri, rel, "is not part of a torch.export archive (torch.export.save "
                                    "writes models/, data/weights|constants|sample_inputs/, "
                                    "extra/)")
    if root + "archive_format" not in zf.namelist() or zf.read(root + "archive_format").strip() != b"pt2":
        raise _refuse(uri, "archive_format", "does not say pt2")
    models = [r for r in names if r.startswith("models/") and r.endswith(".json")]
    if "models/model.json" not in models:
        raise _refuse(uri, "models/model.json", "is missing: the archive holds no program")
    for rel in names:
        body = zf.read(root + rel)
        if rel.endswith(".pt"):
            _check_torch_save(body, uri, rel)
        elif rel.startswith("data/constants/") and rel.split("/")[-1].startswith(
                ("custom_obj_", "opaque_obj_")):
            raise _refuse(uri, rel, "is a pickled Python/TorchScript object, not a tensor")
        elif rel.endswith("_config.json") and rel.startswith(("data/weights/", "data/constants/")):
            _check_payload_config(_json(body, uri, rel), uri, rel)
        elif rel in models:
            _check_program(_json(body, uri, rel), uri, rel)


def _json(body: bytes, uri: str, rel: str) -> object:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _refuse(uri, rel, f"is not readable JSON ({exc})") from None


def _check_payload_config(config: object, uri: str, rel: str) -> None:
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise _refuse(uri, rel, "is not a torch.export payload config")
    for fqn, meta in entries.items():
        path = str(meta.get("path_name", "")) if isinstance(meta, dict) else ""
        if rel.startswith("data/constants/") and not path.startswith("tensor_"):
            raise _refuse(uri, rel, f"stores constant {fqn} as {path}, a pickled Python "
                                    "object (pickle.loads) rather than a tensor")
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            raise _refuse(uri, rel, f"marks {fqn} use_pickle (torch.load(weights_only=False))")


def _walk(obj: object):
    """Every dict inside a JSON document."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _check_program(program: object, uri: str, rel: str) -> None:
    if not isinstance(program, dict):
        raise _refuse(uri, rel, "is not a serialized ExportedProgram")
    for guard in program.get("guards_code") or []:
        if not _safe_expr(guard, _GUARD_NAMES, guard=True):
            raise _refuse(uri, rel, f"has guard code {str(guard)[:80]!r} that is not plain "
                                    "shape arithmetic (torch exec()s it)")
    graph = (program.get("graph_module") or {}).get("graph") or {}
    for spec in graph.get("inputs") or []:
        if isinstance(spec, dict) and spec.get("type", next(iter(spec), "")) in (
                "as_string", "as_custom_obj"):
            raise _refuse(uri, rel, "takes a string or object input; image classifiers take "
                                    "a tensor")
    for node in _walk(program):
        expr = node.get("expr_str")
        if expr is not None and not _safe_expr(expr, _SYMPY_NAMES, guard=False):
            raise _refuse(uri, rel, f"has shape expression {str(expr)[:80]!r} that is not a "
                                    "plain sympy expression (torch eval()s it)")
        target = node.get("target")
        if isinstance(target, str) and "inputs" in node:
            op = target.split(".")
            if not target.startswith(_GRAPH_NAMESPACES) or (len(op) > 3 and op[3] in _FILE_OPS):
                raise _refuse(uri, rel, f"calls {target}, which is not an operator Ironsight "
                                        "runs (file access, or not an aten/prims operator)")


def _safe_expr(text: object, names: frozenset[str], *, guard: bool) -> bool:
    """Whether ``text`` parses to calls of ``names`` on numbers, strings and each other only.

    No attribute (except shape accessors in guards), subscript of anything but ``L``, lambda,
    comprehension, or ``**``: what ``eval``/``exec`` of it can do is compute a number.
    """
    if not isinstance(text, str) or len(text) > _MAX_EXPR:
        return False
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError):
        return False
    ops = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.USub, ast.UAdd,
           ast.Not, ast.And, ast.Or, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Expression, ast.Load, ast.keyword, *ops)):
            if isinstance(node, ast.keyword) and (node.arg is None or node.arg.startswith("_")):
                return False
            continue
        if isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, bool) or v is None or isinstance(v, float):
                continue
            if isinstance(v, int) and abs(v) <= _MAX_INT:
                continue
            if isinstance(v, str) and len(v) <= 200 and "__" not in v:
                continue
            return False
        if isinstance(node, ast.Name):
            if node.id not in names:
                return False
            continue
        if isinstance(node, ast.Call):
            if not guard and not isinstance(node.func, ast.Name):
                return False
            if not guard and node.func.id == "Pow":  # Pow(Integer(10), Integer(10**9)) hangs
                exp = node.args[1] if len(node.args) == 2 else None
                if isinstance(exp, ast.Call) and any(
                        isinstance(a, ast.Constant) and isinstance(a.value, int) and abs(a.value) > 64
                        for a in exp.args):
                    return False
            continue
        if guard and isinstance(node, (ast.Compare, ast.BoolOp, ast.BinOp, ast.UnaryOp)):
            if isinstance(node, ast.BinOp) and not isinstance(node.op, ops):
                return False
            continue
        if not guard and isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            continue
        if guard and isinstance(node, ast.Attribute) and node.attr in _GUARD_ATTRS:
            continue
        if guard and isinstance(node, ast.Subscript):
            continue
        return False
    return True


def inspect_torchscript(data: bytes, uri: str) -> None:
    """Refuse a TorchScript archive whose code touches files; its pickles are safe as they are.

    ``torch.jit.load`` unpickles ``data.pkl``/``constants.pkl`` with TorchScript's C++
    unpickler (torch/csrc/jit/serialization/unpickler.cpp): a GLOBAL is one of a fixed set
    of tensor/list rebuilders or a TorchScript class compiled from the archive's ``code/``;
    no Python object is ever looked up or called. The code itself is TorchScript, which
    cannot reach Python but can call operators: ``torch.save(x, path)`` and
    ``torch.from_file(path, shared=True)`` write files (``__setstate__`` even runs at load).
    """
    zf, root = _open_zip(data, uri, "(archive)")
    for name in zf.namelist():
        if name.endswith(".py") and name[len(root):].startswith("code/"):
            code = zf.read(name).decode("utf-8", "replace")
            if m := _TS_FORBIDDEN.search(code):
                raise _refuse(uri, name[len(root):], f"is TorchScript code calling "
                                                     f"{m.group(0)}, which reads or writes files")


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
