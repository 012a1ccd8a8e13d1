"""The comparison report: ranking rows, Pareto fronts, the recommendation, Markdown/HTML/JSON.

Entries are built by hand: real audit reports (build_report over synthetic predictions),
profiles shaped like ModelProfile.to_dict(), mixes like robustness.mix.expected_accuracy.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from ironsight.robustness.objective import METRICS, parse_objective
from ironsight.robustness.report.build import build_report
from ironsight.robustness.report.comparison import (
    CompareEntry,
    build_compare_report,
    pareto_front,
    ranking_rows,
)
from ironsight.robustness.report.markdown import compare_markdown
from ironsight.robustness.report.write import write_compare_reports
from ironsight.robustness.schema import Example

CLASSES = ["cat", "dog", "bird", "fish"]
CONDITIONS = ("low_light", "gaussian_blur", "motion_blur", "gaussian_noise")  # lighting, blur x2, noise
N = 40


def _report(name: str, p_clean: float, seed: int) -> dict:
    """An audit report of N images: clean, each condition at severities 1/3, fgsm at 0/2/8."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), N)
    rows = []

    def add(kind, condition, severity, eps, p):
        for i in range(N):
            ok = rng.random() < p
            pred = int(labels[i]) if ok else int((labels[i] + 1) % len(CLASSES))
            rows.append({"id": f"img{i:02d}", "kind": kind, "condition": condition, "severity": severity,
                         "eps": eps, "label": int(labels[i]), "prediction": pred, "confidence": 0.7,
                         "correct": pred == int(labels[i])})

    add("clean", "clean", 0, 0.0, p_clean)
    for j, cond in enumerate(CONDITIONS):
        for sev in (1, 3):
            add("corruption", cond, sev, 0.0, p_clean - 0.08 * sev - 0.05 * j)
    for eps in (0.0, 2 / 255, 8 / 255):
        add("attack", "fgsm", 0, eps, max(0.02, p_clean - 60 * eps))
    report = build_report(pa.Table.from_pylist(rows), class_names=CLASSES, model={"name": name},
                          data={"input": "eval/"}, seed=0, suite="quick")
    report["examples"] = {"misclassified_only": True, "per_condition": 2, "activation_maps": "Grad-CAM (1.layer4)",
                          "cells": [{"condition": "clean", "severity": 0, "misclassified": 0, "ids": []},
                                    {"condition": "low_light", "severity": 3, "misclassified": 9, "ids": ["img03"]}]}
    return report


def _profile(p50: float, ips: float, mem: float, params: int, flops: int | None) -> dict:
    return {"device": "cpu", "params": params, "flops_per_image": flops, "latency_ms_p50": p50,
            "latency_ms_p95": p50 * 1.3, "throughput_img_s": ips, "best_batch_size": 32,
            "peak_memory_mb": mem, "memory_kind": "rss_delta", "threads": 2, "notes": []}


def _example(seed: int) -> Example:
    rng = np.random.default_rng(seed)
    cam = rng.random((24, 24)).astype(np.float32)
    return Example("low_light", 3, rng.integers(0, 256, (24, 24, 3), dtype=np.uint8), 1, 2, cam=cam,
                   method="Grad-CAM (1.layer4)", id="img03")


def make_entries(*, profiles: bool = True) -> list[CompareEntry]:
    """big: most accurate, slow; small: less accurate, fast, small; mid: dominated on speed;
    rand: random weights, fastest, and (by chance) the highest 'accuracy' of all."""
    specs = [("big", 0.92, 1, (40.0, 30.0, 900.0, 25_000_000, 4_100_000_000)),
             ("small", 0.85, 2, (6.0, 400.0, 120.0, 2_500_000, 300_000_000)),
             ("mid", 0.80, 3, (20.0, 60.0, 500.0, 11_000_000, 1_800_000_000)),
             ("rand", 0.97, 4, (3.0, 900.0, 100.0, 1_000_000, None))]
    return [CompareEntry(name=name, report=_report(name, acc, seed),
                         profile=_profile(*prof) if profiles else None, random_weights=name == "rand",
                         mix={"accuracy": acc - 0.1, "low": acc - 0.15, "high": acc - 0.05,
                              "mix": {"clean": 0.7, "low_light": 0.3}, "per_condition": {}},
                         examples=[_example(seed)])
            for name, acc, seed, prof in specs]


@pytest.fixture(scope="module")
def entries():
    return make_entries()


def test_rows_carry_every_objective_metric_from_the_reports_and_profiles(entries):
    rows = {r["model"]: r for r in ranking_rows(entries)}
    big, e = rows["big"], entries[0]
    assert set(METRICS) | {"model"} <= set(big)
    assert big["accuracy"] == e.report["clean"]["accuracy"]  # unrounded, the audit's own number
    assert big["accuracy_ci"] == e.report["clean"]["ci95"]
    assert big["f1"] == e.report["clean"]["macro_f1"] and big["recall"] == e.report["clean"]["macro_recall"]
    assert big["corruption_accuracy"] == e.report["summary"]["mean_corruption_accuracy"]
    assert big["params_m"] == 25.0 and big["gflops"] == pytest.approx(4.1) and big["p95_ms"] == pytest.approx(52.0)
    assert rows["rand"]["gflops"] is None  # FLOPs not counted: None, not 0
    per = {p["name"]: p["mean_accuracy"] for p in e.report["summary"]["per_condition"]}
    assert big["families"]["blur"] == pytest.approx((per["gaussian_blur"] + per["motion_blur"]) / 2)
    assert big["families"]["lighting"] == per["low_light"] and set(big["families"]) == {"lighting", "blur", "noise"}
    at8 = [a for a in e.report["attacks"] if a["eps"] == pytest.approx(8 / 255)][0]
    assert big["robust_accuracy"] == at8["accuracy"]
    assert set(big["robust"]) == {"fgsm 2/255", "fgsm 8/255"}  # eps 0 is the clean accuracy again
    assert big["mix_accuracy"] == pytest.approx(0.82) and big["mix_ci"] == [pytest.approx(0.77), pytest.approx(0.87)]


def test_random_weights_never_win_on_accuracy_but_may_on_speed(entries):
    report = build_compare_report(entries, suite="quick", data={}, objective=parse_objective("max accuracy"))
    rec = report["recommendation"]
    assert rec["winner"] == "big" and "rand" not in rec["ranked"] and rec["excluded"] == ["rand"]
    assert [r["model"] for r in report["models"]][:3] == ["big", "small", "mid"]
    speed = build_compare_report(entries, suite="quick", data={}, objective=parse_objective("min p95_ms"))
    assert speed["recommendation"]["winner"] == "rand" and speed["recommendation"]["excluded"] == []
    constrained = build_compare_report(entries, suite="quick", data={},
                                       objective=parse_objective("min p95_ms s.t. accuracy >= 0.8"))
    assert constrained["recommendation"]["winner"] == "small"
    assert constrained["recommendation"]["excluded"] == ["rand"]


def test_without_an_objective_there_is_no_recommendation(entries):
    report = build_compare_report(entries, suite="quick", data={}, objective=None)
    assert report["objective"] is None and report["recommendation"] is None
    assert [r["model"] for r in report["models"]] == ["big", "small", "mid", "rand"]  # accuracy, random last
    assert "No objective named" in compare_markdown(report)


def test_only_random_models_and_an_accuracy_objective_recommend_nothing():
    rand = [e for e in make_entries() if e.random_weights]
    report = build_compare_report(rand, suite="quick", data={}, objective=parse_objective("max accuracy"))
    assert report["recommendation"]["winner"] is None
    assert "no model has a value for 'accuracy'" in report["recommendation"]["reason"]


def test_pareto_fronts_leave_out_dominated_and_random_models(entries):
    report = build_compare_report(entries, suite="quick", data={}, objective=None)
    assert report["pareto"]["accuracy_vs_images_per_s"] == ["big", "small"]  # mid: slower and worse than small
    assert report["pareto"]["accuracy_vs_memory"] == ["big", "small"]
    rows = [{"model": m, "random_weights": False, "a": a, "b": b} for m, a, b in
            [("x", 1.0, 1.0), ("y", 1.0, 1.0), ("z", 0.5, 2.0), ("w", 0.4, 1.9)]]
    assert pareto_front(rows, "a", "b") == ["x", "y", "z"]  # ties both stay; w is dominated by z
    assert pareto_front(rows, "a", "b", x_higher=False) == ["z", "w"]  # lower a: w cheapest, z best b


def test_no_profile_leaves_speed_columns_empty_and_the_objective_says_why():
    entries = make_entries(profiles=False)
    report = build_compare_report(entries, suite="quick", data={}, objective=parse_objective("max accuracy s.t. p95_ms <= 20"))
    assert all(r["p95_ms"] is None for r in report["models"])
    assert report["recommendation"]["winner"] is None and "profiling" in report["recommendation"]["reason"]
    assert report["pareto"]["accuracy_vs_images_per_s"] == []
    md = compare_markdown(report)
    assert "| big | " in md and "| — | — |" in md


def test_markdown_has_the_tables_the_mark_and_the_examples(entries):
    report = build_compare_report(entries, suite="quick", data={"input": "eval/", "images": N, "seed": 0},
                                  objective=parse_objective("max accuracy s.t. p95 <= 30 ms"))
    md = compare_markdown(report)
    assert "Recommended: small" in md  # big is too slow (p95 52 ms)
    assert "rand (random weights: speed and memory only)" in md
    for title in ("## Ranking", "## Accuracy per condition family", "## Robust accuracy per attack budget",
                  "## Accuracy per condition (mean over severities)"):
        assert title in md
    assert "| model | clean accuracy [95% CI] | macro precision | macro recall | macro F1 | p50 ms |" in md
    assert "low_light severity 3: 1 of 9 misclassified shown (img03)" in md
    assert "Pareto-optimal on accuracy vs images_per_s: small, big" in md  # in ranking order


def test_html_is_self_contained_with_plots_and_activation_maps(entries):
    from ironsight.robustness.report.html import compare_html

    report = build_compare_report(entries, suite="quick", data={}, objective=parse_objective("max accuracy"))
    page = compare_html(report, entries)
    assert "http://" not in page and "https://" not in page
    assert page.count('<img class="plot"') == 4  # three Pareto plots and the per-condition chart
    assert page.count('class="cam"') == 4  # one example with its map per model
    assert 'id="recommendation" class="banner pass">Recommended: big' in page
    no_profile = build_compare_report(make_entries(profiles=False), suite="quick", data={}, objective=None)
    assert compare_html(no_profile, entries).count('<img class="plot"') == 2  # only the accuracy plots


def test_write_compare_reports_locally(entries, tmp_path):
    report = build_compare_report(entries, suite="quick", data={}, objective=parse_objective("max f1"))
    paths = write_compare_reports(str(tmp_path / "out"), report, entries)
    assert sorted(p.rsplit("/", 1)[-1] for p in paths.values()) == ["compare.html", "compare.json", "compare.md"]
    loaded = json.loads((tmp_path / "out" / "compare.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert loaded["recommendation"]["winner"] == report["recommendation"]["winner"]
    assert loaded["models"][0]["accuracy"] == report["models"][0]["accuracy"]


def test_write_compare_reports_to_s3(entries, s3_bucket):
    import boto3

    report = build_compare_report(entries, suite="quick", data={}, objective=None)
    paths = write_compare_reports(f"{s3_bucket}/cmp", report, entries)
    assert paths["json"] == f"{s3_bucket}/cmp/compare.json"
    bucket = s3_bucket.removeprefix("s3://")
    keys = {o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix="cmp/")["Contents"]}
    assert keys == {"cmp/compare.json", "cmp/compare.md", "cmp/compare.html"}
