"""``compare.html``: the comparison on one self-contained page.

Built like report.html (:mod:`ironsight.robustness.html`, whose CSS, table, escaping and PNG
helpers it uses): inline CSS, plots and images as base64 PNG ``data:`` URIs, no script, no
external URL. Sections: recommendation, the ranking tables, the three Pareto plots (accuracy
vs images/s, clean vs corruption accuracy, accuracy vs memory; Pareto-optimal models drawn
filled, ringed and joined by the front, random-weights models as grey crosses), the
per-condition accuracy of every model on one chart, and per model its misclassified examples
with their activation maps.
"""

from __future__ import annotations

from matplotlib.figure import Figure

from ironsight.robustness.compare_report import (
    PARETO_PLOTS,
    header_lines,
    model_label,
    ranking_tables,
    recommendation_lines,
)
from ironsight.robustness.html import (
    bullets,
    escape,
    example_cells,
    figure,
    html_table,
    page_start,
    palette,
    png_data_uri,
)
from ironsight.robustness.report import example_lines

_DPI = 110
_LABELS = {"accuracy": "clean accuracy (%)", "corruption_accuracy": "mean corruption accuracy (%)",
           "images_per_s": "images/s at the best batch size", "memory_mb": "peak inference memory (MB)"}
_PERCENT = {"accuracy", "corruption_accuracy"}


def _value(row: dict, key: str) -> float | None:
    v = row.get(key)
    return None if v is None else (100 * v if key in _PERCENT else v)


_TITLES = {"accuracy_vs_images_per_s": "Accuracy vs throughput", "accuracy_vs_corruption":
           "Clean vs corruption accuracy", "accuracy_vs_memory": "Accuracy vs memory"}


def _pareto_plot(report: dict, key: str, x: str, y: str, x_higher: bool) -> str | None:
    rows = [r for r in report["models"] if _value(r, x) is not None and _value(r, y) is not None]
    if not rows:
        return None
    front = set(report["pareto"].get(key) or [])
    fig = Figure(figsize=(5.6, 4.0), dpi=_DPI)
    ax = fig.add_subplot()
    colors = dict(zip([r["model"] for r in report["models"]], palette(len(report["models"])), strict=True))
    log_x = x == "images_per_s" and max(_value(r, x) for r in rows) > 10 * min(_value(r, x) for r in rows)
    xs = sorted(_value(r, x) for r in rows)
    mid = (xs[0] * xs[-1]) ** 0.5 if log_x else (xs[0] + xs[-1]) / 2
    for r in rows:
        px, py = _value(r, x), _value(r, y)
        right = px > mid  # labels point inwards, so they stay inside the axes
        where = {"xytext": (-5 if right else 5, 4), "textcoords": "offset points", "ha": "right" if right else "left"}
        if r["random_weights"]:
            ax.scatter([px], [py], marker="x", color="#888", s=40, zorder=2)
            ax.annotate(f"{r['model']} (random)", (px, py), fontsize=7, color="#888", **where)
            continue
        best = r["model"] in front
        ax.scatter([px], [py], s=70 if best else 40, color=colors[r["model"]], zorder=3,
                   edgecolors="black" if best else "none", linewidths=1.5)
        ax.annotate(r["model"] + (" ★" if best else ""), (px, py), fontsize=8,
                    fontweight="bold" if best else "normal", **where)
    pts = sorted((_value(r, x), _value(r, y)) for r in rows if r["model"] in front)
    if len(pts) > 1:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], ls="--", lw=1, color="#444", zorder=1,
                label="Pareto front")
        ax.legend(fontsize=8, frameon=False)
    if log_x:
        ax.set_xscale("log")
    ax.margins(x=0.12, y=0.12)
    ax.set_xlabel(_LABELS[x] + ("" if x_higher else ", lower is better"))
    ax.set_ylabel(_LABELS[y])
    ax.grid(alpha=0.3)
    ax.set_title(f"{_TITLES[key]} (★ Pareto-optimal, x random weights)", fontsize=10)
    fig.tight_layout()
    return png_data_uri(fig)


def _conditions_plot(report: dict) -> str | None:
    """Every model's accuracy per condition (mean over severities) and clean, as grouped bars."""
    conds = ["clean", *report["conditions"]]
    rows = report["models"]
    if not report["conditions"] or not rows:
        return None
    fig = Figure(figsize=(max(6.4, 0.5 * len(conds) * max(1, len(rows)) ** 0.5 + 2), 4.2), dpi=_DPI)
    ax = fig.add_subplot()
    width = 0.8 / len(rows)
    for i, (r, color) in enumerate(zip(rows, palette(len(rows)), strict=True)):
        ys = [r["accuracy"] if c == "clean" else r["per_condition"].get(c) for c in conds]
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(conds))]
        ax.bar(xs, [0 if v is None else 100 * v for v in ys], width=width, color=color,
               hatch="//" if r["random_weights"] else None, alpha=0.5 if r["random_weights"] else 1.0,
               label=r["model"] + (" (random weights)" if r["random_weights"] else ""))
    ax.set_xticks(range(len(conds)), conds, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Accuracy per condition, every model (mean over severities)", fontsize=10)
    ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return png_data_uri(fig)


def compare_html(report: dict, entries) -> str:
    """The comparison as one self-contained HTML page.

    Args:
        report: :func:`ironsight.robustness.compare_report.build_compare_report`'s dict.
        entries: the :class:`~ironsight.robustness.compare_report.CompareEntry` list, for
            the example images (their ``examples``).
    """
    names = [r["model"] for r in report["models"]]
    title = "Model comparison: " + ", ".join(names)
    rec = report.get("recommendation")
    parts = [page_start(title), bullets(header_lines(report), "compare-header")]
    lines = recommendation_lines(report)  # objective, verdict, reason, exclusions
    if rec is None:
        head, rest, cls = lines[0], [], "warn"
    else:
        head, rest, cls = lines[1], [lines[0], *lines[2:]], "pass" if rec.get("winner") else "fail"
    items = "".join(f"<li>{escape(x)}</li>" for x in rest)
    parts.append(f'<div id="recommendation" class="banner {cls}">{escape(head)}'
                 + (f"<ul>{items}</ul>" if items else "") + "</div>")
    for title_, header, rows in ranking_tables(report):
        parts.append(f"<h2>{escape(title_)}</h2>" + html_table(header, rows))
    plots = []
    captions = {
        "accuracy_vs_images_per_s": "Clean accuracy vs throughput at the best batch size.",
        "accuracy_vs_corruption": "Clean vs mean corruption accuracy.",
        "accuracy_vs_memory": "Clean accuracy vs peak inference memory (lower is better).",
    }
    for key, x, y, hi in PARETO_PLOTS:
        uri = _pareto_plot(report, key, x, y, hi)
        if uri:
            plots.append(figure(uri, captions[key] + " Filled, ringed, ★: Pareto-optimal (no other model "
                                 "is as good on both axes and better on one); grey crosses: random weights."))
    uri = _conditions_plot(report)
    if uri:
        plots.append(figure(uri, "Accuracy of every model per condition (mean over the suite's severities) "
                             "and clean; hatched: random weights."))
    if plots:
        parts.append("<h2>Plots</h2><div class='plots'>" + "".join(plots) + "</div>")
    else:
        parts.append("<p class='meta'>No plot: no model has the numbers the plots need "
                     "(profiling off, or no corruption in the suite).</p>")
    by_name = {e.name: e for e in entries}
    shown = [r for r in report["models"] if r["model"] in by_name]
    if any(by_name[r["model"]].examples or (report.get("examples") or {}).get(r["model"]) for r in shown):
        parts.append("<h2>Misclassified examples</h2>")
        for r in shown:
            e = by_name[r["model"]]
            notes = example_lines({"examples": (report.get("examples") or {}).get(r["model"])})
            parts.append(f"<h3>{escape(model_label(r))}</h3>" + bullets(notes)
                         + (example_cells(e.examples, e.report.get("class_names") or report["class_names"])
                            if e.examples else ""))
    parts.append("</main></body></html>")
    return "\n".join(parts)
