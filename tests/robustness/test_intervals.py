"""Numbers a release reviewer can trust: Wilson intervals on every accuracy cell, paired
baseline comparisons (significant / within noise), the gate's `significance`, and mCE vs
AlexNet only for ImageNet-1k class spaces. Expected values come from robustness.stats and
the test's own counts, never from the report code under test."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pyarrow as pa
import pytest

from ironsight.robustness import compare, mce, stats
from ironsight.robustness.gate import evaluate_gate, parse_gate
from ironsight.robustness.report.build import build_report, dumps
from ironsight.robustness.report.markdown import to_markdown
from ironsight.robustness.report.text import text_summary
from ironsight.robustness.schema import REPORT_JSON_SCHEMA

SHAPES = ["circle", "square", "triangle", "star", "hexagon", "cross", "ring", "arrow"]
N = 200  # clean rows; the last UNLABELED of them have label -1
UNLABELED = 10
CELLS = [
    ("clean", "clean", 0, 0.0),
    ("corruption", "gaussian_noise", 1, 0.0),
    ("corruption", "gaussian_noise", 3, 0.0),
    ("corruption", "occlusion", 1, 0.0),
    ("attack", "fgsm", 0, 0.0),
    ("attack", "fgsm", 0, 2 / 255),
]
# fraction of images each cell gets right (by a fixed, id-ordered pattern)
ACCURACY = {CELLS[0]: 0.9, CELLS[1]: 0.7, CELLS[2]: 0.4, CELLS[3]: 0.8, CELLS[4]: 0.9, CELLS[5]: 0.3}


def _labels() -> np.ndarray:
    labels = np.arange(N) % len(SHAPES)
    labels[N - UNLABELED :] = -1
    return labels


def _correct_pattern(accuracy: float, cell_index: int) -> np.ndarray:
    rng = np.random.default_rng(cell_index)
    ok = np.zeros(N, bool)
    ok[rng.permutation(N)[: int(round(accuracy * N))]] = True
    return ok


def run_table(correct: dict | None = None) -> pa.Table:
    """A predictions table; ``correct`` overrides the per-image correctness of some cells."""
    labels = _labels()
    rows = []
    for i, cell in enumerate(CELLS):
        kind, cond, sev, eps = cell
        ok = (correct or {}).get(cell, _correct_pattern(ACCURACY[cell], i))
        for j in range(N):
            label = int(labels[j])
            truth = max(label, 0)
            pred = truth if ok[j] else (truth + 1) % len(SHAPES)
            rows.append(
                {"id": f"img{j:04d}", "kind": kind, "condition": cond, "severity": sev, "eps": eps,
                 "label": label, "prediction": pred, "confidence": 0.7,
                 "correct": bool(label >= 0 and pred == label)}
            )
    return pa.Table.from_pylist(rows)


def make(table: pa.Table | None = None, class_names=SHAPES, **kw) -> dict:
    return build_report(
        table if table is not None else run_table(),
        class_names=class_names,
        model={"name": "resnet18-random"},
        data={"path": "shapes.parquet"},
        seed=0,
        suite="quick",
        **kw,
    )


def expected_cell(table: pa.Table, cell, label: int | None = None) -> tuple[int, int]:
    """(correct, labeled n) of one cell, counted straight from the table."""
    kind, cond, sev, eps = cell
    k = n = 0
    for r in table.to_pylist():
        if (r["kind"], r["condition"], r["severity"], r["eps"]) != (kind, cond, sev, eps):
            continue
        if r["label"] < 0 or (label is not None and r["label"] != label):
            continue
        n += 1
        k += r["correct"]
    return k, n


def fmt(k: int, n: int) -> str:
    lo, hi = stats.wilson_interval(k, n)
    return f"{100 * k / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] (n={n})"


def assert_interval(cell: dict, k: int, n: int) -> None:
    assert cell["n_labeled"] == n and cell["correct"] == k
    assert cell["accuracy"] == pytest.approx(k / n)
    assert cell["ci95"] == list(stats.wilson_interval(k, n))


@pytest.fixture(scope="module")
def table():
    return run_table()


@pytest.fixture(scope="module")
def report(table):
    return make(table)


@pytest.fixture(scope="module")
def markdown(report):
    return to_markdown(report)


@pytest.fixture(scope="module")
def page(report):
    from ironsight.robustness.report.html import render_html

    return render_html(report)


# ------------------------------------------------------------------------------ JSON


def test_clean_cell_and_every_class_carry_wilson_interval_and_n(report, table):
    clean = report["clean"]
    assert clean["n"] == N  # rows, as before; the interval is over the labeled ones
    assert_interval(clean, *expected_cell(table, CELLS[0]))
    assert clean["n_labeled"] == N - UNLABELED
    for c, entry in enumerate(clean["per_class"]):
        k, n = expected_cell(table, CELLS[0], label=c)
        assert (entry["index"], entry["name"], entry["n"]) == (c, SHAPES[c], n)
        assert_interval(entry, k, n)
        assert entry["accuracy"] == clean["per_class_accuracy"][c]


def test_condition_cells_carry_interval_n_and_per_class(report, table):
    got = {(c["name"], c["severity"]): c for c in report["conditions"]}
    for cell in CELLS[1:4]:
        entry = got[(cell[1], cell[2])]
        assert entry["n"] == N
        assert_interval(entry, *expected_cell(table, cell))
        for c, per in enumerate(entry["per_class"]):
            assert_interval(per, *expected_cell(table, cell, label=c))


def test_attack_cells_carry_interval_and_n(report, table):
    got = {a["eps"]: a for a in report["attacks"]}
    for cell in CELLS[4:]:
        assert_interval(got[cell[3]], *expected_cell(table, cell))


def test_worst_class_carries_interval_and_its_own_n(report, table):
    worst = report["clean"]["worst_class"]
    k, n = expected_cell(table, CELLS[0], label=worst["index"])
    assert worst["n"] == n < N / 4  # a class's handful of images, not the whole set
    assert_interval(worst, k, n)
    for entry in report["conditions"]:
        w = entry["worst_class"]
        cell = next(c for c in CELLS if (c[1], c[2]) == (entry["name"], entry["severity"]))
        assert_interval(w, *expected_cell(table, cell, label=w["index"]))
    pooled = {p["name"]: p["worst_class"] for p in report["summary"]["per_condition"]}
    w = pooled["gaussian_noise"]
    k1, n1 = expected_cell(table, CELLS[1], label=w["index"])
    k3, n3 = expected_cell(table, CELLS[2], label=w["index"])
    assert_interval(w, k1 + k3, n1 + n3)


def test_header_numbers_and_schema(report):
    s = report["summary"]
    assert (s["images"], s["labeled_images"]) == (N, N - UNLABELED)
    assert s["interval"] == "95% Wilson score interval"
    assert s["min_detectable_drop"] == stats.min_detectable_drop(N - UNLABELED, s["clean_accuracy"])
    jsonschema.validate(json.loads(dumps(report)), REPORT_JSON_SCHEMA)


def test_schema_rejects_a_cell_without_its_interval(report):
    broken = json.loads(dumps(report))
    del broken["conditions"][0]["ci95"]
    with pytest.raises(jsonschema.ValidationError, match="ci95"):
        jsonschema.validate(broken, REPORT_JSON_SCHEMA)


# ----------------------------------------------------------------------- Markdown, HTML


def _needles(report, table, html: bool) -> list[str]:
    """One string per cell kind that must appear, with the interval computed here."""

    def row(*cells) -> str:
        if html:
            return "".join(f"<td>{c}</td>" for c in cells)
        return "| " + " | ".join(str(c) for c in cells) + " |"

    out = [row("clean accuracy", fmt(*expected_cell(table, CELLS[0])))]
    for c, name in enumerate(SHAPES):
        out.append(row(name, fmt(*expected_cell(table, CELLS[0], label=c))))
    for cell in CELLS[1:4]:
        out.append(row(cell[1], cell[2], N, fmt(*expected_cell(table, cell))))
    for cell in CELLS[4:]:
        out.append(
            row(cell[1], f"{cell[3]:.5f}", f"{cell[3] * 255:.1f}", N, fmt(*expected_cell(table, cell)))
        )
    worst = report["clean"]["worst_class"]
    out.append(f"{worst['name']} {fmt(*expected_cell(table, CELLS[0], label=worst['index']))}")
    mdd = stats.min_detectable_drop(N - UNLABELED, report["summary"]["clean_accuracy"])
    out.append(f"images: {N} clean, {N - UNLABELED} labeled; the smallest drop this n can call "
               f"significant is {100 * mdd:.1f} points")
    out.append("95% Wilson score interval")
    return out


def test_markdown_shows_every_interval_with_its_n(report, table, markdown):
    missing = [n for n in _needles(report, table, html=False) if n not in markdown]
    assert missing == []


def test_html_shows_every_interval_with_its_n(report, table, page):
    missing = [n for n in _needles(report, table, html=True) if n not in page]
    assert missing == []


def test_text_summary_states_the_clean_interval(report, table):
    k, n = expected_cell(table, CELLS[0])
    lo, hi = stats.wilson_interval(k, n)
    assert f"95% CI [{100 * lo:.1f}, {100 * hi:.1f}], n={n}" in text_summary(report)


def test_html_curves_draw_the_interval_bands(report):
    from ironsight.robustness.report import plots

    bare = json.loads(dumps(report))
    for entry in [bare["clean"], *bare["conditions"], *bare["attacks"]]:
        entry["ci95"] = None
    assert plots.severity_plot(report) != plots.severity_plot(bare)
    assert plots.attack_plot(report) != plots.attack_plot(bare)


def test_preprocessing_shown_in_the_header_and_allowed_by_the_schema(report):
    from ironsight.robustness.report.html import render_html

    with_pre = json.loads(dumps(report))
    with_pre["preprocessing"] = {
        "mode": "resize_center_crop", "resize": 232, "crop": 224, "interpolation": "bilinear",
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "weights_version": "IMAGENET1K_V2",
    }
    jsonschema.validate(with_pre, REPORT_JSON_SCHEMA)
    words = ("resize 232, center crop 224, bilinear, mean (0.485, 0.456, 0.406), "
             "std (0.229, 0.224, 0.225), weights IMAGENET1K_V2")
    assert f"- preprocessing: {words}" in to_markdown(with_pre)
    assert f"<li>preprocessing: {words}</li>" in render_html(with_pre)
    assert "preprocessing" not in to_markdown(report)  # absent: no line
    with_pre["preprocessing"]["crop"] = "224"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(with_pre, REPORT_JSON_SCHEMA)


# -------------------------------------------------------------------- baseline changes


def _flip(table_correct: np.ndarray, worse: int, better: int) -> np.ndarray:
    """Correctness with ``worse`` right images turned wrong and ``better`` wrong ones right
    (labeled images only)."""
    ok = table_correct.copy()
    labeled = np.arange(N) < N - UNLABELED
    ok[np.flatnonzero(ok & labeled)[:worse]] = False
    ok[np.flatnonzero(~table_correct & labeled)[:better]] = True
    return ok


BASE_CLEAN = _correct_pattern(ACCURACY[CELLS[0]], 0)


@pytest.fixture(scope="module")
def baseline_table():
    return run_table()


@pytest.fixture(scope="module")
def baseline(baseline_table):
    return make(baseline_table)


@pytest.fixture(scope="module")
def dropped(baseline, baseline_table):
    """Clean accuracy down ~12 points on the same images: a clear regression."""
    new = run_table({CELLS[0]: _flip(BASE_CLEAN, 24, 0)})
    return make(new, baseline=baseline, baseline_predictions=baseline_table)


@pytest.fixture(scope="module")
def wobble(baseline, baseline_table):
    """Clean accuracy down ~1 point: 3 images got worse, 1 better."""
    new = run_table({CELLS[0]: _flip(BASE_CLEAN, 3, 1)})
    return make(new, baseline=baseline, baseline_predictions=baseline_table)


def test_clear_drop_on_the_same_ids_is_significant(dropped):
    base = dropped["summary"]["baseline"]
    clean = base["clean_change"]
    assert base["paired"] is True and clean["paired"] is True
    assert (clean["worse"], clean["better"], clean["n"]) == (24, 0, N - UNLABELED)
    assert clean["p_value"] == stats.mcnemar_exact(24, 0)
    assert clean["delta"] == pytest.approx(-24 / (N - UNLABELED))
    assert clean["verdict"] == "significant" and clean["regression"] is True
    md = to_markdown(dropped)
    assert "| clean accuracy change vs baseline | -12.6 pts, significant (paired McNemar" in md
    assert "baseline comparison: paired: exact McNemar" in md


def test_one_point_wobble_is_within_noise(wobble):
    clean = wobble["summary"]["baseline"]["clean_change"]
    assert (clean["worse"], clean["better"]) == (3, 1)
    assert clean["delta"] == pytest.approx(-2 / (N - UNLABELED))
    assert clean["p_value"] == stats.mcnemar_exact(3, 1)
    assert clean["verdict"] == "within noise" and clean["regression"] is False
    assert "clean accuracy change vs baseline | -1.1 pts, within noise" in to_markdown(wobble)


def test_every_cell_kind_gets_a_change_in_json_markdown_and_html(dropped):
    from ironsight.robustness.report.html import render_html

    cells = {c["key"]: c for c in dropped["summary"]["baseline"]["cells"]}
    assert set(cells) == {
        "clean", "condition/gaussian_noise/1", "condition/gaussian_noise/3", "condition/gaussian_noise",
        "condition/occlusion/1", "condition/occlusion", f"attack/fgsm/{0.0!r}", f"attack/fgsm/{2 / 255!r}",
    }
    unchanged = [c for k, c in cells.items() if k != "clean"]
    assert all(c["verdict"] == "within noise" and c["delta"] == 0 and c["paired"] for c in unchanged)
    assert cells["condition/gaussian_noise"]["n"] == 2 * (N - UNLABELED)  # pooled severities
    md, page = to_markdown(dropped), render_html(dropped)
    for text in (md, page):
        assert "change vs baseline" in text
        assert text.count("+0.0 pts, within noise (paired McNemar p=1; 0 worse, 0 better of 190)") >= 5


def test_baseline_without_predictions_is_unpaired_and_says_so(baseline):
    new = run_table({CELLS[0]: _flip(BASE_CLEAN, 24, 0)})
    report = make(new, baseline=baseline)
    base = report["summary"]["baseline"]
    clean = base["clean_change"]
    k_ref, n = int(BASE_CLEAN[: N - UNLABELED].sum()), N - UNLABELED
    want = stats.unpaired_change(k_ref, n, k_ref - 24, n)
    assert base["paired"] is False and clean["paired"] is False
    assert (clean["test"], clean["significant"], clean["p_value"]) == ("wilson_overlap", want.significant, None)
    assert clean["delta"] == pytest.approx(want.delta)
    assert base["test"].startswith("unpaired")
    md = to_markdown(report)
    assert "baseline comparison: unpaired" in md and "(unpaired: 95% Wilson intervals" in md
    assert any("unpaired" in w for w in report["summary"]["warnings"])


def test_compare_runs_pairs_by_id_not_by_row_order(baseline_table):
    new = run_table({CELLS[0]: _flip(BASE_CLEAN, 24, 0)})
    shuffled = new.take(np.random.default_rng(1).permutation(new.num_rows))
    a = {c.key: c for c in compare.compare_runs(baseline_table, new, 0.05)}
    b = {c.key: c for c in compare.compare_runs(baseline_table, shuffled, 0.05)}
    assert a["clean"].change == b["clean"].change
    assert (b["clean"].change.worse, b["clean"].change.better) == (24, 0)
    assert b["clean"].regression and not b["condition/occlusion"].regression


def test_compare_runs_uses_only_shared_ids_and_repeated_ids_pair_in_order():
    def t(ids, correct):
        n = len(ids)
        return pa.table({"id": ids, "kind": ["clean"] * n, "condition": ["clean"] * n,
                         "severity": [0] * n, "eps": [0.0] * n, "label": [0] * n,
                         "prediction": [0 if c else 1 for c in correct], "confidence": [0.5] * n,
                         "correct": correct})

    ref = t(["a", "a", "b", "c"], [True, False, True, True])
    new = t(["a", "a", "b", "z"], [True, True, False, False])
    (cell,) = compare.compare_runs(ref, new)
    # a#1 right->right, a#2 wrong->right, b right->wrong; c and z are not shared
    assert (cell.change.n, cell.change.worse, cell.change.better) == (3, 1, 1)


# ------------------------------------------------------------------------------- gate


def test_gate_significance_passes_a_wobble_that_a_plain_max_drop_fails(wobble, baseline):
    plain = evaluate_gate(wobble, parse_gate({"max_drop_vs_baseline": 0.005}), baseline)
    assert not plain.passed
    (failed,) = plain.failed
    assert failed.name == "max_drop_vs_baseline.clean"
    assert "within noise: paired McNemar" in failed.message  # still says it may be noise

    noisy = evaluate_gate(
        wobble, parse_gate({"max_drop_vs_baseline": 0.005, "significance": 0.05}), baseline
    )
    assert noisy.passed
    check = next(c for c in noisy.checks if c.name == "max_drop_vs_baseline.clean")
    assert check.passed and "within noise" in check.message and "not failed" in check.message


def test_gate_significance_still_fails_a_clear_drop(dropped, baseline):
    for gate in ({"max_drop_vs_baseline": 0.05}, {"max_drop_vs_baseline": 0.05, "significance": 0.05}):
        result = evaluate_gate(dropped, parse_gate(gate), baseline)
        assert [c.name for c in result.failed] == ["max_drop_vs_baseline.clean"]
        assert "significant: paired McNemar" in result.failed[0].message


def test_gate_significance_level_is_applied_to_the_paired_p_value(baseline, baseline_table):
    # 8 worse, 0 better: p = 2 / 2**8 = 0.0078 -- significant at 0.05, not at 0.001
    new = run_table({CELLS[0]: _flip(BASE_CLEAN, 8, 0)})
    report = make(new, baseline=baseline, baseline_predictions=baseline_table)
    loose = evaluate_gate(report, parse_gate({"max_drop_vs_baseline": 0.01, "significance": 0.05}), baseline)
    strict = evaluate_gate(report, parse_gate({"max_drop_vs_baseline": 0.01, "significance": 0.001}), baseline)
    assert not loose.passed and strict.passed


def test_gate_compares_two_bare_reports_unpaired(baseline):
    new = make(run_table({CELLS[0]: _flip(BASE_CLEAN, 24, 0)}))  # built without a baseline
    result = evaluate_gate(new, parse_gate({"max_drop_vs_baseline": 0.05}), baseline)
    (failed,) = result.failed
    assert "unpaired, 95% Wilson intervals" in failed.message


# -------------------------------------------------------------------------------- mCE


def test_mce_is_null_with_a_reason_for_an_eight_class_model(report, markdown, page):
    s = report["summary"]
    assert s["alexnet"] is None
    assert s["mce_reason"].startswith("the model has 8 classes, not the 1000 ImageNet-1k classes")
    assert "| mCE vs AlexNet | not computed: the model has 8 classes" in markdown
    assert "id='mce-reason'>mCE vs AlexNet not computed: the model has 8 classes" in page
    assert "mCE vs AlexNet            not computed: the model has 8 classes" in text_summary(report)


def test_mce_is_null_for_1000_classes_that_are_not_imagenets():
    names = [str(i) for i in range(1000)]
    report = make(class_names=names)
    assert report["summary"]["alexnet"] is None
    assert "class names are not ImageNet-1k's" in report["summary"]["mce_reason"]


def test_imagenet_names_hash_matches_torchvision():
    from torchvision.models import get_model_weights

    names = get_model_weights("resnet50").DEFAULT.meta["categories"]
    assert mce.imagenet_mce_reason(names) is None
    assert mce.imagenet_mce_reason(list(reversed(names))) is not None


def test_mce_counts_exactly_the_conditions_the_registry_tags_imagenet_c():
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    from ironsight.robustness import conditions as registry

    names = registry.list_conditions()
    rows = []
    for name in names:
        for i in range(4):
            rows.append({"id": f"i{i}", "kind": "corruption", "condition": name, "severity": 1,
                         "eps": 0.0, "label": i, "prediction": i if i % 2 else 0,
                         "confidence": 0.5, "correct": bool(i % 2) or i == 0})
    report = make(pa.Table.from_pylist(rows), class_names=list(_IMAGENET_CATEGORIES))
    alexnet = report["summary"]["alexnet"]
    tagged = sorted(n for n in names if registry.get_condition(n).imagenet_c)
    assert tagged  # the registry tags some
    assert sorted(alexnet["conditions"] + alexnet["excluded"]) == tagged
    assert set(alexnet["conditions"]) <= set(mce.ALEXNET_IMAGENET_C_ERRORS)
    assert report["summary"]["mce_reason"] is None


# ------------------------------------------------------------------ the whole audit job


@pytest.mark.cluster
def test_audit_with_baseline_pairs_by_id_through_the_predictions_next_to_it(tmp_path):
    """`ironsight audit --baseline A/report.json` reads A/predictions.parquet and compares each
    cell on the same image ids."""
    import ray

    from ironsight.cluster import synthetic
    from ironsight.cluster.models import ModelSource
    from ironsight.cluster.raycluster import connect
    from ironsight.jobs.audit import AuditConfig, resolve_suite, run_audit

    corpus = tmp_path / "eval"
    synthetic.write_corpus(str(corpus), 16, seed=2, rows_per_file=16, row_group_size=16)
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: tiny\nconditions: [gaussian_noise]\nseverities: [1]\nattacks: []\n")

    def audit(out, baseline=None):
        cfg = AuditConfig(
            input=str(corpus), output=str(out), source=ModelSource(name="demo_cnn", random_weights=True),
            suite=resolve_suite(str(suite), None), max_images=16, seed=3, progress=False,
            baseline=baseline, actors=1,
        )
        return run_audit(cfg).report

    if ray.is_initialized():
        ray.shutdown()
    with connect(None, num_cpus=2):
        audit(tmp_path / "a")
        paired = audit(tmp_path / "b", baseline=str(tmp_path / "a" / "report.json"))

    base = paired["summary"]["baseline"]
    assert base["paired"] is True
    keys = {c["key"] for c in base["cells"]}
    assert {"clean", "condition/gaussian_noise/1", "condition/gaussian_noise"} <= keys
    clean = base["clean_change"]  # same model, seed and images: nothing moved
    assert (clean["n"], clean["worse"], clean["better"], clean["verdict"]) == (16, 0, 0, "within noise")
    assert "paired: exact McNemar" in (tmp_path / "b" / "report.md").read_text()


def test_audit_baseline_without_readable_predictions_compares_unpaired(tmp_path):
    """A baseline report.json alone, or next to a corrupt predictions.parquet, gives no
    per-image rows (the report then says "unpaired"); a good one is read back."""
    import pyarrow.parquet as pq

    from ironsight.jobs.audit import _load_baseline_predictions

    (tmp_path / "report.json").write_text("{}")
    assert _load_baseline_predictions(str(tmp_path / "report.json")) is None
    (tmp_path / "predictions.parquet").write_bytes(b"PAR1 not really")
    assert _load_baseline_predictions(str(tmp_path / "report.json")) is None
    pq.write_table(run_table(), tmp_path / "predictions.parquet")
    got = _load_baseline_predictions(str(tmp_path / "report.json"))
    assert got is not None and got.num_rows == len(CELLS) * N
