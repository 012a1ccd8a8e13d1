"""Metrics against small tables computed by hand (the numbers in comments are the hand sums)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ironsight.cluster.errors import InvalidInput
from ironsight.robustness import mce, metrics, stats
from ironsight.robustness.schema import PREDICTIONS_SCHEMA, validate_predictions

CLASS_NAMES = ["a", "b", "c"]
LABELS = {"i0": 0, "i1": 1, "i2": 2, "i3": 0}
CLEAN_PRED = {"i0": 0, "i1": 1, "i2": 0, "i3": 0}  # i2 wrong: accuracy 3/4


def make_table(cells, labels=LABELS) -> pa.Table:
    """cells: list of (kind, condition, severity, eps, {id: prediction}, {id: confidence})."""
    rows = []
    for kind, condition, severity, eps, preds, confs in cells:
        for i, pred in preds.items():
            rows.append(
                {
                    "id": i,
                    "kind": kind,
                    "condition": condition,
                    "severity": severity,
                    "eps": eps,
                    "label": labels[i],
                    "prediction": pred,
                    "confidence": confs.get(i, 0.5),
                    "correct": labels[i] >= 0 and pred == labels[i],
                }
            )
    return validate_predictions(pa.Table.from_pylist(rows), num_classes=len(CLASS_NAMES))


CLEAN = ("clean", "clean", 0, 0.0, CLEAN_PRED, {"i0": 0.9, "i1": 0.8, "i2": 0.6, "i3": 0.7})
FOG1 = ("corruption", "fog", 1, 0.0, {"i0": 0, "i1": 2, "i2": 2, "i3": 1}, {})  # acc 2/4, 3 flips
FOG2 = ("corruption", "fog", 2, 0.0, {"i0": 1, "i1": 1, "i2": 1, "i3": 1}, {})  # acc 1/4, 3 flips
NOISE1 = ("corruption", "noise", 1, 0.0, dict(CLEAN_PRED), {})  # acc 3/4, no flips
PGD0 = ("attack", "pgd", 0, 0.0, dict(CLEAN_PRED), {})
PGD4 = ("attack", "pgd", 0, 4 / 255, {"i0": 1, "i1": 0, "i2": 0, "i3": 0}, {})  # acc 1/4
FGSM2 = ("attack", "fgsm", 0, 2 / 255, {"i0": 0, "i1": 0, "i2": 2, "i3": 1}, {})  # acc 2/4


@pytest.fixture
def table():
    return make_table([CLEAN, FOG1, FOG2, NOISE1, PGD0, PGD4, FGSM2])


def test_clean_accuracy_ignores_other_kinds(table):
    assert metrics.clean_metrics(table, CLASS_NAMES)["accuracy"] == 0.75


def test_clean_confusion_matrix(table):
    assert metrics.clean_metrics(table, CLASS_NAMES)["confusion_matrix"] == [
        [2, 0, 0],
        [0, 1, 0],
        [1, 0, 0],
    ]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("precision", [2 / 3, 1.0, 0.0]),  # class c is never predicted: precision 0
        ("recall", [1.0, 1.0, 0.0]),
        ("f1", [0.8, 1.0, 0.0]),  # 2 * (2/3 * 1) / (2/3 + 1) = 0.8
        ("per_class_accuracy", [1.0, 1.0, 0.0]),
        ("support", [2, 1, 1]),
    ],
)
def test_clean_per_class(table, key, expected):
    assert metrics.clean_metrics(table, CLASS_NAMES)[key] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("key", "expected"),
    [("macro_precision", (2 / 3 + 1) / 3), ("macro_recall", 2 / 3), ("macro_f1", 0.6)],
)
def test_clean_macro(table, key, expected):
    assert metrics.clean_metrics(table, CLASS_NAMES)[key] == pytest.approx(expected)


def _core(worst: dict) -> dict:
    """The worst-class keys reports had before intervals; the interval is checked apart."""
    assert worst["ci95"] == list(stats.wilson_interval(worst["correct"], worst["n"]))
    assert worst["n_labeled"] == worst["n"]
    return {k: worst[k] for k in ("index", "name", "accuracy")}


def test_clean_worst_class(table):
    assert _core(metrics.clean_metrics(table, CLASS_NAMES)["worst_class"]) == {
        "index": 2,
        "name": "c",
        "accuracy": 0.0,
    }


def test_clean_ece_each_row_in_its_own_bin(table):
    # |1-0.9| + |1-0.8| + |0-0.6| + |1-0.7| = 1.2, over 4 rows
    assert metrics.clean_metrics(table, CLASS_NAMES)["ece"] == pytest.approx(0.3, abs=1e-6)


@pytest.mark.parametrize(
    ("conf", "correct", "expected"),
    [
        ([0.9, 0.9], [True, False], 0.4),  # one bin: acc 0.5, conf 0.9
        ([0.61, 0.65], [True, True], 0.37),  # one bin (0.6, 0.667]: acc 1, conf 0.63
        ([0.0, 1.0], [False, True], 0.0),  # edges: 0 goes to the first bin, 1 to the last
        ([0.5, 0.95], [True, False], 0.725),  # (0.5 + 0.95) / 2
    ],
)
def test_ece_hand_computed(conf, correct, expected):
    got = metrics.expected_calibration_error(np.array(conf), np.array(correct))
    assert got == pytest.approx(expected)


def test_ece_uses_15_bins():
    # 0.61 and 0.68 share a bin with 10 bins but not with 15 ((0.6, 0.667] vs (0.667, 0.733])
    conf, correct = np.array([0.61, 0.68]), np.array([True, False])
    assert metrics.expected_calibration_error(conf, correct) == pytest.approx((0.39 + 0.68) / 2)
    assert metrics.expected_calibration_error(conf, correct, n_bins=10) == pytest.approx(
        abs(0.5 - 0.645)
    )


@pytest.mark.parametrize(
    ("name", "severity", "accuracy", "flip_rate", "worst"),
    [
        ("fog", 1, 0.5, 0.75, {"index": 1, "name": "b", "accuracy": 0.0}),
        ("fog", 2, 0.25, 0.75, {"index": 0, "name": "a", "accuracy": 0.0}),
        ("noise", 1, 0.75, 0.0, {"index": 2, "name": "c", "accuracy": 0.0}),
    ],
)
def test_condition_cells(table, name, severity, accuracy, flip_rate, worst):
    cells = metrics.condition_metrics(table, CLASS_NAMES)
    (cell,) = [c for c in cells if c["name"] == name and c["severity"] == severity]
    assert (cell["n"], cell["accuracy"], cell["flip_rate"], _core(cell["worst_class"])) == (
        4,
        accuracy,
        flip_rate,
        worst,
    )


def test_conditions_sorted_by_name_then_severity(table):
    cells = metrics.condition_metrics(table, CLASS_NAMES)
    assert [(c["name"], c["severity"]) for c in cells] == [("fog", 1), ("fog", 2), ("noise", 1)]


def test_mean_corruption_accuracy(table):
    cells = metrics.condition_metrics(table, CLASS_NAMES)
    # fog: (0.5 + 0.25) / 2 = 0.375; noise: 0.75; mean of the two: 0.5625
    assert metrics.mean_corruption_accuracy(cells) == pytest.approx(0.5625)


def test_per_condition_worst_class_pools_severities(table):
    cells = metrics.condition_metrics(table, CLASS_NAMES)
    per = {p["name"]: p for p in metrics.per_condition_summary(table, cells, CLASS_NAMES)}
    # fog pooled: class a 1/4, class b 1/2, class c 1/2
    assert _core(per["fog"]["worst_class"]) == {"index": 0, "name": "a", "accuracy": 0.25}
    assert (per["fog"]["worst_class"]["correct"], per["fog"]["worst_class"]["n"]) == (1, 4)
    assert per["fog"]["mean_accuracy"] == pytest.approx(0.375)


def test_flip_rate_needs_no_labels():
    unlabeled = {i: -1 for i in LABELS}
    t = make_table([CLEAN, FOG1], labels=unlabeled)
    (cell,) = metrics.condition_metrics(t, CLASS_NAMES)
    assert (cell["accuracy"], cell["flip_rate"], cell["worst_class"]) == (None, 0.75, None)


@pytest.mark.parametrize(
    ("name", "eps", "accuracy", "success_rate", "n_initially_correct"),
    [
        ("pgd", 0.0, 0.75, 0.0, 3),
        ("pgd", 4 / 255, 0.25, 2 / 3, 3),  # of i0, i1, i3 (correct at eps 0), i0 and i1 fall
        ("fgsm", 2 / 255, 0.5, 2 / 3, 3),  # no eps 0 row: clean decides; i2 right now, not counted
    ],
)
def test_attack_metrics(table, name, eps, accuracy, success_rate, n_initially_correct):
    (row,) = [a for a in metrics.attack_metrics(table) if a["name"] == name and a["eps"] == eps]
    assert row["accuracy"] == accuracy
    assert row["success_rate"] == pytest.approx(success_rate)
    assert row["n_initially_correct"] == n_initially_correct


def test_gradient_masking_warns_only_above_chance(table):
    warnings = metrics.gradient_masking_warnings(metrics.attack_metrics(table), 3)
    assert len(warnings) == 1  # fgsm stays at 0.5 > 1/3; pgd drops to 0.25
    assert warnings[0].startswith("fgsm: accuracy at the largest eps (2.0/255")
    assert "above chance (0.333)" in warnings[0] and "masked" in warnings[0]


BASELINE = {
    "clean": {"accuracy": 0.8},
    "conditions": [
        {"name": "fog", "severity": 1, "accuracy": 0.6},
        {"name": "fog", "severity": 2, "accuracy": 0.5},
        {"name": "noise", "severity": 1, "accuracy": 0.5},
    ],
}


@pytest.fixture
def comparison(table):
    cells = metrics.condition_metrics(table, CLASS_NAMES)
    return mce.compare_to_baseline(0.75, cells, BASELINE)


@pytest.mark.parametrize(
    ("condition", "key", "expected"),
    [
        ("fog", "ce", (0.5 + 0.75) / (0.4 + 0.5)),
        ("noise", "ce", 0.25 / 0.5),
        # relative: (E - E_clean) / (E_base - E_base_clean), clean errors 0.25 and 0.2
        ("fog", "relative_ce", (0.25 + 0.5) / (0.2 + 0.3)),
        ("noise", "relative_ce", 0.0),
        ("fog", "accuracy_change", 0.375 - 0.55),
        ("noise", "accuracy_change", 0.25),
    ],
)
def test_baseline_per_condition(comparison, condition, key, expected):
    assert comparison["per_condition"][condition][key] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("mce", ((1.25 / 0.9) + 0.5) / 2),
        ("relative_mce", (1.5 + 0.0) / 2),
        ("clean_accuracy_change", -0.05),
    ],
)
def test_baseline_summary(comparison, key, expected):
    assert comparison[key] == pytest.approx(expected)


def test_ce_matches_only_common_severities():
    got = mce.corruption_errors({"fog": {1: 0.2, 5: 0.9}}, {"fog": {1: 0.4, 2: 0.5}})
    assert got == {"fog": {"ce": 0.5, "relative_ce": None}}


def test_ce_zero_baseline_error_is_undefined_not_inf():
    assert mce.corruption_errors({"fog": {1: 0.2}}, {"fog": {1: 0.0}})["fog"]["ce"] is None


# Per-corruption means published for AlexNet (open-mmlab/mmpretrain,
# mmcls/evaluation/metrics/corruption_error.py): guards the per-severity table against typos.
@pytest.mark.parametrize(
    ("condition", "mean_error"),
    [
        ("gaussian_noise", 0.886428),
        ("shot_noise", 0.894468),
        ("impulse_noise", 0.922640),
        ("defocus_blur", 0.819880),
        ("glass_blur", 0.826268),
        ("motion_blur", 0.785948),
        ("zoom_blur", 0.798360),
        ("snow", 0.866816),
        ("frost", 0.826572),
        ("fog", 0.819324),
    ],
)
def test_alexnet_table_matches_published_means(condition, mean_error):
    assert np.mean(mce.ALEXNET_IMAGENET_C_ERRORS[condition]) == pytest.approx(mean_error)


def test_alexnet_mce_only_counts_imagenet_c_conditions():
    cells = [{"name": "gaussian_noise", "severity": s, "accuracy": 0.0} for s in range(1, 6)]
    cells += [{"name": "fog", "severity": 1, "accuracy": 0.5}]
    cells += [{"name": "my_blur", "severity": 1, "accuracy": 0.0}]
    got = mce.alexnet_mce(cells, ["gaussian_noise", "fog", "my_blur"])
    ce_noise = 5 / sum(mce.ALEXNET_IMAGENET_C_ERRORS["gaussian_noise"])
    ce_fog = 0.5 / mce.ALEXNET_IMAGENET_C_ERRORS["fog"][0]
    assert got["conditions"] == ["fog", "gaussian_noise"]
    assert got["excluded"] == ["my_blur"]
    assert got["mce"] == pytest.approx((ce_noise + ce_fog) / 2)


def test_alexnet_mce_none_without_imagenet_c_conditions():
    assert mce.alexnet_mce([{"name": "fog", "severity": 1, "accuracy": 0.5}], []) is None


def _valid_rows():
    return {
        "id": ["x"],
        "kind": ["clean"],
        "condition": ["clean"],
        "severity": [0],
        "eps": [0.0],
        "label": [0],
        "prediction": [0],
        "confidence": [0.9],
        "correct": [True],
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"label": None}, "column 'label' is missing"),
        ({"kind": ["noisy"]}, "column 'kind' has unknown value(s) ['noisy']"),
        ({"prediction": [7]}, "column 'prediction' has values outside [0, 2]"),
        ({"label": [-2]}, "column 'label' has values outside [-1, 2]"),
        ({"severity": ["high"]}, "column 'severity' is string in predictions; expected int32"),
    ],
)
def test_validate_predictions_errors_name_the_column(change, message):
    rows = _valid_rows()
    for key, value in change.items():
        if value is None:
            del rows[key]
        else:
            rows[key] = value
    with pytest.raises(InvalidInput) as err:
        validate_predictions(pa.table(rows), num_classes=3)
    assert message in str(err.value)


def test_validate_predictions_casts_to_schema():
    assert validate_predictions(pa.table(_valid_rows()), num_classes=3).schema == PREDICTIONS_SCHEMA
