"""Objectives: the grammar, did-you-mean errors (exit 2), feasibility, ties and reasons."""

from __future__ import annotations

import doctest

import pytest

from ironsight.cluster.errors import InvalidInput
from ironsight.robustness import objective as objective_mod
from ironsight.robustness.objective import METRICS, parse_objective

ROWS = [
    {"model": "resnet", "accuracy": 0.93, "mix_accuracy": 0.80, "p95_ms": 30.0, "memory_mb": 900.0,
     "params_m": 25.0, "images_per_s": 200.0},
    {"model": "mobilenet", "accuracy": 0.90, "mix_accuracy": 0.82, "p95_ms": 9.0, "memory_mb": 300.0,
     "params_m": 5.0, "images_per_s": 900.0},
    {"model": "squeeze", "accuracy": 0.90, "mix_accuracy": None, "p95_ms": 7.0, "memory_mb": 250.0,
     "params_m": 1.2, "images_per_s": 1200.0},
]


def test_doctests_pass():
    result = doctest.testmod(objective_mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 8 and result.failed == 0


def test_metric_names_are_the_contracts_ranking_keys():
    assert METRICS == ("accuracy", "corruption_accuracy", "robust_accuracy", "mix_accuracy", "f1",
                       "p50_ms", "p95_ms", "images_per_s", "memory_mb", "params_m", "gflops")


def test_unconstrained_max_and_min():
    assert parse_objective("max accuracy").choose(ROWS).ranked == ["resnet", "squeeze", "mobilenet"]
    rec = parse_objective("min memory_mb").choose(ROWS)
    assert rec.winner == "squeeze" and rec.feasible == ["resnet", "mobilenet", "squeeze"]
    assert parse_objective("max images_per_s").choose(ROWS).winner == "squeeze"


def test_constraint_rules_out_slow_models():
    rec = parse_objective("max accuracy s.t. p95_ms <= 20").choose(ROWS)
    assert rec.feasible == ["mobilenet", "squeeze"]
    # mobilenet and squeeze tie on accuracy: the faster one (p95_ms, the next metric) wins
    assert rec.winner == "squeeze" and rec.ranked == ["squeeze", "mobilenet"]
    assert "tied on accuracy with mobilenet, it wins on p95_ms (7 vs 9)" in rec.reason
    assert rec.reason.count(".") <= 2 and rec.reason.endswith(".")


def test_a_row_without_the_constrained_metric_is_infeasible():
    rec = parse_objective("max accuracy s.t. mix_accuracy >= 0.5").choose(ROWS)
    assert rec.feasible == ["resnet", "mobilenet"] and rec.winner == "resnet"


def test_a_row_without_the_objective_metric_is_not_ranked():
    rec = parse_objective("max mix_accuracy s.t. memory_mb <= 500 and p95_ms <= 50").choose(ROWS)
    assert rec.winner == "mobilenet" and rec.ranked == ["mobilenet"]


def test_no_feasible_row_names_the_closest():
    rec = parse_objective("max accuracy s.t. p95_ms <= 5").choose(ROWS)
    assert rec.winner is None and rec.feasible == [] and rec.ranked == []
    assert rec.reason == "No model meets p95_ms <= 5; the closest is squeeze (p95_ms 7)."


def test_objective_metric_missing_everywhere_is_invalid_input():
    rows = [{**r, "mix_accuracy": None} for r in ROWS]
    with pytest.raises(InvalidInput, match="no model has a value for 'mix_accuracy'.*--suite field") as exc:
        parse_objective("max mix_accuracy").choose(rows)
    assert exc.value.exit_code == 2


@pytest.mark.parametrize(("text", "value"), [
    ("max accuracy s.t. p95 <= 20 ms", 20.0),
    ("max accuracy s.t. p95_ms<=0.02s", 20.0),
    ("max accuracy, p95_ms <= 20", None),  # comma without s.t. is malformed
])
def test_units_and_aliases(text, value):
    if value is None:
        with pytest.raises(InvalidInput, match="expected \"s.t.\""):
            parse_objective(text)
    else:
        (c,) = parse_objective(text).constraints
        assert (c.metric, c.op, c.value) == ("p95_ms", "<=", pytest.approx(value))


def test_several_constraints_with_and_or_commas():
    o = parse_objective("maximize f1 subject to memory_mb < 1 GiB, params_m <= 10 and accuracy == 0.9")
    assert [str(c) for c in o.constraints] == ["memory_mb < 1024", "params_m <= 10", "accuracy == 0.9"]
    assert o.sense == "max" and o.metric == "f1"


def test_equality_tolerates_float_rounding():
    o = parse_objective("min p95_ms s.t. accuracy == 0.3")
    assert o.choose([{"model": "a", "accuracy": 0.1 + 0.2, "p95_ms": 1.0}]).winner == "a"


@pytest.mark.parametrize(("text", "match"), [
    ("", "objective is empty"),
    ("maximum accuracy", "must start with max or min"),
    ("accuracy", "must start with max or min"),
    ("max acc", "metric 'acc' unknown"),
    ("max accuracy s.t. p59_ms <= 3", "metric 'p59_ms' unknown; did you mean 'p95_ms'"),
    ("max accuracy s.t. latency <= 20", "metric 'latency' unknown; expected one of accuracy"),
    ("max accuracy s.t. p95_ms =< 20", "constraint 'p95_ms =< 20' is not METRIC OP NUMBER"),
    ("max accuracy s.t. p95_ms <= fast", "is not METRIC OP NUMBER"),
    ("max accuracy s.t. p95_ms <= 20 MB", "unit 'MB' does not fit p95_ms; expected ms or s"),
    ("max accuracy if p95_ms <= 20", "expected \"s.t.\""),
])
def test_bad_objectives_are_invalid_input_naming_the_problem(text, match):
    with pytest.raises(InvalidInput, match=match):
        parse_objective(text)
