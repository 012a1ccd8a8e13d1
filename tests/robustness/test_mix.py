"""Expected accuracy under an operating-condition mix: the formula against a direct
computation on a hand-made predictions table, and the interval's coverage in a simulation."""

from __future__ import annotations

import doctest

import numpy as np
import pyarrow as pa
import pytest

from ironsight.cluster.errors import InvalidInput
from ironsight.robustness import mix as mix_mod
from ironsight.robustness.mix import check_mix, expected_accuracy
from ironsight.robustness.schema import PREDICTIONS_SCHEMA, validate_predictions
from ironsight.robustness.stats import weighted_sum_interval


def _table(rows: list[tuple]) -> pa.Table:
    """Rows (id, kind, condition, severity, label, correct) -> a full predictions table."""
    cols = {name: [] for name in PREDICTIONS_SCHEMA.names}
    for id_, kind, cond, sev, label, correct in rows:
        cols["id"].append(id_)
        cols["kind"].append(kind)
        cols["condition"].append(cond)
        cols["severity"].append(sev)
        cols["eps"].append(0.0)
        cols["label"].append(label)
        cols["prediction"].append(label if correct else (label + 1) % 3)
        cols["confidence"].append(0.9)
        cols["correct"].append(bool(correct) and label >= 0)
    return validate_predictions(pa.table(cols), num_classes=3)


# 6 images; clean: 5/6 right; low_light at severities 1 and 3; fog at severity 2 only;
# image f is unlabeled (label -1) and must count nowhere; one attack row must be ignored.
HAND = _table(
    [(i, "clean", "clean", 0, 1, ok) for i, ok in zip("abcde", [1, 1, 1, 1, 0], strict=True)]
    + [("f", "clean", "clean", 0, -1, 0)]
    + [(i, "corruption", "low_light", 1, 1, ok) for i, ok in zip("abcde", [1, 1, 1, 0, 0], strict=True)]
    + [(i, "corruption", "low_light", 3, 1, ok) for i, ok in zip("abcde", [1, 0, 0, 0, 0], strict=True)]
    + [("f", "corruption", "low_light", 1, -1, 0)]
    + [(i, "corruption", "fog", 2, 1, ok) for i, ok in zip("abcde", [1, 1, 1, 1, 1], strict=True)]
    + [("a", "attack", "fgsm", 0, 1, 0)]
)


def test_doctests_pass():
    result = doctest.testmod(mix_mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 3 and result.failed == 0


def test_expected_accuracy_equals_the_direct_computation():
    m = expected_accuracy(HAND, (("low_light", 0.5), ("fog", 0.2)))
    clean, low_light, fog = 4 / 5, (3 + 1) / 10, 5 / 5  # pooled over severities; f unlabeled
    assert m["mix"] == pytest.approx({"clean": 0.3, "low_light": 0.5, "fog": 0.2})
    assert m["per_condition"] == pytest.approx({"clean": clean, "low_light": low_light, "fog": fog})
    assert m["n"] == {"clean": 5, "low_light": 5, "fog": 5}
    assert m["accuracy"] == pytest.approx(0.3 * clean + 0.5 * low_light + 0.2 * fog)
    assert m["low"] < m["accuracy"] < m["high"] <= 1.0


def test_interval_lies_between_independent_and_fully_correlated_parts():
    m = expected_accuracy(HAND, (("low_light", 0.5), ("fog", 0.2)))
    parts = [(0.3, 4, 5), (0.5, 2.0, 5), (0.2, 5, 5)]  # k of low_light: per-image means summed
    _, lo_ind, hi_ind = weighted_sum_interval(parts)
    _, lo_one, hi_one = weighted_sum_interval(parts, corr=[[1] * 3] * 3)
    assert lo_one - 1e-12 <= m["low"] <= lo_ind + 1e-12
    assert hi_ind - 1e-12 <= m["high"] <= hi_one + 1e-12


def test_a_mix_without_clean_share_and_an_empty_mix():
    m = expected_accuracy(HAND, (("fog", 1.0),))
    assert m["mix"]["clean"] == 0.0 and m["accuracy"] == pytest.approx(1.0) and m["high"] == 1.0
    assert m["low"] < 1.0  # 5 of 5 is not a certainty
    assert expected_accuracy(HAND, ()) is None


def test_a_condition_without_rows_leaves_the_accuracy_undefined():
    m = expected_accuracy(HAND, (("snow", 0.1),))
    assert m["per_condition"]["snow"] is None and m["n"]["snow"] == 0
    assert m["accuracy"] is None and m["low"] is None and m["high"] is None
    assert m["per_condition"]["clean"] == pytest.approx(0.8)


@pytest.mark.parametrize(("mix", "match"), [
    ({"low_lite": 0.3}, "did you mean 'low_light'"),
    ({"low_light": 0.0}, "expected a number > 0"),
    ({"low_light": True}, "expected a number > 0"),
    ({"low_light": 0.6, "fog": 0.41}, "sum to 1.01 > 1"),
    ({"clean": 0.2}, "'clean' is not a condition"),
    ([("fog", 0.1), ("fog", 0.2)], "appears twice"),
    ({}, "is empty"),
])
def test_check_mix_refuses_with_a_plain_message(mix, match):
    with pytest.raises(InvalidInput, match=match):
        check_mix(mix, ["fog", "low_light"])


def test_check_mix_accepts_rounding_in_the_sum():
    assert len(check_mix({"fog": 0.1, "low_light": 0.2, "snow": 0.7}, ["fog", "low_light", "snow"])) == 3


def _simulated_table(rng: np.random.Generator, n: int, accs: dict[str, float]) -> pa.Table:
    """n images with a latent difficulty shared by every condition (correlated correctness)."""
    easy = rng.random(n)  # the same image is easy or hard in every condition
    ids = [f"i{j}" for j in range(n)]
    cols = {k: [] for k in ("id", "kind", "condition", "severity", "label", "correct")}
    for cond, acc in accs.items():
        kind = "clean" if cond == "clean" else "corruption"
        for sev in ((0,) if cond == "clean" else (1, 3)):
            # P(correct) = acc on average over images, higher for easy ones
            p = np.clip(acc + 0.6 * (easy - 0.5) * min(acc, 1 - acc) * 2, 0, 1)
            ok = rng.random(n) < p
            cols["id"] += ids
            cols["kind"] += [kind] * n
            cols["condition"] += [cond] * n
            cols["severity"] += [sev] * n
            cols["label"] += [0] * n
            cols["correct"] += ok.tolist()
    return pa.table(cols)


def test_interval_covers_the_true_expected_accuracy_in_a_simulation():
    accs = {"clean": 0.9, "low_light": 0.6, "fog": 0.75}
    mix = (("low_light", 0.4), ("fog", 0.3))
    truth = 0.3 * accs["clean"] + 0.4 * accs["low_light"] + 0.3 * accs["fog"]
    rng = np.random.default_rng(0)
    runs, hits, widths = 300, 0, []
    for _ in range(runs):
        m = expected_accuracy(_simulated_table(rng, 60, accs), mix)
        hits += m["low"] <= truth <= m["high"]
        widths.append(m["high"] - m["low"])
    assert hits / runs >= 0.93, hits / runs
    assert np.mean(widths) < 0.3  # an interval, not [0, 1]
