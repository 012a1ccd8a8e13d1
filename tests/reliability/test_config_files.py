"""Hostile configuration files through the real CLI: model cards, job specs, suites, gates.

Each test runs ``ironsight`` as a user would, in a child process whose peak memory is read
with ``wait4`` (and, where no Ray starts, capped with ``RLIMIT_AS``): an alias bomb must be
refused in bounded memory with a one-line message, deep nesting without a traceback,
duplicate keys by name and line, and a card that is a FIFO, a device or 10 MB before
anything blocks or reads it whole. The in-process tests check the loaders Ray would call.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from ironsight.cluster import synthetic
from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.models.card import load_card
from ironsight.cluster.yamlfile import MAX_NODES
from ironsight.jobs.spec_file import load_spec
from ironsight.robustness.gate import load_gate
from ironsight.robustness.suites import get_suite
from tests.reliability.conftest import IRONSIGHT, REPO

_SCRIPT = Path(sys.executable).parent / "ironsight"
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else IRONSIGHT
GiB = 1 << 30
# The CLI imports torch and Ray (about 1.3 GB resident here); the unbounded loaders needed
# several GB for the same files (the repr of an alias bomb in an error message).
MAX_RSS = int(2.5 * GiB)
AS_LIMIT = 8 * GiB  # where no Ray starts: a runaway child gets MemoryError, not the machine


def billion_laughs(levels: int = 10, width: int = 10) -> str:
    lines = [f"lol0: &lol0 [{', '.join(['0.5'] * width)}]"]
    for i in range(1, levels + 1):
        lines.append(f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def big_aliased(key: str) -> str:
    """``key`` set to a list of ~99,000 values (under the alias limit): a valid document whose
    value's repr is about 500 KB, for checking that validation messages do not echo it."""
    return ("row: &row [" + ", ".join(["0.5"] * 99) + "]\n"
            f"{key}: [" + ", ".join(["*row"] * 990) + "]\n")


SPEC_HEAD = "kind: {kind}\ninput: eval\noutput: out\nmodel: demo_cnn\nrandom_weights: true\n"


@dataclass
class Run:
    rc: int
    stderr: str
    max_rss: int  # bytes, the child's peak resident set
    wall_s: float

    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("ironsight: error:")]


def ironsight(*args: str, timeout: float = 120, as_limit: int | None = None, cwd=REPO) -> Run:
    """Run ``ironsight ARGS``; kill it (and its group) after ``timeout`` seconds."""

    # Linux keeps ru_maxrss across execve, and a child forked (or vforked) from pytest starts
    # with pytest's own high-water mark (2.5+ GiB late in the suite). So a small launcher forks
    # the CLI from its own small address space, sets the limit there, waits, and reports the
    # CLI's peak (RUSAGE_CHILDREN of the launcher: the CLI is its only child).
    launcher = (
        "import os, resource, sys\n"
        "os.setsid()\n"
        "limit, report = int(sys.argv[1]), sys.argv[2]\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    if limit:\n"
        "        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n"
        "    os.execv(sys.argv[3], sys.argv[3:])\n"
        "status = os.waitpid(pid, 0)[1]\n"
        "with open(report, 'w') as f:\n"
        "    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
        "code = os.waitstatus_to_exitcode(status)\n"
        "sys.exit(code if code >= 0 else 128 - code)\n"
    )
    start = time.monotonic()
    with tempfile.TemporaryFile() as err, tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "maxrss")
        proc = subprocess.Popen(
            [sys.executable, "-c", launcher, str(as_limit or 0), report, *COMMAND, *args],
            stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd,
        )
        while True:
            pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - start > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                os.wait4(proc.pid, 0)
                proc.returncode = -9
                pytest.fail(f"ironsight {' '.join(args)} still running after {timeout:.0f} s")
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
        with open(report) as f:
            max_rss = int(f.read()) * 1024
    return Run(proc.returncode, stderr, max_rss, time.monotonic() - start)


def assert_refused(run: Run, *fragments: str) -> str:
    """Exit 2, one ``ironsight: error:`` line holding every fragment, no traceback."""
    assert run.rc == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "RecursionError" not in run.stderr, run.stderr[-3000:]
    errors = run.errors()
    assert len(errors) == 1, run.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def audit_args(tmp_path: Path, *extra: str) -> list[str]:
    """An audit of a real (tiny) eval set, so that the file under test is what is refused
    (a missing eval set is refused first, before torch loads)."""
    if not (tmp_path / "eval").exists():
        synthetic.write_corpus(str(tmp_path / "eval"), 4, rows_per_file=4, row_group_size=4)
    return ["audit", str(tmp_path / "eval"), str(tmp_path / "out"), "--model", "demo_cnn",
            "--random-weights", "--no-progress", *extra]


# --------------------------------------------------------------------------- alias bombs


def test_billion_laughs_suite_exits_2_in_bounded_memory(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: lol\n" + billion_laughs())
    run = ironsight(*audit_args(tmp_path, "--suite", str(suite)), as_limit=AS_LIMIT)
    line = assert_refused(run, f"suite file {suite} is refused: line ",
                          f"aliases expand to more than {MAX_NODES:,} values")
    assert len(line) < 400
    assert run.max_rss < MAX_RSS, f"peak RSS {run.max_rss / GiB:.2f} GiB"


def test_billion_laughs_spec_exits_2_in_bounded_memory(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC_HEAD.format(kind="audit") + billion_laughs())
    run = ironsight("validate", str(spec), as_limit=AS_LIMIT)
    assert_refused(run, f"spec file {spec} is refused: line ", "aliases expand to more than")
    assert run.max_rss < MAX_RSS


@pytest.mark.cluster  # the gate is read after the embedded Ray starts
def test_billion_laughs_gate_exits_2_in_bounded_memory(tmp_path, synthetic_corpus):
    corpus = synthetic_corpus(8, rows_per_file=8)
    gate = tmp_path / "gate.yaml"
    gate.write_text("clean_accuracy_min: 0.5\n" + billion_laughs())
    run = ironsight("audit", corpus, str(tmp_path / "out"), "--model", "demo_cnn",
                    "--random-weights", "--no-progress", "--gate", str(gate), timeout=240)
    assert_refused(run, f"gate file {gate} is refused: line ", "aliases expand to more than")
    assert run.max_rss < MAX_RSS, f"peak RSS {run.max_rss / GiB:.2f} GiB"
    assert not (tmp_path / "out" / "report.json").exists()


def test_billion_laughs_gate_and_card_are_refused_in_process(tmp_path):
    gate = tmp_path / "gate.yaml"
    gate.write_text(billion_laughs())
    card = tmp_path / "card.yaml"
    card.write_text("name: lol\nformat: safetensors\narch: demo_cnn\nweights: w.safetensors\n"
                    + billion_laughs())
    start = time.monotonic()
    with pytest.raises(InvalidInput, match="aliases expand to more than"):
        load_gate(gate)
    with pytest.raises(InvalidInput, match="aliases expand to more than"):
        load_card(str(card))
    assert time.monotonic() - start < 2


# --------------------------------------------------------------------------- deep nesting


def deep(depth: int = 50_000) -> str:
    return "[" * depth + "]" * depth


def test_50000_deep_spec_exits_2_without_traceback(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC_HEAD.format(kind="classify") + f"top_k: {deep()}\n")
    run = ironsight("validate", str(spec))
    assert_refused(run, f"spec file {spec} is refused: line 6, column 107: "
                        "values are nested more than 100 levels deep")


def test_50000_deep_suite_exits_2_without_traceback(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"name: deep\nseverities: {deep()}\n")
    run = ironsight(*audit_args(tmp_path, "--suite", str(suite)), as_limit=AS_LIMIT)
    assert_refused(run, f"suite file {suite} is refused: line 2, column 112: ",
                   "nested more than 100 levels")


def test_50000_deep_gate_and_card_are_refused_in_process(tmp_path):
    gate = tmp_path / "gate.yaml"
    gate.write_text(f"attack_accuracy_min: {deep()}\n")
    with pytest.raises(InvalidInput, match=r"gate file .* is refused: line 1, .*nested more than 100"):
        load_gate(gate)
    card = tmp_path / "card.yaml"
    card.write_text(f"name: x\nclass_names: {deep()}\n")
    with pytest.raises(InvalidInput, match=r"model card .* is refused: line 2, .*nested more than 100"):
        load_card(str(card))


# --------------------------------------------------------------------------- duplicate keys


def test_duplicate_spec_key_exits_2_naming_key_and_line(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC_HEAD.format(kind="classify") + "top_k: 3\nbatch_size: 8\ntop_k: 1000\n")
    run = ironsight("validate", str(spec))
    assert_refused(run, f"spec file {spec} is not valid YAML: line 8, column 1: key 'top_k' "
                        "appears twice (first on line 6)")


def test_duplicate_suite_key_exits_2_naming_key_and_line(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: dup\nseverities: [1]\nconditions: [fog]\nseverities: [5]\n")
    run = ironsight(*audit_args(tmp_path, "--suite", str(suite)), as_limit=AS_LIMIT)
    assert_refused(run, "line 4, column 1: key 'severities' appears twice (first on line 2)")


def test_duplicate_gate_and_card_keys_are_refused_in_process(tmp_path):
    gate = tmp_path / "gate.yaml"
    gate.write_text("clean_accuracy_min: 0.9\nece_max: 0.1\nclean_accuracy_min: 0.0\n")
    with pytest.raises(InvalidInput, match=r"line 3, column 1: key 'clean_accuracy_min' appears "
                                           r"twice \(first on line 1\)"):
        load_gate(gate)
    card = tmp_path / "card.yaml"
    card.write_text("name: x\nformat: safetensors\narch: demo_cnn\nweights: a.safetensors\n"
                    "weights: /etc/b.safetensors\n")
    with pytest.raises(InvalidInput, match=r"line 5, column 1: key 'weights' appears twice"):
        load_card(str(card))


# --------------------------------------------------------------------------- model cards


def classify_with_card(tmp_path: Path, card: str) -> Run:
    return ironsight("classify", str(tmp_path / "in"), str(tmp_path / "out"), "--model-card",
                     card, "--no-progress", timeout=20)


def test_fifo_card_exits_2_promptly(tmp_path):
    fifo = tmp_path / "card.yaml"
    os.mkfifo(fifo)
    run = classify_with_card(tmp_path, str(fifo))  # fails the test if it blocks for 20 s
    assert_refused(run, f"model card {fifo} is a named pipe (FIFO), not a regular file")


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_device_card_exits_2(tmp_path, device):
    run = classify_with_card(tmp_path, device)
    assert_refused(run, f"model card {device} is a device or kernel file, not a regular file")


def test_10_mb_card_exits_2_naming_the_cap(tmp_path):
    card = tmp_path / "card.yaml"
    card.write_text("name: big\ndescription: " + "x" * 10_000_000 + "\n")
    run = classify_with_card(tmp_path, str(card))
    assert_refused(run, f"model card {card} is larger than 1,048,576 bytes, the most Ironsight "
                        "reads for a model card")


def test_fifo_card_in_a_spec_is_refused_by_validate(tmp_path):
    fifo = tmp_path / "card.yaml"
    os.mkfifo(fifo)
    gate = tmp_path / "gate.fifo"
    os.mkfifo(gate)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"kind": "audit", "input": "eval", "output": "out",
                                    "model_card": str(fifo), "gate": str(gate),
                                    "suite": "/dev/zero"}))
    run = ironsight("validate", str(spec), timeout=20)
    assert run.rc == 2, run.stderr
    assert f"{spec}: model_card: model card {fifo} is a named pipe (FIFO)" in run.stderr
    assert f"{spec}: gate: gate file {gate} is a named pipe (FIFO)" in run.stderr
    assert f"{spec}: suite: suite file /dev/zero is a device or kernel file" in run.stderr


def _finishes(fn, timeout: float) -> BaseException | None:
    box: dict = {}

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["exc"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"still reading after {timeout} s")
    return box.get("exc")


def test_the_loaders_ray_calls_refuse_fifos_and_devices(tmp_path):
    """The spec check above runs before Ray; the readers behind it refuse on their own (a
    library caller, or a file that became a FIFO after validation)."""
    fifo = tmp_path / "x.yaml"
    os.mkfifo(fifo)
    try:
        for load in (lambda p: load_card(p), lambda p: load_gate(p), lambda p: get_suite(p),
                     lambda p: load_spec(p)):
            for path in (str(fifo), "/dev/zero", "/dev/urandom"):
                exc = _finishes(lambda: load(path), timeout=10)  # noqa: B023 - run at once
                assert isinstance(exc, InvalidInput), (path, exc)
                assert "not a regular file" in str(exc)
    finally:
        fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # release any reader left blocked
        os.close(fd)


# --------------------------------------------------------------------------- echoed values


def test_validation_errors_do_not_echo_a_large_value(tmp_path):
    """Each document is valid YAML under the limits (99,000 values after aliases) and wrong
    for its schema; the message names the field and stays short."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC_HEAD.format(kind="classify") + big_aliased("top_k"))
    run = ironsight("validate", str(spec))
    assert run.rc == 2 and f"{spec}: top_k:" in run.stderr
    assert len(run.stderr) < 2_000, len(run.stderr)

    suite = tmp_path / "suite.yaml"
    suite.write_text("name: big\n" + big_aliased("severities"))
    with pytest.raises(InvalidInput) as err:
        get_suite(str(suite))
    assert f"suite file {suite}: severities.0: Input should be a valid integer\n" in str(err.value)
    assert "[0.5" not in str(err.value)  # values are never echoed, in any file kind
    assert str(err.value).endswith("\n... and 971 more problems")  # 990 + the unknown key `row`
    assert len(str(err.value)) < 5_000

    gate = tmp_path / "gate.yaml"
    gate.write_text(big_aliased("clean_accuracy_min"))
    with pytest.raises(InvalidInput) as err:
        load_gate(gate)
    assert "clean_accuracy_min: " in str(err.value) and len(str(err.value)) < 2_000

    card = tmp_path / "card.yaml"
    card.write_text("name: x\nformat: safetensors\narch: demo_cnn\nweights: w.safetensors\n"
                    + big_aliased("mean"))
    with pytest.raises(InvalidInput) as err:
        load_card(str(card))
    assert "mean: expected 3 numbers" in str(err.value) and len(str(err.value)) < 2_000
