"""The audit report's content: ``report.json``, built once from the predictions table.

``report.json`` layout (``schema_version`` :data:`~ironsight.robustness.schema.REPORT_SCHEMA_VERSION`):

| key              | content                                                                 |
|------------------|-------------------------------------------------------------------------|
| ``schema_version`` | report format version                                                 |
| ``created_at``   | ISO 8601 UTC time the report was built                                  |
| ``model``, ``data`` | what the caller passed (name, hash, eval set...)                     |
| ``seed``, ``suite`` | seed of the conditions/attacks, suite name or file                   |
| ``versions``     | python, torch, torchvision, numpy, ironsight                            |
| ``class_names``  | class index -> name                                                     |
| ``preprocessing`` | (optional, from the audit job) resize, crop, interpolation, mean/std,  |
|                  | weights version the model saw the pixels with                           |
| ``clean``        | ``n``, ``accuracy``, ``ece``, precision/recall/F1 per class and macro,  |
|                  | ``confusion_matrix`` [true][predicted], ``per_class_accuracy``,         |
|                  | ``per_class`` (cells with intervals), ``worst_class``                   |
| ``conditions``   | per condition x severity: ``name``, ``severity``, ``n``, ``accuracy``,  |
|                  | ``ece``, ``flip_rate``, ``per_class_accuracy``, ``per_class``, ``worst_class`` |
| ``attacks``      | per attack x eps: ``name``, ``eps``, ``n``, ``accuracy``,               |
|                  | ``success_rate``, ``n_initially_correct``                               |
| ``summary``      | ``clean_accuracy``, ``mean_corruption_accuracy``, ``per_condition``,    |
|                  | ``images``/``labeled_images`` and ``min_detectable_drop`` at that n,    |
|                  | ``baseline`` (CE, relative CE, mCE, per-cell paired changes; null       |
|                  | without baseline), ``alexnet`` (mCE vs AlexNet; null unless the classes |
|                  | are ImageNet-1k's) and ``mce_reason`` (why it is null), ``warnings``    |
| ``gate``         | null until :func:`ironsight.robustness.gate.evaluate_gate` fills it               |
| ``mix``          | (optional, suites with a ``mix``) expected accuracy under the mix with ``low``/``high`` |
|                  | (95%), shares and per-part accuracies (:mod:`ironsight.robustness.mix`) |
| ``examples``     | (optional, from the audit job) per condition the misclassified count and |
|                  | the ids report.html shows, and the activation-map method (or null)      |

Intervals: every accuracy cell (clean, per class, condition x severity, attack x eps, worst
class) also carries ``ci95`` [low, high], the 95% Wilson score interval of ``correct`` out of
``n_labeled`` (:func:`ironsight.robustness.stats.wilson_interval`); the Markdown and HTML show
it as ``75.0% [30.1, 95.4] (n=4)`` and the HTML severity curves as shaded bands.

Baseline: with ``baseline`` (a previous report.json) and ``baseline_predictions`` (its
predictions.parquet) every cell is compared on the same image ids by exact McNemar
(:func:`ironsight.robustness.compare.compare_runs`); with the report alone the comparison is
*unpaired* (Wilson-interval overlap, weaker), and the report says so. Each change reads
"significant" or "within noise".

Every float is finite or null: the JSON is strict (``allow_nan=False``).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
from collections.abc import Sequence
from importlib import metadata

import pyarrow as pa

from ironsight.cluster.errors import InvalidInput
from ironsight.robustness import compare, mce, metrics, stats
from ironsight.robustness.schema import REPORT_SCHEMA_VERSION, validate_predictions


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def software_versions() -> dict[str, str | None]:
    """Versions of the packages that decide the numbers, read without importing them."""
    return {
        "python": platform.python_version(),
        "torch": _version("torch"),
        "torchvision": _version("torchvision"),
        "numpy": _version("numpy"),
        "ironsight": _version("ironsight"),
    }


def _finite(obj):
    """Replace NaN/inf by None recursively, so the report is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        if all(type(v) is int for v in obj):  # a confusion-matrix row (1,000 of 1,000 for ImageNet)
            return list(obj)
        return [_finite(v) for v in obj]
    return obj


def build_report(
    predictions: pa.Table,
    *,
    class_names: Sequence[str],
    model: dict,
    data: dict,
    seed: int,
    suite: str,
    baseline: dict | None = None,
    imagenet_model: bool | None = None,
    imagenet_c_conditions: Sequence[str] | None = None,
    baseline_predictions: pa.Table | None = None,
) -> dict:
    """Compute every metric and return the ``report.json`` content.

    Args:
        predictions: The audit's table (:data:`~ironsight.robustness.schema.PREDICTIONS_SCHEMA`).
        class_names: Class index -> name; its length is the number of classes.
        model: Model description (name, weights hash, ...), copied into the report.
        data: Eval set description (path, size, ...), copied into the report.
        seed: Seed the conditions and attacks used.
        suite: Suite name or file.
        baseline: A previous ``report.json`` (as a dict) to compute CE/mCE and changes against.
        imagenet_model: Ignored, kept so older callers work: mCE against AlexNet is computed
            exactly when ``class_names`` are ImageNet-1k's
            (:func:`~ironsight.robustness.mce.imagenet_mce_reason`), else
            ``summary.alexnet`` is null and ``summary.mce_reason`` says why.
        imagenet_c_conditions: Ignored, kept so older callers work: the mCE counts the
            conditions whose registry tag says ImageNet-C, so it always agrees with
            ``ironsight conditions list``.
        baseline_predictions: The baseline's predictions table (its ``predictions.parquet``):
            with it, changes are paired by image id (exact McNemar); without, unpaired.

    Returns:
        The report as a JSON-ready dict with ``"gate": None``.

    Raises:
        InvalidInput: The table does not match the schema (see
            :func:`~ironsight.robustness.schema.validate_predictions`).

    >>> t = pa.table({"id": ["a", "a"], "kind": ["clean", "corruption"],
    ...     "condition": ["clean", "fog"], "severity": [0, 1], "eps": [0.0, 0.0],
    ...     "label": [1, 1], "prediction": [1, 0], "confidence": [0.9, 0.6],
    ...     "correct": [True, False]})
    >>> r = build_report(t, class_names=["cat", "dog"], model={"name": "m"}, data={},
    ...                  seed=0, suite="quick")
    >>> r["clean"]["accuracy"], r["conditions"][0]["accuracy"], r["conditions"][0]["flip_rate"]
    (1.0, 0.0, 1.0)
    """
    class_names = list(class_names)
    table = validate_predictions(predictions, num_classes=len(class_names))
    clean = metrics.clean_metrics(table, class_names)
    conditions = metrics.condition_metrics(table, class_names)
    attacks = metrics.attack_metrics(table)
    per_condition = metrics.per_condition_summary(table, conditions, class_names)
    warnings = metrics.gradient_masking_warnings(attacks, len(class_names))
    if clean["n"] == 0:
        warnings.append(
            "no clean rows in the predictions: flip rates, attack success rates and "
            "baseline comparisons that need clean accuracy are left empty"
        )
    elif clean["accuracy"] is None:
        warnings.append("no labeled rows: only flip rates and confidences are reported")

    comparison = None
    if baseline is not None:
        comparison = mce.compare_to_baseline(clean["accuracy"], conditions, baseline)
        comparison["model"] = baseline.get("model")
        comparison["created_at"] = baseline.get("created_at")
        if baseline_predictions is not None:
            try:
                baseline_predictions = validate_predictions(
                    baseline_predictions, num_classes=len(class_names), source="baseline predictions"
                )
            except InvalidInput as exc:
                warnings.append(f"the baseline's predictions cannot be paired with this run ({exc})")
                baseline_predictions = None
        cells = compare.compare_runs(
            baseline_predictions if baseline_predictions is not None else baseline, table
        )
        comparison["max_drop"] = 0.0
        comparison["cells"] = [c.to_json() for c in cells]
        comparison["paired"] = bool(cells) and all(c.paired for c in cells)
        comparison["test"] = (
            "paired: exact McNemar test on the images both runs share (by id)"
            if comparison["paired"]
            else "unpaired: the baseline has no per-image predictions (only its report.json), "
            "so a change is significant only when the 95% Wilson score intervals do not overlap"
        )
        by_key = {c.key: c for c in cells}
        clean_cell = by_key.get(compare.cell_key("clean"))
        comparison["clean_change"] = clean_cell.to_json() if clean_cell else None
        for entry in per_condition:
            extra = comparison["per_condition"].get(entry["name"], {})
            entry["ce"] = extra.get("ce")
            entry["relative_ce"] = extra.get("relative_ce")
            entry["accuracy_change"] = extra.get("accuracy_change")
            cell = by_key.get(compare.cell_key("condition_mean", entry["name"]))
            entry["change"] = cell.to_json() if cell else None
        if comparison["missing_in_baseline"]:
            warnings.append(
                "conditions missing in the baseline, left out of mCE: "
                + ", ".join(comparison["missing_in_baseline"])
            )
        if cells and not comparison["paired"]:
            warnings.append(
                "baseline comparison is unpaired: the baseline's per-image predictions "
                "(predictions.parquet next to its report.json) were not available, so changes "
                "are judged by Wilson interval overlap, which misses drops a paired test finds"
            )

    alexnet = None
    mce_reason = mce.imagenet_mce_reason(class_names)
    if mce_reason is None:
        alexnet = mce.alexnet_mce(conditions)
        if alexnet is not None:
            warnings.append(
                f"mCE vs AlexNet covers {len(alexnet['conditions'])} of the 15 ImageNet-C "
                f"corruptions ({', '.join(alexnet['conditions'])}) as reimplemented here, not "
                f"the ImageNet-C files: compare it with published mCE values only roughly"
                + (
                    f"; no AlexNet error for {', '.join(alexnet['excluded'])}"
                    if alexnet["excluded"]
                    else ""
                )
            )
        else:
            mce_reason = (
                "no audited condition is tagged ImageNet-C in the condition registry "
                "(`ironsight conditions list`), so there is nothing to compare with AlexNet"
            )
    n_labeled = clean["n_labeled"]

    report = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": model,
        "data": data,
        "seed": seed,
        "suite": suite,
        "versions": software_versions(),
        "class_names": class_names,
        "clean": clean,
        "conditions": conditions,
        "attacks": attacks,
        "summary": {
            "clean_accuracy": clean["accuracy"],
            "mean_corruption_accuracy": metrics.mean_corruption_accuracy(conditions),
            "per_condition": per_condition,
            "mce": None if comparison is None else comparison["mce"],
            "relative_mce": None if comparison is None else comparison["relative_mce"],
            "baseline": comparison,
            "alexnet": alexnet,
            "mce_reason": mce_reason,
            "images": clean["n"],
            "labeled_images": n_labeled,
            "interval": "95% Wilson score interval",
            # best case for a paired test (every changed image got worse), from the clean accuracy
            "min_detectable_drop": stats.min_detectable_drop(
                n_labeled, clean["accuracy"] if clean["accuracy"] is not None else 0.9
            ),
            "warnings": warnings,
        },
        "gate": None,
    }
    return _finite(report)


def dumps(report: dict) -> str:
    """Strict JSON text of a report (NaN/inf become null, never ``NaN``).

    >>> dumps({"a": float("nan"), "b": [1, 2]}).split()
    ['{', '"a":', 'null,', '"b":', '[', '1,', '2', ']', '}']
    """
    try:  # build_report's reports are finite already: one pass, no copy
        return json.dumps(report, indent=2, allow_nan=False, sort_keys=False) + "\n"
    except ValueError:
        return json.dumps(_finite(report), indent=2, allow_nan=False, sort_keys=False) + "\n"
