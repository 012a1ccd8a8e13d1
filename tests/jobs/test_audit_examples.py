"""The audit's example images: misclassified per condition, recomputed in the driver, with
activation maps (jobs.audit._examples; no Ray: the predictions table is built by hand)."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ironsight.cluster import corpus as corpus_mod
from ironsight.cluster import synthetic
from ironsight.cluster.models import ModelSource
from ironsight.jobs.audit import EXAMPLES_PER_CONDITION, AuditConfig, _examples, resolve_suite
from ironsight.robustness.conditions import apply_condition
from ironsight.robustness.report.build import dumps
from ironsight.robustness.report.markdown import to_markdown
from ironsight.robustness.report.tables import example_lines
from ironsight.robustness.schema import PREDICTIONS_SCHEMA, REPORT_JSON_SCHEMA

SUITE = """\
name: two
conditions: [gaussian_noise, occlusion]
severities: [1, 3]
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ex")
    synthetic.write_corpus(str(root / "eval"), 12, seed=4, rows_per_file=6, row_group_size=3)
    (root / "two.yaml").write_text(SUITE)
    plan = corpus_mod.plan_corpus(str(root / "eval"), label_column="label", max_rows_per_shard=256)
    model = ModelSource("demo_cnn", random_weights=True).load("cpu")
    files = pq.read_table(str(root / "eval"), columns=["id", "label"])
    return root, plan, model, files.column("id").to_pylist(), files.column("label").to_pylist()


def _table(ids, labels, wrong: dict[tuple[str, int], set[str]]) -> pa.Table:
    """Predictions for clean and every (condition, severity): right unless the id is in ``wrong``."""
    rows = []
    for cond, sev in [("clean", 0), ("gaussian_noise", 1), ("gaussian_noise", 3), ("occlusion", 1), ("occlusion", 3)]:
        for i, label in zip(ids, labels, strict=True):
            bad = i in wrong.get((cond, sev), set())
            pred = (label + 1) % 8 if bad else label
            rows.append({"id": i, "kind": "clean" if cond == "clean" else "corruption", "condition": cond,
                         "severity": sev, "eps": 0.0, "label": label, "prediction": pred,
                         "confidence": 0.5, "correct": not bad})
    rows.reverse()  # the pipeline's order is arbitrary: the picks must not depend on it
    return pa.Table.from_pylist(rows, schema=PREDICTIONS_SCHEMA)


def _cfg(root, **kw) -> AuditConfig:
    return AuditConfig(input=str(root / "eval"), output=str(root / "out"), suite=resolve_suite(str(root / "two.yaml"), None),
                       source=ModelSource("demo_cnn", random_weights=True), seed=5, **kw)


def test_misclassified_examples_per_condition_with_maps(setup):
    root, plan, model, ids, labels = setup
    wrong = {("gaussian_noise", 3): set(ids[:5]), ("gaussian_noise", 1): {ids[7]}, ("occlusion", 3): {ids[9]}}
    report: dict = {"class_names": model.info.class_names}
    out = _examples(plan, plan.shards, model.info.preprocess, _cfg(root), _table(ids, labels, wrong),
                    model=model, report=report)
    got = [(ex.condition, ex.severity, ex.id) for ex in out]
    # worst severity only; up to EXAMPLES_PER_CONDITION per condition, the smallest ids first
    assert got == [("gaussian_noise", 3, i) for i in sorted(ids[:5])[:EXAMPLES_PER_CONDITION]] + [("occlusion", 3, ids[9])]
    for ex in out:
        assert ex.prediction != ex.label
        assert ex.cam is not None and ex.cam.shape == ex.image.shape[:2]
        assert 0.0 <= ex.cam.min() and ex.cam.max() <= 1.0
        assert ex.method.startswith("Grad-CAM")
    # the pixels are the variant the model saw: decoded again and the condition recomputed
    from ironsight.cluster.decode import decode_rows

    files = pq.read_table(str(root / "eval"), columns=["id", "image"])
    imgs, _ = decode_rows(files.column("image").to_pylist(), [None] * files.num_rows, model.info.preprocess)
    pixels = dict(zip(files.column("id").to_pylist(), imgs, strict=True))
    first = out[0]
    np.testing.assert_array_equal(first.image, apply_condition("gaussian_noise", pixels[first.id], 3, seed=5, key=first.id))
    cells = {(c["condition"], c["severity"]): c for c in report["examples"]["cells"]}
    assert cells[("clean", 0)]["misclassified"] == 0 and cells[("clean", 0)]["ids"] == []
    assert cells[("gaussian_noise", 3)]["misclassified"] == 5
    assert report["examples"]["activation_maps"].startswith("Grad-CAM")
    lines = example_lines(report)
    assert "clean: no misclassified example" in lines
    assert any(line.startswith("gaussian_noise severity 3: 2 of 5 misclassified shown") for line in lines)


def test_maps_off_keeps_the_images(setup):
    root, plan, model, ids, labels = setup
    report: dict = {}
    out = _examples(plan, plan.shards, model.info.preprocess, _cfg(root, activation_maps=False),
                    _table(ids, labels, {("clean", 0): {ids[2]}}), model=model, report=report)
    assert [(ex.condition, ex.id) for ex in out] == [("clean", ids[2])]
    assert out[0].cam is None and out[0].method is None
    assert report["examples"]["activation_maps"] is None
    assert "no activation maps (turned off)" in example_lines(report)[0]


def test_markdown_mentions_the_examples(setup):
    from ironsight.robustness.report.build import build_report

    root, plan, model, ids, labels = setup
    table = _table(ids, labels, {("occlusion", 3): {ids[1]}})
    report = build_report(table, class_names=model.info.class_names, model={"name": "demo_cnn"}, data={},
                          seed=5, suite="two")
    _examples(plan, plan.shards, model.info.preprocess, _cfg(root), table, model=model, report=report)
    jsonschema.validate(json.loads(dumps(report)), REPORT_JSON_SCHEMA)  # the optional examples section
    md = to_markdown(report)
    assert "## Examples (images in report.html)" in md
    assert f"occlusion severity 3: 1 of 1 misclassified shown ({ids[1]})" in md
    assert "gaussian_noise severity 3: no misclassified example" in md


def test_a_model_the_maps_fail_on_still_gets_its_examples(setup, ironsight_log):
    """A module whose backward pass fails: the images stay, the report says the maps are off."""
    import torch

    root, plan, model, ids, labels = setup

    class NoBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            raise RuntimeError("this exported graph has no backward")

    class Frozen(torch.nn.Module):
        def forward(self, x):
            return model.module(NoBackward.apply(x))

    report: dict = {}
    out = _examples(plan, plan.shards, model.info.preprocess, _cfg(root), _table(ids, labels, {("clean", 0): {ids[4]}}),
                    model=Frozen(), report=report)
    assert [ex.id for ex in out] == [ids[4]] and out[0].cam is None
    assert report["examples"]["activation_maps"] is None
    assert "activation maps failed (RuntimeError: this exported graph has no backward)" in ironsight_log.text
    assert "no activation maps (RuntimeError: this exported graph has no backward)" in example_lines(report)[0]
