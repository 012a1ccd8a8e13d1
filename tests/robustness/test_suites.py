"""Suites: built-ins resolve, YAML files load, bad fields are errors naming field and file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from ironsight.robustness.attacks import DEFAULT_EPSILONS, default_epsilons, list_attacks
from ironsight.robustness.conditions import SEVERITIES, list_conditions
from ironsight.robustness.suites import (
    FIELD_MIX,
    AttackSpec,
    Suite,
    SuiteError,
    get_suite,
    list_suites,
    load_suite,
)

EXAMPLE = """\
name: nightly
conditions: [low_light, gaussian_noise]   # or "all"
severities: [1, 3, 5]
attacks:
  - {name: pgd, eps: [0, 0.00784], steps: 10}
"""


def _write(tmp_path, text: str, name: str = "suite.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("name", list_suites())
def test_builtin_suites_resolve(name):
    suite = get_suite(name)
    assert suite.name == name
    assert suite.conditions and set(suite.conditions) <= set(list_conditions())
    assert suite.severities and set(suite.severities) <= set(SEVERITIES)
    for attack in suite.attacks:
        assert attack.name in list_attacks()
        assert attack.eps[0] == 0.0 and all(e >= 0 for e in attack.eps)
        assert attack.steps >= 1


def test_quick_suite_contents():
    suite = get_suite("quick")
    assert suite.conditions == ("low_light", "overexposure", "gaussian_blur", "gaussian_noise",
                                "occlusion", "partial_view")
    assert suite.severities == (1, 3, 5)
    assert suite.attacks == (AttackSpec("fgsm", (0.0, 2 / 255, 8 / 255), steps=1),)


def test_standard_suite_is_everything():
    suite = get_suite("standard")
    assert suite.conditions == tuple(list_conditions())
    assert suite.severities == SEVERITIES
    assert [(a.name, a.eps) for a in suite.attacks] == [("fgsm", DEFAULT_EPSILONS),
                                                         ("pgd", DEFAULT_EPSILONS)]


def test_imagenet_c_suite_is_the_15_corruptions_at_5_severities():
    suite = get_suite("imagenet-c")
    assert set(suite.conditions) == {
        "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
        "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
        "elastic_transform", "pixelate", "jpeg_compression"}
    assert suite.severities == SEVERITIES
    assert suite.attacks == ()


@pytest.mark.parametrize("name", list_suites())
def test_autoattack_is_opt_in(name):
    assert "autoattack" not in [a.name for a in get_suite(name).attacks]


def test_autoattack_in_a_suite_file(tmp_path):
    suite = get_suite(_write(tmp_path, "name: aa\nconditions: [contrast]\n"
                                       "attacks: [{name: autoattack, eps: [0.0314]}]\n"))
    assert suite.attacks == (AttackSpec("autoattack", (0.0314,)),)


def test_yaml_suite_loads(tmp_path):
    suite = get_suite(_write(tmp_path, EXAMPLE))
    assert suite == Suite("nightly", ("low_light", "gaussian_noise"), (1, 3, 5),
                          (AttackSpec("pgd", (0.0, 0.00784), steps=10, alpha=None),))


def test_yaml_defaults(tmp_path):
    suite = load_suite(_write(tmp_path, "name: n\nconditions: all\n"
                                        "attacks: [{name: pgd_l2, alpha: 0.1}]\n"))
    assert suite.conditions == tuple(list_conditions())
    assert suite.severities == SEVERITIES
    assert suite.attacks == (AttackSpec("pgd_l2", default_epsilons("pgd_l2"), 10, 0.1),)


def test_early_stop_defaults_to_robustbench_rule_and_can_be_turned_off_per_attack(tmp_path):
    suite = load_suite(_write(tmp_path, "name: n\nconditions: [contrast]\n"
                                        "attacks: [{name: pgd}, {name: fgsm, early_stop: false}]\n"))
    assert [a.early_stop for a in suite.attacks] == [True, False]
    assert [a["early_stop"] for a in suite.to_dict()["attacks"]] == [True, False]
    assert all(a.early_stop for s in list_suites() for a in get_suite(s).attacks)


@pytest.mark.parametrize("name", list_suites())
def test_to_dict_round_trips_through_yaml(tmp_path, name):
    suite = get_suite(name)
    path = _write(tmp_path, yaml.safe_dump(suite.to_dict()))
    assert load_suite(path) == suite


@pytest.mark.parametrize(("text", "field", "detail"), [
    ("name: n\nseverity: [1]\n", "severity", "unknown key; did you mean 'severities'"),
    ("conditions: all\n", "name", "Field required"),
    ("name: n\nconditions: [low_light, hail]\n", "conditions", "'hail' unknown; expected any of"),
    ("name: n\nconditions: most\n", "conditions", 'expected "all" or a list'),
    ("name: n\nconditions: []\n", "conditions", "no conditions"),
    ("name: n\nseverities: [0, 3]\n", "severities", r"\[0\] out of range"),
    ("name: n\nseverities: [3, 3]\n", "severities", "repeat"),
    ("name: n\nseverities: ['3']\n", "severities.0", "valid integer"),
    ("name: n\nattacks: [{name: cw}]\n", "attacks.0.name", "'cw' unknown"),
    ("name: n\nattacks: [{name: pgd, eps: [0, -1]}]\n", "attacks.0.eps", "negative"),
    ("name: n\nattacks: [{name: pgd, steps: 0}]\n", "attacks.0.steps", "greater than or equal"),
    ("name: n\nattacks: [{name: pgd, step: 3}]\n", "attacks.0.step", "unknown key; did you mean 'steps'"),
    ("name: n\nattacks: [{name: fgsm}, {name: pgd, alpha: -1}]\n", "attacks.1.alpha",
     "greater than 0"),
    ("name: n\nattacks: [{name: pgd, early_stop: 'no'}]\n", "attacks.0.early_stop", "valid boolean"),
])
def test_bad_yaml_field_names_field_and_file(tmp_path, text, field, detail):
    path = _write(tmp_path, text, "bad-suite.yaml")
    with pytest.raises(ValueError, match=rf"bad-suite\.yaml: {field}: .*{detail}"):
        get_suite(path)


@pytest.mark.parametrize(("text", "match"), [("name: [unclosed\n", "not valid YAML"),
                                             ("- just\n- a list\n", "expected a YAML mapping"),
                                             ("", "got an empty document")])
def test_malformed_yaml_names_file(tmp_path, text, match):
    path = _write(tmp_path, text, "broken.yaml")
    with pytest.raises(ValueError, match=f"broken.yaml.* {match}"):
        get_suite(path)


def test_unknown_suite_lists_builtins():
    with pytest.raises(ValueError, match="suite 'nightly' unknown; expected one of field, "
                                         "imagenet-c, quick, standard or the path"):
        get_suite("nightly")


def test_missing_yaml_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        get_suite(str(tmp_path / "nope.yaml"))


def test_field_suite_carries_the_documents_mix():
    suite = get_suite("field")
    assert dict(suite.mix) == {"low_light": 0.30, "partial_view": 0.25, "motion_blur": 0.20,
                               "overexposure": 0.15, "noisy_background": 0.10}
    assert suite.mix == FIELD_MIX and suite.conditions == tuple(c for c, _ in FIELD_MIX)
    assert sum(w for _, w in suite.mix) == pytest.approx(1.0)


def test_shipped_field_mix_example_is_the_builtin_field_suite():
    path = Path(__file__).parents[2] / "examples" / "suites" / "field-mix.yaml"
    suite = load_suite(str(path))
    assert suite.name == "field-mix"
    assert dataclasses.replace(suite, name="field") == get_suite("field")


def test_suite_without_mix_has_an_empty_one(tmp_path):
    assert get_suite(_write(tmp_path, EXAMPLE)).mix == ()
    assert "mix" not in get_suite("quick").to_dict()


def test_mix_in_a_suite_file_is_ordered_most_frequent_first(tmp_path):
    suite = get_suite(_write(tmp_path, EXAMPLE + "mix: {gaussian_noise: 0.1, low_light: 0.3}\n"))
    assert suite.mix == (("low_light", 0.3), ("gaussian_noise", 0.1))


def test_mix_weights_may_sum_to_one_up_to_rounding(tmp_path):
    thirds = EXAMPLE.replace("[low_light, gaussian_noise]", "[low_light, gaussian_noise, fog]")
    suite = get_suite(_write(tmp_path, thirds + "mix: {low_light: 0.3333333333333333, "
                             "gaussian_noise: 0.3333333333333333, fog: 0.3333333333333334}\n"))
    assert len(suite.mix) == 3 and sum(w for _, w in suite.mix) == pytest.approx(1.0)


@pytest.mark.parametrize(("mix", "detail"), [
    ("{low_lite: 0.3}", "mix: condition 'low_lite' is not one of the suite's conditions; "
                        "did you mean 'low_light'\\? expected any of low_light, gaussian_noise"),
    ("{fog: 0.3}", "mix: condition 'fog' is not one of the suite's conditions"),
    ("{low_light: 0}", "mix: weight of 'low_light' is 0.0; expected a number > 0"),
    ("{low_light: -0.2}", "mix: weight of 'low_light' is -0.2"),
    ("{low_light: .nan}", "mix: weight of 'low_light' is nan"),
    ("{low_light: 0.7, gaussian_noise: 0.4}", "mix: weights sum to 1.1 > 1"),
    ("{clean: 0.5}", "mix: 'clean' is not a condition; its share is the rest"),
    ("{}", "mix is empty"),
    ("{low_light: high}", "mix.low_light: Input should be a valid number"),
    ("[low_light]", "mix: Input should be a valid dictionary"),
])
def test_bad_mix_names_file_key_and_problem(tmp_path, mix, detail):
    path = _write(tmp_path, EXAMPLE + f"mix: {mix}\n", "bad-mix.yaml")
    with pytest.raises(SuiteError, match=rf"suite file .*bad-mix\.yaml: {detail}"):
        get_suite(path)


def test_doctests_pass():
    import doctest

    from ironsight.robustness import suites

    result = doctest.testmod(suites, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 5 and result.failed == 0
