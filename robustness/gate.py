"""The release gate: thresholds in YAML, checked against a report.

Gate file (every key optional; unknown keys are rejected)::

    clean_accuracy_min: 0.80            # clean top-1 accuracy
    condition_accuracy_min:             # EVERY severity of the condition must reach it
      default: 0.30                     #   floor for conditions not named below
      gaussian_noise: 0.20
    attack_accuracy_min:                # robust accuracy of one attack at one eps
      - {attack: fgsm, eps: 2/255, min: 0.2}    # eps as a number or "k/255"
    max_drop_vs_baseline: 0.05          # absolute drop of clean accuracy and of each
                                        #   condition's mean accuracy; needs a baseline
    significance: 0.05                  # with max_drop_vs_baseline: fail only drops that
                                        #   are also statistically significant at this level
    worst_class_accuracy_min: 0.5       # the worst class on clean data
    ece_max: 0.15                       # clean expected calibration error (15 bins)

Choices: condition floors apply to each condition x severity cell, so a failure names the
severity that broke ("gaussian_noise severity 5: accuracy 0.12 is below the floor 0.20").
A floor named for a condition the report does not contain fails (a gate that cannot be
checked must not pass). A check that needs a baseline when none is given is *skipped*, and
listed as such; the gate passes when no check failed.

**Drops and noise.** Each ``max_drop_vs_baseline`` check compares one cell of the two runs
with :func:`ironsight.robustness.compare.compare_runs` (clean accuracy; each condition pooled
over the severities both runs have): exact McNemar on the same image ids when the report
was built with the baseline's predictions (paired), else Wilson-interval overlap (unpaired).
Its message says "significant" or "within noise" whenever the image counts are known.

| gate                                   | a drop fails when                                     |
|----------------------------------------|-------------------------------------------------------|
| ``max_drop_vs_baseline`` alone         | it is larger than the allowed drop                    |
| ... with ``significance: a``           | it is larger AND significant at level ``a`` (paired p-value < ``a``; unpaired: the 95% intervals do not overlap, whatever ``a``) -- :func:`ironsight.robustness.stats.is_regression` |

The trade-off: on a small eval set (a few hundred images) accuracy wobbles by several points
from run to run, so a plain ``max_drop_vs_baseline`` of 2 points raises false alarms that
train people to ignore the gate; ``significance`` stops those, but at the same n it also
lets a *real* drop through when it is too small to tell from noise (see the report header's
"smallest drop this n can call significant"), and an unpaired comparison, being conservative,
lets more through. Use it with enough images, or keep the plain rule where any drop beyond the
threshold must block a release. A drop that cannot be tested (a report without image counts)
is judged by its size alone, and the message says so.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from ironsight.cluster.yamlfile import load_config, validate_config
from ironsight.robustness import compare, stats

EPS_TOLERANCE = 1e-4  # "0.0078" in a gate file means 2/255 = 0.00784; budgets differ by >= 1/255


def _parse_eps(value):
    if isinstance(value, str):
        text = value.strip()
        if "/" in text:
            num, _, den = text.partition("/")
            try:
                return float(num) / float(den)
            except (ValueError, ZeroDivisionError) as exc:
                raise ValueError(
                    f"eps {value!r} is not a number or a fraction like '2/255'"
                ) from exc
        try:
            return float(text)
        except ValueError as exc:
            raise ValueError(f"eps {value!r} is not a number or a fraction like '2/255'") from exc
    return value


class AttackFloor(BaseModel):
    """Minimum robust accuracy of one attack at one epsilon."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attack: str
    eps: float = Field(ge=0.0, le=1.0)
    min: float = Field(ge=0.0, le=1.0)

    @field_validator("eps", mode="before")
    @classmethod
    def _eps(cls, value):
        return _parse_eps(value)


Fraction = Field(default=None, ge=0.0, le=1.0)


class Gate(BaseModel):
    """Release thresholds; a None field is not checked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    clean_accuracy_min: float | None = Fraction
    condition_accuracy_min: dict[str, float] | None = None
    attack_accuracy_min: list[AttackFloor] | None = None
    max_drop_vs_baseline: float | None = Fraction
    significance: float | None = Field(default=None, gt=0.0, lt=1.0)
    worst_class_accuracy_min: float | None = Fraction
    ece_max: float | None = Fraction

    @model_validator(mode="after")
    def _significance_needs_a_drop(self):
        if self.significance is not None and self.max_drop_vs_baseline is None:
            raise ValueError(
                "significance only applies to max_drop_vs_baseline; set that too or drop it"
            )
        return self

    @field_validator("condition_accuracy_min")
    @classmethod
    def _floors_in_range(cls, value):
        for name, floor in (value or {}).items():
            if not 0.0 <= floor <= 1.0:
                raise ValueError(f"floor for '{name}' is {floor}; accuracies are in [0, 1]")
        return value


@dataclass
class Check:
    """One gate check: its name, verdict and a sentence a person can act on."""

    name: str
    passed: bool
    message: str
    skipped: bool = False


@dataclass
class GateResult:
    """All checks of a gate; ``passed`` is True when no check failed (skips do not fail)."""

    passed: bool
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed and not c.skipped]

    @property
    def skipped(self) -> list[Check]:
        return [c for c in self.checks if c.skipped]

    def to_dict(self) -> dict:
        """The ``gate`` entry of ``report.json``: ``passed``, ``failed``, ``skipped``, ``checks``."""
        return {
            "passed": self.passed,
            "failed": [asdict(c) for c in self.failed],
            "skipped": [asdict(c) for c in self.skipped],
            "checks": [asdict(c) for c in self.checks],
        }


_GATE_SHAPE = "thresholds such as 'clean_accuracy_min: 0.8'"


def parse_gate(data: object, *, source: str = "gate") -> Gate:
    """Validate a gate given as a dict (the parsed YAML), with
    :func:`ironsight.cluster.yamlfile.validate_config` (the message shape of every file kind).

    Raises:
        ConfigInvalid: ``{source}: {field}: {message}`` for every problem (an InvalidInput).

    >>> parse_gate({"clean_accuracy_min": 0.8}).clean_accuracy_min
    0.8
    >>> parse_gate({"clean_acc": 0.8}, source="gate file g.yaml")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ironsight.cluster.yamlfile.ConfigInvalid: gate file g.yaml: clean_acc: unknown key; did you mean 'clean_accuracy_min'? valid keys: clean_accuracy_min, ...
    """
    return validate_config(data, Gate, source=source, shape=_GATE_SHAPE)


def load_gate(path: str | os.PathLike) -> Gate:
    """Read and validate a gate YAML file (local path or ``s3://``): the one loader of every
    file kind, :func:`ironsight.cluster.yamlfile.load_config` (a regular file of at most
    1 MiB, without duplicate keys, alias bombs or deep nesting).

    Raises:
        ConfigInvalid: The file is missing, not a regular file, too large, is not YAML, or a
            field is unknown or out of range; the message names the file and the field path.
    """
    return load_config(os.fspath(path), Gate, what="gate file", shape=_GATE_SHAPE)


def _f(x: float, other: float | None = None) -> str:
    """Two decimals, more when two decimals would make ``x`` and ``other`` look equal."""
    for digits in (2, 3, 4):
        if other is None or f"{x:.{digits}f}" != f"{other:.{digits}f}":
            return f"{x:.{digits}f}"
    return f"{x:.6f}"


def _floor_check(name: str, what: str, value: float | None, floor: float) -> Check:
    if value is None:
        return Check(
            name,
            False,
            f"{what}: accuracy is undefined (no labeled rows); the floor "
            f"{_f(floor)} cannot be verified",
        )
    v, f = _f(value, floor), _f(floor, value)
    if value < floor:
        return Check(name, False, f"{what}: accuracy {v} is below the floor {f}")
    return Check(name, True, f"{what}: accuracy {v} meets the floor {f}")


def _condition_checks(report: dict, floors: dict[str, float]) -> list[Check]:
    checks = []
    audited = sorted({c["name"] for c in report["conditions"]})
    for name in sorted(set(floors) - {"default"} - set(audited)):
        checks.append(
            Check(
                f"condition_accuracy_min.{name}",
                False,
                f"condition_accuracy_min names '{name}' but the report has no such condition "
                f"(audited: {', '.join(audited) or 'none'}); fix the name or audit it",
            )
        )
    for cell in report["conditions"]:
        floor = floors.get(cell["name"], floors.get("default"))
        if floor is None:
            continue
        checks.append(
            _floor_check(
                f"condition_accuracy_min.{cell['name']}.severity{cell['severity']}",
                f"{cell['name']} severity {cell['severity']}",
                cell["accuracy"],
                floor,
            )
        )
    return checks


def _attack_checks(report: dict, floors: list[AttackFloor]) -> list[Check]:
    checks = []
    for i, floor in enumerate(floors):
        name = f"attack_accuracy_min[{i}]"
        rows = [a for a in report["attacks"] if a["name"] == floor.attack]
        match = [a for a in rows if abs(a["eps"] - floor.eps) <= EPS_TOLERANCE]
        what = f"{floor.attack} at eps {floor.eps * 255:.1f}/255"
        if not match:
            have = ", ".join(f"{a['eps'] * 255:.1f}/255" for a in rows)
            checks.append(
                Check(
                    name,
                    False,
                    f"{what}: not in the report (this attack ran at: {have or 'nothing'}); "
                    f"add the eps to the suite or fix the gate",
                )
            )
            continue
        checks.append(_floor_check(name, what, match[0]["accuracy"], floor.min))
    return checks


def _baseline_means(report: dict, baseline: dict | None) -> tuple[float | None, dict] | None:
    """Baseline clean accuracy and per-condition mean accuracies, from the baseline report
    or, when none is passed, from the comparison ``build_report`` stored in the report."""
    if baseline is not None:
        by_name = {
            p["name"]: p["mean_accuracy"]
            for p in (baseline.get("summary") or {}).get("per_condition", [])
        }
        return (baseline.get("clean") or {}).get("accuracy"), by_name
    stored = (report.get("summary") or {}).get("baseline")
    if stored:
        by_name = {k: v.get("baseline_mean_accuracy") for k, v in stored["per_condition"].items()}
        return stored.get("clean_accuracy"), by_name
    return None


def _baseline_changes(report: dict, baseline: dict | None) -> dict[str, compare.CellChange]:
    """Per-cell changes (:func:`ironsight.robustness.compare.compare_runs`) by cell key: the
    ones ``build_report`` stored (paired when it had the baseline's predictions) when they
    were made against this baseline, else computed now from the two reports (unpaired).
    Cells whose image counts are unknown are absent."""
    stored = (report.get("summary") or {}).get("baseline") or {}
    same = baseline is None or (
        stored.get("created_at") == baseline.get("created_at")
        and stored.get("model") == baseline.get("model")
    )
    if stored.get("cells") and same:
        return {c["key"]: compare.CellChange.from_json(c) for c in stored["cells"]}
    if baseline is None:
        return {}
    return {c.key: c for c in compare.compare_runs(baseline, report)}


def _at_level(change: stats.Change, alpha: float) -> stats.Change:
    """The change judged at ``alpha``: a paired p-value is compared with it; an unpaired
    change keeps its 95% interval-overlap verdict."""
    if change.p_value is None:
        return change
    return dataclasses.replace(change, significant=change.p_value < alpha)


def _noise_words(change: stats.Change, paired: bool) -> str:
    if paired:
        return (
            f"{change.verdict}: paired McNemar p={change.p_value:.2g}, {change.worse} worse / "
            f"{change.better} better of {change.n} images"
        )
    return f"{change.verdict}: unpaired, 95% Wilson intervals {'apart' if change.significant else 'overlap'}"


def _baseline_checks(
    report: dict, baseline: dict | None, max_drop: float, significance: float | None = None
) -> list[Check]:
    means = _baseline_means(report, baseline)
    if means is None:
        return [
            Check(
                "max_drop_vs_baseline",
                False,
                "max_drop_vs_baseline: skipped, no baseline report was given "
                "(pass one to compare against)",
                skipped=True,
            )
        ]
    base_clean, base_by_name = means
    changes = _baseline_changes(report, baseline)
    checks = []
    pairs = [("clean", "clean accuracy", report["clean"]["accuracy"], base_clean, compare.cell_key("clean"))]
    for p in report["summary"]["per_condition"]:
        pairs.append(
            (
                p["name"],
                f"{p['name']} mean accuracy",
                p["mean_accuracy"],
                base_by_name.get(p["name"]),
                compare.cell_key("condition_mean", p["name"]),
            )
        )
    for key, what, mine, theirs, cell_key in pairs:
        name = f"max_drop_vs_baseline.{key}"
        if mine is None or theirs is None:
            checks.append(
                Check(
                    name,
                    False,
                    f"{what}: skipped, not in both this report and the baseline",
                    skipped=True,
                )
            )
            continue
        cell = changes.get(cell_key)
        change = None if cell is None else _at_level(cell.change, significance or stats.ALPHA)
        noise = "" if change is None else f" ({_noise_words(change, cell.paired)})"
        drop = theirs - mine
        if drop > max_drop + 1e-12:
            dropped = (
                f"{what}: dropped {_f(drop, max_drop)} from {_f(theirs, mine)} to "
                f"{_f(mine, theirs)}, more than the allowed {_f(max_drop, drop)}"
            )
            if significance is None:
                checks.append(Check(name, False, dropped + noise))
            elif change is None:
                checks.append(
                    Check(
                        name,
                        False,
                        dropped + " (no image counts to test significance: judged by the "
                        "drop alone)",
                    )
                )
            elif stats.is_regression(change, max_drop):
                checks.append(Check(name, False, dropped + noise))
            else:
                checks.append(
                    Check(
                        name,
                        True,
                        dropped + f", but the drop is {_noise_words(change, cell.paired)} at "
                        f"significance {significance:g}: not failed",
                    )
                )
        else:
            checks.append(
                Check(
                    name,
                    True,
                    f"{what}: {_f(mine)} vs baseline {_f(theirs)}, "
                    f"within the allowed drop {_f(max_drop)}" + noise,
                )
            )
    return checks


def evaluate_gate(report: dict, gate: Gate, baseline: dict | None = None) -> GateResult:
    """Check a report against a gate.

    Args:
        report: The dict from :func:`ironsight.robustness.report.build.build_report`.
        gate: Thresholds from :func:`load_gate`.
        baseline: A previous ``report.json`` dict, for ``max_drop_vs_baseline``. When None,
            the comparison stored by ``build_report(..., baseline=...)`` in
            ``report["summary"]["baseline"]`` is used; with neither, that check is skipped.

    Returns:
        Every check, passed or not; store ``result.to_dict()`` in ``report["gate"]``.

    >>> report = {"clean": {"accuracy": 0.7, "ece": 0.1, "worst_class": None},
    ...           "conditions": [], "attacks": [], "summary": {"per_condition": []}}
    >>> result = evaluate_gate(report, parse_gate({"clean_accuracy_min": 0.8}))
    >>> result.passed, result.failed[0].message
    (False, 'clean: accuracy 0.70 is below the floor 0.80')
    """
    checks: list[Check] = []
    clean = report["clean"]
    if gate.clean_accuracy_min is not None:
        checks.append(
            _floor_check("clean_accuracy_min", "clean", clean["accuracy"], gate.clean_accuracy_min)
        )
    if gate.condition_accuracy_min:
        checks += _condition_checks(report, gate.condition_accuracy_min)
    if gate.attack_accuracy_min:
        checks += _attack_checks(report, gate.attack_accuracy_min)
    if gate.max_drop_vs_baseline is not None:
        checks += _baseline_checks(report, baseline, gate.max_drop_vs_baseline, gate.significance)
    if gate.worst_class_accuracy_min is not None:
        worst = clean.get("worst_class")
        checks.append(
            _floor_check(
                "worst_class_accuracy_min",
                f"worst clean class ({worst['name']})" if worst else "worst clean class",
                worst["accuracy"] if worst else None,
                gate.worst_class_accuracy_min,
            )
        )
    if gate.ece_max is not None:
        ece = clean.get("ece")
        if ece is None:
            checks.append(
                Check(
                    "ece_max",
                    False,
                    f"clean ECE is undefined (no labeled rows); "
                    f"the maximum {_f(gate.ece_max)} cannot be verified",
                )
            )
        else:
            ok = ece <= gate.ece_max
            checks.append(
                Check(
                    "ece_max",
                    ok,
                    f"clean ECE {_f(ece, gate.ece_max)} is "
                    f"{'within' if ok else 'above'} the maximum {_f(gate.ece_max, ece)}",
                )
            )
    passed = not any(not c.passed and not c.skipped for c in checks)
    return GateResult(passed=passed, checks=checks)
