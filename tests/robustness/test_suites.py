"""Suites: built-ins resolve, YAML files load, bad fields are errors naming field and file."""

from __future__ import annotations

import pytest
import yaml

from ironsight.robustness.attacks import DEFAULT_EPSILONS, default_epsilons, list_attacks
from ironsight.robustness.conditions import SEVERITIES, list_conditions
from ironsight.robustness.suites import AttackSpec, Suite, get_suite, list_suites, load_suite

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


@pytest.mark.parametrize("name", list_suites())
def test_to_dict_round_trips_through_yaml(tmp_path, name):
    suite = get_suite(name)
    path = _write(tmp_path, yaml.safe_dump(suite.to_dict()))
    assert load_suite(path) == suite


@pytest.mark.parametrize(("text", "field", "detail"), [
    ("name: n\nseverity: [1]\n", "severity", "Extra inputs are not permitted"),
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
    ("name: n\nattacks: [{name: pgd, step: 3}]\n", "attacks.0.step", "Extra inputs"),
    ("name: n\nattacks: [{name: fgsm}, {name: pgd, alpha: -1}]\n", "attacks.1.alpha",
     "greater than 0"),
])
def test_bad_yaml_field_names_field_and_file(tmp_path, text, field, detail):
    path = _write(tmp_path, text, "bad-suite.yaml")
    with pytest.raises(ValueError, match=rf"bad-suite\.yaml is invalid: .*{field}: .*{detail}"):
        get_suite(path)


@pytest.mark.parametrize(("text", "match"), [("name: [unclosed\n", "not valid YAML"),
                                             ("- just\n- a list\n", "expected a mapping"),
                                             ("", "is empty")])
def test_malformed_yaml_names_file(tmp_path, text, match):
    path = _write(tmp_path, text, "broken.yaml")
    with pytest.raises(ValueError, match=f"broken.yaml.* {match}"):
        get_suite(path)


def test_unknown_suite_lists_builtins():
    with pytest.raises(ValueError, match="suite 'nightly' unknown; expected one of imagenet-c, "
                                         "quick, standard or the path"):
        get_suite("nightly")


def test_missing_yaml_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        get_suite(str(tmp_path / "nope.yaml"))
