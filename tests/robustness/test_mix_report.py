"""A suite with a mix: the audit's report.json gets ``mix`` (expected accuracy with its interval)
and report.md a summary row for it; a suite without one gets neither."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ironsight.cluster import synthetic
from ironsight.cluster.models import ModelSource, get_model_info
from ironsight.jobs.audit import audit_report
from ironsight.robustness.mix import expected_accuracy
from ironsight.robustness.report.markdown import to_markdown
from ironsight.robustness.schema import PREDICTIONS_SCHEMA
from ironsight.robustness.suites import get_suite


def _predictions(suite) -> pa.Table:
    """4 labeled images; image i is right clean, and right under condition j at severity s
    when (i + j + s) is odd: a known, uneven table."""
    rows = []
    for i in range(4):
        rows.append((f"img{i}", "clean", "clean", 0, i % 2 == 0 or i == 1))
        for j, cond in enumerate(suite.conditions):
            for s in suite.severities:
                rows.append((f"img{i}", "corruption", cond, s, (i + j + s) % 2 == 1))
    return pa.table({
        "id": [r[0] for r in rows], "kind": [r[1] for r in rows], "condition": [r[2] for r in rows],
        "severity": pa.array([r[3] for r in rows], pa.int32()), "eps": [0.0] * len(rows),
        "label": [1] * len(rows), "prediction": [1 if r[4] else 2 for r in rows],
        "confidence": pa.array([0.8] * len(rows), pa.float32()), "correct": [r[4] for r in rows],
    }, schema=PREDICTIONS_SCHEMA)


def _report(suite):
    table = _predictions(suite)
    cfg = SimpleNamespace(input="eval/", seed=0, suite=suite)
    model = SimpleNamespace(info=get_model_info("demo_cnn"), weights_sha256="random-init")
    return table, audit_report(table, [], cfg, SimpleNamespace(label_column="label"), model, 4)


def test_audit_report_of_a_mix_suite_carries_the_expected_accuracy():
    suite = get_suite("field")
    table, report = _report(suite)
    assert report["mix"] == expected_accuracy(table, suite.mix)
    per = report["mix"]["per_condition"]
    direct = sum(w * per[c] for c, w in suite.mix)  # no clean share in the field mix
    assert report["mix"]["accuracy"] == pytest.approx(direct)
    assert report["mix"]["low"] <= report["mix"]["accuracy"] <= report["mix"]["high"]
    md = to_markdown(report)
    (row,) = [line for line in md.splitlines() if "expected accuracy under the suite's mix" in line]
    assert f"{100 * report['mix']['accuracy']:.1f}%" in row and "low_light 30%" in row
    assert "clean 0%" not in row


def test_audit_report_without_a_mix_has_no_mix():
    _, report = _report(get_suite("quick"))
    assert "mix" not in report
    assert "expected accuracy under the suite's mix" not in to_markdown(report)


SUITE_YAML = """\
name: tiny-mix
conditions: [low_light, motion_blur]
severities: [1, 5]
mix: {low_light: 0.3, motion_blur: 0.2}
"""


@pytest.mark.cluster
def test_audit_with_a_mix_suite_file_end_to_end(tmp_path):
    """A real audit (embedded Ray): report.json's mix is the expected accuracy of its own
    predictions.parquet, and report.md shows it."""
    import ray

    from ironsight.cluster.raycluster import connect
    from ironsight.jobs.audit import AuditConfig, resolve_suite, run_audit

    eval_dir, out = tmp_path / "eval", tmp_path / "out"
    synthetic.write_corpus(str(eval_dir), 12, seed=2, rows_per_file=12, row_group_size=12)
    suite_path = tmp_path / "tiny-mix.yaml"
    suite_path.write_text(SUITE_YAML)
    suite = resolve_suite(str(suite_path), None)
    assert suite.mix == (("low_light", 0.3), ("motion_blur", 0.2))
    cfg = AuditConfig(input=str(eval_dir), output=str(out),
                      source=ModelSource(name="demo_cnn", random_weights=True), suite=suite,
                      seed=3, progress=False)
    if ray.is_initialized():
        ray.shutdown()
    with connect(None, num_cpus=2):
        run_audit(cfg)
    report = json.loads((out / "report.json").read_text())
    table = pq.read_table(out / "predictions.parquet")
    expected = expected_accuracy(table, suite.mix)
    assert report["mix"]["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
    assert report["mix"]["mix"] == pytest.approx({"clean": 0.5, "low_light": 0.3, "motion_blur": 0.2})
    assert report["mix"]["n"] == {"clean": 12, "low_light": 12, "motion_blur": 12}
    assert "expected accuracy under the suite's mix" in (out / "report.md").read_text()
