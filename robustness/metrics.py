"""Robustness metrics computed from the predictions table (:mod:`ironsight.robustness.schema`).

Plain numpy on small arrays; every function is pure. Conventions:

* Accuracies, errors and rates are fractions in [0, 1]; ``None`` means undefined (no
  labeled rows, a zero denominator), never NaN, so results go to strict JSON as is.
* Rows whose label is -1 (unknown) are left out of every label-based metric; the flip rate
  needs no labels and uses every row.
* Corruption error follows Hendrycks & Dietterich (2019), "Benchmarking Neural Network
  Robustness to Common Corruptions and Perturbations": CE_c = sum_s E_{s,c} / sum_s
  E^base_{s,c}; relative CE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^base_{s,c} -
  E^base_clean); mCE is the mean over conditions. Reported as ratios (1.0 = as good as the
  baseline), not percentages.
* Every accuracy cell (clean, per class, condition x severity, attack x eps, worst class)
  carries ``correct`` (k), ``n_labeled`` (n) and ``ci95``: the 95% Wilson score interval of
  k / n (:func:`ironsight.robustness.stats.wilson_interval`), null when n is 0.
* :func:`compare_runs` is the ONE per-cell comparison of two runs (``--baseline``, the release
  gate, run history): exact McNemar on the same images when both runs have per-image rows,
  else the unpaired Wilson-overlap rule; a cell regressed by :func:`~ironsight.robustness.stats.is_regression`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ironsight.robustness import stats

ECE_BINS = 15  # Guo et al. 2017 ("On Calibration of Modern Neural Networks") use 15 bins.

# Top-1 error of AlexNet on ImageNet-C per corruption and severity 1..5, the normalizer of
# the published mCE. Values as stored in timm's `imagenetc_alexnet_error_rates_list`
# (huggingface/pytorch-image-models, `timm.utils`, bits_and_tpu branch); their per-corruption
# means equal open-mmlab/mmpretrain `mmcls/evaluation/metrics/corruption_error.py`
# `_get_ce_alexnet()` (e.g. gaussian_noise 0.886428), which Hendrycks & Dietterich published.
ALEXNET_IMAGENET_C_ERRORS: dict[str, tuple[float, float, float, float, float]] = {
    "gaussian_noise": (0.69528, 0.82542, 0.93554, 0.98138, 0.99452),
    "shot_noise": (0.71224, 0.85108, 0.93574, 0.98182, 0.99146),
    "impulse_noise": (0.78374, 0.89808, 0.9487, 0.9872, 0.99548),
    "defocus_blur": (0.65624, 0.73202, 0.85036, 0.91364, 0.94714),
    "glass_blur": (0.64308, 0.75054, 0.88806, 0.91622, 0.93344),
    "motion_blur": (0.5843, 0.70048, 0.82108, 0.8975, 0.92638),
    "zoom_blur": (0.70008, 0.76992, 0.80784, 0.84198, 0.87198),
    "snow": (0.71726, 0.88392, 0.86468, 0.9187, 0.94952),
    "frost": (0.6139, 0.79734, 0.8879, 0.89942, 0.9343),
    "fog": (0.67474, 0.7605, 0.84378, 0.8726, 0.945),
    "brightness": (0.4514, 0.48502, 0.54048, 0.62166, 0.7244),
    "contrast": (0.64548, 0.7615, 0.88874, 0.9776, 0.9927),
    "elastic_transform": (0.52596, 0.70116, 0.55686, 0.64076, 0.80554),
    "pixelate": (0.52218, 0.5462, 0.73728, 0.87092, 0.91262),
    "jpeg_compression": (0.51002, 0.54718, 0.57294, 0.65458, 0.74778),
}


def _mean(values: Sequence[float | None]) -> float | None:
    """Mean of the defined values; None when none is defined."""
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def interval(k: int, n: int) -> dict:
    """An accuracy cell: ``accuracy`` k / n, its 95% Wilson score interval ``ci95`` [lo, hi],
    ``n_labeled`` n and ``correct`` k; accuracy and interval are None when n is 0.

    >>> c = interval(3, 4)
    >>> c["accuracy"], [round(x, 3) for x in c["ci95"]], c["n_labeled"]
    (0.75, [0.301, 0.954], 4)
    >>> interval(0, 0)["ci95"] is None
    True
    """
    if n == 0:
        return {"accuracy": None, "ci95": None, "n_labeled": 0, "correct": 0}
    lo, hi = stats.wilson_interval(int(k), int(n))
    return {"accuracy": k / n, "ci95": [lo, hi], "n_labeled": int(n), "correct": int(k)}


def _labeled_interval(labels: np.ndarray, correct: np.ndarray) -> dict:
    labeled = labels >= 0
    return interval(int(np.asarray(correct, dtype=bool)[labeled].sum()), int(labeled.sum()))


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float | None:
    """Top-1 accuracy over labeled rows (label >= 0).

    Args:
        labels: (N,) int class indices, -1 for unknown.
        predictions: (N,) int predicted class indices.

    Returns:
        Fraction correct, or None when no row is labeled.

    >>> accuracy(np.array([0, 1, 2, -1]), np.array([0, 1, 0, 2]))
    0.6666666666666666
    """
    mask = labels >= 0
    if not mask.any():
        return None
    return float(np.mean(labels[mask] == predictions[mask]))


def expected_calibration_error(
    confidences: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS
) -> float | None:
    """Expected calibration error with equal-width confidence bins.

    ECE = sum_b |B_b| / N * |accuracy(B_b) - mean confidence(B_b)|, bins (k/n, (k+1)/n]
    (a confidence of exactly 0 goes to the first bin).

    Args:
        confidences: (N,) confidence of the predicted class, in [0, 1].
        correct: (N,) bool, whether each prediction was right.
        n_bins: Number of equal-width bins over [0, 1].

    Returns:
        The ECE in [0, 1], or None for an empty input.

    >>> round(expected_calibration_error(np.array([0.9, 0.9]), np.array([True, False])), 6)
    0.4
    """
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    n = len(confidences)
    if n == 0:
        return None
    bins = np.clip(np.ceil(confidences * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in np.unique(bins):
        in_bin = bins == b
        ece += in_bin.sum() / n * abs(correct[in_bin].mean() - confidences[in_bin].mean())
    return float(ece)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrix over labeled rows: ``cm[true, predicted]`` counts.

    >>> confusion_matrix(np.array([0, 0, 1, -1]), np.array([0, 1, 1, 0]), 2).tolist()
    [[1, 1], [0, 1]]
    """
    mask = labels >= 0
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels[mask], predictions[mask]), 1)
    return cm


def precision_recall_f1(cm: np.ndarray) -> dict:
    """Per-class and macro precision, recall and F1 from a confusion matrix.

    A class never predicted has precision 0, a class with no examples has recall 0 (the
    scikit-learn ``zero_division=0`` convention). Macro averages are over classes that
    occur in the labels or the predictions.

    Returns:
        ``{"precision": [...], "recall": [...], "f1": [...], "support": [...],
        "macro_precision", "macro_recall", "macro_f1"}``.

    >>> r = precision_recall_f1(np.array([[2, 0], [1, 1]]))
    >>> [round(x, 4) for x in r["precision"]], r["recall"], round(r["macro_f1"], 4)
    ([0.6667, 1.0], [1.0, 0.5], 0.7333)
    """
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = (predicted > 0) | (support > 0)
    macro = {
        f"macro_{k}": (float(v[present].mean()) if present.any() else None)
        for k, v in (("precision", precision), ("recall", recall), ("f1", f1))
    }
    return {
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": support.astype(np.int64).tolist(),
        **macro,
    }


def per_class_accuracy(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int
) -> list[float | None]:
    """Accuracy (recall) of each class; None for a class with no labeled rows.

    >>> per_class_accuracy(np.array([0, 0, 1]), np.array([0, 1, 1]), 3)
    [0.5, 1.0, None]
    """
    out: list[float | None] = []
    for c in range(num_classes):
        mask = labels == c
        out.append(float(np.mean(predictions[mask] == c)) if mask.any() else None)
    return out


def per_class_counts(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int
) -> list[tuple[int, int]]:
    """``(correct, n)`` of each class over its labeled rows.

    >>> per_class_counts(np.array([0, 0, 1]), np.array([0, 1, 1]), 3)
    [(1, 2), (1, 1), (0, 0)]
    """
    mask = labels >= 0
    n = np.bincount(labels[mask], minlength=num_classes)
    hit = mask & (labels == predictions)
    k = np.bincount(labels[hit], minlength=num_classes)
    return [(int(k[c]), int(n[c])) for c in range(num_classes)]


def per_class_intervals(counts: Sequence[tuple[int, int]], class_names: Sequence[str]) -> list[dict]:
    """One cell per class: ``index``, ``name``, ``n`` (its labeled rows) and :func:`interval`."""
    return [
        {"index": i, "name": class_names[i], "n": n, **interval(k, n)}
        for i, (k, n) in enumerate(counts)
    ]


def worst_class(
    per_class: Sequence[float | None],
    class_names: Sequence[str],
    counts: Sequence[tuple[int, int]] | None = None,
) -> dict | None:
    """The class with the lowest accuracy (first on ties), or None when no class has rows.

    With ``counts`` (``(correct, n)`` per class) the entry also carries ``n`` and the
    :func:`interval` keys, so "worst class" can be read against its noise.

    >>> worst_class([0.5, 0.25, None], ["a", "b", "c"])
    {'index': 1, 'name': 'b', 'accuracy': 0.25}
    >>> worst_class([0.5, 0.25], ["a", "b"], [(1, 2), (1, 4)])["n"]
    4
    """
    defined = [(acc, i) for i, acc in enumerate(per_class) if acc is not None]
    if not defined:
        return None
    acc, i = min(defined)
    out = {"index": i, "name": class_names[i], "accuracy": acc}
    if counts is not None:
        k, n = counts[i]
        out.update({"n": n, **interval(k, n), "accuracy": acc})
    return out


def flip_rate(
    reference_ids: np.ndarray,
    reference_predictions: np.ndarray,
    ids: np.ndarray,
    predictions: np.ndarray,
) -> float | None:
    """Fraction of images whose prediction differs from their reference (clean) prediction.

    Images are matched by id; ids without a reference prediction are left out. Needs no
    labels.

    Returns:
        The flip rate, or None when no id has a reference.

    >>> flip_rate(np.array(["a", "b"]), np.array([0, 1]), np.array(["b", "a", "z"]), np.array([1, 2, 0]))
    0.5
    """
    ref_ids = _arrow(reference_ids)
    pos = pc.index_in(_arrow(ids), value_set=ref_ids).to_numpy(zero_copy_only=False)
    found = ~np.isnan(pos.astype(np.float64))  # null (no reference) comes back as NaN
    if not found.any():
        return None
    ref_pred = np.asarray(reference_predictions)[pos[found].astype(np.int64)]
    return float(np.mean(ref_pred != np.asarray(predictions)[found]))


def _arrow(values) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    return values if isinstance(values, pa.Array) else pa.array(np.asarray(values).tolist())


def corruption_errors(
    errors: dict[str, dict[int, float]],
    baseline_errors: dict[str, dict[int, float]],
    clean_error: float | None = None,
    baseline_clean_error: float | None = None,
) -> dict[str, dict[str, float | None]]:
    """Corruption error (CE) and relative CE of each condition against a baseline.

    Severities are matched: only severities present for the condition in both are summed.

    Args:
        errors: ``{condition: {severity: top-1 error}}`` of the model under audit.
        baseline_errors: The same for the baseline model.
        clean_error: Clean error of the model (needed for the relative CE).
        baseline_clean_error: Clean error of the baseline.

    Returns:
        ``{condition: {"ce": float | None, "relative_ce": float | None}}`` for conditions
        present in both; None where a denominator is zero or an input is missing.

    >>> corruption_errors({"fog": {1: 0.2, 2: 0.4}}, {"fog": {1: 0.4, 2: 0.8}}, 0.1, 0.2)
    {'fog': {'ce': 0.5, 'relative_ce': 0.5}}
    """
    out: dict[str, dict[str, float | None]] = {}
    for cond, by_sev in errors.items():
        base = baseline_errors.get(cond)
        if not base:
            continue
        sevs = sorted(set(by_sev) & set(base))
        if not sevs:
            continue
        num = sum(by_sev[s] for s in sevs)
        den = sum(base[s] for s in sevs)
        ce = num / den if den > 0 else None
        rel = None
        if clean_error is not None and baseline_clean_error is not None:
            rel_num = sum(by_sev[s] - clean_error for s in sevs)
            rel_den = sum(base[s] - baseline_clean_error for s in sevs)
            rel = rel_num / rel_den if rel_den > 0 else None
        out[cond] = {"ce": ce, "relative_ce": rel}
    return out


def _np(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False)


def _cells(rows: pa.Table, key: str):
    """Yield ``(condition, key value, sub-table)`` sorted by condition then key value."""
    for name in sorted(pc.unique(rows.column("condition")).to_pylist()):
        sub = rows.filter(pc.equal(rows.column("condition"), name))
        for value in sorted(pc.unique(sub.column(key)).to_pylist()):
            yield name, value, sub.filter(pc.equal(sub.column(key), value))


def clean_metrics(table: pa.Table, class_names: Sequence[str]) -> dict:
    """Metrics of the clean rows (``kind == "clean"``) of a validated predictions table."""
    num_classes = len(class_names)
    rows = table.filter(pc.equal(table.column("kind"), "clean"))
    labels, preds = _np(rows, "label"), _np(rows, "prediction")
    labeled = labels >= 0
    cm = confusion_matrix(labels, preds, num_classes)
    per_class = per_class_accuracy(labels, preds, num_classes)
    counts = per_class_counts(labels, preds, num_classes)
    prf = precision_recall_f1(cm)
    return {
        "n": rows.num_rows,
        **_labeled_interval(labels, _np(rows, "correct")),
        "accuracy": accuracy(labels, preds),
        "ece": expected_calibration_error(
            _np(rows, "confidence")[labeled], _np(rows, "correct")[labeled]
        ),
        "per_class_accuracy": per_class,
        "per_class": per_class_intervals(counts, class_names),
        "worst_class": worst_class(per_class, class_names, counts),
        "precision": prf["precision"],
        "recall": prf["recall"],
        "f1": prf["f1"],
        "support": prf["support"],
        "macro_precision": prf["macro_precision"],
        "macro_recall": prf["macro_recall"],
        "macro_f1": prf["macro_f1"],
        "confusion_matrix": cm.tolist(),
    }


def condition_metrics(table: pa.Table, class_names: Sequence[str]) -> list[dict]:
    """One entry per (condition, severity) of the corruption rows, sorted by name then severity.

    Each entry: ``name``, ``severity``, ``n``, ``accuracy`` with ``ci95``, ``n_labeled`` and
    ``correct`` (:func:`interval`), ``ece``, ``flip_rate`` (against the clean prediction of the
    same id), ``per_class_accuracy``, ``per_class`` (cells with intervals), ``worst_class``.
    """
    num_classes = len(class_names)
    clean = table.filter(pc.equal(table.column("kind"), "clean"))
    clean_ids, clean_preds = clean.column("id"), _np(clean, "prediction")
    rows = table.filter(pc.equal(table.column("kind"), "corruption"))
    out = []
    for name, sev, cell in _cells(rows, "severity"):
        labels, preds = _np(cell, "label"), _np(cell, "prediction")
        labeled = labels >= 0
        per_class = per_class_accuracy(labels, preds, num_classes)
        counts = per_class_counts(labels, preds, num_classes)
        out.append(
            {
                "name": name,
                "severity": int(sev),
                "n": cell.num_rows,
                **_labeled_interval(labels, _np(cell, "correct")),
                "accuracy": accuracy(labels, preds),
                "ece": expected_calibration_error(
                    _np(cell, "confidence")[labeled], _np(cell, "correct")[labeled]
                ),
                "flip_rate": flip_rate(clean_ids, clean_preds, cell.column("id"), preds),
                "per_class_accuracy": per_class,
                "per_class": per_class_intervals(counts, class_names),
                "worst_class": worst_class(per_class, class_names, counts),
            }
        )
    return out


def per_condition_summary(
    table: pa.Table, conditions: list[dict], class_names: Sequence[str]
) -> list[dict]:
    """Per condition: mean accuracy over severities and the worst class over all severities."""
    rows = table.filter(pc.equal(table.column("kind"), "corruption"))
    out = []
    for name in sorted({c["name"] for c in conditions}):
        cells = [c for c in conditions if c["name"] == name]
        sub = rows.filter(pc.equal(rows.column("condition"), name))
        labels, preds = _np(sub, "label"), _np(sub, "prediction")
        per_class = per_class_accuracy(labels, preds, len(class_names))
        counts = per_class_counts(labels, preds, len(class_names))
        out.append(
            {
                "name": name,
                "mean_accuracy": _mean([c["accuracy"] for c in cells]),
                "severities": [c["severity"] for c in cells],
                # pooled over severities: n counts each (image, severity) once
                "worst_class": worst_class(per_class, class_names, counts),
            }
        )
    return out


def mean_corruption_accuracy(conditions: list[dict]) -> float | None:
    """Mean over conditions of the mean accuracy over severities.

    >>> mean_corruption_accuracy([{"name": "a", "severity": 1, "accuracy": 1.0},
    ...     {"name": "a", "severity": 2, "accuracy": 0.5}, {"name": "b", "severity": 1, "accuracy": 0.25}])
    0.5
    """
    by_name: dict[str, list[float | None]] = {}
    for c in conditions:
        by_name.setdefault(c["name"], []).append(c["accuracy"])
    return _mean([_mean(v) for v in by_name.values()])


def attack_metrics(table: pa.Table) -> list[dict]:
    """Robust accuracy and attack success rate per (attack, eps), sorted by name then eps.

    The success rate is the fraction of initially correct images that the attack at ``eps``
    makes wrong; "initially correct" is the same attack's eps=0 row when there is one, else
    the clean row of the same id. Only labeled rows count.
    """
    clean = table.filter(pc.equal(table.column("kind"), "clean"))
    rows = table.filter(pc.equal(table.column("kind"), "attack"))
    out = []
    for name, eps, cell in _cells(rows, "eps"):
        att = rows.filter(pc.equal(rows.column("condition"), name))
        at_zero = att.filter(pc.equal(att.column("eps"), 0.0))
        ref = at_zero if at_zero.num_rows else clean
        labels, preds, correct = _np(cell, "label"), _np(cell, "prediction"), _np(cell, "correct")
        pos = pc.index_in(cell.column("id"), value_set=ref.column("id").combine_chunks())
        pos = pos.to_numpy(zero_copy_only=False).astype(np.float64)  # null -> NaN: no reference
        found = ~np.isnan(pos)
        initially = np.zeros(len(labels), dtype=bool)
        initially[found] = _np(ref, "correct")[pos[found].astype(np.int64)]
        initially &= labels >= 0
        out.append(
            {
                "name": name,
                "eps": float(eps),
                "n": cell.num_rows,
                **interval(int((correct & (labels >= 0)).sum()), int((labels >= 0).sum())),
                "accuracy": accuracy(labels, preds),
                "n_initially_correct": int(initially.sum()),
                "success_rate": float(np.mean(~correct[initially])) if initially.any() else None,
            }
        )
    return out


def gradient_masking_warnings(attacks: list[dict], num_classes: int) -> list[str]:
    """Warn for each attack whose accuracy at its largest eps stays above chance.

    >>> gradient_masking_warnings([{"name": "pgd", "eps": 0.0, "accuracy": 0.9},
    ...     {"name": "pgd", "eps": 8 / 255, "accuracy": 0.6}], 10)[0][:60]
    'pgd: accuracy at the largest eps (8.0/255 = 0.0314) is 0.600'
    """
    chance = 1.0 / num_classes
    warnings = []
    for name in sorted({a["name"] for a in attacks}):
        top = max((a for a in attacks if a["name"] == name), key=lambda a: a["eps"])
        if top["eps"] <= 0 or top["accuracy"] is None or top["accuracy"] <= chance:
            continue
        warnings.append(
            f"{name}: accuracy at the largest eps ({top['eps'] * 255:.1f}/255 = {top['eps']:.4f}) "
            f"is {top['accuracy']:.3f}, above chance ({chance:.3f}). A working attack at a budget "
            f"this large usually drives an undefended model to chance or below, so the gradients "
            f"may be masked (non-differentiable or saturated layers, randomness in the model) "
            f"or the attack is too weak; check with more steps, restarts or a gradient-free "
            f"attack before trusting this robustness."
        )
    return warnings


# sha256 of the 1000 ImageNet-1k class names joined by "\n", in logit order, as torchvision's
# weights carry them (``Weights.meta["categories"]``, the registry's zoo models); a test checks
# it against torchvision. A hash keeps torchvision out of report building.
IMAGENET_1K_NAMES_SHA256 = "0b0f9fee7c952f257418d62aa701f023a9da13b443a14f5c4291e5724d92967c"
IMAGENET_1K_CLASSES = 1000


def imagenet_mce_reason(class_names: Sequence[str]) -> str | None:
    """Why mCE against AlexNet does not apply to a model with these classes; None when it does.

    AlexNet's ImageNet-C errors normalize an error on the same 1000 ImageNet-1k labels: the
    ratio means nothing for another label set, even one with 1000 classes.

    >>> imagenet_mce_reason(["circle", "square"])[:60]
    'the model has 2 classes, not the 1000 ImageNet-1k classes: m'
    """
    n = len(class_names)
    if n != IMAGENET_1K_CLASSES:
        return (
            f"the model has {n} classes, not the {IMAGENET_1K_CLASSES} ImageNet-1k classes: "
            f"mCE against AlexNet's published ImageNet-C errors only means something for "
            f"ImageNet-1k labels"
        )
    digest = hashlib.sha256("\n".join(map(str, class_names)).encode("utf-8")).hexdigest()
    if digest != IMAGENET_1K_NAMES_SHA256:
        return (
            f"the model has {n} classes but its class names are not ImageNet-1k's (in "
            f"torchvision's order; first: {', '.join(map(str, class_names[:3]))}): mCE against "
            f"AlexNet's published ImageNet-C errors only means something for ImageNet-1k labels"
        )
    return None


def _registry_imagenet_c(names: Sequence[str]) -> set[str]:
    """The names whose registry tag says ImageNet-C (``Condition.imagenet_c``); names that are
    not registered (a caller's own condition) are not ImageNet-C."""
    from ironsight.robustness import conditions as registry  # albumentations: imported on use

    out = set()
    for name in names:
        try:
            if registry.get_condition(name).imagenet_c:
                out.add(name)
        except ValueError:
            continue
    return out


def alexnet_mce(conditions: list[dict], imagenet_c_conditions: Sequence[str] | None = None) -> dict | None:
    """mCE against AlexNet's published ImageNet-C errors, over ImageNet-C conditions only.

    Args:
        conditions: The report's condition x severity entries.
        imagenet_c_conditions: Which names are ImageNet-C's. None (what reports use): the
            conditions whose registry tag says ImageNet-C
            (:attr:`ironsight.robustness.conditions.Condition.imagenet_c`), so the mCE covers
            exactly what ``ironsight conditions list`` tags.

    Only those conditions, at severities 1..5, count; one without a published AlexNet error
    is listed in ``excluded``.

    Returns:
        ``{"mce": float, "ce": {condition: float}, "conditions": [...], "excluded": [...]}``
        or None when no audited condition is an ImageNet-C one.
    """
    audited = {c["name"] for c in conditions}
    if imagenet_c_conditions is None:
        tagged = _registry_imagenet_c(sorted(audited))
    else:
        tagged = set(imagenet_c_conditions)
    allowed = tagged & set(ALEXNET_IMAGENET_C_ERRORS)
    errors: dict[str, dict[int, float]] = {}
    for c in conditions:
        if c["name"] in allowed and 1 <= c["severity"] <= 5 and c["accuracy"] is not None:
            errors.setdefault(c["name"], {})[c["severity"]] = 1.0 - c["accuracy"]
    if not errors:
        return None
    base = {k: dict(enumerate(v, start=1)) for k, v in ALEXNET_IMAGENET_C_ERRORS.items()}
    ces = {k: v["ce"] for k, v in corruption_errors(errors, base).items()}
    return {
        "mce": _mean(list(ces.values())),
        "ce": ces,
        "conditions": sorted(ces),
        # tagged ImageNet-C but no published AlexNet error for the name
        "excluded": sorted((audited & tagged) - set(ces)),
    }


def _errors_by_condition(conditions: Sequence[dict]) -> dict[str, dict[int, float]]:
    errors: dict[str, dict[int, float]] = {}
    for c in conditions:
        if c.get("accuracy") is not None:
            errors.setdefault(c["name"], {})[int(c["severity"])] = 1.0 - c["accuracy"]
    return errors


def compare_to_baseline(
    clean_accuracy: float | None, conditions: list[dict], baseline: dict
) -> dict:
    """CE, relative CE, mCE and accuracy changes against a baseline ``report.json``.

    Args:
        clean_accuracy: Clean accuracy of the model under audit.
        conditions: This report's ``conditions`` entries.
        baseline: A previous report (the dict loaded from its ``report.json``).

    Returns:
        ``{"clean_accuracy_change", "per_condition": {name: {"ce", "relative_ce",
        "mean_accuracy", "baseline_mean_accuracy", "accuracy_change"}}, "mce",
        "relative_mce", "missing_in_baseline": [...]}``; changes are this minus baseline.
    """
    base_conditions = baseline.get("conditions") or []
    base_clean = (baseline.get("clean") or {}).get("accuracy")
    errors, base_errors = _errors_by_condition(conditions), _errors_by_condition(base_conditions)
    ces = corruption_errors(
        errors,
        base_errors,
        None if clean_accuracy is None else 1.0 - clean_accuracy,
        None if base_clean is None else 1.0 - base_clean,
    )
    per_condition = {}
    for name in sorted(errors):
        mine = mean_corruption_accuracy([c for c in conditions if c["name"] == name])
        theirs = mean_corruption_accuracy([c for c in base_conditions if c["name"] == name])
        per_condition[name] = {
            "ce": ces.get(name, {}).get("ce"),
            "relative_ce": ces.get(name, {}).get("relative_ce"),
            "mean_accuracy": mine,
            "baseline_mean_accuracy": theirs,
            "accuracy_change": None if mine is None or theirs is None else mine - theirs,
        }
    return {
        "clean_accuracy": base_clean,
        "clean_accuracy_change": (
            None if clean_accuracy is None or base_clean is None else clean_accuracy - base_clean
        ),
        "per_condition": per_condition,
        "mce": _mean([v["ce"] for v in ces.values()]),
        "relative_mce": _mean([v["relative_ce"] for v in ces.values()]),
        "missing_in_baseline": sorted(set(errors) - set(ces)),
    }


# ------------------------------------------------------------------------ run comparison


def cell_key(kind: str, name: str = "clean", severity: int | None = None, eps: float | None = None) -> str:
    """Stable key of a cell across runs: ``clean``, ``condition/fog/3`` (one severity),
    ``condition/fog`` (mean over severities), ``attack/pgd/0.00784313725490196``.

    >>> cell_key("condition", "fog", 3), cell_key("attack", "pgd", eps=0.5)
    ('condition/fog/3', 'attack/pgd/0.5')
    """
    if kind == "clean":
        return "clean"
    if kind == "condition":
        return f"condition/{name}/{int(severity)}"
    if kind == "condition_mean":
        return f"condition/{name}"
    if kind == "attack":
        return f"attack/{name}/{float(eps)!r}"
    raise ValueError(f"unknown cell kind {kind!r}")


@dataclass(frozen=True)
class CellChange:
    """How one cell moved between two runs (:func:`compare_runs`).

    Attributes:
        key: :func:`cell_key`.
        label: The cell in words (``"fog severity 3"``).
        kind: ``clean``, ``condition`` (one severity), ``condition_mean`` (pooled over the
            severities both runs have) or ``attack`` (one eps).
        name: ``"clean"``, the condition or the attack.
        severity: Condition severity, else None.
        eps: Attack budget, else None.
        change: :class:`~ironsight.robustness.stats.Change` (new minus reference).
        regression: :func:`~ironsight.robustness.stats.is_regression` with ``max_drop``.
        paired: True when judged by exact McNemar on the same image ids.
    """

    key: str
    label: str
    kind: str
    name: str
    severity: int | None
    eps: float | None
    change: stats.Change
    regression: bool
    paired: bool

    def to_json(self) -> dict:
        return {
            "key": self.key,
            "label": self.label,
            "kind": self.kind,
            "name": self.name,
            "severity": self.severity,
            "eps": self.eps,
            **self.change.to_json(),
            "paired": self.paired,
            "regression": self.regression,
        }

    @classmethod
    def from_json(cls, data: dict) -> CellChange:
        """Inverse of :meth:`to_json` (a cell stored in ``report.json``)."""
        fields = {f.name for f in dataclasses.fields(stats.Change)}
        change = stats.Change(**{k: v for k, v in data.items() if k in fields})
        return cls(
            data["key"], data["label"], data["kind"], data["name"], data.get("severity"),
            data.get("eps"), change, bool(data.get("regression")), bool(data.get("paired")),
        )


def _eps_words(eps: float) -> str:
    return f"{eps * 255:.1f}/255"


def _cell_label(kind: str, name: str, severity, eps, severities=()) -> str:
    if kind == "clean":
        return "clean"
    if kind == "condition":
        return f"{name} severity {severity}"
    if kind == "condition_mean":
        return f"{name} (severities {', '.join(map(str, severities))} pooled)"
    return f"{name} at eps {_eps_words(eps)}"


def _report_counts(report: dict) -> dict[tuple, tuple[int, int]]:
    """``{(kind, name, severity, eps): (correct, n labeled)}`` from a report.json; cells of
    reports older than the intervals (no ``correct``) get ``round(accuracy * n)``; a cell
    without an accuracy or an n is left out."""

    def counts(entry: dict | None) -> tuple[int, int] | None:
        if not entry or entry.get("accuracy") is None:
            return None
        n = entry.get("n_labeled", entry.get("n"))
        if not isinstance(n, int) or n <= 0:
            return None
        k = entry.get("correct")
        if not isinstance(k, int):
            k = int(round(entry["accuracy"] * n))
        return k, n

    out: dict[tuple, tuple[int, int]] = {}
    c = counts(report.get("clean"))
    if c:
        out[("clean", "clean", None, None)] = c
    for entry in report.get("conditions") or []:
        c = counts(entry)
        if c:
            out[("condition", entry["name"], int(entry["severity"]), None)] = c
    for entry in report.get("attacks") or []:
        c = counts(entry)
        if c:
            out[("attack", entry["name"], None, float(entry["eps"]))] = c
    return out


def _table_cells(table: pa.Table) -> dict[tuple, pa.Table]:
    """``{(kind, name, severity, eps): labeled rows}`` of a predictions table."""
    table = table.filter(pc.greater_equal(table.column("label"), 0))
    out: dict[tuple, pa.Table] = {}
    clean = table.filter(pc.equal(table.column("kind"), "clean"))
    if clean.num_rows:
        out[("clean", "clean", None, None)] = clean
    for kind, level in (("corruption", "severity"), ("attack", "eps")):
        rows = table.filter(pc.equal(table.column("kind"), kind))
        for name, value, cell in _cells(rows, level):
            if kind == "corruption":
                out[("condition", name, int(value), None)] = cell
            else:
                out[("attack", name, None, float(value))] = cell
    return out


def _occurrence(ids: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """For each row, how many earlier rows have the same id (0 for the first): a repeated id
    pairs its k-th row in one run with its k-th row in the other."""
    codes = pc.dictionary_encode(_arrow(ids)).indices.to_numpy(zero_copy_only=False)
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    first = np.r_[True, sorted_codes[1:] != sorted_codes[:-1]] if len(codes) else np.array([], bool)
    starts = np.maximum.accumulate(np.where(first, np.arange(len(codes)), 0)) if len(codes) else first
    occ = np.empty(len(codes), dtype=np.int64)
    occ[order] = np.arange(len(codes)) - starts
    return occ


def _aligned(ref: pa.Table, new: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Per-image correctness of the images present in both cells, aligned by id."""

    def keyed(t: pa.Table) -> pa.Table:
        return pa.table({"id": t.column("id"), "occ": _occurrence(t.column("id")), "correct": t.column("correct")})

    joined = keyed(ref).join(keyed(new), keys=["id", "occ"], join_type="inner",
                             left_suffix="_ref", right_suffix="_new")
    return _np(joined, "correct_ref").astype(bool), _np(joined, "correct_new").astype(bool)


def compare_runs(
    reference: dict | pa.Table,
    new: dict | pa.Table,
    max_drop: float = 0.0,
    *,
    alpha: float = stats.ALPHA,
) -> list[CellChange]:
    """Compare two runs cell by cell: the ONE comparison behind ``--baseline``, the release
    gate's ``max_drop_vs_baseline`` and run history.

    Args:
        reference: The earlier run: a predictions table
            (:data:`~ironsight.robustness.schema.PREDICTIONS_SCHEMA`, one row per image and
            cell) or a ``report.json`` dict.
        new: The run under review, the same way.
        max_drop: Absolute accuracy drop allowed before a significant drop is a regression.
        alpha: Significance level of the paired test.

    Returns:
        One :class:`CellChange` per cell both runs have (clean; each condition x severity and
        each condition pooled over the severities both have; each attack x eps), in that
        order. When both are tables, a cell is *paired*: its images are matched by id and
        judged by exact McNemar (:func:`~ironsight.robustness.stats.paired_change`). A report
        carries counts, not per-image correctness, so a cell with a report on either side (or
        with no id in common) is *unpaired*
        (:func:`~ironsight.robustness.stats.unpaired_change`, Wilson-interval overlap). Only
        labeled rows count.

    >>> import pyarrow as pa
    >>> def run(correct):
    ...     return pa.table({"id": [str(i) for i in range(len(correct))], "kind": ["clean"] * len(correct),
    ...         "condition": ["clean"] * len(correct), "severity": [0] * len(correct),
    ...         "eps": [0.0] * len(correct), "label": [1] * len(correct),
    ...         "prediction": [1 if c else 0 for c in correct], "confidence": [0.9] * len(correct),
    ...         "correct": correct})
    >>> (cell,) = compare_runs(run([True] * 100), run([True] * 88 + [False] * 12), 0.05)
    >>> cell.label, round(cell.change.delta, 2), cell.change.verdict, cell.paired, cell.regression
    ('clean', -0.12, 'significant', True, True)
    """
    paired_sides = isinstance(reference, pa.Table) and isinstance(new, pa.Table)
    ref_cells = _table_cells(reference) if isinstance(reference, pa.Table) else None
    new_cells = _table_cells(new) if isinstance(new, pa.Table) else None

    def counts_of(cells, report) -> dict[tuple, tuple[int, int]]:
        if cells is None:
            return _report_counts(report)
        return {k: (int(np.sum(_np(t, "correct"))), t.num_rows) for k, t in cells.items()}

    ref_counts, new_counts = counts_of(ref_cells, reference), counts_of(new_cells, new)
    common = sorted(
        set(ref_counts) & set(new_counts),
        key=lambda k: (("clean", "condition", "attack").index(k[0]), k[1], k[2] or 0, k[3] or 0.0),
    )
    out: list[CellChange] = []
    vectors: dict[tuple, tuple[np.ndarray, np.ndarray] | None] = {}

    def judge(kind, name, severity, eps, k_ref, n_ref, k_new, n_new, vec, severities=()):
        if vec is not None and len(vec[0]):
            change = stats.paired_change(vec[0].tolist(), vec[1].tolist(), alpha=alpha)
            paired = True
        else:
            change = stats.unpaired_change(k_ref, n_ref, k_new, n_new)
            paired = False
        out.append(
            CellChange(
                cell_key(kind, name, severity, eps),
                _cell_label(kind, name, severity, eps, severities),
                kind, name, severity, eps, change, stats.is_regression(change, max_drop), paired,
            )
        )

    for key in common:
        kind, name, severity, eps = key
        vec = _aligned(ref_cells[key], new_cells[key]) if paired_sides else None
        vectors[key] = vec
        (k_r, n_r), (k_n, n_n) = ref_counts[key], new_counts[key]
        judge(kind, name, severity, eps, k_r, n_r, k_n, n_n, vec)
        last_of_condition = kind == "condition" and not any(
            c[0] == "condition" and c[1] == name and c[2] > severity for c in common
        )
        if last_of_condition:
            keys = [c for c in common if c[0] == "condition" and c[1] == name]
            sevs = [c[2] for c in keys]
            k_r = sum(ref_counts[c][0] for c in keys)
            n_r = sum(ref_counts[c][1] for c in keys)
            k_n = sum(new_counts[c][0] for c in keys)
            n_n = sum(new_counts[c][1] for c in keys)
            pooled = None
            if paired_sides and all(vectors[c] is not None and len(vectors[c][0]) for c in keys):
                pooled = (
                    np.concatenate([vectors[c][0] for c in keys]),
                    np.concatenate([vectors[c][1] for c in keys]),
                )
            judge("condition_mean", name, None, None, k_r, n_r, k_n, n_n, pooled, sevs)
    return out
