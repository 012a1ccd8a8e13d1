"""The rows and sentences every audit renderer shares: built once here, from report.json's
dict, and laid out by :mod:`~ironsight.robustness.report.markdown` (report.md),
:mod:`~ironsight.robustness.report.html` (report.html) and
:mod:`~ironsight.robustness.report.text` (the terminal summary).

| function              | what it builds                                                       |
|-----------------------|----------------------------------------------------------------------|
| :func:`pct`, :func:`num`, :func:`ci_text`, :func:`change_text`, :func:`mix_text` | one cell as text (``—`` for a missing value) |
| :func:`header_lines`  | the header's sentences: images, smallest detectable drop, intervals, preprocessing, baseline test |
| :func:`example_lines` | what the example images are and how their maps were made              |
| :func:`summary_rows`  | the summary table's (metric, value) rows                              |
| :func:`result_tables` | the per-condition, condition x severity and attack x eps tables        |
| :func:`per_class_table` | the clean data per class, and the macro row                         |
| :func:`gate_lines`    | the release gate's verdict lines                                      |

Every cell is a display string (or an int): a renderer escapes and lays out, it computes nothing.
"""

from __future__ import annotations

from ironsight.robustness import compare


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def num(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def ci_text(cell: dict | None, key: str = "accuracy") -> str:
    """An accuracy with its 95% Wilson score interval and n: ``75.0% [30.1, 95.4] (n=4)``;
    the bare percentage for a cell without an interval (a report from before intervals).

    >>> ci_text({"accuracy": 0.75, "ci95": [0.3006, 0.9544], "n_labeled": 4})
    '75.0% [30.1, 95.4] (n=4)'
    """
    if not cell or cell.get(key) is None:
        return "—"
    ci = cell.get("ci95")
    n = cell.get("n_labeled", cell.get("n"))
    if not ci:
        return pct(cell[key])
    return f"{pct(cell[key])} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}] (n={n})"


def _worst(entry: dict | None) -> str:
    if not entry:
        return "—"
    return f"{entry['name']} {ci_text(entry)}" if entry.get("ci95") else f"{entry['name']} ({pct(entry['accuracy'])})"


def change_text(cell: dict | None) -> str:
    """A change against the baseline: points, verdict and the test behind it.

    >>> change_text({"delta": -0.12, "significant": True, "verdict": "significant",
    ...     "test": "mcnemar_exact", "p_value": 0.00049, "worse": 12, "better": 0, "n": 100,
    ...     "paired": True})
    '-12.0 pts, significant (paired McNemar p=0.00049; 12 worse, 0 better of 100)'
    """
    if not cell or cell.get("delta") is None:
        return "—"
    head = f"{100 * cell['delta']:+.1f} pts, {cell['verdict']}"
    if cell.get("paired"):
        return (
            f"{head} (paired McNemar p={cell['p_value']:.2g}; {cell['worse']} worse, "
            f"{cell['better']} better of {cell['n']})"
        )
    return f"{head} (unpaired: 95% Wilson intervals {'apart' if cell['significant'] else 'overlap'})"


def _changes(report: dict) -> dict[str, dict]:
    base = (report.get("summary") or {}).get("baseline") or {}
    return {c["key"]: c for c in base.get("cells") or []}


def header_lines(report: dict) -> list[str]:
    """Plain sentences for the report header: images, the smallest drop they can detect, what
    the intervals are, the preprocessing and the baseline test. Shared by Markdown and HTML."""
    s = report["summary"]
    lines = []
    if s.get("labeled_images") is not None:
        mdd = s.get("min_detectable_drop")
        lines.append(
            f"images: {s.get('images')} clean, {s['labeled_images']} labeled; the smallest drop "
            f"this n can call significant is "
            + (
                f"{100 * mdd:.1f} points"
                if mdd is not None
                else "none: too few labeled images for any drop to be significant"
            )
            + " (paired exact McNemar, α = 0.05, best case: every changed image got worse)"
        )
        lines.append(
            "intervals: 95% Wilson score interval of each accuracy, shown as "
            "accuracy [low, high] (n = labeled images in the cell)"
        )
    pre = report.get("preprocessing")
    if pre:
        lines.append("preprocessing: " + preprocessing_text(pre))
    base = s.get("baseline")
    if base and base.get("test"):
        lines.append(f"baseline comparison: {base['test']}")
    return lines


def example_lines(report: dict) -> list[str]:
    """Sentences about the example images (report.json's ``examples``, written by the audit):
    which images are shown, how their maps were made, and each condition without a
    misclassified example. Shared by Markdown and HTML; empty for a report without it."""
    ex = report.get("examples")
    if not ex:
        return []
    method = ex.get("activation_maps")
    lines = [
        ("misclassified images per condition (the suite's worst severity), up to "
         if ex.get("misclassified_only") else "the first images per condition (unlabeled eval set), up to ")
        + f"{ex.get('per_condition', '?')} each, with "
        + (f"activation maps of the predicted class: {method}" if method
           else f"no activation maps ({ex['activation_maps_error']})" if ex.get("activation_maps_error")
           else "no activation maps (turned off)")
    ]
    for c in ex["cells"]:
        where = c["condition"] if not c["severity"] else f"{c['condition']} severity {c['severity']}"
        if ex.get("misclassified_only") and not c.get("misclassified"):
            lines.append(f"{where}: no misclassified example")
        elif c["ids"]:
            count = f" of {c['misclassified']} misclassified" if c.get("misclassified") is not None else ""
            lines.append(f"{where}: {len(c['ids'])}{count} shown ({', '.join(c['ids'])})")
    return lines


def preprocessing_text(pre: dict) -> str:
    """``report["preprocessing"]`` in words.

    >>> preprocessing_text({"resize": 232, "crop": 224, "interpolation": "bilinear",
    ...     "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
    ...     "weights_version": "IMAGENET1K_V2"})
    'resize 232, center crop 224, bilinear, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225), weights IMAGENET1K_V2'
    """
    def vec(v) -> str:
        return "(" + ", ".join(f"{x:g}" for x in v) + ")" if isinstance(v, list | tuple) else str(v)

    parts = []
    if "resize" in pre or "crop" in pre:
        if pre.get("resize") is None:
            parts.append(f"whole frame resized to {pre.get('crop')}x{pre.get('crop')} (no crop)")
        else:
            parts.append(f"resize {pre['resize']}, center crop {pre.get('crop')}")
    if pre.get("interpolation"):
        parts.append(str(pre["interpolation"]))
    for key in ("mean", "std"):
        if pre.get(key) is not None:
            parts.append(f"{key} {vec(pre[key])}")
    if pre.get("weights_version"):
        parts.append(f"weights {pre['weights_version']}")
    known = {"mode", "resize", "crop", "interpolation", "mean", "std", "weights_version"}
    parts += [f"{k} {vec(v)}" for k, v in pre.items() if k not in known]
    return ", ".join(parts)


def result_tables(report: dict) -> list[tuple[str, list[str], list[list]]]:
    """(section, header, rows) of the results tables, shared by the Markdown and HTML reports.

    Per condition (mean over severities, with CE against a baseline), per condition x
    severity cell, and per attack x epsilon; cells are display strings.
    """
    s = report["summary"]
    changes = _changes(report)
    tables: list[tuple[str, list[str], list[list]]] = []
    if report["conditions"]:
        header = ["condition", "mean accuracy", "worst class (all severities)"]
        if s.get("baseline"):
            header += ["CE", "relative CE", "accuracy change vs baseline"]
        rows = []
        for p in s["per_condition"]:
            row = [p["name"], pct(p["mean_accuracy"]), _worst(p["worst_class"])]
            if s.get("baseline"):
                change = p.get("change")
                row += [
                    num(p.get("ce")),
                    num(p.get("relative_ce")),
                    change_text(change) if change else pct(p.get("accuracy_change")),
                ]
            rows.append(row)
        tables.append(("Corruptions", header, rows))
        header = ["condition", "severity", "n", "accuracy [95% CI]", "ECE", "flip rate", "worst class"]
        if changes:
            header.append("change vs baseline")
        rows = []
        for c in report["conditions"]:
            row = [c["name"], c["severity"], c["n"], ci_text(c), num(c["ece"]),
                   pct(c["flip_rate"]), _worst(c["worst_class"])]
            if changes:
                row.append(change_text(changes.get(compare.cell_key("condition", c["name"], c["severity"]))))
            rows.append(row)
        tables.append(("Corruptions", header, rows))
    if report["attacks"]:
        header = ["attack", "eps", "eps × 255", "n", "robust accuracy [95% CI]", "success rate"]
        if changes:
            header.append("change vs baseline")
        rows = []
        for a in report["attacks"]:
            row = [a["name"], f"{a['eps']:.5f}", f"{a['eps'] * 255:.1f}", a["n"],
                   ci_text(a), pct(a["success_rate"])]
            if changes:
                row.append(change_text(changes.get(compare.cell_key("attack", a["name"], eps=a["eps"]))))
            rows.append(row)
        tables.append(("Adversarial attacks", header, rows))
    return tables


# A report's per-class rows and confusion matrix name every class up to this many; beyond it
# (an ImageNet model: 1,000 classes, a 1,000 x 1,000 matrix that took 8 s to draw and 2 MB of
# Markdown) only the classes the eval set has or the model predicted, at most this many.
MAX_CLASSES_SHOWN = 30


def shown_classes(report: dict) -> list[int]:
    """The class indices report.md and report.html show in per-class rows and the confusion
    matrix: all of them up to :data:`MAX_CLASSES_SHOWN`; else the classes with a true label or
    a prediction in the clean confusion matrix, the :data:`MAX_CLASSES_SHOWN` most frequent
    (true + predicted) of them, in class order.

    >>> cm = [[0] * 40 for _ in range(40)]
    >>> cm[3][3], cm[7][12] = 5, 2
    >>> shown_classes({"class_names": [str(i) for i in range(40)], "clean": {"confusion_matrix": cm}})
    [3, 7, 12]
    >>> shown_classes({"class_names": ["a", "b"], "clean": {"confusion_matrix": [[0, 0], [0, 0]]}})
    [0, 1]
    """
    import numpy as np

    names = report["class_names"]
    if len(names) <= MAX_CLASSES_SHOWN:
        return list(range(len(names)))
    cm = np.asarray(report["clean"].get("confusion_matrix") or np.zeros((len(names), len(names))))
    weight = cm.sum(axis=1) + cm.sum(axis=0)
    seen = np.flatnonzero(weight > 0)
    top = seen[np.argsort(-weight[seen], kind="stable")[:MAX_CLASSES_SHOWN]]
    return sorted(int(i) for i in top)


def shown_classes_note(report: dict, shown: list[int]) -> str:
    """'' when every class is shown; else which classes are left out."""
    total = len(report["class_names"])
    if len(shown) == total:
        return ""
    return (f"{len(shown)} of {total} classes shown: those with an image or a prediction"
            + (f", the {MAX_CLASSES_SHOWN} most frequent" if len(shown) == MAX_CLASSES_SHOWN else "") + ".")


def per_class_table(report: dict) -> tuple[list[str], list[list]]:
    """(header, rows) of the clean data per class (:func:`shown_classes`): accuracy with its
    interval, precision, recall, F1 and support, then the macro row (over every class); report.md
    and report.html show these rows.

    >>> header, rows = per_class_table({"class_names": ["cat"], "clean": {
    ...     "per_class": [{"accuracy": 0.5, "ci95": [0.1, 0.9], "n_labeled": 2}],
    ...     "precision": [1.0], "recall": [0.5], "f1": [0.667], "support": [2],
    ...     "macro_precision": 1.0, "macro_recall": 0.5, "macro_f1": 0.667, "n_labeled": 2}})
    >>> rows
    [['cat', '50.0% [10.0, 90.0] (n=2)', '1.000', '0.500', '0.667', 2], ['macro', '', '1.000', '0.500', '0.667', 2]]
    """
    clean, names = report["clean"], report["class_names"]
    per_class = clean.get("per_class")
    rows = [
        [
            names[i],
            ci_text(per_class[i]) if per_class else pct(clean["per_class_accuracy"][i]),
            num(clean["precision"][i]),
            num(clean["recall"][i]),
            num(clean["f1"][i]),
            clean["support"][i],
        ]
        for i in shown_classes(report)
    ]
    rows.append(["macro", "", num(clean["macro_precision"]), num(clean["macro_recall"]),
                 num(clean["macro_f1"]), clean["n_labeled"]])
    return ["class", "accuracy [95% CI]", "precision", "recall", "F1", "support"], rows


def summary_rows(report: dict) -> list[list[str]]:
    """(metric, value) rows of the summary, shared by the Markdown and HTML reports."""
    s, clean = report["summary"], report["clean"]
    rows = [
        ["clean accuracy", ci_text(clean) if clean.get("ci95") else pct(s["clean_accuracy"])],
        ["worst clean class", _worst(clean.get("worst_class"))],
        ["clean ECE (15 bins)", num(clean["ece"])],
        ["mean corruption accuracy", pct(s["mean_corruption_accuracy"])],
    ]
    if s.get("baseline"):
        base = s["baseline"]
        rows += [
            ["mCE vs baseline", num(s["mce"])],
            ["relative mCE vs baseline", num(s["relative_mce"])],
            [
                "clean accuracy change vs baseline",
                change_text(base["clean_change"]) if base.get("clean_change") else pct(base["clean_accuracy_change"]),
            ],
        ]
    if s.get("alexnet"):
        rows.append(["mCE vs AlexNet (ImageNet-C conditions)", num(s["alexnet"]["mce"])])
    elif s.get("mce_reason"):
        rows.append(["mCE vs AlexNet", f"not computed: {s['mce_reason']}"])
    if report.get("mix"):
        rows.append(["expected accuracy under the suite's mix", mix_text(report["mix"])])
    return rows


def mix_text(mix: dict) -> str:
    """:func:`ironsight.robustness.mix.expected_accuracy` in one cell.

    >>> mix_text({"accuracy": 0.81, "low": 0.75, "high": 0.851,
    ...           "mix": {"clean": 0.7, "low_light": 0.3}})
    '81.0% [75.0, 85.1] (clean 70%, low_light 30%)'
    """
    shares = ", ".join(f"{name} {100 * w:.0f}%" for name, w in mix["mix"].items() if w > 0)
    if mix.get("accuracy") is None:
        return f"not computed: a part of the mix has no labeled image ({shares})"
    return f"{pct(mix['accuracy'])} [{100 * mix['low']:.1f}, {100 * mix['high']:.1f}] ({shares})"


def gate_lines(report: dict) -> list[str]:
    """Human-readable gate verdict lines (empty when no gate was evaluated)."""
    gate = report.get("gate")
    if not gate:
        return []
    verdict = "PASSED" if gate["passed"] else "FAILED"
    lines = [
        f"Release gate {verdict}: {len(gate['failed'])} failed, "
        f"{len(gate.get('skipped', []))} skipped, {len(gate['checks'])} checks"
    ]
    lines += [f"FAIL {c['message']}" for c in gate["failed"]]
    lines += [f"SKIP {c['message']}" for c in gate.get("skipped", [])]
    return lines
