"""Audit suites: which conditions, severities and attacks an audit runs.

Four are built in (:func:`list_suites`); any other is a YAML file, validated strictly (unknown
keys, unknown conditions or attacks, out-of-range values are errors naming the field and the
file):

```yaml
name: nightly
conditions: [low_light, gaussian_noise]   # or "all" (every registered condition)
severities: [1, 3, 5]                     # default: all of SEVERITIES
attacks:                                  # default: none
  - {name: pgd, eps: [0, 0.00784], steps: 10}   # eps default: the attack's default sweep
  - {name: fgsm}                                 # alpha default: 2.5 * eps / steps
  - {name: pgd_l2, early_stop: false}            # default true: RobustBench's rule, below
mix:                                      # optional: how often each condition occurs in
  low_light: 0.30                         # production; the rest (here 0.70) is clean
```

``early_stop`` (default true): an image counts as fooled at a budget once any iterate the attack
tried within it was misclassified; images wrong clean are not attacked, PGD stops on an image at
its first misclassified iterate, and an example found at a smaller budget is kept for the larger
ones (:mod:`ironsight.robustness.attack_sweep`; most of an undefended model's attack time).
``false``: every image at every budget to the last iterate, as a torchattacks loop does (its
accuracies are the same or higher).

``mix`` names conditions of the suite, each with a weight > 0, weights summing to at most 1;
the audit and ``ironsight compare`` then report the expected accuracy under that mix, with its
interval (:func:`ironsight.robustness.mix.expected_accuracy`).

| suite      | conditions                              | severities | attacks                          |
|------------|-----------------------------------------|------------|----------------------------------|
| quick      | low_light, overexposure, gaussian_blur, | 1, 3, 5    | fgsm at 0, 2/255, 8/255          |
|            | gaussian_noise, occlusion, partial_view |            |                                  |
| standard   | every registered condition              | 1 to 5     | fgsm and pgd (10 steps) over     |
|            |                                         |            | DEFAULT_EPSILONS                 |
| imagenet-c | ImageNet-C's 15 corruptions             | 1 to 5     | none                             |
|            | (conditions.IMAGENET_C_CONDITIONS)      |            |                                  |
| field      | low_light, partial_view, motion_blur,   | 1, 3, 5    | fgsm at 0, 2/255, 8/255          |
|            | overexposure, noisy_background; mix     |            |                                  |
|            | 0.30/0.25/0.20/0.15/0.10 (FIELD_MIX)    |            |                                  |

``autoattack`` (RobustBench's standard attack) is in no built-in suite: it costs hundreds to
thousands of model passes per image (see ``ironsight.robustness.attacks``); list it in a
suite file, e.g. ``- {name: autoattack, eps: [0.0314]}``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ironsight.cluster.errors import InvalidInput, did_you_mean
from ironsight.cluster.yamlfile import (
    MAX_MESSAGE_CHARS,
    ConfigInvalid,
    clip,
    load_config,
    validate_config,
)
from ironsight.robustness.attacks import DEFAULT_EPSILONS, default_epsilons, list_attacks
from ironsight.robustness.conditions import (
    IMAGENET_C_CONDITIONS,
    SEVERITIES,
    list_conditions,
)
from ironsight.robustness.mix import check_mix


@dataclass(frozen=True)
class AttackSpec:
    """One attack of a suite, run once per ``eps`` (pixel units; L2 for ``pgd_l2``)."""

    name: str
    eps: tuple[float, ...]
    steps: int = 10
    alpha: float | None = None
    early_stop: bool = True  # RobustBench's rule (robustness.attack_sweep); False: torchattacks' last iterate


@dataclass(frozen=True)
class Suite:
    """What an audit runs: every condition at every severity, every attack at every eps."""

    name: str
    conditions: tuple[str, ...]
    severities: tuple[int, ...]
    attacks: tuple[AttackSpec, ...] = ()
    mix: tuple[tuple[str, float], ...] = ()  # (condition, share in production); rest is clean

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, not tuples) for report.json and YAML; ``mix`` only when set.

        >>> get_suite("quick").to_dict()["severities"]
        [1, 3, 5]
        >>> get_suite("field").to_dict()["mix"]["low_light"]
        0.3
        """
        d = asdict(self)
        d["conditions"], d["severities"] = list(self.conditions), list(self.severities)
        d["attacks"] = [{**a, "eps": list(a["eps"])} for a in d["attacks"]]
        if self.mix:
            d["mix"] = dict(self.mix)
        else:
            del d["mix"]
        return d


_QUICK_CONDITIONS = ("low_light", "overexposure", "gaussian_blur", "gaussian_noise",
                     "occlusion", "partial_view")


def _quick() -> Suite:
    return Suite("quick", _QUICK_CONDITIONS, (1, 3, 5),
                 (AttackSpec("fgsm", (0.0, 2 / 255, 8 / 255), steps=1),))


def _standard() -> Suite:
    # built on call, so conditions registered after import are included
    return Suite("standard", tuple(list_conditions()), SEVERITIES,
                 (AttackSpec("fgsm", DEFAULT_EPSILONS, steps=1),
                  AttackSpec("pgd", DEFAULT_EPSILONS, steps=10)))


def _imagenet_c() -> Suite:
    # the 15 corruptions ImageNet-C's mCE averages, at all five severities: comparable to
    # published ImageNet-C tables (the 4 extras are left out, as there)
    return Suite("imagenet-c", IMAGENET_C_CONDITIONS, SEVERITIES)


# The documents' operating-condition mix: the share of hard cases by challenge (low light 30%,
# partial view 25%, blur 20%, overexposure 15%, noisy background 10%); blur is motion blur.
FIELD_MIX = (("low_light", 0.30), ("partial_view", 0.25), ("motion_blur", 0.20),
             ("overexposure", 0.15), ("noisy_background", 0.10))


def _field() -> Suite:
    return Suite("field", tuple(c for c, _ in FIELD_MIX), (1, 3, 5),
                 (AttackSpec("fgsm", (0.0, 2 / 255, 8 / 255), steps=1),), FIELD_MIX)


_BUILTIN = {"quick": _quick, "standard": _standard, "imagenet-c": _imagenet_c, "field": _field}


def list_suites() -> list[str]:
    """Names of the built-in suites.

    >>> list_suites()
    ['field', 'imagenet-c', 'quick', 'standard']
    """
    return sorted(_BUILTIN)


class SuiteError(ConfigInvalid, ValueError):
    """A suite name or file is wrong: the loaders' :class:`~ironsight.cluster.yamlfile.ConfigInvalid`
    (an InvalidInput, exit 2), and still a ``ValueError`` for callers written when this module
    raised that."""


def _looks_like_a_file(name_or_path: str) -> bool:
    return (name_or_path.startswith("s3://") or name_or_path.endswith((".yaml", ".yml"))
            or os.path.lexists(name_or_path))


def get_suite(name_or_path: str) -> Suite:
    """A built-in suite by name, or a suite YAML file (validated; local path or ``s3://``).

    Raises:
        SuiteError: Unknown name, missing file, or an invalid file; the message names the
            offending field and the file.

    >>> s = get_suite("standard")
    >>> len(s.severities), [a.name for a in s.attacks]
    (5, ['fgsm', 'pgd'])
    """
    if name_or_path in _BUILTIN:
        return _BUILTIN[name_or_path]()
    if _looks_like_a_file(name_or_path):
        return load_suite(name_or_path)
    hint = did_you_mean(name_or_path, list_suites())
    raise SuiteError(f"suite {name_or_path!r} unknown; {hint}expected one of "
                     f"{', '.join(list_suites())} or the path of a suite YAML file")


class _AttackModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str
    eps: list[float] | None = Field(None, min_length=1)
    steps: int = Field(10, ge=1)
    alpha: float | None = Field(None, gt=0)
    early_stop: bool = True

    @field_validator("name")
    @classmethod
    def _known_attack(cls, v: str) -> str:
        if v not in list_attacks():
            raise ValueError(f"attack {v!r} unknown; {did_you_mean(v, list_attacks())}"
                             f"expected one of {', '.join(list_attacks())}")
        return v

    @field_validator("eps")
    @classmethod
    def _non_negative(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(not e >= 0 for e in v):
            raise ValueError(f"eps {v} has a negative value; epsilons are pixel units >= 0")
        return v


class _SuiteModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1)
    conditions: str | list[str] = "all"
    severities: list[int] = Field(default_factory=lambda: list(SEVERITIES), min_length=1)
    attacks: list[_AttackModel] = Field(default_factory=list)
    mix: dict[str, float] | None = None

    @field_validator("conditions")
    @classmethod
    def _known_conditions(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, str):
            if v != "all":
                raise ValueError(f"conditions {v!r} is a string; expected \"all\" or a list of "
                                 "condition names")
        else:
            if not v:
                raise ValueError("no conditions; list at least one or write \"all\"")
            valid = list_conditions()
            unknown = [c for c in v if c not in valid]
            if unknown:
                hints = "".join(did_you_mean(c, valid) for c in unknown[:3])
                raise ValueError(f"condition(s) {', '.join(map(repr, unknown))} unknown; {hints}"
                                 f"expected any of {', '.join(valid)}")
            if len(set(v)) != len(v):
                raise ValueError(f"conditions {v} repeat a name")
        return v

    @field_validator("severities")
    @classmethod
    def _known_severities(cls, v: list[int]) -> list[int]:
        bad = [s for s in v if s not in SEVERITIES]
        if bad:
            raise ValueError(f"severities {bad} out of range; expected values in {SEVERITIES}")
        if len(set(v)) != len(v):
            raise ValueError(f"severities {v} repeat a value")
        return v


_SUITE_SHAPE = "keys name, conditions, severities, attacks"


def parse_suite(data: Any, *, source: str = "suite <string>") -> Suite:
    """Validate a suite given as plain data (a parsed YAML mapping).

    Args:
        data: The mapping (``name``, ``conditions``, ``severities``, ``attacks``, ``mix``).
        source: Where it came from, for error messages (``"suite file nightly.yaml"``, or a
            job spec field).

    Raises:
        SuiteError: ``{source}: {field}: {message}`` for every bad field
            (:func:`ironsight.cluster.yamlfile.validate_config`, the shape of every file kind).

    >>> parse_suite({"name": "mini", "conditions": ["contrast"], "severities": [2]}).conditions
    ('contrast',)
    >>> parse_suite({"name": "x", "severity": [2]}, source="suite file nightly.yaml")
    Traceback (most recent call last):
    ...
    ironsight.robustness.suites.SuiteError: suite file nightly.yaml: severity: unknown key; did you mean 'severities'? valid keys: name, conditions, severities, attacks, mix
    """
    return _to_suite(validate_config(data, _SuiteModel, source=source, shape=_SUITE_SHAPE,
                                     error=SuiteError), source)


def _to_suite(m: _SuiteModel, source: str) -> Suite:
    conditions = tuple(list_conditions()) if m.conditions == "all" else tuple(m.conditions)
    attacks = tuple(
        AttackSpec(a.name, tuple(float(e) for e in (a.eps or default_epsilons(a.name))),
                   a.steps, a.alpha, a.early_stop)
        for a in m.attacks
    )
    mix: tuple[tuple[str, float], ...] = ()
    if m.mix is not None:
        try:
            mix = check_mix(m.mix, conditions)
        except InvalidInput as exc:
            raise SuiteError(clip(f"{source}: {exc}", MAX_MESSAGE_CHARS)) from None
    return Suite(m.name, conditions, tuple(m.severities), attacks, mix)


def load_suite(path: str) -> Suite:
    """Read and validate a suite YAML file (see the module docstring for the format).

    The file is read by :func:`ironsight.cluster.yamlfile.load_config`, the loader of every
    file kind: a regular file (local or ``s3://``) of at most 1 MiB, without duplicate keys,
    alias bombs or deep nesting, validated as :func:`parse_suite` does.

    Raises:
        SuiteError: a :class:`~ironsight.cluster.yamlfile.ConfigInvalid` naming the file and
            the field.
    """
    try:
        m = load_config(path, _SuiteModel, what="suite file", shape=_SUITE_SHAPE, error=SuiteError)
    except SuiteError:
        raise
    except InvalidInput as exc:  # the file itself (missing, not YAML): still a SuiteError
        raise SuiteError(str(exc)) from None
    return _to_suite(m, f"suite file {path}")
