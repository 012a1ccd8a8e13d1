"""The distributed audit: decode once, conditions on CPU tasks, predict + attack on actors."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from ironsight.cluster import synthetic
from ironsight.cluster.errors import GateFailed
from ironsight.cluster.models import ModelSource
from ironsight.jobs.audit import AuditConfig, resolve_suite, run_audit

N_IMAGES = 24
SUITE_YAML = """\
name: tiny
conditions: [gaussian_noise, occlusion]
severities: [1, 5]
attacks:
  - {name: fgsm, eps: [0, 0.0313725], steps: 1}
"""


@pytest.fixture(scope="module")
def ray_local(s3_server):
    """Started after the S3 endpoint so its workers inherit AWS_ENDPOINT_URL."""
    import ray

    from ironsight.cluster.raycluster import connect

    if ray.is_initialized():
        ray.shutdown()
    with connect(None, num_cpus=2):
        yield


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("eval")
    synthetic.write_corpus(str(path), 40, seed=2, rows_per_file=20, row_group_size=10)
    return str(path)


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("suite") / "tiny.yaml"
    path.write_text(SUITE_YAML)
    return str(path)


@pytest.fixture(scope="module")
def audit(ray_local, eval_set, suite_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("audit")
    cfg = AuditConfig(
        input=eval_set, output=str(out), source=ModelSource(name="demo_cnn", random_weights=True),
        suite=resolve_suite(suite_file, None), max_images=N_IMAGES, seed=3, progress=False,
    )
    return run_audit(cfg), out


def test_audit_writes_every_report_and_the_predictions(audit):
    _, out = audit
    for name in ("report.json", "report.md", "report.html", "predictions.parquet"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["schema_version"] == "1.2"
    assert {c["condition"] for c in report["examples"]["cells"]} == {"clean", "gaussian_noise", "occlusion"}
    assert 0 <= report["clean"]["accuracy"] <= 1
    cells = {(c["name"], c["severity"]) for c in report["conditions"]}
    assert cells == {("gaussian_noise", 1), ("gaussian_noise", 5), ("occlusion", 1), ("occlusion", 5)}
    assert {(a["name"], round(a["eps"], 4)) for a in report["attacks"]} == {("fgsm", 0.0), ("fgsm", 0.0314)}
    assert report["gate"] is None


def test_every_image_is_predicted_once_per_variant(audit):
    _, out = audit
    table = pq.read_table(out / "predictions.parquet").to_pylist()
    per_variant: dict[tuple, list[str]] = {}
    for row in table:
        per_variant.setdefault((row["kind"], row["condition"], row["severity"], row["eps"]), []).append(row["id"])
    # clean + 2 conditions x 2 severities + 2 attack epsilons, each over the same N images
    assert len(per_variant) == 1 + 4 + 2
    for key, ids in per_variant.items():
        assert len(ids) == N_IMAGES and len(set(ids)) == N_IMAGES, key


def test_attack_at_eps_zero_matches_the_clean_predictions(audit):
    _, out = audit
    rows = pq.read_table(out / "predictions.parquet").to_pylist()
    clean = {r["id"]: r["prediction"] for r in rows if r["kind"] == "clean"}
    eps0 = {r["id"]: r["prediction"] for r in rows if r["kind"] == "attack" and r["eps"] == 0}
    assert eps0 == clean


def test_conditions_are_deterministic_given_the_seed(ray_local, eval_set, suite_file, audit, tmp_path):
    first, _ = audit
    cfg = AuditConfig(
        input=eval_set, output=str(tmp_path), source=ModelSource(name="demo_cnn", random_weights=True),
        suite=resolve_suite(suite_file, None), max_images=N_IMAGES, seed=3, progress=False,
    )
    again = run_audit(cfg)
    assert again.report["conditions"] == first.report["conditions"]


def test_a_failed_gate_raises_after_writing_the_reports(ray_local, eval_set, suite_file, tmp_path):
    gate = tmp_path / "gate.yaml"
    gate.write_text("clean_accuracy_min: 0.99\n")  # a random-weight model cannot pass this
    out = tmp_path / "out"
    cfg = AuditConfig(
        input=eval_set, output=str(out), source=ModelSource(name="demo_cnn", random_weights=True),
        suite=resolve_suite(suite_file, None), max_images=8, gate=str(gate), progress=False,
    )
    with pytest.raises(GateFailed, match="clean"):
        run_audit(cfg)
    report = json.loads((out / "report.json").read_text())
    assert report["gate"]["passed"] is False
    assert report["gate"]["failed"]


def test_reports_and_predictions_go_to_s3(ray_local, eval_set, suite_file, s3_bucket):
    from ironsight.cluster import storage

    cfg = AuditConfig(
        input=eval_set, output=f"{s3_bucket}/audit", source=ModelSource(name="demo_cnn", random_weights=True),
        suite=resolve_suite(suite_file, None), max_images=8, progress=False,
    )
    result = run_audit(cfg)
    out = storage.resolve(f"{s3_bucket}/audit")
    names = {i.base_name for i in storage.list_files(out)}
    assert names == {"report.json", "report.md", "report.html", "predictions.parquet"}
    assert result.paths["predictions"] == f"{s3_bucket}/audit/predictions.parquet"
    assert json.loads(storage.read_bytes(out.join("report.json")))["clean"]["n"] == 8


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ironsight.jobs.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_exit_3_when_the_gate_fails(eval_set, suite_file, tmp_path):
    gate = tmp_path / "gate.yaml"
    gate.write_text("clean_accuracy_min: 0.99\n")
    result = run_cli("audit", eval_set, str(tmp_path / "o"), "--model", "demo_cnn", "--random-weights",
                     "--suite", suite_file, "--max-images", "8", "--gate", str(gate), "--no-progress")
    assert result.returncode == 3, result.stderr[-2000:]
    assert "gate failed" in result.stderr
    assert (tmp_path / "o" / "report.html").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--suite", "nope"], "--suite"),
        (["--severities", "0,9"], "--severities"),
        (["--severities", "a,b"], "--severities"),
        (["--max-images", "0"], "--max-images"),
    ],
)
def test_cli_bad_audit_options_exit_2(eval_set, tmp_path, extra, message):
    result = run_cli("audit", eval_set, str(tmp_path / "o"), "--model", "demo_cnn", "--random-weights", *extra)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr


def test_conditions_list_names_every_condition_and_attack():
    result = run_cli("conditions", "list")
    assert result.returncode == 0
    from ironsight.robustness.attacks import list_attacks
    from ironsight.robustness.conditions import list_conditions

    for name in [*list_conditions(), *list_attacks(), "quick", "standard"]:
        assert name in result.stdout


def test_one_shards_clean_blocks_reach_the_actors_as_separate_ray_blocks(ray_local, tmp_path):
    """Ray Data merges what one decode task yields into one block (up to 128 MB) and an actor
    takes a block whole: without the repartition a one-shard eval set went to ONE actor."""
    from ironsight.cluster import corpus as corpus_mod
    from ironsight.jobs.variants import block_rows_for, clean_dataset

    synthetic.write_corpus(str(tmp_path / "eval"), 64, seed=1, rows_per_file=64, row_group_size=64, size=32)
    plan = corpus_mod.plan_corpus(str(tmp_path / "eval"), label_column="label", max_rows_per_shard=256)
    assert len(plan.shards) == 1
    block = block_rows_for(64, 64, "cpu")  # 2 CPUs: two blocks a core
    assert block == 16
    pre = ModelSource(name="demo_cnn", random_weights=True).validate().info.preprocess
    done = clean_dataset(plan, list(plan.shards), {}, pre, block).materialize()
    assert done.num_blocks() == 4 and done.count() == 64
