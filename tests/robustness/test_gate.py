"""Release gate: YAML validation errors, verdicts and the sentences a person reads."""

from __future__ import annotations

import pytest

from ironsight.cluster.errors import InvalidInput
from ironsight.robustness.gate import GateResult, evaluate_gate, load_gate, parse_gate

GATE_YAML = """\
clean_accuracy_min: 0.80
condition_accuracy_min: {default: 0.30, gaussian_noise: 0.20}
attack_accuracy_min: [{attack: fgsm, eps: 0.0078, min: 0.2}]
max_drop_vs_baseline: 0.05
worst_class_accuracy_min: 0.5
ece_max: 0.15
"""


def make_report(clean=0.9, ece=0.05, worst=0.6, noise=(0.5, 0.3), fog=(0.6, 0.4), fgsm=0.3):
    conditions = [
        {"name": "gaussian_noise", "severity": s, "accuracy": a}
        for s, a in zip((1, 5), noise, strict=True)
    ] + [{"name": "fog", "severity": s, "accuracy": a} for s, a in zip((1, 5), fog, strict=True)]
    return {
        "clean": {
            "accuracy": clean,
            "ece": ece,
            "worst_class": {"index": 2, "name": "star", "accuracy": worst},
        },
        "conditions": conditions,
        "attacks": [
            {"name": "fgsm", "eps": 0.0, "accuracy": clean},
            {"name": "fgsm", "eps": 2 / 255, "accuracy": fgsm},
        ],
        "summary": {
            "per_condition": [
                {"name": "gaussian_noise", "mean_accuracy": sum(noise) / 2},
                {"name": "fog", "mean_accuracy": sum(fog) / 2},
            ]
        },
    }


@pytest.fixture
def gate(tmp_path):
    path = tmp_path / "gate.yaml"
    path.write_text(GATE_YAML)
    return load_gate(path)


def test_load_gate_reads_every_field(gate):
    assert gate.clean_accuracy_min == 0.8
    assert gate.condition_accuracy_min == {"default": 0.3, "gaussian_noise": 0.2}
    assert (gate.attack_accuracy_min[0].attack, gate.attack_accuracy_min[0].min) == ("fgsm", 0.2)
    assert (gate.max_drop_vs_baseline, gate.worst_class_accuracy_min, gate.ece_max) == (
        0.05,
        0.5,
        0.15,
    )


@pytest.mark.parametrize(("eps", "value"), [("2/255", 2 / 255), ("0.5", 0.5), (0.25, 0.25)])
def test_attack_eps_accepts_fractions(eps, value):
    gate = parse_gate({"attack_accuracy_min": [{"attack": "pgd", "eps": eps, "min": 0.1}]})
    assert gate.attack_accuracy_min[0].eps == pytest.approx(value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("clean_accuracy: 0.8\n", "clean_accuracy: unknown key; did you mean 'clean_accuracy_min'?"),
        (
            "clean_accuracy_min: 1.5\n",
            "clean_accuracy_min: Input should be less than or equal to 1",
        ),
        (
            "attack_accuracy_min: [{attack: fgsm, eps: 0.01, min: high}]\n",
            "attack_accuracy_min.0.min: Input should be a valid number",
        ),
        (
            "attack_accuracy_min: [{attack: fgsm, eps: 0.01, min: 0.1, steps: 3}]\n",
            "attack_accuracy_min.0.steps: unknown key; did you mean 'eps'? valid keys: attack, eps, min",
        ),
        (
            "attack_accuracy_min: [{attack: fgsm, eps: 2/0, min: 0.1}]\n",
            "attack_accuracy_min.0.eps: eps '2/0' is not a number or a fraction",
        ),
        ("condition_accuracy_min: {fog: 3}\n", "floor for 'fog' is 3.0; accuracies are in [0, 1]"),
        ("condition_accuracy_min: {fog: low}\n", "condition_accuracy_min.fog: Input should be"),
        ("- 0.8\n", "expected a YAML mapping (thresholds"),
        ("ece_max: [0.1\n", "is not valid YAML"),
    ],
)
def test_load_gate_errors_name_file_and_field(tmp_path, text, message):
    path = tmp_path / "bad-gate.yaml"
    path.write_text(text)
    with pytest.raises(InvalidInput) as err:
        load_gate(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_load_gate_missing_file(tmp_path):
    with pytest.raises(InvalidInput, match="does not exist"):
        load_gate(tmp_path / "nope.yaml")


def test_all_checks_pass(gate):
    baseline = make_report()
    result = evaluate_gate(make_report(), gate, baseline)
    assert result.passed and result.failed == [] and result.skipped == []
    # clean, 4 condition cells, 1 attack, 3 baseline drops, worst class, ece
    assert len(result.checks) == 11


@pytest.mark.parametrize(
    ("report_kw", "message"),
    [
        ({"clean": 0.7}, "clean: accuracy 0.70 is below the floor 0.80"),
        (
            {"noise": (0.5, 0.12)},
            "gaussian_noise severity 5: accuracy 0.12 is below the floor 0.20",
        ),
        ({"fog": (0.6, 0.25)}, "fog severity 5: accuracy 0.25 is below the floor 0.30"),
        ({"fog": (0.6, 0.2999)}, "fog severity 5: accuracy 0.2999 is below the floor 0.3000"),
        ({"fgsm": 0.1}, "fgsm at eps 2.0/255: accuracy 0.10 is below the floor 0.20"),
        ({"worst": 0.4}, "worst clean class (star): accuracy 0.40 is below the floor 0.50"),
        ({"ece": 0.2}, "clean ECE 0.20 is above the maximum 0.15"),
    ],
)
def test_failed_check_message(gate, report_kw, message):
    report = make_report(**report_kw)
    result = evaluate_gate(report, gate, report)  # its own baseline: no drop
    assert not result.passed
    assert [c.message for c in result.failed] == [message]


def test_noise_floor_overrides_default(gate):
    # 0.25 is below the default 0.30 but above gaussian_noise's own floor 0.20
    assert evaluate_gate(make_report(noise=(0.5, 0.25)), gate, make_report()).passed


def test_baseline_check_skipped_without_baseline(gate):
    result = evaluate_gate(make_report(), gate, None)
    assert result.passed
    assert [c.name for c in result.skipped] == ["max_drop_vs_baseline"]
    assert "skipped, no baseline report was given" in result.skipped[0].message


@pytest.mark.parametrize(
    ("report_kw", "message"),
    [
        (
            {"clean": 0.84},
            "clean accuracy: dropped 0.06 from 0.90 to 0.84, more than the allowed 0.05",
        ),
        (
            {"fog": (0.5, 0.4)},
            "fog mean accuracy: dropped 0.05 from 0.50 to 0.45, more than the allowed 0.05",
        ),
    ],
)
def test_drop_vs_baseline(report_kw, message):
    gate = parse_gate({"max_drop_vs_baseline": 0.04})
    result = evaluate_gate(make_report(**report_kw), gate, make_report())
    assert message.replace("allowed 0.05", "allowed 0.04") in [c.message for c in result.failed]


def test_drop_exactly_at_the_limit_passes():
    gate = parse_gate({"max_drop_vs_baseline": 0.05})
    assert evaluate_gate(make_report(fog=(0.5, 0.4)), gate, make_report()).passed


def test_floor_for_unaudited_condition_fails():
    gate = parse_gate({"condition_accuracy_min": {"gausian_noise": 0.2}})
    result = evaluate_gate(make_report(), gate)
    assert not result.passed
    assert result.failed[0].message.startswith(
        "condition_accuracy_min names 'gausian_noise' but the report has no such condition "
        "(audited: fog, gaussian_noise)"
    )


def test_attack_eps_not_in_report_fails_and_lists_what_ran():
    gate = parse_gate({"attack_accuracy_min": [{"attack": "fgsm", "eps": "8/255", "min": 0.1}]})
    (check,) = evaluate_gate(make_report(), gate).failed
    assert check.message == (
        "fgsm at eps 8.0/255: not in the report (this attack ran at: 0.0/255, 2.0/255); "
        "add the eps to the suite or fix the gate"
    )


def test_undefined_accuracy_fails_instead_of_passing():
    gate = parse_gate({"clean_accuracy_min": 0.5})
    (check,) = evaluate_gate(make_report(clean=None), gate).failed
    assert "cannot be verified" in check.message


def test_empty_gate_passes_with_no_checks():
    assert evaluate_gate(make_report(), parse_gate({})) == GateResult(passed=True, checks=[])


def test_to_dict_lists_failed_skipped_and_all(gate):
    d = evaluate_gate(make_report(clean=0.7), gate).to_dict()
    assert d["passed"] is False
    assert [c["name"] for c in d["failed"]] == ["clean_accuracy_min"]
    assert [c["name"] for c in d["skipped"]] == ["max_drop_vs_baseline"]
    assert len(d["checks"]) == 9
    assert set(d["checks"][0]) == {"name", "passed", "message", "skipped"}


def test_drop_uses_the_comparison_stored_in_the_report():
    report = make_report(clean=0.8)
    report["summary"]["baseline"] = {
        "clean_accuracy": 0.9,
        "per_condition": {"fog": {"baseline_mean_accuracy": 0.5}},
    }
    result = evaluate_gate(report, parse_gate({"max_drop_vs_baseline": 0.05}))
    assert [c.message for c in result.failed] == [
        "clean accuracy: dropped 0.10 from 0.90 to 0.80, more than the allowed 0.05"
    ]
    assert [c.name for c in result.skipped] == ["max_drop_vs_baseline.gaussian_noise"]


def test_significance_without_max_drop_is_refused(tmp_path):
    path = tmp_path / "gate.yaml"
    path.write_text("significance: 0.05\n")
    with pytest.raises(InvalidInput, match="significance only applies to max_drop_vs_baseline") as err:
        load_gate(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.1])
def test_significance_must_be_a_level_between_0_and_1(value):
    with pytest.raises(InvalidInput, match="significance"):
        parse_gate({"max_drop_vs_baseline": 0.02, "significance": value})


def test_significance_without_image_counts_judges_by_the_drop_alone():
    # these reports carry accuracies but no n: nothing to test, so the drop decides
    gate = parse_gate({"max_drop_vs_baseline": 0.04, "significance": 0.05})
    result = evaluate_gate(make_report(clean=0.84), gate, make_report())
    assert [c.message for c in result.failed] == [
        "clean accuracy: dropped 0.06 from 0.90 to 0.84, more than the allowed 0.04 "
        "(no image counts to test significance: judged by the drop alone)"
    ]
