"""The `ironsight` command as a user runs it: exit codes, messages, and kill-then-resume."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

import pyarrow.dataset as pads
import pytest

from ironsight.cluster import synthetic

IRONSIGHT = [sys.executable, "-m", "ironsight.jobs.cli"]


def run(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*IRONSIGHT, *args], capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("corpus")
    synthetic.write_corpus(str(path), 200, seed=11, rows_per_file=100, row_group_size=50)
    return str(path)


def test_help_teaches_the_commands():
    top = run("--help")
    assert top.returncode == 0
    for word in ("classify", "demo", "models", "run", "validate"):
        assert word in top.stdout
    sub = run("classify", "--help")
    assert sub.returncode == 0
    for flag in ("--model", "--weights", "--random-weights", "--model-card", "--top-k", "--batch-size",
                 "--actors", "--address", "--image-column", "--id-column", "examples:"):
        assert flag in sub.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["classify", "in", "out", "--model", "resnet18"], "needs weights"),
        (["classify", "in", "out", "--weights", "w.safetensors"], "--model NAME"),
        (["classify", "in", "out", "--model", "demo_cnn", "--random-weights", "--top-k", "0"], "--top-k"),
        (["classify", "in", "out", "--model", "demo_cnn", "--random-weights", "--batch-size", "-1"], "--batch-size"),
        (["classify", "in"], "OUTPUT"),
        (["classify", "in", "out", "--model", "demo_cnn", "--random-weights", "--device", "tpu"], "--device"),
    ],
)
def test_bad_usage_exits_2_naming_the_flag(args, message):
    result = run(*args, timeout=60)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_missing_input_exits_2_naming_it(tmp_path):
    result = run("classify", str(tmp_path / "nope"), str(tmp_path / "out"), "--model", "demo_cnn", "--random-weights")
    assert result.returncode == 2
    assert "nope" in result.stderr
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_unknown_model_exits_2_with_suggestions(small_corpus, tmp_path):
    result = run("classify", small_corpus, str(tmp_path / "o"), "--model", "resnet19", "--random-weights")
    assert result.returncode == 2
    assert "resnet18" in result.stderr


def test_models_list_and_show():
    listing = run("models", "list")
    assert listing.returncode == 0
    for name in ("resnet18", "resnet50", "vit_b_16", "demo_cnn", "convnext_tiny"):
        assert name in listing.stdout
    show = run("models", "show", "resnet50")
    assert show.returncode == 0
    assert "224" in show.stdout and "1000" in show.stdout


def test_every_command_names_its_handler():
    """One dispatch idiom: each command's parser sets ``handler`` (the built-in commands and the
    command modules' alike); a leaf command inherits its parent's (``conditions list``)."""
    from ironsight.jobs import cli, cli_parser

    root = cli.build_parser()
    handlers = {}
    for path, parser in cli_parser._walk(root):
        if path:
            handlers[path] = parser.get_default("handler") or handlers.get(path[:-1])
    leaves = [path for path, parser in cli_parser._walk(root) if path and not any(
        isinstance(a, argparse._SubParsersAction) and a.required for a in parser._actions)]
    assert {("classify",), ("run",), ("validate",), ("models", "show"), ("demo", "compare"),
            ("conditions", "list"), ("history",)} <= set(leaves)
    assert [p for p in leaves if not callable(handlers[p])] == []
    # the handler is what runs: `models show` reaches _models_show through _dispatch alone
    args = root.parse_args(["models", "show", "demo_cnn"])
    assert args.handler is cli._models_show


def test_classify_end_to_end_and_rerun_is_a_no_op(small_corpus, tmp_path):
    out = tmp_path / "labels"
    args = ["classify", small_corpus, str(out), "--model", "demo_cnn", "--random-weights", "--no-progress"]
    first = run(*args)
    assert first.returncode == 0, first.stderr
    assert "labeled 200 rows" in first.stdout
    assert "error rows: 0" in first.stdout and "images/s" in first.stdout
    assert "200/200 rows (100%)" in first.stderr  # plain progress lines when not on a terminal
    assert pads.dataset(str(out), format="parquet").count_rows() == 200
    second = run(*args)
    assert second.returncode == 0
    assert "already complete" in second.stdout


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_resumes_exactly_once(tmp_path):
    """Kill the whole job (driver and its embedded Ray) mid-run; the same command resumes."""
    corpus = tmp_path / "corpus"
    n = 3000
    synthetic.write_corpus(str(corpus), n, seed=5, rows_per_file=500, row_group_size=100)
    out = tmp_path / "labels"
    args = [*IRONSIGHT, "classify", str(corpus), str(out), "--model", "mobilenet_v3_small", "--random-weights",
            "--max-rows-per-shard", "100", "--batch-size", "16", "--actors", "1", "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(out.glob("part-*.parquet"))) < 5:
        time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("part-*.parquet")}
    assert 5 <= len(committed) < 30, "the kill should land mid-run"
    assert not (out / "_SUCCESS").exists()

    resumed = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    table = pads.dataset(str(out), format="parquet").to_table(columns=["id"])
    ids = table.column("id").to_pylist()
    assert len(ids) == n and len(set(ids)) == n  # every row exactly once
    # shards committed before the kill were not processed again: same files, untouched
    for name, stamp in committed.items():
        p = out / name
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == stamp, name
    assert f"{len(committed)} already committed" in resumed.stdout
    assert (out / "_SUCCESS").is_file()


@pytest.mark.slow
def test_classify_with_torch_compile_labels_as_eager_mode(small_corpus, tmp_path):
    labels = {}
    for name, extra in (("eager", []), ("compiled", ["--torch-compile"])):
        out = tmp_path / name
        done = run("classify", small_corpus, str(out), "--model", "demo_cnn", "--random-weights",
                   "--no-progress", *extra, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        table = pads.dataset(str(out), format="parquet").to_table(columns=["id", "pred_label"]).sort_by("id")
        labels[name] = table.column("pred_label").to_pylist()
    assert len(labels["compiled"]) == 200 and labels["compiled"] == labels["eager"]
