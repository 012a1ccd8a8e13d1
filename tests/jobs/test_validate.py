"""`ironsight validate` checks what `run` would, and spec paths start at the spec's folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from ironsight.cluster import synthetic
from ironsight.jobs.cli import main
from ironsight.jobs.spec_file import load_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
AUDIT = ("kind: audit\nname: nightly\ninput: eval/\noutput: out/\nmodel: demo_cnn\n"
         "random_weights: true\n")
CARD = "name: shapes\nformat: safetensors\narch: demo_cnn\nweights: w.safetensors\n"


@pytest.fixture
def specs(tmp_path, monkeypatch) -> Path:
    """A spec folder with a gate, a suite and a card; the current directory is elsewhere."""
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "gate.yaml").write_text("clean_accuracy_min: 0.8\n")
    (folder / "suite.yaml").write_text("name: s\nconditions: [low_light]\nseverities: [1]\n")
    (folder / "card.yaml").write_text(CARD)
    (folder / "w.safetensors").write_bytes(b"x")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return folder


def _validate(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["validate", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_relative_paths_resolve_against_the_spec_folder_not_the_cwd(specs):
    spec = specs / "nightly.yaml"
    spec.write_text(AUDIT + "gate: gate.yaml\nsuite: suite.yaml\n")
    job = load_spec("../specs/nightly.yaml")  # cwd is ../elsewhere
    assert (job.gate, job.suite) == (str(specs / "gate.yaml"), str(specs / "suite.yaml"))
    assert (job.input, job.output) == (str(specs / "eval"), str(specs / "out"))
    assert load_spec(str(spec)).suite == str(specs / "suite.yaml")
    (specs / "builtin.yaml").write_text(AUDIT + "suite: quick\n")
    assert load_spec(str(specs / "builtin.yaml")).suite == "quick"  # a name, not a file


def test_a_valid_spec_with_its_files_exits_0_with_one_line(specs, capsys):
    (specs / "nightly.yaml").write_text(
        AUDIT.replace("model: demo_cnn\nrandom_weights: true\n", "model_card: card.yaml\n")
        + "gate: gate.yaml\nsuite: suite.yaml\n")
    rc, out, err = _validate(capsys, "../specs/nightly.yaml")
    assert rc == 0, err
    assert out.count("\n") == 1 and out.startswith("../specs/nightly.yaml: valid audit job 'nightly'")
    assert f"gate {specs / 'gate.yaml'}" in out


@pytest.mark.parametrize("gate", ["gaet.yaml", "missing/gate.yaml"])
def test_a_missing_gate_fails_naming_the_field_and_the_resolved_path(specs, capsys, gate):
    (specs / "nightly.yaml").write_text(AUDIT + f"gate: {gate}\n")
    rc, _, err = _validate(capsys, "../specs/nightly.yaml")
    assert rc == 2
    assert f"../specs/nightly.yaml: gate: gate file {specs / gate} does not exist" in err
    assert f"{gate!r} is relative to the spec's folder" in err
    assert err.rstrip().endswith("../specs/nightly.yaml: invalid spec")
    if gate == "gaet.yaml":
        assert "did you mean gate.yaml?" in err


@pytest.mark.parametrize(("extra", "needle"), [
    ("gate: gate.yaml\n", "gate.yaml: clean_accuracy_min: "),
    ("suite: suite.yaml\n", "suite"),
    ("suite: quik\n", "suite: suite 'quik' unknown; did you mean 'quick'? expected one of"),
    ("model_card: card.yaml\n", "model card"),
])
def test_errors_inside_the_files_the_spec_names_are_reported(specs, capsys, extra, needle):
    (specs / "gate.yaml").write_text("clean_accuracy_min: 1.5\n")
    (specs / "suite.yaml").write_text("name: s\nconditions: [low_lihgt]\n")
    (specs / "card.yaml").write_text(CARD.replace("arch: demo_cnn", "arch: resnet19"))
    body = AUDIT if "model_card" not in extra else AUDIT.replace(
        "model: demo_cnn\nrandom_weights: true\n", "")
    (specs / "s.yaml").write_text(body + extra)
    rc, _, err = _validate(capsys, str(specs / "s.yaml"))
    assert rc == 2
    field = extra.split(":")[0]
    assert f"{specs / 's.yaml'}: {field}: " in err and needle in err


def test_a_card_naming_missing_weights_is_invalid(specs, capsys):
    (specs / "card.yaml").write_text(CARD.replace("w.safetensors", "w.safetensor"))
    (specs / "s.yaml").write_text(AUDIT.replace("model: demo_cnn\nrandom_weights: true\n",
                                                "model_card: card.yaml\n"))
    rc, _, err = _validate(capsys, str(specs / "s.yaml"))
    assert rc == 2
    assert f"model_card: weights file {specs / 'w.safetensor'} does not exist" in err
    assert "did you mean w.safetensors?" in err


def test_an_unknown_key_gets_a_did_you_mean_and_the_valid_keys(specs, capsys):
    (specs / "s.yaml").write_text(AUDIT + "gaet: gate.yaml\n")
    rc, _, err = _validate(capsys, str(specs / "s.yaml"))
    assert rc == 2
    assert "s.yaml: gaet: unknown key; did you mean 'gate'? valid keys: " in err
    keys = err.split("valid keys: ", 1)[1].splitlines()[0].split(", ")
    assert {"kind", "name", "input", "output", "gate", "suite", "severities"} <= set(keys)


def test_a_mistyped_kind_gets_a_did_you_mean(specs, capsys):
    (specs / "s.yaml").write_text(AUDIT.replace("kind: audit", "kind: audti"))
    rc, _, err = _validate(capsys, str(specs / "s.yaml"))
    assert rc == 2 and "did you mean 'audit'?" in err


@pytest.mark.parametrize(("name", "kind", "summary"), [
    ("gate.yaml", "gate", "valid gate (clean_accuracy_min, condition_accuracy_min"),
    ("suite-nightly.yaml", "suite", "valid suite 'nightly' (7 conditions"),
    ("classify-archive.yaml", "spec", "valid classify job 'archive-labels'"),
    ("nightly-audit.yaml", "spec", "valid audit job 'nightly-audit'"),
])
def test_gate_suite_and_spec_files_are_told_apart_by_their_keys(capsys, name, kind, summary):
    for args in ([str(EXAMPLES / name)], [str(EXAMPLES / name), "--kind", kind]):
        rc, out, err = _validate(capsys, *args)
        assert rc == 0, err
        assert out == f"{EXAMPLES / name}: {summary}" + out.split(summary, 1)[1]
        assert out.count("\n") == 1


def test_a_card_file_is_validated_on_its_own(specs, capsys):
    rc, out, err = _validate(capsys, str(specs / "card.yaml"))
    assert rc == 0, err
    assert "valid model card 'shapes' (safetensors" in out
    (specs / "card.yaml").write_text(CARD + "widht: 3\n")
    rc, _, err = _validate(capsys, str(specs / "card.yaml"))
    assert rc == 2 and "widht: unknown key" in err and "invalid card" in err


def test_a_bad_gate_file_on_its_own_exits_2(specs, capsys):
    (specs / "gate.yaml").write_text("clean_accuracy_min: 0.8\necc_max: 0.1\n")
    rc, _, err = _validate(capsys, str(specs / "gate.yaml"))
    assert rc == 2 and "ecc_max" in err and err.rstrip().endswith("invalid gate")
    rc, _, err = _validate(capsys, str(specs / "gate.yaml"), "--kind", "suite")
    assert rc == 2 and "invalid suite" in err


def test_a_file_of_no_known_kind_asks_for_kind(specs, capsys):
    (specs / "x.yaml").write_text("colour: blue\n")
    rc, _, err = _validate(capsys, str(specs / "x.yaml"))
    assert rc == 2 and "pass --kind spec|gate|suite|card" in err


def test_submit_still_refuses_relative_paths_the_cluster_cannot_read(specs, capsys):
    (specs / "s.yaml").write_text(AUDIT.replace("output: out/", "output: /o"))
    rc = main(["submit", str(specs / "s.yaml"), "--address", "http://127.0.0.1:9"])
    assert rc == 2
    assert "input: 'eval/' is a relative path" in capsys.readouterr().err


@pytest.mark.cluster
def test_run_from_another_cwd_reads_and_writes_beside_the_spec(tmp_path):
    """`ironsight run` (embedded Ray) of a spec whose input and output are relative."""
    folder = tmp_path / "job"
    synthetic.write_corpus(str(folder / "corpus"), 60, seed=3, rows_per_file=30)
    (folder / "spec.yaml").write_text(
        "kind: classify\ninput: corpus/\noutput: labels/\nmodel: demo_cnn\nrandom_weights: true\n"
        "actors: 1\nbatch_size: 16\n")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    done = subprocess.run([sys.executable, "-m", "ironsight.jobs.cli", "run", "../job/spec.yaml",
                           "--no-progress"], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "IRONSIGHT_HOME": str(tmp_path / "h")})
    assert done.returncode == 0, done.stderr[-3000:]
    assert pads.dataset(str(folder / "labels"), format="parquet").count_rows() == 60
    assert not (cwd / "labels").exists()
