"""Inspecting network archives (``.pt2``, TorchScript) before torch reads them.

No weights file runs code in Ironsight. Tensor formats never unpickle beyond
``weights_only=True`` (:mod:`ironsight.cluster.models.formats`). The two network formats are
inspected here before torch sees them, without executing anything, and refused with
:class:`~ironsight.cluster.errors.InvalidInput` naming the file and the member:

| archive                 | refused when                                                      |
|-------------------------|-------------------------------------------------------------------|
| any zip                 | duplicate or non-ASCII names, entries outside one root folder     |
| ``.pt2`` pickles        | a ``*.pt`` member (sample inputs, legacy weights) is not a zip whose ``data.pkl`` uses only protocol-2 opcodes and torch's tensor rebuilders (read with ``pickletools.genops``) |
| ``.pt2`` configs        | a weight or constant is marked ``use_pickle``, or a constant is an ``opaque_obj_``/``custom_obj_`` pickle |
| ``.pt2`` layout         | ``data/aotinductor/`` (a shared library) or any unknown member      |
| ``.pt2`` program JSON   | a shape expression (sympy ``eval``s it) or guard (``.module()`` ``exec``s it) that is not plain arithmetic; a string input; a call that is not an aten/prims operator, or is ``from_file``/``save`` |
| TorchScript ``code/``   | calls to ``save``, ``from_file``, ``load_tensor`` or torch.distributed classes (TorchScript's own C++ unpickler resolves only tensor rebuilders and TorchScript classes, so its pickles need no check) |
"""

from __future__ import annotations

import ast
import functools
import io
import json
import pickletools
import re
import zipfile

import torch

from ironsight.cluster.errors import InvalidInput

# The fix every refusal of a file that could run code suggests.
RESAVE = (
    "re-save as safetensors with `safetensors.torch.save_file(model.state_dict(), "
    "'model.safetensors')` where the model's code is available"
)
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


def _refuse(uri: str, member: str, why: str) -> InvalidInput:
    return InvalidInput(
        f"weights file {uri}: member {member} {why}; Ironsight does not load it, because "
        "loading it could run code. Export the model again with torch.export.save (plain "
        f"tensors only), or {RESAVE}"
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
