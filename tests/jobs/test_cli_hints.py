"""Errors that lead somewhere: every option a message names works for the command that printed
it, typos get a did-you-mean, and the small things a new user tries (``--version``, ``| head``,
``validate --help``) behave.

Most cases call :func:`ironsight.jobs.cli.main` in this process: the same parser, dispatch and
error printing as the ``ironsight`` script, without a 20 s interpreter start per case. Ray is
never needed: every case is refused before a job would start (``_run_audit`` joins Ray before it
plans, so there ``connect`` is replaced by a no-op). ``--version``, a closed pipe and one typo run
the installed script in a subprocess.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ironsight.cluster import errors, synthetic
from ironsight.jobs import cli, cli_parser

IRONSIGHT = [sys.executable, "-m", "ironsight.jobs.cli"]
FLAG = re.compile(r"(?<![\w/.\-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*")


# ---- fixtures: a corpus, a corpus with a bad file, specs --------------------------------------

@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hints")
    synthetic.write_corpus(str(root / "corpus"), 8, seed=3, rows_per_file=4, row_group_size=4)
    bad = root / "bad"
    synthetic.write_corpus(str(bad), 8, seed=3, rows_per_file=4, row_group_size=4)
    (bad / "zz-not-parquet.parquet").write_text("id,image\n1,abc\n")
    (root / "reported").mkdir()
    (root / "reported" / "report.json").write_text(json.dumps({"what": "not an audit"}))
    (root / "manifested").mkdir()
    (root / "manifested" / "_manifest.json").write_text("{not json")
    (root / "notes.yaml").write_text("color: blue\nsize: 3\n")
    (root / "gate.yaml").write_text("clean_accuracy_minn: 0.5\n")
    (root / "suite.yaml").write_text("name: s\nconditions: [gausian_blur]\n")
    specs = {
        "classify-bad-files.yaml": {"kind": "classify", "input": "bad", "output": "o1",
                                    "model": "demo_cnn", "random_weights": True},
        "audit-bad-files.yaml": {"kind": "audit", "input": "bad", "output": "o2",
                                 "model": "demo_cnn", "random_weights": True},
        "no-weights.yaml": {"kind": "classify", "input": "corpus", "output": "o3", "model": "resnet18"},
        "column.yaml": {"kind": "classify", "input": "corpus", "output": "o4", "model": "demo_cnn",
                        "random_weights": True, "image_column": "imgae"},
        "overwrite.yaml": {"kind": "audit", "input": "corpus", "output": "reported",
                           "model": "demo_cnn", "random_weights": True},
        "typo-key.yaml": {"kind": "classify", "input": "corpus", "output": "o5", "model": "demo_cnn",
                          "random_weights": True, "top_kk": 3},
        "both.yaml": {"kind": "classify", "input": "corpus", "output": "o6", "model": "demo_cnn",
                      "random_weights": True, "weights": "w.safetensors"},
    }
    for name, spec in specs.items():
        (root / name).write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in spec.items()))
    return root


@pytest.fixture()
def in_process(monkeypatch, tmp_path, capsys):
    """``run(*argv) -> (exit code, stderr)``: :func:`cli.main` here, Ray replaced by a no-op."""
    from ironsight.cluster import raycluster

    @contextlib.contextmanager
    def no_ray(*_args, **_kwargs):
        yield None

    monkeypatch.setattr(raycluster, "connect", no_ray)
    monkeypatch.setenv("IRONSIGHT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("IRONSIGHT_HISTORY_URL", raising=False)
    monkeypatch.delenv("IRONSIGHT_ALLOWED_ROOTS", raising=False)

    def run(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 2
        return code, capsys.readouterr().err

    return run


MODEL = ("--model", "demo_cnn", "--random-weights")

# Per command, bad inputs that are refused before any job starts ({w}: the work folder).
BAD_INPUTS: dict[str, list[tuple[str, ...]]] = {
    "classify": [
        ("{w}/bad", "{w}/o", *MODEL),
        ("{w}/corpus", "{w}/o", *MODEL, "--image-column", "imgae"),
        ("{w}/corpus", "{w}/o", *MODEL, "--id-column", "idd"),
        ("{w}/corpus", "{w}/o", "--model", "resnet18"),
        ("{w}/corpus", "{w}/o", "--model", "resnet19", "--random-weights"),
        ("{w}/corpus", "{w}/o", "--weights", "w.safetensors"),
        ("{w}/corpus", "{w}/o", *MODEL, "--weights-version", "V9"),
        ("{w}/corpus", "{w}/manifested", *MODEL),
        ("{w}/corpus", "{w}/o", *MODEL, "--top", "3"),
        ("{w}/corpus", "{w}/o", *MODEL, "--label-column", "label"),
    ],
    "audit": [
        ("{w}/bad", "{w}/o", *MODEL),
        ("{w}/corpus", "{w}/o", *MODEL, "--label-column", "lable"),
        ("{w}/corpus", "{w}/o", *MODEL, "--suite", "quik"),
        ("{w}/corpus", "{w}/o", *MODEL, "--suite", "{w}/suite.yaml"),
        ("{w}/corpus", "{w}/o", *MODEL, "--gate", "{w}/gate.yaml"),
        ("{w}/corpus", "{w}/o", *MODEL, "--max-image", "3"),
        ("{w}/corpus", "{w}/reported", *MODEL),
        ("{w}/corpus", "{w}/o", "--model", "resnet18"),
    ],
    "run": [
        ("{w}/classify-bad-files.yaml",),
        ("{w}/audit-bad-files.yaml",),
        ("{w}/no-weights.yaml",),
        ("{w}/column.yaml",),
        ("{w}/overwrite.yaml",),
        ("{w}/typo-key.yaml",),
        ("{w}/both.yaml",),
        ("{w}/notes.yaml", "--no-progres"),
    ],
    "validate": [
        ("{w}/notes.yaml",),
        ("{w}/no-weights.yaml",),
        ("{w}/typo-key.yaml",),
        ("{w}/gate.yaml",),
        ("{w}/suite.yaml",),
        ("{w}/notes.yaml", "--kind", "gaet"),
    ],
    "models show": [("resnet19",), ("resnet50", "--weights-version", "V9"), ("resnet50", "--weight-version", "x")],
    "models list": [("nothing-like-this*",)],
    "deploy render": [("{w}/no-weights.yaml", "--out", "{w}/k8s"), ("{w}/typo-key.yaml", "--out", "{w}/k8s")],
    "submit": [("{w}/no-weights.yaml",)],
}


def _subparser(parser: argparse.ArgumentParser, words: list[str]) -> argparse.ArgumentParser:
    for word in words:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[word]
    return parser


def _accepts(words: list[str], flag: str) -> bool:
    """The parser of ``ironsight WORDS`` (or the top one, before the command) takes ``flag``."""
    root = cli.build_parser()
    return flag in _subparser(root, words)._option_string_actions or flag in root._option_string_actions


def _flags_with_their_command(stderr: str, command: list[str]) -> list[tuple[list[str], str]]:
    """Every ``--flag`` a message names, with the command it is for: the one named with it
    (```ironsight history nightly --html```) or else the command that printed it."""
    mentions = []
    for line in stderr.splitlines():
        if line.startswith(("usage:", " ")) and "[-h]" in line or re.match(r"\s+\[", line):
            continue  # argparse's usage lists the parser's own options
        for m in FLAG.finditer(line):
            before = re.split(r"[`;(]", line[:m.start()])[-1]
            named = re.search(r"ironsight((?: [a-z][a-z-]*)+)", before)
            words = named.group(1).split() if named else command
            words = [w for w in words if w in _command_words()][:2] or command
            mentions.append((words, m.group(0)))
    return mentions


def _command_words() -> set[str]:
    words = set()
    for path, _ in cli_parser._walk(cli.build_parser()):
        words.update(path)
    return words


@pytest.mark.parametrize("command", sorted(BAD_INPUTS))
def test_every_option_an_error_names_is_accepted_by_its_command(command, work, in_process):
    words = command.split()
    checked = 0
    for case in BAD_INPUTS[command]:
        argv = [*words, *(a.format(w=work) for a in case)]
        code, stderr = in_process(*argv)
        assert code in (1, 2) and "error:" in stderr, (argv, code, stderr)
        for target, flag in _flags_with_their_command(stderr, words):
            if flag in argv:
                continue  # the user's own typo, quoted back ("unrecognized arguments: --top 3")
            assert _accepts(target, flag), (
                f"`ironsight {' '.join(argv)}` names {flag}, which `ironsight {' '.join(target)}` "
                f"does not accept:\n{stderr}")
            checked += 1
    if command in NAME_OPTIONS:
        assert checked >= 1  # these cases do name options: the check is not vacuous


NAME_OPTIONS = {"classify", "audit", "run", "validate", "models show"}


def test_hints_take_the_form_of_the_command(work, in_process):
    """The same refusal, as each command can act on it."""
    code, classify = in_process("classify", f"{work}/bad", f"{work}/o", *MODEL)
    assert code == 2 and "or pass --skip-bad-files to leave them out" in classify
    code, audit = in_process("audit", f"{work}/bad", f"{work}/o", *MODEL)
    assert code == 2 and "zz-not-parquet.parquet" in audit and "skip" not in audit.replace("zz-", "")
    code, run_classify = in_process("run", f"{work}/classify-bad-files.yaml")
    assert code == 2 and "or pass `skip_bad_files: true` to leave them out" in run_classify
    code, run_audit = in_process("run", f"{work}/audit-bad-files.yaml")
    assert code == 2 and "zz-not-parquet.parquet" in run_audit and "skip_bad" not in run_audit
    code, spec = in_process("run", f"{work}/no-weights.yaml")
    assert code == 2 and "pass `weights: PATH_OR_URI` or `model_card: CARD.yaml`" in spec
    code, flags = in_process("classify", f"{work}/corpus", f"{work}/o", "--model", "resnet18")
    assert code == 2 and "pass --weights PATH_OR_URI or --model-card CARD.yaml" in flags
    code, show = in_process("models", "show", "resnet19")
    assert code == 2 and "`ironsight classify --model-card`" in show


@pytest.mark.parametrize(("argv", "said"), [
    (["audit", "{w}/corpus", "{w}/o", *MODEL, "--label-column", "lable"],
     "--label-column: column 'lable' not in {w}/corpus/part-00000.parquet; did you mean 'label'? "
     "columns: id, image, label, label_name"),
    (["classify", "{w}/corpus", "{w}/o", *MODEL, "--image-column", "imgae"],
     "--image-column: column 'imgae' not in {w}/corpus/part-00000.parquet; did you mean 'image'?"),
    (["classify", "{w}/corpus", "{w}/o", *MODEL, "--id-column", "idd"],
     "--id-column: column 'idd' not in {w}/corpus/part-00000.parquet; did you mean 'id'?"),
    (["run", "{w}/column.yaml"], "`image_column`: column 'imgae' not in"),
    (["audit", "{w}/corpus", "{w}/o", *MODEL, "--max-image", "3"],
     "unrecognized arguments: --max-image 3; did you mean --max-images?"),
    (["classify", "{w}/corpus", "{w}/o", *MODEL, "--top", "3"], "did you mean --top-k?"),
    (["validate", "{w}/notes.yaml", "--kidn", "gate"], "did you mean --kind?"),
    (["validate", "{w}/notes.yaml", "--kind", "gaet"], "did you mean 'gate'?"),
    (["clasify"], "did you mean 'classify'?"),
    (["classify", "{w}/corpus", "{w}/o", "--model", "resnet19", "--random-weights"],
     "model 'resnet19' is not registered; did you mean 'resnet18'"),
    (["audit", "{w}/corpus", "{w}/o", *MODEL, "--suite", "quik"],
     "suite 'quik' unknown; did you mean 'quick'?"),
    (["audit", "{w}/corpus", "{w}/o", *MODEL, "--suite", "{w}/suite.yaml"],
     "'gausian_blur' unknown; did you mean 'gaussian_blur'?"),
    (["run", "{w}/typo-key.yaml"], "top_kk: unknown key; did you mean 'top_k'?"),
])
def test_typos_get_a_did_you_mean(argv, said, work, in_process):
    code, stderr = in_process(*(a.format(w=work) for a in argv))
    assert code == 2, stderr
    assert said.format(w=work) in stderr


def test_an_unknown_option_is_never_taken_as_a_prefix_of_another(in_process):
    parser = cli.build_parser()
    for path, sub in cli_parser._walk(parser):
        assert sub.allow_abbrev is False, path
    code, stderr = in_process("models", "show", "resnet50", "--weights-v", "IMAGENET1K_V1")
    assert code == 2 and "usage: ironsight models show" in stderr and "--weights-version?" in stderr


def test_validate_help_lists_the_keys_of_each_kind(in_process, capsys):
    from ironsight.cluster.models.card import ModelCard
    from ironsight.jobs.spec import AuditJob, ClassifyJob, CompareJob
    from ironsight.robustness.gate import Gate
    from ironsight.robustness.suites import _SuiteModel

    with pytest.raises(SystemExit) as exit_:
        cli.main(["validate", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    sections = re.split(r"\n  (?=spec \(kind: \w+\):|gate:|suite:|card:)", text.split("keys of each kind", 1)[1])
    found = {s.split(":\n", 1)[0].strip(): set(re.split(r"[,\s]+", s.split(":\n", 1)[1].strip()))
             for s in sections[1:]}
    assert found == {
        "spec (kind: classify)": set(ClassifyJob.model_fields),
        "spec (kind: audit)": set(AuditJob.model_fields),
        "spec (kind: compare)": set(CompareJob.model_fields),
        "gate": set(Gate.model_fields),
        "suite": set(_SuiteModel.model_fields),
        "card": set(ModelCard.model_fields),
    }


def test_version_and_a_typo_through_the_installed_script():
    result = subprocess.run([*IRONSIGHT, "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    from importlib import metadata

    assert re.fullmatch(
        rf"ironsight {re.escape(metadata.version('ironsight'))} \(python \d+\.\d+\.\d+, "
        rf"torch {re.escape(metadata.version('torch'))}, ray {re.escape(metadata.version('ray'))}\)\n",
        result.stdout)
    typo = subprocess.run([*IRONSIGHT, "conditions", "lst"], capture_output=True, text=True, timeout=120)
    assert typo.returncode == 2 and "did you mean 'list'?" in typo.stderr and "Traceback" not in typo.stderr


@pytest.mark.parametrize(("argv", "codes"), [
    (["models", "list"], {141}),
    (["--help"], {0, 141}),  # argparse itself drops an OSError of a write it could not buffer
])
def test_a_closed_stdout_ends_quietly(argv, codes):
    """``ironsight models list | head -2`` when ``head`` has gone: here the reader is closed
    before the first write, so the pipe is broken every time, not only when ``head`` wins a race."""
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run([*IRONSIGHT, *argv], stdout=write, stderr=subprocess.PIPE,
                                text=True, timeout=120)
    finally:
        os.close(write)
    assert result.returncode in codes and errors.EXIT_BROKEN_PIPE == 141, result.stderr
    assert result.stderr == ""  # no traceback, no "Exception ignored ... BrokenPipeError"


def test_schema_mismatch_in_a_later_file_still_lists_it_as_a_bad_file(tmp_path, in_process):
    """Only the first readable file decides the columns; later files lacking them are bad files."""
    synthetic.write_corpus(str(tmp_path / "c"), 4, seed=1, rows_per_file=4, row_group_size=4)
    pq.write_table(pa.table({"image": [b"x"], "other": [1]}), tmp_path / "c" / "zz.parquet")
    code, stderr = in_process("classify", str(tmp_path / "c"), str(tmp_path / "o"), *MODEL,
                              "--id-column", "id")
    assert code == 2 and "zz.parquet: schema differs" in stderr and "--skip-bad-files" in stderr


def test_the_examples_in_the_docstrings_hold():
    import doctest

    from ironsight.robustness import conditions

    for module in (cli_parser, conditions):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.attempted >= 1 and result.failed == 0, module.__name__
