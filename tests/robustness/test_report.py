"""report.json / report.md / report.html content and text summary."""

from __future__ import annotations

import datetime as dt
import json
import os

import jsonschema
import numpy as np
import pyarrow as pa
import pytest

from ironsight.cluster.errors import InvalidInput
from ironsight.robustness.gate import evaluate_gate, parse_gate
from ironsight.robustness.report.build import build_report, dumps
from ironsight.robustness.report.markdown import to_markdown
from ironsight.robustness.report.text import text_summary
from ironsight.robustness.report.write import write_reports
from ironsight.robustness.schema import REPORT_JSON_SCHEMA, REPORT_SCHEMA_VERSION, Example

CLASS_NAMES = ["cat", "dog"]
LABELS = [0, 1, 0, 1]


def rows(kind, condition, severity, eps, preds, conf=0.8):
    return [
        {
            "id": f"i{i}",
            "kind": kind,
            "condition": condition,
            "severity": severity,
            "eps": eps,
            "label": LABELS[i],
            "prediction": p,
            "confidence": conf,
            "correct": p == LABELS[i],
        }
        for i, p in enumerate(preds)
    ]


def predictions(clean=(0, 1, 0, 0)) -> pa.Table:
    data = rows("clean", "clean", 0, 0.0, clean)  # 3/4 correct
    data += rows("corruption", "gaussian_noise", 1, 0.0, [0, 1, 1, 0])  # 2/4
    data += rows("corruption", "gaussian_noise", 2, 0.0, [1, 0, 1, 0])  # 0/4
    data += rows("corruption", "my_blur", 1, 0.0, [0, 1, 0, 1])  # 4/4
    data += rows("attack", "fgsm", 0, 0.0, list(clean))
    data += rows("attack", "fgsm", 0, 8 / 255, [0, 1, 1, 0], conf=0.99)  # 2/4, not above chance 1/2
    return pa.Table.from_pylist(data)


def make_report(**kw) -> dict:
    return build_report(
        kw.pop("table", predictions()),
        class_names=CLASS_NAMES,
        model={"name": "tiny", "hash": "abc"},
        data={"path": "eval.parquet", "rows": 4},
        seed=7,
        suite="quick",
        **kw,
    )


@pytest.fixture(scope="module")
def report():
    return make_report()


def test_report_matches_the_json_schema(report):
    jsonschema.validate(json.loads(dumps(report)), REPORT_JSON_SCHEMA)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (("schema_version",), REPORT_SCHEMA_VERSION),
        (("seed",), 7),
        (("suite",), "quick"),
        (("model", "name"), "tiny"),
        (("clean", "accuracy"), 0.75),
        (("clean", "confusion_matrix"), [[2, 0], [1, 1]]),
        (("summary", "clean_accuracy"), 0.75),
        (("summary", "mean_corruption_accuracy"), ((0.5 + 0.0) / 2 + 1.0) / 2),
        (("summary", "mce"), None),
        (("summary", "baseline"), None),
        (("summary", "alexnet"), None),
        (("gate",), None),
    ],
)
def test_report_values(report, path, expected):
    value = report
    for key in path:
        value = value[key]
    assert value == expected


def test_report_condition_entries(report):
    assert [(c["name"], c["severity"], c["n"], c["accuracy"]) for c in report["conditions"]] == [
        ("gaussian_noise", 1, 4, 0.5),
        ("gaussian_noise", 2, 4, 0.0),
        ("my_blur", 1, 4, 1.0),
    ]


def test_report_attack_entries(report):
    assert [(a["name"], a["eps"], a["accuracy"], a["success_rate"]) for a in report["attacks"]] == [
        ("fgsm", 0.0, 0.75, 0.0),
        ("fgsm", 8 / 255, 0.5, pytest.approx(1 / 3)),
    ]


def test_report_versions_and_time(report):
    assert set(report["versions"]) == {"python", "torch", "torchvision", "numpy", "ironsight"}
    assert report["versions"]["numpy"] == np.__version__
    created = dt.datetime.fromisoformat(report["created_at"])
    assert created.tzinfo is not None


def test_json_is_strict_nan_becomes_null():
    report = make_report()
    report["model"]["score"] = float("nan")
    report["data"]["ratio"] = float("inf")
    text = dumps(report)
    loaded = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert loaded["model"]["score"] is None and loaded["data"]["ratio"] is None


def test_unlabeled_eval_set_has_null_accuracy_and_a_warning():
    data = rows("clean", "clean", 0, 0.0, [0, 1, 0, 0])
    data += rows("corruption", "fog", 1, 0.0, [1, 1, 0, 0])
    for r in data:
        r["label"], r["correct"] = -1, False
    report = make_report(table=pa.Table.from_pylist(data))
    assert report["clean"]["accuracy"] is None
    assert report["conditions"][0]["flip_rate"] == 0.25
    assert any("no labeled rows" in w for w in report["summary"]["warnings"])
    jsonschema.validate(json.loads(dumps(report)), REPORT_JSON_SCHEMA)


def test_baseline_fills_mce_and_per_condition_change():
    baseline = make_report(table=predictions(clean=(0, 1, 0, 1)))  # clean 4/4
    report = make_report(baseline=baseline)
    # identical conditions: CE 1 each; gaussian relative CE: (0.5+1 - 2*0.25) / (0.5+1 - 0)
    assert report["summary"]["mce"] == pytest.approx(1.0)
    per = {p["name"]: p for p in report["summary"]["per_condition"]}
    assert per["gaussian_noise"]["relative_ce"] == pytest.approx(1.0 / 1.5)
    assert report["summary"]["baseline"]["clean_accuracy_change"] == pytest.approx(-0.25)
    assert per["my_blur"]["accuracy_change"] == 0.0


def test_imagenet_model_gets_alexnet_mce_over_imagenet_c_conditions_only():
    # ImageNet-1k class names (what torchvision's weights carry): labels 0/1 are its first two
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    report = build_report(
        predictions(),
        class_names=list(_IMAGENET_CATEGORIES),
        model={"name": "tiny"},
        data={},
        seed=7,
        suite="quick",
    )
    alexnet = report["summary"]["alexnet"]
    assert alexnet["conditions"] == ["gaussian_noise"]  # my_blur is not a registered condition
    assert alexnet["mce"] == pytest.approx((0.5 + 1.0) / (0.69528 + 0.82542))
    assert report["summary"]["mce_reason"] is None
    assert any("covers 1 of the 15 ImageNet-C" in w for w in report["summary"]["warnings"])


def test_bad_table_is_invalid_input():
    with pytest.raises(InvalidInput, match="column 'correct' is missing"):
        make_report(table=predictions().drop_columns(["correct"]))


@pytest.mark.parametrize(
    "needle",
    [
        "# Robustness audit: tiny",
        "| clean accuracy | 75.0% [30.1, 95.4] (n=4) |",
        "| true \\ predicted | cat | dog |",
        "| cat | 2 | 0 |",
        "| condition | severity | n | accuracy [95% CI] | ECE | flip rate | worst class |",
        "| gaussian_noise | 2 | 4 | 0.0% [0.0, 49.0] (n=4) |",
        "| attack | eps | eps × 255 | n | robust accuracy [95% CI] | success rate |",
        "| fgsm | 0.03137 | 8.0 | 4 | 50.0% [15.0, 85.0] (n=4) | 33.3% |",
    ],
)
def test_markdown_contains_tables(report, needle):
    assert needle in to_markdown(report)


@pytest.fixture(scope="module")
def gated_report():
    report = make_report()
    gate = parse_gate({"clean_accuracy_min": 0.9, "ece_max": 0.5})
    report["gate"] = evaluate_gate(report, gate).to_dict()
    return report


def test_markdown_and_summary_show_gate_failures(gated_report):
    line = "clean: accuracy 0.75 is below the floor 0.90"
    assert f"- FAIL {line}" in to_markdown(gated_report)
    summary = text_summary(gated_report)
    assert "Release gate FAILED: 1 failed" in summary and line in summary


def test_text_summary_is_one_screen(report):
    text = text_summary(report)
    assert "clean accuracy             75.0%" in text
    assert "fgsm @ 8.0/255" in text
    assert len(text.splitlines()) <= 24


def test_write_reports_writes_three_files(tmp_path, gated_report):
    ex = [Example("clean", 0, np.zeros((8, 8, 3), np.uint8), 0, 1)]
    paths = write_reports(gated_report, str(tmp_path / "out"), ex)
    assert sorted(paths) == ["html", "json", "markdown"]
    assert sorted(os.listdir(tmp_path / "out")) == ["report.html", "report.json", "report.md"]
    with open(paths["json"], encoding="utf-8") as f:
        assert json.load(f)["gate"]["passed"] is False


GATES = {"none": None, "pass": {"clean_accuracy_min": 0.5}, "fail": {"clean_accuracy_min": 0.9}}


@pytest.fixture(scope="module")
def pages():
    """report.html for each gate in GATES (rendered once: matplotlib is the slow part)."""
    from ironsight.robustness.report.html import render_html

    out = {}
    for key, gate in GATES.items():
        report = make_report()
        report["model"]["name"] = "<script>x</script>"
        if gate is not None:
            report["gate"] = evaluate_gate(report, parse_gate(gate)).to_dict()
        out[key] = render_html(report)
    return out


@pytest.mark.parametrize(
    ("key", "banner"),
    [
        ("none", None),
        ("pass", "Release gate PASSED: 1 of 1 checks passed"),
        ("fail", "Release gate FAILED: 1 of 1 checks failed"),
    ],
)
def test_html_banner(pages, key, banner):
    assert ('id="gate-banner"' in pages[key]) == (banner is not None)
    if banner:
        assert banner in pages[key]


def test_html_escapes_names(pages):
    assert "<script>" not in pages["none"] and "&lt;script&gt;" in pages["none"]


def test_clean_only_report_renders_without_condition_or_attack_sections():
    from ironsight.robustness.report.html import render_html

    report = make_report(table=pa.Table.from_pylist(rows("clean", "clean", 0, 0.0, [0, 1, 0, 0])))
    assert report["conditions"] == [] and report["attacks"] == []
    assert report["summary"]["mean_corruption_accuracy"] is None
    page, markdown = render_html(report), to_markdown(report)
    assert page.count('class="plot"') == 1  # the confusion matrix only
    assert "## Corruptions" not in markdown and "## Clean data" in markdown


def test_html_per_condition_table_shows_baseline_columns():
    from ironsight.robustness.report.html import render_html

    report = make_report(baseline=make_report(table=predictions(clean=(0, 1, 0, 1))))
    page = render_html(report)
    assert "<th>relative CE</th>" in page
    assert (
        "<td>gaussian_noise</td><td>25.0%</td><td>cat 25.0% [4.6, 69.9] (n=4)</td><td>1.000</td>"
        "<td>0.667</td>"
        in page
    )


@pytest.mark.parametrize(
    "image",
    [
        np.full((4, 5, 3), 255, np.uint8),
        np.ones((4, 5, 3), np.float32),  # float pixels in [0, 1]
        np.ones((3, 4, 5), np.float32),  # channels first, as a tensor would be
        np.full((4, 5), 255, np.uint8),  # grayscale
    ],
)
def test_example_images_become_white_uint8_hwc(image):
    from ironsight.robustness.report.html import to_uint8_hwc

    out = to_uint8_hwc(image)
    assert (out.shape, out.dtype, int(out.min())) == ((4, 5, 3), np.uint8, 255)


def loaded_after_importing(modules: list[str], watched: tuple[str, ...]) -> list[str]:
    """Which of ``watched`` a fresh interpreter has loaded after importing ``modules``."""
    import subprocess
    import sys

    code = f"import importlib, sys\nfor m in {modules!r}:\n    importlib.import_module(m)\n" \
           f"print(sorted(m for m in {watched!r} if m in sys.modules))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.replace("'", '"'))


def test_report_modules_import_neither_ray_nor_pyplot():
    report_modules = [f"ironsight.robustness.report.{m}" for m in
                      ("build", "comparison", "html", "markdown", "plots", "tables", "text", "write")]
    modules = ["ironsight.robustness.gate", "ironsight.robustness.metrics", "ironsight.robustness.schema",
               *report_modules]
    assert loaded_after_importing(modules, ("ray", "matplotlib.pyplot")) == []


def test_markdown_and_html_show_the_same_per_class_rows(report, pages):
    from ironsight.robustness.report.html import escape
    from ironsight.robustness.report.tables import per_class_table

    header, rows = per_class_table(report)
    assert [r[0] for r in rows] == [*CLASS_NAMES, "macro"]
    md = to_markdown(report)
    assert "| " + " | ".join(header) + " |" in md
    for row in rows:  # the same rows, one laid out as Markdown, one as HTML (the macro row too)
        assert "| " + " | ".join(str(c) for c in row) + " |" in md
        assert "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" in pages["none"]


def test_write_reports_publishes_each_file_straight_to_s3(s3_bucket, gated_report, tmp_path, monkeypatch):
    import boto3

    monkeypatch.chdir(tmp_path)  # a report rendered aside, or an s3:/ folder, would land here
    ex = [Example("clean", 0, np.zeros((8, 8, 3), np.uint8), 0, 1)]
    paths = write_reports(gated_report, f"{s3_bucket}/nightly/run-7", ex)
    names = {"json": "report.json", "markdown": "report.md", "html": "report.html"}
    assert paths == {key: f"{s3_bucket}/nightly/run-7/{name}" for key, name in names.items()}
    s3 = boto3.client("s3")
    bucket = s3_bucket.removeprefix("s3://")
    listed = s3.list_objects_v2(Bucket=bucket)["Contents"]
    assert sorted(o["Key"] for o in listed) == sorted(f"nightly/run-7/{n}" for n in names.values())
    body = {n: s3.get_object(Bucket=bucket, Key=f"nightly/run-7/{n}")["Body"].read().decode() for n in names.values()}
    assert body["report.json"] == dumps(gated_report) and body["report.md"] == to_markdown(gated_report)
    assert body["report.html"].startswith("<!DOCTYPE html>") and 'id="gate-banner"' in body["report.html"]
    assert list(tmp_path.iterdir()) == []


def test_text_and_markdown_renderers_load_no_plotting():
    """The CLI's summary and report.md need no matplotlib: the renderers import the shared
    tables, not each other (report.html is the only one that draws)."""
    modules = [f"ironsight.robustness.report.{m}" for m in ("build", "markdown", "tables", "text")]
    watched = ("matplotlib", "PIL", "ironsight.robustness.report.html", "ironsight.robustness.report.plots")
    assert loaded_after_importing(modules, watched) == []


def test_a_1000_class_report_shows_the_classes_seen_only():
    """An ImageNet model's report: per-class rows and the confusion matrix (report.md, the
    HTML plot) name the classes with an image or a prediction, not all 1,000."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    from ironsight.robustness.report.html import render_html
    from ironsight.robustness.report.markdown import to_markdown
    from ironsight.robustness.report.tables import per_class_table, shown_classes

    report = build_report(predictions(), class_names=list(_IMAGENET_CATEGORIES), model={"name": "tiny"},
                          data={}, seed=7, suite="quick")
    assert shown_classes(report) == [0, 1]
    assert [r[0] for r in per_class_table(report)[1]] == ["tench", "goldfish", "macro"]
    md = to_markdown(report)
    assert "2 of 1000 classes shown" in md and "| true \\ predicted | tench | goldfish |" in md
    assert "great white shark" not in md
    assert "2 of 1000 classes shown" in render_html(report)
