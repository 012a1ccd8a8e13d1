"""Build the audit report from the predictions table and write it as JSON, Markdown and HTML.

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
import os
import platform
from collections.abc import Sequence
from importlib import metadata

import pyarrow as pa

from ironsight.cluster import storage
from ironsight.cluster.errors import InvalidInput
from ironsight.robustness import compare, mce, metrics, stats
from ironsight.robustness.schema import REPORT_SCHEMA_VERSION, Example, validate_predictions


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
    """Strict JSON text of a report (NaN/inf become null, never ``NaN``)."""
    return json.dumps(_finite(report), indent=2, allow_nan=False, sort_keys=False) + "\n"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _md_escape(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    return lines + [""]


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
        return _pct(cell[key])
    return f"{_pct(cell[key])} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}] (n={n})"


def _worst(entry: dict | None) -> str:
    if not entry:
        return "—"
    return f"{entry['name']} {ci_text(entry)}" if entry.get("ci95") else f"{entry['name']} ({_pct(entry['accuracy'])})"


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
            row = [p["name"], _pct(p["mean_accuracy"]), _worst(p["worst_class"])]
            if s.get("baseline"):
                change = p.get("change")
                row += [
                    _num(p.get("ce")),
                    _num(p.get("relative_ce")),
                    change_text(change) if change else _pct(p.get("accuracy_change")),
                ]
            rows.append(row)
        tables.append(("Corruptions", header, rows))
        header = ["condition", "severity", "n", "accuracy [95% CI]", "ECE", "flip rate", "worst class"]
        if changes:
            header.append("change vs baseline")
        rows = []
        for c in report["conditions"]:
            row = [c["name"], c["severity"], c["n"], ci_text(c), _num(c["ece"]),
                   _pct(c["flip_rate"]), _worst(c["worst_class"])]
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
                   ci_text(a), _pct(a["success_rate"])]
            if changes:
                row.append(change_text(changes.get(compare.cell_key("attack", a["name"], eps=a["eps"]))))
            rows.append(row)
        tables.append(("Adversarial attacks", header, rows))
    return tables


def summary_rows(report: dict) -> list[list[str]]:
    """(metric, value) rows of the summary, shared by the Markdown and HTML reports."""
    s, clean = report["summary"], report["clean"]
    rows = [
        ["clean accuracy", ci_text(clean) if clean.get("ci95") else _pct(s["clean_accuracy"])],
        ["worst clean class", _worst(clean.get("worst_class"))],
        ["clean ECE (15 bins)", _num(clean["ece"])],
        ["mean corruption accuracy", _pct(s["mean_corruption_accuracy"])],
    ]
    if s.get("baseline"):
        base = s["baseline"]
        rows += [
            ["mCE vs baseline", _num(s["mce"])],
            ["relative mCE vs baseline", _num(s["relative_mce"])],
            [
                "clean accuracy change vs baseline",
                change_text(base["clean_change"]) if base.get("clean_change") else _pct(base["clean_accuracy_change"]),
            ],
        ]
    if s.get("alexnet"):
        rows.append(["mCE vs AlexNet (ImageNet-C conditions)", _num(s["alexnet"]["mce"])])
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
    return f"{_pct(mix['accuracy'])} [{100 * mix['low']:.1f}, {100 * mix['high']:.1f}] ({shares})"


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


def to_markdown(report: dict) -> str:
    """The report as Markdown: summary, clean metrics, conditions, attacks, gate, warnings."""
    s, clean = report["summary"], report["clean"]
    names = report["class_names"]
    model_name = (report.get("model") or {}).get("name", "model")
    out = [f"# Robustness audit: {_md_escape(model_name)}", ""]
    out += [
        f"- created: {report['created_at']}  ",
        f"- suite: `{report['suite']}`, seed {report['seed']}  ",
        f"- data: {_md_escape(json.dumps(report.get('data'), sort_keys=True))}  ",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + "  ",
    ]
    out += [f"- {_md_escape(line)}  " for line in header_lines(report)]
    out[-1] = out[-1].rstrip()
    out.append("")
    if report.get("gate"):
        out += ["## Release gate", ""]
        out += [f"- {line}" for line in gate_lines(report)] + [""]
    out += ["## Summary", ""]
    out += _md_table(["metric", "value"], summary_rows(report))

    out += ["## Clean data", ""]
    per_class = clean.get("per_class")
    out += _md_table(
        ["class", "accuracy [95% CI]", "precision", "recall", "F1", "support"],
        [
            [
                names[i],
                ci_text(per_class[i]) if per_class else _pct(clean["per_class_accuracy"][i]),
                _num(clean["precision"][i]),
                _num(clean["recall"][i]),
                _num(clean["f1"][i]),
                clean["support"][i],
            ]
            for i in range(len(names))
        ]
        + [
            [
                "macro",
                "",
                _num(clean["macro_precision"]),
                _num(clean["macro_recall"]),
                _num(clean["macro_f1"]),
                clean["n_labeled"],
            ]
        ],
    )
    out += ["Confusion matrix (rows: true class, columns: predicted class)", ""]
    out += _md_table(
        ["true \\ predicted", *names],
        [[names[i], *row] for i, row in enumerate(clean["confusion_matrix"])],
    )

    section = None
    for title, header, rows in result_tables(report):
        if title != section:
            out += [f"## {title}", ""]
            section = title
        out += _md_table(header, rows)
    if example_lines(report):
        out += ["## Examples (images in report.html)", ""]
        out += [f"- {_md_escape(line)}" for line in example_lines(report)] + [""]
    if s["warnings"]:
        out += ["## Warnings", ""] + [f"- {_md_escape(w)}" for w in s["warnings"]] + [""]
    return "\n".join(out)


def text_summary(report: dict) -> str:
    """A one-screen plain-text summary for the terminal.

    >>> r = {"model": {"name": "demo"}, "suite": "quick", "clean": {"ece": 0.05},
    ...      "summary": {"clean_accuracy": 0.9, "mean_corruption_accuracy": 0.6,
    ...                  "per_condition": [], "mce": None, "relative_mce": None,
    ...                  "alexnet": None, "warnings": []}, "attacks": [], "gate": None}
    >>> print(text_summary(r))
    Robustness audit of demo (suite quick)
      clean accuracy             90.0%   (ECE 0.050)
      mean corruption accuracy   60.0%
    """
    s = report["summary"]
    ci = report["clean"].get("ci95")
    ci_part = (
        f"  95% CI [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}], n={report['clean'].get('n_labeled')}"
        if ci
        else ""
    )
    lines = [
        f"Robustness audit of {(report.get('model') or {}).get('name', 'model')} "
        f"(suite {report['suite']})",
        f"  clean accuracy            {_pct(s['clean_accuracy']):>6}   (ECE {_num(report['clean']['ece'])}){ci_part}",
        f"  mean corruption accuracy  {_pct(s['mean_corruption_accuracy']):>6}",
    ]
    if s.get("mce") is not None:
        lines.append(
            f"  mCE vs baseline           {_num(s['mce'])}  (relative {_num(s['relative_mce'])})"
        )
    if s.get("alexnet"):
        lines.append(f"  mCE vs AlexNet            {_num(s['alexnet']['mce'])}")
    elif s.get("mce_reason") and report.get("conditions"):
        lines.append(f"  mCE vs AlexNet            not computed: {s['mce_reason']}")
    worst = sorted(
        (p for p in s["per_condition"] if p["mean_accuracy"] is not None),
        key=lambda p: p["mean_accuracy"],
    )[:3]
    if worst:
        lines.append(
            "  hardest conditions        "
            + ", ".join(f"{p['name']} {_pct(p['mean_accuracy'])}" for p in worst)
        )
    by_attack: dict[str, dict] = {}
    for a in report["attacks"]:
        if a["name"] not in by_attack or a["eps"] > by_attack[a["name"]]["eps"]:
            by_attack[a["name"]] = a
    for name, a in sorted(by_attack.items()):
        lines.append(
            f"  {name + ' @ ' + format(a['eps'] * 255, '.1f') + '/255':<26}{_pct(a['accuracy']):>6}"
        )
    lines += [f"  warning: {w}" for w in s["warnings"]]
    lines += ["  " + line for line in gate_lines(report)]
    return "\n".join(lines)


def write_reports(report: dict, out_dir: str, examples: Sequence[Example] = ()) -> dict[str, str]:
    """Write ``report.json``, ``report.md`` and ``report.html`` into a local directory.

    Each file is written under a temporary name and renamed, so a reader never sees half
    a report.

    Args:
        report: The dict from :func:`build_report` (with ``gate`` filled or not).
        out_dir: Local directory, created when missing.
        examples: Images to show in the HTML report.

    Returns:
        ``{"json": path, "markdown": path, "html": path}``.
    """
    from ironsight.robustness.html import render_html  # matplotlib is only needed here

    os.makedirs(out_dir, exist_ok=True)
    contents = {
        "json": ("report.json", dumps(report)),
        "markdown": ("report.md", to_markdown(report)),
        "html": ("report.html", render_html(report, examples)),
    }
    paths = {}
    for key, (name, text) in contents.items():
        path = os.path.join(out_dir, name)
        storage.publish_bytes(storage.resolve(path), text.encode("utf-8"))  # atomic
        paths[key] = path
    return paths
