"""What an audit (and a classify run) leaves in OUTPUT can be trusted by a release reviewer.

* an audit into an OUTPUT holding another model's, eval set's or suite's report is refused
  (exit 2) unless ``--overwrite``; the same audit rerun replaces its own reports; only the
  files an audit writes are ever replaced;
* the resolved preprocessing is printed at job start and recorded: ``report.json``'s
  ``preprocessing``, the classify output's Parquet metadata ``ironsight.preprocessing``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

from ironsight.cluster import synthetic
from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.models import ModelSource, get_model_info
from ironsight.cluster.pipeline import run_classify
from ironsight.jobs.audit import AUDIT_FILES, AuditConfig, resolve_suite, run_audit
from ironsight.jobs.cli import main

from .conftest import config, part_files

pytestmark = pytest.mark.cluster

SUITE = "name: {name}\nconditions: [occlusion]\nseverities: [1]\n"
DEMO = ModelSource(name="demo_cnn", random_weights=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Two eval sets, two suites and a second model (a card: another name, other weights)."""
    root = tmp_path_factory.mktemp("audit-output")
    out = {}
    for key, seed in (("eval", 1), ("eval2", 2)):
        synthetic.write_corpus(str(root / key), 12, seed=seed, rows_per_file=12, row_group_size=12)
        out[key] = str(root / key)
    for key in ("suite", "suite2"):
        (root / f"{key}.yaml").write_text(SUITE.format(name=key))
        out[key] = str(root / f"{key}.yaml")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        net = get_model_info("demo_cnn").builder(8)
    save_file(net.state_dict(), str(root / "other.safetensors"))
    (root / "other.yaml").write_text(
        "name: other\nformat: safetensors\narch: demo_cnn\nweights: other.safetensors\n"
    )
    out["card"] = str(root / "other.yaml")
    return out


def _cfg(files: dict, output: Path, **kw) -> AuditConfig:
    kw.setdefault("source", DEMO)
    suite = kw.pop("suite", files["suite"])
    return AuditConfig(input=kw.pop("input", files["eval"]), output=str(output),
                       suite=resolve_suite(suite, None), progress=False, **kw)


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def first_audit(ray_cpu, files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("first") / "out"
    run_audit(_cfg(files, out))
    return out


@pytest.fixture
def audited(first_audit, tmp_path) -> Path:
    """A copy of OUTPUT after one demo_cnn audit, plus a user's note and a sub-folder."""
    out = tmp_path / "out"
    shutil.copytree(first_audit, out)
    (out / "notes.txt").write_text("the reviewer's notes")
    (out / "old").mkdir()
    (out / "old" / "report.json").write_text('{"model": {"name": "kept"}}')
    return out


def test_the_same_audit_rerun_replaces_its_own_reports(audited, files, capfd):
    before = json.loads((audited / "report.json").read_text())
    result = run_audit(_cfg(files, audited))
    after = json.loads((audited / "report.json").read_text())
    assert after["model"] == before["model"] and after["created_at"] >= before["created_at"]
    assert result.report["clean"]["n"] == 12
    # the preprocessing: one line at job start, and the same record in report.json
    pre = get_model_info("demo_cnn").preprocess
    start = [line for line in capfd.readouterr().err.splitlines() if "model demo_cnn:" in line]
    assert start == [f"[ironsight] model demo_cnn: {pre.summary()}"]
    assert after["preprocessing"] == result.report["preprocessing"] == pre.to_dict()
    assert (audited / "notes.txt").read_text() == "the reviewer's notes"
    assert (audited / "old" / "report.json").read_text() == '{"model": {"name": "kept"}}'


def test_retrained_weights_of_the_same_model_are_the_same_audit(audited, files, tmp_path):
    """A nightly audits new weights of one model into its fixed OUTPUT: not refused (history,
    not OUTPUT, keeps the earlier run to compare with)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        net = get_model_info("demo_cnn").builder(8)
    save_file(net.state_dict(), str(tmp_path / "retrained.safetensors"))
    card = tmp_path / "demo.yaml"
    card.write_text("name: demo_cnn\nformat: safetensors\narch: demo_cnn\nweights: retrained.safetensors\n")
    before = json.loads((audited / "report.json").read_text())["model"]["weights_sha256"]
    result = run_audit(_cfg(files, audited, source=ModelSource(card=str(card))))
    after = json.loads((audited / "report.json").read_text())["model"]["weights_sha256"]
    assert after == result.report["model"]["weights_sha256"] != before


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"source": "card"}, "model 'demo_cnn' (this audit: 'other')"),
        ({"input": "eval2"}, "input"),
        ({"suite": "suite2"}, "suite 'suite' (this audit: 'suite2')"),
    ],
    ids=["model", "eval-set", "suite"],
)
def test_another_audits_output_is_refused_and_left_untouched(audited, files, change, named):
    key, value = next(iter(change.items()))
    kw = {key: ModelSource(card=files[value]) if key == "source" else files[value]}
    before = _snapshot(audited)
    with pytest.raises(InvalidInput, match="already holds the audit of another model") as exc:
        run_audit(_cfg(files, audited, **kw))
    assert named in str(exc.value) and "--overwrite" in str(exc.value)
    assert _snapshot(audited) == before


def test_overwrite_replaces_only_the_audit_files(audited, files):
    before = _snapshot(audited)
    run_audit(_cfg(files, audited, source=ModelSource(card=files["card"]), overwrite=True))
    after = _snapshot(audited)
    assert json.loads(after["report.json"])["model"]["name"] == "other"
    assert set(after) == set(before)  # nothing added or removed but the audit's own files
    assert {k for k in after if after[k] != before[k]} <= set(AUDIT_FILES)
    assert after["notes.txt"] == before["notes.txt"] and after["old/report.json"] == before["old/report.json"]


@pytest.mark.parametrize("text", ["not json at all", '["a list"]', '{"clean": {}}'])
def test_a_report_json_ironsight_did_not_write_is_refused(ray_cpu, files, tmp_path, text):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text(text)
    with pytest.raises(InvalidInput, match="not an Ironsight audit report.*--overwrite"):
        run_audit(_cfg(files, out))
    assert (out / "report.json").read_text() == text
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]


def test_cli_exit_2_without_overwrite_and_0_with_it(audited, files, capsys):
    args = ["audit", files["eval"], str(audited), "--model-card", files["card"], "--suite", files["suite"],
            "--no-progress"]
    before = _snapshot(audited)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already holds the audit of another model" in err and "--overwrite" in err
    assert _snapshot(audited) == before
    assert main([*args, "--overwrite"]) == 0
    assert json.loads((audited / "report.json").read_text())["model"]["name"] == "other"


def test_classify_parquet_metadata_records_the_preprocessing(ray_cpu, files, tmp_path, capfd):
    out = tmp_path / "labels"
    run_classify(config(files["eval"], out, source=DEMO))
    parts = part_files(out)
    assert parts
    expected = get_model_info("demo_cnn").preprocess.to_dict()
    for part in parts:
        meta = pq.read_schema(part).metadata
        assert json.loads(meta[b"ironsight.preprocessing"]) == expected
    assert json.loads((out / "_manifest.json").read_text())["preprocessing"] == expected
    assert "[ironsight] model demo_cnn: shorter side resized to 64" in capfd.readouterr().err
