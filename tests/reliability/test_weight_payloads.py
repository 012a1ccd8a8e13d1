"""Hostile weights files: a model file must never run code in the driver (issue 17, hole 1).

Each payload is a real archive written by ``torch.export.save`` / ``torch.jit.save`` with one
member rewritten to do what an attacker would: a pickle whose ``__reduce__`` calls ``exec``,
a shape expression that sympy would ``eval``, guard code that ``.module()`` would ``exec``,
an operator that writes a file. "Live" tests prove that plain torch runs each payload (the
marker file appears), so the refusals below are refusals of working exploits; every refusal
test asserts the marker file was NOT created.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import pickle
import signal
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from ironsight.cluster import synthetic
from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.models import ModelSource
from ironsight.cluster.models.archive import (
    _GUARD_NAMES,
    _SYMPY_NAMES,
    _safe_expr,
    inspect_torch_export,
)
from ironsight.cluster.models.demo_cnn import demo_cnn
from ironsight.cluster.models.formats import MAX_BYTES_ENV
from tests.reliability.conftest import cli


class _Payload:
    """Unpickling this runs ``exec(code)``: what a hostile pickle does."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return (builtins.exec, (self.code,))


def _touch(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


class _Writes(nn.Module):
    """A TorchScript model whose forward writes a file next to the marker (torch.save op)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.save(x, self.path)
        return x.flatten(1)[:, :8]


@pytest.fixture(scope="module")
def pt2(tmp_path_factory) -> bytes:
    """A real torch.export program of demo_cnn (dynamic batch) as bytes."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = demo_cnn(8).eval()
    path = tmp_path_factory.mktemp("pt2") / "net.pt2"
    program = torch.export.export(net, (torch.rand(2, 3, 64, 64),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    torch.export.save(program, path)
    return path.read_bytes()


def _rewrite(data: bytes, replace: dict[str, bytes] | None = None, *, add_top: dict | None = None,
             edit_json: dict | None = None) -> bytes:
    """``data`` (a zip under one root folder) with members replaced or added.

    ``replace`` and ``edit_json`` keys are paths under the root; ``edit_json`` values are
    functions from the parsed JSON to the new JSON; ``add_top`` adds top-level entries.
    """
    replace = dict(replace or {})
    src = zipfile.ZipFile(io.BytesIO(data))
    root = src.namelist()[0].split("/", 1)[0] + "/"
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for name in src.namelist():
            rel = name[len(root):]
            body = src.read(name)
            if rel in (edit_json or {}):
                body = json.dumps(edit_json[rel](json.loads(body))).encode()
            dst.writestr(name, replace.pop(rel, body))
        for rel, body in replace.items():
            dst.writestr(root + rel, body)
        for name, body in (add_top or {}).items():
            dst.writestr(name, body)
    return out.getvalue()


def _torch_save(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _refused(path: Path, *, match: str, marker: Path, **source) -> str:
    with pytest.raises(InvalidInput, match=match) as err:
        ModelSource(weights=str(path), **({"name": "demo_cnn"} | source)).validate()
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    assert not marker.exists(), "the payload ran"
    return message


# --- payload archives --------------------------------------------------------------------


def _sample_inputs_payload(pt2: bytes, marker: Path) -> bytes:
    return _rewrite(pt2, {"data/sample_inputs/model.pt": _torch_save(_Payload(_touch(marker)))})


def _use_pickle_payload(pt2: bytes, marker: Path) -> bytes:
    def mark(config):
        entry = config["config"]["0.weight"]
        entry["use_pickle"] = True
        return config

    zf = zipfile.ZipFile(io.BytesIO(pt2))
    config = next(n for n in zf.namelist() if n.endswith("data/weights/model_weights_config.json"))
    weight = json.loads(zf.read(config))["config"]["0.weight"]["path_name"]
    return _rewrite(pt2, {f"data/weights/{weight}": _torch_save(_Payload(_touch(marker)))},
                    edit_json={"data/weights/model_weights_config.json": mark})


def _opaque_constant_payload(pt2: bytes, marker: Path) -> bytes:
    def add(config):
        config["config"]["evil"] = {"path_name": "opaque_obj_0", "is_param": False,
                                    "use_pickle": True, "tensor_meta": None}
        return config

    return _rewrite(pt2, {"data/constants/opaque_obj_0": pickle.dumps(_Payload(_touch(marker)))},
                    edit_json={"data/constants/model_constants_config.json": add})


def _sympy_payload(pt2: bytes, marker: Path) -> bytes:
    def inject(program):
        meta = program["graph_module"]["graph"]["tensor_values"]
        size = next(s for v in meta.values() for s in v["sizes"] if "as_expr" in s)
        sym = size["as_expr"]["expr_str"]  # Symbol('s31', positive=True, integer=True)
        size["as_expr"]["expr_str"] = f"(__import__('builtins').exec({_touch(marker)!r}), {sym})[1]"
        return program

    return _rewrite(pt2, edit_json={"models/model.json": inject})


def _guard_payload(pt2: bytes, marker: Path) -> bytes:
    def inject(program):
        # torch also pastes the guard into a "..." message: no double quotes in it
        program["guards_code"] = [f"__import__('pathlib').Path({str(marker)!r}).touch() is None"]
        return program

    return _rewrite(pt2, edit_json={"models/model.json": inject})


PAYLOADS = {
    "sample_inputs pickle": (_sample_inputs_payload, r"member data/sample_inputs/model\.pt/"
                             r"data\.pkl is a pickle naming Python global (__builtin__|builtins)\.exec"),
    "use_pickle weight": (_use_pickle_payload, r"member data/weights/model_weights_config\.json "
                          r"marks 0\.weight use_pickle"),
    "opaque constant": (_opaque_constant_payload, r"member data/constants/model_constants_"
                        r"config\.json stores constant evil as opaque_obj_0, a pickled Python "
                        r"object"),
    "sympy expression": (_sympy_payload, r"member models/model\.json has shape expression .* "
                         r"\(torch eval\(\)s it\)"),
    "guard code": (_guard_payload, r"member models/model\.json has guard code .* \(torch "
                   r"exec\(\)s it\)"),
}


@pytest.mark.parametrize("kind", list(PAYLOADS))
def test_payload_is_live_in_plain_torch(kind, pt2, tmp_path):
    """Control: torch.export.load (+ .module() and one call) really runs each payload."""
    marker = tmp_path / "MARKER"
    data = PAYLOADS[kind][0](pt2, marker)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.export.load(io.BytesIO(data)).module()(torch.rand(1, 3, 64, 64))
        except Exception:
            pass  # some payloads break the program after they ran
    assert marker.exists(), f"{kind}: the payload did not run in plain torch; the test is moot"


@pytest.mark.parametrize("kind", list(PAYLOADS))
def test_payload_pt2_is_refused_before_loading(kind, pt2, tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt2"
    path.write_bytes(PAYLOADS[kind][0](pt2, marker))
    message = _refused(path, match=PAYLOADS[kind][1], marker=marker)
    assert "could run code" in message


def test_untouched_rewrite_still_loads(pt2, tmp_path):
    """Guards the payload tests: the rewriting itself keeps a legitimate archive loadable."""
    path = tmp_path / "same.pt2"
    path.write_bytes(_rewrite(pt2))
    loaded = ModelSource("demo_cnn", weights=str(path)).validate()
    assert loaded.module(torch.rand(2, 3, 64, 64)).shape == (2, 8)


def test_pt2_renamed_safetensors_is_refused_by_name(pt2, tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "model.safetensors"
    path.write_bytes(_sample_inputs_payload(pt2, marker))
    _refused(path, marker=marker, match=r"is named \.safetensors but holds a torch\.export "
                                        r"archive")


def test_pt2_renamed_pt_is_refused_and_clean_pt2_named_pt_too(pt2, tmp_path):
    """.pt is torch.save's or torch.jit.save's name; a torch.export archive must say .pt2."""
    path = tmp_path / "model.pt"
    path.write_bytes(pt2)
    with pytest.raises(InvalidInput, match=r"is named \.pt but holds a torch\.export archive"):
        ModelSource("demo_cnn", weights=str(path)).validate()


def test_extensionless_payload_is_sniffed_and_still_inspected(pt2, tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "model"
    path.write_bytes(_sample_inputs_payload(pt2, marker))
    _refused(path, marker=marker, match=r"data/sample_inputs/model\.pt/data\.pkl is a pickle")


def test_card_declared_torch_export_payload_is_refused(pt2, tmp_path):
    marker = tmp_path / "MARKER"
    weights = tmp_path / "evil.pt2"
    weights.write_bytes(_use_pickle_payload(pt2, marker))
    card = tmp_path / "card.yaml"
    card.write_text(yaml.safe_dump({"name": "evil", "format": "torch_export",
                                    "arch": "demo_cnn", "weights": str(weights),
                                    "num_classes": 8}))
    with pytest.raises(InvalidInput, match=r"use_pickle") as err:
        ModelSource(card=str(card)).validate()
    assert str(weights) in str(err.value) and not marker.exists()


def test_stack_global_pickle_is_refused(pt2, tmp_path):
    """Protocol 4 (STACK_GLOBAL) hides the global's name in the stack; refused outright."""
    marker = tmp_path / "MARKER"
    buf = io.BytesIO()
    torch.save(_Payload(_touch(marker)), buf, pickle_protocol=4)
    path = tmp_path / "evil.pt2"
    path.write_bytes(_rewrite(pt2, {"data/sample_inputs/model.pt": buf.getvalue()}))
    _refused(path, marker=marker, match=r"is a pickle using opcode (STACK_GLOBAL|FRAME)")


def test_raw_pickle_sample_inputs_are_refused(pt2, tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt2"
    path.write_bytes(_rewrite(pt2, {"data/sample_inputs/model.pt":
                                    pickle.dumps(_Payload(_touch(marker)), protocol=2)}))
    _refused(path, marker=marker, match=r"is not a zip-format torch\.save file")


def test_nested_torchscript_in_sample_inputs_is_refused(pt2, tmp_path):
    """torch.load hands a zip holding constants.pkl to torch.jit.load when not weights_only."""
    marker = tmp_path / "MARKER"
    nested = _rewrite(_torch_save((torch.zeros(1),)), {"constants.pkl": b"\x80\x02)."})
    path = tmp_path / "evil.pt2"
    path.write_bytes(_rewrite(pt2, {"data/sample_inputs/model.pt": nested}))
    _refused(path, marker=marker, match=r"holds unexpected entry constants\.pkl")


def test_legacy_top_level_members_are_refused(pt2, tmp_path):
    """torch.export.load's fallback reads a top-level `version` + serialized_*.pt in full."""
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt2"
    path.write_bytes(_rewrite(pt2, add_top={"version": b"8.0", "serialized_example_inputs.pt":
                                            _torch_save(_Payload(_touch(marker)))}))
    _refused(path, marker=marker, match=r"has entry version outside one root folder")


def test_aotinductor_library_is_refused(pt2, tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt2"
    path.write_bytes(_rewrite(pt2, {"data/aotinductor/model/evil.so": b"\x7fELF"}))
    _refused(path, marker=marker, match=r"member data/aotinductor/model/evil\.so is not part "
                                        r"of a torch\.export archive")


def test_duplicate_member_is_refused(pt2, tmp_path):
    marker = tmp_path / "MARKER"
    data = _rewrite(pt2)
    root = zipfile.ZipFile(io.BytesIO(data)).namelist()[0].split("/")[0]
    out = io.BytesIO(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        with zipfile.ZipFile(out, "a") as z:
            z.writestr(f"{root}/data/sample_inputs/model.pt", _torch_save(_Payload(_touch(marker))))
    path = tmp_path / "evil.pt2"
    path.write_bytes(out.getvalue())
    _refused(path, marker=marker, match=r"names entry .*data/sample_inputs/model\.pt twice")


@pytest.mark.parametrize("op", ["torch.ops.aten.from_file.default", "torch.ops.aten.save.default",
                                "builtins.exec"])
def test_graph_calling_file_ops_is_refused(op, pt2, tmp_path):
    def retarget(program):
        program["graph_module"]["graph"]["nodes"][0]["target"] = op
        return program

    path = tmp_path / "evil.pt2"
    path.write_bytes(_rewrite(pt2, edit_json={"models/model.json": retarget}))
    with pytest.raises(InvalidInput, match=rf"calls {op}, which is not an operator"):
        inspect_torch_export(path.read_bytes(), str(path))


@pytest.mark.parametrize(("text", "ok"), [
    ("Symbol('s77', positive=True, integer=True)", True),
    ("FloorDiv(Symbol('s77', positive=True, integer=True), Integer(2))", True),
    ("Add(Pow(Symbol('s0', integer=True), Integer(2)), Integer(3))", True),
    ("Mul(Rational(1, 2), Max(Integer(2), Symbol('s1')))", True),
    ("__import__('os').system('true')", False),
    ("Symbol('s0').__class__", False),
    ("Symbol('__class__')", False),
    ("Pow(Integer(10), Integer(1000000000))", False),  # sympy would compute it: a hang
    ("lambdify(Symbol('x'), Symbol('x'))", False),
    ("exec('1')", False),
])
def test_shape_expression_checker(text, ok):
    assert _safe_expr(text, _SYMPY_NAMES, guard=False) is ok


@pytest.mark.parametrize(("text", "ok"), [
    ("L['x'].size()[0] >= 2", True),
    ("L['x'].size()[0] == 3 and L['x'].stride()[1] == 4096", True),
    ("math.floor(L['x'].size()[0] / 2) > 1", True),
    ("torch.sym_max(L['x'].size()[0], 2) == 4", True),
    ("__import__('os').system('true')", False),
    ("L['x'].size.__globals__", False),
    ("L['x'].size()[0] ** 99999999 > 0", False),
    ("torch.save(L['x'], 'f')", False),
    ("(lambda: 1)() == 1", False),
])
def test_guard_checker(text, ok):
    assert _safe_expr(text, _GUARD_NAMES, guard=True) is ok


# --- TorchScript -------------------------------------------------------------------------


def _script_writing(path: Path, target: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(_Writes(str(target))), path)


def test_torchscript_writing_files_is_live_in_plain_torch(tmp_path):
    written = tmp_path / "written.bin"
    _script_writing(tmp_path / "w.pt", written)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(tmp_path / "w.pt"))(torch.rand(1, 3, 64, 64))
    assert written.exists()


def test_torchscript_writing_files_is_refused(tmp_path):
    written = tmp_path / "written.bin"
    path = tmp_path / "w.pt"
    _script_writing(path, written)
    _refused(path, marker=written, match=r"member code/__torch__/\S+\.py is TorchScript code "
                                         r"calling torch\.save, which reads or writes files")


# --- files that are not files ------------------------------------------------------------


def _alarm(_signum, _frame):
    raise TimeoutError("reading the weights path hung")


@pytest.mark.timeout(60)
def test_fifo_weights_are_refused_promptly(tmp_path):
    fifo = tmp_path / "weights.safetensors"
    os.mkfifo(fifo)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(20)  # open() of a FIFO without a writer blocks forever
    try:
        with pytest.raises(InvalidInput, match=r"weights file .*weights\.safetensors is a named "
                                               r"pipe \(FIFO\), not a regular file"):
            ModelSource("demo_cnn", weights=str(fifo)).validate()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.timeout(60)
def test_dev_zero_weights_are_refused():
    with pytest.raises(InvalidInput, match=r"weights file /dev/zero is a device or kernel file"):
        ModelSource("demo_cnn", weights="/dev/zero").validate()


def test_size_cap_comes_from_the_environment(pt2, tmp_path, monkeypatch):
    path = tmp_path / "net.pt2"
    path.write_bytes(pt2)
    monkeypatch.setenv(MAX_BYTES_ENV, "1000")
    with pytest.raises(InvalidInput, match=r"weights file .*net\.pt2 is larger than 1,000 bytes"):
        ModelSource("demo_cnn", weights=str(path)).validate()
    monkeypatch.setenv(MAX_BYTES_ENV, "lots")
    with pytest.raises(InvalidInput, match=rf"{MAX_BYTES_ENV}='lots' must be a positive"):
        ModelSource("demo_cnn", weights=str(path)).validate()
    monkeypatch.setenv(MAX_BYTES_ENV, str(len(pt2)))
    assert ModelSource("demo_cnn", weights=str(path)).validate().info.num_classes == 8


# --- end to end --------------------------------------------------------------------------


def test_cli_refuses_payload_model_card_with_exit_2(pt2, tmp_path):
    marker = tmp_path / "MARKER"
    weights = tmp_path / "evil.pt2"
    weights.write_bytes(_sample_inputs_payload(pt2, marker))
    card = tmp_path / "card.yaml"
    card.write_text(yaml.safe_dump({"name": "evil", "format": "torch_export",
                                    "arch": "demo_cnn", "weights": str(weights),
                                    "num_classes": 8}))
    synthetic.write_corpus(str(tmp_path / "in"), 4, rows_per_file=4)
    out = tmp_path / "out"
    result = cli("classify", str(tmp_path / "in"), str(out), "--model-card", str(card),
                 "--no-progress", timeout=180)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if str(weights) in line]
    assert len(errors) == 1, result.stderr[-2000:]
    assert "data/sample_inputs/model.pt/data.pkl is a pickle naming Python global" in errors[0]
    assert errors[0].startswith("ironsight: error: weights file ")
    assert not marker.exists(), "the payload ran"
    assert not list(out.glob("part-*.parquet"))
