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
| ``clean``        | ``n``, ``accuracy``, ``ece``, precision/recall/F1 per class and macro,  |
|                  | ``confusion_matrix`` [true][predicted], ``per_class_accuracy``, ``worst_class`` |
| ``conditions``   | per condition x severity: ``name``, ``severity``, ``n``, ``accuracy``,  |
|                  | ``ece``, ``flip_rate``, ``per_class_accuracy``, ``worst_class``         |
| ``attacks``      | per attack x eps: ``name``, ``eps``, ``n``, ``accuracy``,               |
|                  | ``success_rate``, ``n_initially_correct``                               |
| ``summary``      | ``clean_accuracy``, ``mean_corruption_accuracy``, ``per_condition``,    |
|                  | ``baseline`` (CE, relative CE, mCE, changes; null without baseline),    |
|                  | ``alexnet`` (mCE vs AlexNet; null unless an ImageNet model), ``warnings`` |
| ``gate``         | null until :func:`ironsight.robustness.gate.evaluate_gate` fills it               |

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

from ironsight.robustness import metrics
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
    imagenet_model: bool = False,
    imagenet_c_conditions: Sequence[str] = (),
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
        imagenet_model: The model predicts ImageNet-1k classes, so mCE against AlexNet's
            published ImageNet-C errors is meaningful.
        imagenet_c_conditions: Which condition names are ImageNet-C's
            (``ironsight.robustness.conditions.IMAGENET_C_CONDITIONS``).

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
        comparison = metrics.compare_to_baseline(clean["accuracy"], conditions, baseline)
        comparison["model"] = baseline.get("model")
        for entry in per_condition:
            extra = comparison["per_condition"].get(entry["name"], {})
            entry["ce"] = extra.get("ce")
            entry["relative_ce"] = extra.get("relative_ce")
            entry["accuracy_change"] = extra.get("accuracy_change")
        if comparison["missing_in_baseline"]:
            warnings.append(
                "conditions missing in the baseline, left out of mCE: "
                + ", ".join(comparison["missing_in_baseline"])
            )

    alexnet = None
    if imagenet_model:
        alexnet = metrics.alexnet_mce(conditions, imagenet_c_conditions)
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
            warnings.append(
                "imagenet_model is set but no audited condition is an ImageNet-C one: "
                "no mCE against AlexNet"
            )

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


def _worst(entry: dict | None) -> str:
    return "—" if not entry else f"{entry['name']} ({_pct(entry['accuracy'])})"


def result_tables(report: dict) -> list[tuple[str, list[str], list[list]]]:
    """(section, header, rows) of the results tables, shared by the Markdown and HTML reports.

    Per condition (mean over severities, with CE against a baseline), per condition x
    severity cell, and per attack x epsilon; cells are display strings.
    """
    s = report["summary"]
    tables: list[tuple[str, list[str], list[list]]] = []
    if report["conditions"]:
        header = ["condition", "mean accuracy", "worst class (all severities)"]
        if s.get("baseline"):
            header += ["CE", "relative CE", "accuracy change vs baseline"]
        rows = []
        for p in s["per_condition"]:
            row = [p["name"], _pct(p["mean_accuracy"]), _worst(p["worst_class"])]
            if s.get("baseline"):
                row += [_num(p.get("ce")), _num(p.get("relative_ce")), _pct(p.get("accuracy_change"))]
            rows.append(row)
        tables.append(("Corruptions", header, rows))
        tables.append(
            (
                "Corruptions",
                ["condition", "severity", "n", "accuracy", "ECE", "flip rate", "worst class"],
                [
                    [c["name"], c["severity"], c["n"], _pct(c["accuracy"]), _num(c["ece"]),
                     _pct(c["flip_rate"]), _worst(c["worst_class"])]
                    for c in report["conditions"]
                ],
            )
        )
    if report["attacks"]:
        tables.append(
            (
                "Adversarial attacks",
                ["attack", "eps", "eps × 255", "n", "robust accuracy", "success rate"],
                [
                    [a["name"], f"{a['eps']:.5f}", f"{a['eps'] * 255:.1f}", a["n"],
                     _pct(a["accuracy"]), _pct(a["success_rate"])]
                    for a in report["attacks"]
                ],
            )
        )
    return tables


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
        "- versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        "",
    ]
    if report.get("gate"):
        out += ["## Release gate", ""]
        out += [f"- {line}" for line in gate_lines(report)] + [""]
    out += ["## Summary", ""]
    rows = [
        ["clean accuracy", _pct(s["clean_accuracy"])],
        ["clean ECE (15 bins)", _num(clean["ece"])],
        ["mean corruption accuracy", _pct(s["mean_corruption_accuracy"])],
    ]
    if s.get("baseline"):
        rows += [
            ["mCE vs baseline", _num(s["mce"])],
            ["relative mCE vs baseline", _num(s["relative_mce"])],
            ["clean accuracy change vs baseline", _pct(s["baseline"]["clean_accuracy_change"])],
        ]
    if s.get("alexnet"):
        rows.append(["mCE vs AlexNet (ImageNet-C conditions)", _num(s["alexnet"]["mce"])])
    out += _md_table(["metric", "value"], rows)

    out += ["## Clean data", ""]
    out += _md_table(
        ["class", "accuracy", "precision", "recall", "F1", "support"],
        [
            [
                names[i],
                _pct(clean["per_class_accuracy"][i]),
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
    lines = [
        f"Robustness audit of {(report.get('model') or {}).get('name', 'model')} "
        f"(suite {report['suite']})",
        f"  clean accuracy            {_pct(s['clean_accuracy']):>6}   (ECE {_num(report['clean']['ece'])})",
        f"  mean corruption accuracy  {_pct(s['mean_corruption_accuracy']):>6}",
    ]
    if s.get("mce") is not None:
        lines.append(
            f"  mCE vs baseline           {_num(s['mce'])}  (relative {_num(s['relative_mce'])})"
        )
    if s.get("alexnet"):
        lines.append(f"  mCE vs AlexNet            {_num(s['alexnet']['mce'])}")
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
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
        paths[key] = path
    return paths
