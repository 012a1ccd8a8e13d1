"""Robustness metrics computed from the predictions table (:mod:`ironsight.robustness.schema`).

Plain numpy on small arrays; every function is pure. Conventions:

* Accuracies, errors and rates are fractions in [0, 1]; ``None`` means undefined (no
  labeled rows, a zero denominator), never NaN, so results go to strict JSON as is.
* Rows whose label is -1 (unknown) are left out of every label-based metric; the flip rate
  needs no labels and uses every row.
* Every accuracy cell (clean, per class, condition x severity, attack x eps, worst class)
  carries ``correct`` (k), ``n_labeled`` (n) and ``ci95``: the 95% Wilson score interval of
  k / n (:func:`ironsight.robustness.stats.wilson_interval`), null when n is 0.

Corruption error and mCE (against AlexNet or a baseline report) are
:mod:`ironsight.robustness.mce`; the per-cell comparison of two runs is
:mod:`ironsight.robustness.compare`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ironsight.robustness import stats

ECE_BINS = 15  # Guo et al. 2017 ("On Calibration of Modern Neural Networks") use 15 bins.


def mean_defined(values: Sequence[float | None]) -> float | None:
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
    ref_ids = as_arrow(reference_ids)
    pos = pc.index_in(as_arrow(ids), value_set=ref_ids).to_numpy(zero_copy_only=False)
    found = ~np.isnan(pos.astype(np.float64))  # null (no reference) comes back as NaN
    if not found.any():
        return None
    ref_pred = np.asarray(reference_predictions)[pos[found].astype(np.int64)]
    return float(np.mean(ref_pred != np.asarray(predictions)[found]))


def as_arrow(values) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    return values if isinstance(values, pa.Array) else pa.array(np.asarray(values).tolist())


def numpy_column(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False)


def cells_by(rows: pa.Table, key: str):
    """Yield ``(condition, key value, sub-table)`` sorted by condition then key value."""
    for name in sorted(pc.unique(rows.column("condition")).to_pylist()):
        sub = rows.filter(pc.equal(rows.column("condition"), name))
        for value in sorted(pc.unique(sub.column(key)).to_pylist()):
            yield name, value, sub.filter(pc.equal(sub.column(key), value))


def clean_metrics(table: pa.Table, class_names: Sequence[str]) -> dict:
    """Metrics of the clean rows (``kind == "clean"``) of a validated predictions table."""
    num_classes = len(class_names)
    rows = table.filter(pc.equal(table.column("kind"), "clean"))
    labels, preds = numpy_column(rows, "label"), numpy_column(rows, "prediction")
    labeled = labels >= 0
    cm = confusion_matrix(labels, preds, num_classes)
    per_class = per_class_accuracy(labels, preds, num_classes)
    counts = per_class_counts(labels, preds, num_classes)
    prf = precision_recall_f1(cm)
    return {
        "n": rows.num_rows,
        **_labeled_interval(labels, numpy_column(rows, "correct")),
        "accuracy": accuracy(labels, preds),
        "ece": expected_calibration_error(
            numpy_column(rows, "confidence")[labeled], numpy_column(rows, "correct")[labeled]
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
    clean_ids, clean_preds = clean.column("id"), numpy_column(clean, "prediction")
    rows = table.filter(pc.equal(table.column("kind"), "corruption"))
    out = []
    for name, sev, cell in cells_by(rows, "severity"):
        labels, preds = numpy_column(cell, "label"), numpy_column(cell, "prediction")
        labeled = labels >= 0
        per_class = per_class_accuracy(labels, preds, num_classes)
        counts = per_class_counts(labels, preds, num_classes)
        out.append(
            {
                "name": name,
                "severity": int(sev),
                "n": cell.num_rows,
                **_labeled_interval(labels, numpy_column(cell, "correct")),
                "accuracy": accuracy(labels, preds),
                "ece": expected_calibration_error(
                    numpy_column(cell, "confidence")[labeled], numpy_column(cell, "correct")[labeled]
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
        labels, preds = numpy_column(sub, "label"), numpy_column(sub, "prediction")
        per_class = per_class_accuracy(labels, preds, len(class_names))
        counts = per_class_counts(labels, preds, len(class_names))
        out.append(
            {
                "name": name,
                "mean_accuracy": mean_defined([c["accuracy"] for c in cells]),
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
    return mean_defined([mean_defined(v) for v in by_name.values()])


def attack_metrics(table: pa.Table) -> list[dict]:
    """Robust accuracy and attack success rate per (attack, eps), sorted by name then eps.

    The success rate is the fraction of initially correct images that the attack at ``eps``
    makes wrong; "initially correct" is the same attack's eps=0 row when there is one, else
    the clean row of the same id. Only labeled rows count.
    """
    clean = table.filter(pc.equal(table.column("kind"), "clean"))
    rows = table.filter(pc.equal(table.column("kind"), "attack"))
    out = []
    for name, eps, cell in cells_by(rows, "eps"):
        att = rows.filter(pc.equal(rows.column("condition"), name))
        at_zero = att.filter(pc.equal(att.column("eps"), 0.0))
        ref = at_zero if at_zero.num_rows else clean
        labels, preds, correct = numpy_column(cell, "label"), numpy_column(cell, "prediction"), numpy_column(cell, "correct")
        pos = pc.index_in(cell.column("id"), value_set=ref.column("id").combine_chunks())
        pos = pos.to_numpy(zero_copy_only=False).astype(np.float64)  # null -> NaN: no reference
        found = ~np.isnan(pos)
        initially = np.zeros(len(labels), dtype=bool)
        initially[found] = numpy_column(ref, "correct")[pos[found].astype(np.int64)]
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
