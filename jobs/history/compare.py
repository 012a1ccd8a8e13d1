"""Comparing runs: what an audit measured (`run_identity`), its headline metrics, and whether
it regressed against the reference run of its identity.

Regressions: when a named audit finishes, it is compared with the previous `succeeded` run
of the same identity (`run_identity`: job name, eval set, suite with severities and attacks,
model card or architecture, image count; not the weights, which is what a nightly tracks). A
`regressed` or `gate_failed` run is never the reference, so a regression keeps being reported
until the job is back to its last good level. An audit without a job name (`ironsight audit`
without `--name`, a spec without `name`) is recorded but never judged.

| a regression is a metric (clean accuracy, a condition's accuracy over its severities) whose... |
|-------------------------------------------------------------------------------------------------|
| drop is larger than the gate's `max_drop_vs_baseline` (default `DEFAULT_MAX_DROP`, 0.02 absolute) |
| AND is significant: exact McNemar on the images and cells both runs share (`Outcomes`), or, when they share none, 95% Wilson intervals that do not overlap (`ironsight.robustness.compare.compare_runs`) |

(the one rule, `ironsight.robustness.stats.is_regression`). A 4-point drop on 100 images is
within noise; 10 points on 1,000 is not. The run is then `regressed` and the CLI exits 4 (a
failed release gate exits 3 and takes precedence). The audit's report.json says what it was
compared with under `history` (`ironsight.jobs.history.recorder.RunRecorder.judge_audit`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ironsight.cluster.errors import IronsightError
from ironsight.jobs.history.outcomes import Outcomes

# Absolute accuracy drop that counts as a regression when the spec's gate sets no
# max_drop_vs_baseline: 2 points is above the run-to-run noise of a fixed-seed audit of a
# few thousand images, and small enough to catch a broken preprocessing change.
DEFAULT_MAX_DROP = 0.02


def classify_metrics(summary: Any) -> dict[str, Any]:
    """Headline metrics of a labeling run from its `ClassifySummary`."""
    return {
        "rows": summary.rows,
        "rows_total": summary.rows_total,
        "error_rows": summary.error_rows,
        "images_per_s": round(float(summary.images_per_s), 2),
        "wall_s": round(float(summary.wall_s), 2),
        "already_complete": bool(summary.already_complete),
    }


def audit_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """Headline metrics of an audit from its `report.json` dict.

    >>> audit_metrics({"clean": {"accuracy": 0.9}, "summary": {"mean_corruption_accuracy": 0.5,
    ...     "per_condition": [{"name": "fog", "mean_accuracy": 0.5}]},
    ...     "attacks": [{"name": "fgsm", "eps": 0.0078, "accuracy": 0.2}], "gate": None})
    ... # doctest: +NORMALIZE_WHITESPACE
    {'clean_accuracy': 0.9, 'mean_corruption_accuracy': 0.5, 'per_condition': {'fog': 0.5},
     'attacks': [{'name': 'fgsm', 'eps': 0.0078, 'accuracy': 0.2}], 'gate': None}
    """
    summary = report.get("summary") or {}
    gate = report.get("gate")
    return {
        "clean_accuracy": (report.get("clean") or {}).get("accuracy"),
        "mean_corruption_accuracy": summary.get("mean_corruption_accuracy"),
        "per_condition": {p["name"]: p.get("mean_accuracy") for p in summary.get("per_condition", [])},
        "attacks": [
            {"name": a["name"], "eps": a["eps"], "accuracy": a.get("accuracy")}
            for a in report.get("attacks") or []
        ],
        "gate": None if not gate else ("passed" if gate.get("passed") else "failed"),
    }


@dataclasses.dataclass(frozen=True)
class Regression:
    """One metric that dropped by more than allowed AND significantly against the reference run.

    `before`/`after` are the accuracies the test compared (on the shared images when paired);
    `test` is `mcnemar_exact` (paired, with `p_value`) or `wilson_overlap` (unpaired).
    """

    metric: str
    before: float
    after: float
    allowed: float
    test: str = ""
    p_value: float | None = None
    n: int | None = None

    def __str__(self) -> str:
        if self.test == "mcnemar_exact":
            how = f" on {self.n} paired image results, exact McNemar p={self.p_value:.2g}"
        elif self.test == "wilson_overlap":
            how = f"; 95% intervals do not overlap (at least {self.n} image results each)"
        else:
            how = ""
        return (
            f"{self.metric} dropped from {self.before:.4f} to {self.after:.4f} "
            f"(-{self.before - self.after:.4f}{how}; allowed drop {self.allowed:.4f})"
        )


def compare_metrics(
    previous: dict[str, Any],
    current: dict[str, Any],
    max_drop: float = DEFAULT_MAX_DROP,
    previous_outcomes: Outcomes | None = None,
    current_outcomes: Outcomes | None = None,
) -> list[dict[str, Any]]:
    """Clean accuracy and each condition's accuracy, compared with the one rule of
    `ironsight.robustness.stats.is_regression` (a drop > `max_drop` AND significant).

    With both runs' `Outcomes` this is `ironsight.robustness.compare.compare_runs` (the one
    per-cell comparison of `--baseline` and the gate): exact McNemar on the images both runs
    have, Wilson-interval overlap when they share none; a condition is its cell pooled over
    the severities both runs have. Without them, unpaired from the `counts` each run's metrics
    carry; a metric with neither is not compared.
    Conditions in only one of the two runs are not compared. Returns one dict a metric:
    `metric`, `regression`, `allowed` and `ironsight.robustness.stats.Change.to_json()`.
    """
    from ironsight.robustness import stats

    names = [("clean", "clean accuracy")]
    before_cond = previous.get("per_condition") or {}
    after_cond = current.get("per_condition") or {}
    names += [(c, f"{c} mean accuracy") for c in sorted(set(before_cond) & set(after_cond))]
    before_counts = previous.get("counts") or {}
    after_counts = current.get("counts") or {}
    out = []
    tables = (None if previous_outcomes is None or current_outcomes is None
              else (previous_outcomes.to_table(), current_outcomes.to_table()))
    if tables is not None and tables[0] is not None and tables[1] is not None:
        from ironsight.robustness.compare import compare_runs

        wanted = dict(names)
        for cell in compare_runs(*tables, max_drop):
            if cell.kind in ("clean", "condition_mean") and cell.name in wanted:
                out.append({"metric": wanted[cell.name], "regression": cell.regression,
                            "allowed": max_drop, **cell.change.to_json()})
        return out
    for key, metric in names:
        if key in before_counts and key in after_counts and before_counts[key][1] and after_counts[key][1]:
            change = stats.unpaired_change(*before_counts[key], *after_counts[key])
        else:
            continue
        out.append({"metric": metric, "regression": stats.is_regression(change, max_drop),
                    "allowed": max_drop, **change.to_json()})
    return out


def detect_regressions(
    previous: dict[str, Any],
    current: dict[str, Any],
    max_drop: float = DEFAULT_MAX_DROP,
    previous_outcomes: Outcomes | None = None,
    current_outcomes: Outcomes | None = None,
) -> list[Regression]:
    """The regressions among `compare_metrics`: drops beyond `max_drop` that are significant.

    >>> prev = {"clean_accuracy": 0.90, "per_condition": {"fog": 0.60, "blur": 0.50},
    ...         "counts": {"clean": [900, 1000], "fog": [600, 1000], "blur": [500, 1000]}}
    >>> cur = {"clean_accuracy": 0.89, "per_condition": {"fog": 0.40, "blur": 0.49},
    ...        "counts": {"clean": [890, 1000], "fog": [400, 1000], "blur": [490, 1000]}}
    >>> [r.metric for r in detect_regressions(prev, cur)]
    ['fog mean accuracy']
    """
    return [
        Regression(c["metric"], c["reference"], c["new"], max_drop, c["test"], c["p_value"], c["n"])
        for c in compare_metrics(previous, current, max_drop, previous_outcomes, current_outcomes)
        if c["regression"]
    ]


def run_identity(spec: Any, images: int | None = None) -> tuple[str, dict[str, Any]]:
    """What a run measured, as `(sha256 hex, readable parts)`; runs compare only within one.

    | part         | from                                                                 |
    |--------------|----------------------------------------------------------------------|
    | `job`        | the spec's `name`; `ad_hoc: true` when it was not given (never judged) |
    | `input`, `label_column` | the eval set (local paths made absolute, symlinks resolved) |
    | `suite`, `severities`, `attacks` | the suite as run (built-in name or file), attacks with eps and steps |
    | `model`      | `card:PATH` for a model card, else `arch:NAME`; NOT the weights, which a nightly tracks |
    | `images`     | rows audited (images plus error rows)                                |

    The seed is not part of it: a different seed is a fair repeat, judged by the tests.
    """
    import hashlib as _hashlib
    import json

    from ironsight.cluster import paths

    def where(uri: str) -> str:
        try:
            return paths.normalize(uri)
        except ValueError:
            return uri

    parts: dict[str, Any] = {"job": spec.name, "kind": spec.kind, "input": where(spec.input)}
    if "name" not in spec.model_fields_set:
        parts["ad_hoc"] = True
    parts["model"] = f"card:{where(spec.model_card)}" if spec.model_card else f"arch:{spec.model}"
    if spec.kind == "audit":
        from ironsight.jobs.audit import resolve_suite
        from ironsight.robustness.suites import list_suites

        suite = resolve_suite(spec.suite, spec.severities)
        parts["label_column"] = spec.label_column
        parts["suite"] = spec.suite if spec.suite in list_suites() else where(spec.suite)
        parts["severities"] = list(suite.severities)
        parts["attacks"] = [[a.name, list(a.eps), a.steps] for a in suite.attacks]
        parts["images"] = images
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return _hashlib.sha256(text.encode()).hexdigest(), parts


def gate_thresholds(spec: Any) -> dict[str, Any] | None:
    """The accuracy floors of the spec's gate, kept with each audit run for `history --html`:
    `{"clean": 0.8 or None, "conditions": {"default": 0.3, "fog": 0.2}}`; None without a gate
    or when the gate cannot be read now (best effort: the run's outcome matters more).
    """
    gate_path = getattr(spec, "gate", None)
    if not gate_path:
        return None
    from ironsight.robustness.gate import load_gate

    try:
        gate = load_gate(gate_path)
    except (IronsightError, OSError):
        return None
    return {"clean": gate.clean_accuracy_min, "conditions": dict(gate.condition_accuracy_min or {})}


def max_drop_for(spec: Any) -> float:
    """The spec's gate `max_drop_vs_baseline`, else `DEFAULT_MAX_DROP`."""
    gate_path = getattr(spec, "gate", None)
    if gate_path:
        from ironsight.robustness.gate import load_gate

        value = load_gate(gate_path).max_drop_vs_baseline
        if value is not None:
            return float(value)
    return DEFAULT_MAX_DROP
