"""``report.html`` and ``compare.html``: self-contained pages with the plots, tables and verdicts.

Everything is inline: CSS in a ``<style>`` block, plots and example images as base64 PNG
``data:`` URIs, no scripts and no external URL, so the file can be mailed, attached to a CI
run or opened offline. The plots are :mod:`~ironsight.robustness.report.plots`' (matplotlib's
object API: no ``pyplot``, no change to the global backend or rcParams).

Uncertainty is drawn, not only printed: the severity and attack curves carry a shaded band
per line, the 95% Wilson score interval of each point (``ci95`` in report.json), and the clean
accuracy a grey band; tables show ``accuracy [low, high] (n=...)``. The header states the
number of images and the smallest drop they can detect, the preprocessing when the report
has it, and why mCE against AlexNet is absent when it is.

compare.html is built the same way. Sections: recommendation, the ranking tables, the three
Pareto plots (accuracy vs images/s, clean vs corruption accuracy, accuracy vs memory;
Pareto-optimal models drawn filled, ringed and joined by the front, random-weights models as
grey crosses), the per-condition accuracy of every model on one chart, and per model its
misclassified examples with their activation maps.

The rows are :mod:`~ironsight.robustness.report.tables`' and
:mod:`~ironsight.robustness.report.comparison`'s: the Markdown shows the same.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence

import numpy as np
from PIL import Image

from ironsight.robustness.report import comparison
from ironsight.robustness.report.plots import (
    attack_plot,
    conditions_plot,
    confusion_plot,
    heatmap,
    pareto_plot,
    severity_plot,
)
from ironsight.robustness.report.style import PAGE_CSS
from ironsight.robustness.report.tables import (
    example_lines,
    header_lines,
    num,
    pct,
    per_class_table,
    result_tables,
    shown_classes,
    shown_classes_note,
    summary_rows,
)
from ironsight.robustness.schema import Example

MAX_EXAMPLES = 120  # ~10 KB each as PNG: keeps the page a few MB at most

CSS = PAGE_CSS + """.banner{padding:14px 18px;border-radius:8px;margin:18px 0;font-weight:600;font-size:18px}
.banner ul{font-weight:400;font-size:14px;margin:8px 0 0;padding-left:20px}
.pass{background:#dafbe1;border:1px solid #4ac26b;color:#116329}
.fail{background:#ffebe9;border:1px solid #ff8182;color:#a40e26}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:12px 16px;min-width:150px}
.card .v{font-size:24px;font-weight:700} .card .k{font-size:12px;color:#57606a}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:14px}
figure{background:#fff;border:1px solid #d0d7de;border-radius:8px;margin:0;padding:10px}
figure img.plot{width:100%;height:auto;display:block}
figcaption{font-size:13px;color:#57606a;margin-top:4px}
.warn{background:#fff8c5;border:1px solid #d4a72c;border-radius:8px;padding:10px 16px;font-size:14px}
table{border-collapse:collapse;background:#fff;font-size:13px;margin-bottom:12px}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:right}
th{background:#eaeef2} td:first-child,th:first-child{text-align:left}
.examples{display:flex;flex-wrap:wrap;gap:8px}
.ex{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:6px;width:112px;
  font-size:11px;text-align:center}
.ex img{width:96px;height:96px;image-rendering:pixelated;display:block;margin:0 auto 4px}
.ex.withcam{width:212px} .ex .pair{display:flex;gap:4px;justify-content:center}
.ex .pair img{margin:0 0 4px}
.ok{color:#116329} .bad{color:#a40e26;font-weight:600}
"""


def to_uint8_hwc(image) -> np.ndarray:
    """An example image as (H, W, 3) uint8, from uint8 HxWx3 or float [0, 1] HxWx3 / 3xHxW.

    >>> to_uint8_hwc(np.full((3, 2, 2), 0.5, dtype=np.float32))[0, 0].tolist()
    [128, 128, 128]
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)  # (3, H, W) -> (H, W, 3)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def image_data_uri(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(to_uint8_hwc(image)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def escape(text) -> str:
    return html.escape(str(text), quote=True)


def html_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _banner(report: dict) -> str:
    gate = report.get("gate")
    if not gate:
        return ""
    n, failed, skipped = len(gate["checks"]), gate["failed"], gate.get("skipped", [])
    if gate["passed"]:
        title = f"Release gate PASSED: {n - len(skipped)} of {n} checks passed"
        if skipped:
            title += f", {len(skipped)} skipped"
    else:
        title = f"Release gate FAILED: {len(failed)} of {n} checks failed"
    items = "".join(f"<li>{escape(c['message'])}</li>" for c in failed)
    items += "".join(f"<li>{escape(c['message'])}</li>" for c in skipped)
    cls = "pass" if gate["passed"] else "fail"
    return (
        f'<div id="gate-banner" class="banner {cls}">{escape(title)}'
        + (f"<ul>{items}</ul>" if items else "")
        + "</div>"
    )


def _run_line(report: dict) -> str:
    """One line of who/what/when under the title: model, data, suite, seed, time."""
    model = report.get("model") or {}
    data = report.get("data") or {}
    parts = [f"model {model.get('name', '?')}"]
    if model.get("hash"):
        parts[0] += f" ({str(model['hash'])[:12]})"
    where = data.get("path") or data.get("uri") or data.get("name")
    if where:
        parts.append(f"data {where}")
    parts += [f"suite {report['suite']}", f"seed {report['seed']}", report["created_at"]]
    return " · ".join(parts)


def page_start(title: str) -> str:
    """The page's head (inline CSS) and its ``<h1>``; the page ends with ``</main></body></html>``."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body><main>\n"
        f"<h1>{escape(title)}</h1>"
    )


def figure(uri: str, caption: str) -> str:
    """A plot (a ``data:`` URI) with its caption."""
    return (f'<figure><img class="plot" alt="{escape(caption)}" src="{uri}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def bullets(lines: Sequence[str], element_id: str | None = None) -> str:
    """Plain sentences as a grey list; empty when there are none."""
    if not lines:
        return ""
    where = f" id='{escape(element_id)}'" if element_id else ""
    return f"<ul class='meta'{where}>" + "".join(f"<li>{escape(x)}</li>" for x in lines) + "</ul>"


def card(key: str, value: str) -> str:
    return f'<div class="card"><div class="v">{escape(value)}</div><div class="k">{escape(key)}</div></div>'


def example_cells(examples: Sequence[Example], class_names: Sequence[str]) -> str:
    """The example grid: per image its pixels, its activation map over them when it has one,
    where it comes from, the true and the predicted class (at most :data:`MAX_EXAMPLES`)."""
    def name(i: int) -> str:
        return class_names[i] if 0 <= i < len(class_names) else ("unknown" if i < 0 else str(i))

    from ironsight.robustness.cam import overlay

    cells = []
    for ex in list(examples)[:MAX_EXAMPLES]:
        ok = ex.label < 0 or ex.label == ex.prediction
        where = ex.condition if ex.severity == 0 else f"{ex.condition} s{ex.severity}"
        imgs = f'<img alt="{escape(where)}" src="{image_data_uri(ex.image)}">'
        if ex.cam is not None:
            heat = overlay(to_uint8_hwc(ex.image), ex.cam)
            imgs += (f'<img class="cam" alt="{escape(ex.method or "activation map")}" '
                     f'title="{escape(ex.method or "activation map")}" src="{image_data_uri(heat)}">')
        cells.append(
            f'<div class="ex{" withcam" if ex.cam is not None else ""}"><div class="pair">{imgs}</div>'
            f"<div>{escape(where)}</div><div>true: {escape(name(ex.label))}</div>"
            f'<div class="{"ok" if ok else "bad"}">predicted: {escape(name(ex.prediction))}</div></div>'
        )
    more = ""
    if len(examples) > MAX_EXAMPLES:
        more = f"<p class='meta'>{len(examples) - MAX_EXAMPLES} more examples not shown.</p>"
    return "<div class='examples'>" + "".join(cells) + "</div>" + more


def _examples(report: dict, examples: Sequence[Example]) -> str:
    lines = example_lines(report)
    if not examples and not lines:
        return ""
    return ("<h2>Examples</h2>" + bullets(lines, "examples-notes")
            + (example_cells(examples, report["class_names"]) if examples else ""))


def render_html(report: dict, examples: Sequence[Example] = ()) -> str:
    """Render the report as one self-contained HTML page.

    Args:
        report: The dict from :func:`ironsight.robustness.report.build.build_report`.
        examples: Images with their predictions, shown in a grid (at most
            :data:`MAX_EXAMPLES`).

    Returns:
        The HTML text.
    """
    s, clean = report["summary"], report["clean"]
    model = report.get("model") or {}
    title = f"Robustness audit: {model.get('name', 'model')}"
    meta_rows = [
        ["model", json.dumps(model, sort_keys=True)],
        ["data", json.dumps(report.get("data"), sort_keys=True)],
        ["suite / seed", f"{report['suite']} / {report['seed']}"],
        ["created", report["created_at"]],
        ["versions", ", ".join(f"{k} {v}" for k, v in report["versions"].items())],
    ]
    if report.get("preprocessing"):
        meta_rows.insert(2, ["preprocessing", json.dumps(report["preprocessing"], sort_keys=True)])
    ci = clean.get("ci95")
    cards = [
        card(
            "clean accuracy"
            + (f" · 95% CI [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}], n={clean.get('n_labeled')}" if ci else ""),
            pct(s["clean_accuracy"]),
        ),
        card("mean corruption accuracy", pct(s["mean_corruption_accuracy"])),
        card("clean ECE (15 bins)", num(clean["ece"])),
        card("clean macro F1", num(clean["macro_f1"])),
    ]
    if s.get("mce") is not None:
        cards.append(card("mCE vs baseline", num(s["mce"])))
        cards.append(card("relative mCE vs baseline", num(s["relative_mce"])))
    if s.get("alexnet"):
        cards.append(card("mCE vs AlexNet (ImageNet-C)", num(s["alexnet"]["mce"])))

    plots = []
    for uri, caption in (
        (
            severity_plot(report),
            "Accuracy per condition as severity grows; dashed: clean; shaded bands: 95% Wilson "
            "score interval of each point.",
        ),
        (heatmap(report), "Accuracy (%) of each condition x severity cell."),
        (
            attack_plot(report),
            "Robust accuracy per attack as the budget eps grows; bands: 95% Wilson score interval.",
        ),
        (confusion_plot(report), " ".join(filter(None, (
            "Clean confusion matrix, rows normalized; numbers are counts.",
            shown_classes_note(report, shown_classes(report)))))),
    ):
        if uri:
            plots.append(figure(uri, caption))

    parts = [
        page_start(title),
        f"<div class='meta' id='run-info'>{escape(_run_line(report))}</div>",
        bullets(header_lines(report), "report-header"),
        _banner(report),
        "<div class='cards'>" + "".join(cards) + "</div>",
    ]
    if s.get("alexnet") is None and s.get("mce_reason"):
        parts.append(
            f"<p class='meta' id='mce-reason'>mCE vs AlexNet not computed: {escape(s['mce_reason'])}</p>"
        )
    parts.append("<h2>Summary</h2>" + html_table(["metric", "value"], summary_rows(report)))
    if s["warnings"]:
        parts.append(
            "<h2>Warnings</h2><div class='warn'><ul>"
            + "".join(f"<li>{escape(w)}</li>" for w in s["warnings"])
            + "</ul></div>"
        )
    if plots:
        parts.append("<h2>Plots</h2><div class='plots'>" + "".join(plots) + "</div>")
    parts.append(_examples(report, examples))

    section = None
    for title, header, rows in result_tables(report):
        if title != section:
            parts.append(f"<h2>{escape(title)}</h2>")
            section = title
        parts.append(html_table(header, rows))
    parts.append("<h2>Clean data per class</h2>")
    parts.append(html_table(*per_class_table(report)))  # the rows report.md shows
    parts.append("<h2>Run</h2>" + html_table(["", "value"], meta_rows))
    parts.append("</main></body></html>")
    return "\n".join(p for p in parts if p)


def compare_html(report: dict, entries) -> str:
    """The comparison as one self-contained HTML page.

    Args:
        report: :func:`ironsight.robustness.report.comparison.build_compare_report`'s dict.
        entries: the :class:`~ironsight.robustness.report.comparison.CompareEntry` list, for
            the example images (their ``examples``).
    """
    names = [r["model"] for r in report["models"]]
    title = "Model comparison: " + ", ".join(names)
    rec = report.get("recommendation")
    parts = [page_start(title), bullets(comparison.header_lines(report), "compare-header")]
    lines = comparison.recommendation_lines(report)  # objective, verdict, reason, exclusions
    if rec is None:
        head, rest, cls = lines[0], [], "warn"
    else:
        head, rest, cls = lines[1], [lines[0], *lines[2:]], "pass" if rec.get("winner") else "fail"
    items = "".join(f"<li>{escape(x)}</li>" for x in rest)
    parts.append(f'<div id="recommendation" class="banner {cls}">{escape(head)}'
                 + (f"<ul>{items}</ul>" if items else "") + "</div>")
    for title_, header, rows in comparison.ranking_tables(report):
        parts.append(f"<h2>{escape(title_)}</h2>" + html_table(header, rows))
    plots = []
    captions = {
        "accuracy_vs_images_per_s": "Clean accuracy vs throughput at the best batch size.",
        "accuracy_vs_corruption": "Clean vs mean corruption accuracy.",
        "accuracy_vs_memory": "Clean accuracy vs peak inference memory (lower is better).",
    }
    for key, x, y, hi in comparison.PARETO_PLOTS:
        uri = pareto_plot(report, key, x, y, hi)
        if uri:
            plots.append(figure(uri, captions[key] + " Filled, ringed, ★: Pareto-optimal (no other model "
                                 "is as good on both axes and better on one); grey crosses: random weights."))
    uri = conditions_plot(report)
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
            parts.append(f"<h3>{escape(comparison.model_label(r))}</h3>" + bullets(notes)
                         + (example_cells(e.examples, e.report.get("class_names") or report["class_names"])
                            if e.examples else ""))
    parts.append("</main></body></html>")
    return "\n".join(parts)
