"""``report.md`` and ``compare.md``: the audit and the comparison as Markdown.

The rows come from :mod:`~ironsight.robustness.report.tables` (the audit) and
:mod:`~ironsight.robustness.report.comparison` (the comparison), the same rows the HTML pages
show; here they are only laid out as Markdown tables and lists (``|`` in a cell escaped, a
newline made a space).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from ironsight.robustness.report import comparison
from ironsight.robustness.report.tables import (
    example_lines,
    gate_lines,
    header_lines,
    per_class_table,
    result_tables,
    shown_classes,
    shown_classes_note,
    summary_rows,
)


def _md_escape(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    return lines + [""]


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
    out += _md_table(*per_class_table(report))
    shown = shown_classes(report)
    note = shown_classes_note(report, shown)
    out += [f"Confusion matrix (rows: true class, columns: predicted class){'; ' + note if note else ''}", ""]
    out += _md_table(
        ["true \\ predicted", *(names[j] for j in shown)],
        [[names[i], *(clean["confusion_matrix"][i][j] for j in shown)] for i in shown],
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


def compare_markdown(report: dict) -> str:
    """The comparison as Markdown: recommendation, tables, Pareto fronts, examples."""
    names = ", ".join(r["model"] for r in report["models"])
    out = [f"# Model comparison: {names}", "", f"- created: {report['created_at']}  "]
    out += [f"- {line}  " for line in comparison.header_lines(report)]
    out += ["", "## Recommendation", ""] + [f"- {line}" for line in comparison.recommendation_lines(report)] + [""]
    for title, header, rows in comparison.ranking_tables(report):
        out += [f"## {title}", ""] + _md_table(header, rows)
    examples = report.get("examples") or {}
    if any(examples.values()):
        out += ["## Misclassified examples (images and activation maps in compare.html)", ""]
        for name, section in examples.items():
            out += [f"### {name}", ""] + [f"- {line}" for line in example_lines({"examples": section})] + [""]
    return "\n".join(out)
