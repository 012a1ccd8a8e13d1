"""``report.html``: one self-contained page with the audit's plots, tables and gate verdict.

Everything is inline: CSS in a ``<style>`` block, plots and example images as base64 PNG
``data:`` URIs, no scripts and no external URL, so the file can be mailed, attached to a CI
run or opened offline. Plots are drawn with matplotlib's object API (``Figure`` rendered by
the Agg canvas): no ``pyplot``, no change to the global backend or rcParams.

Uncertainty is drawn, not only printed: the severity and attack curves carry a shaded band
per line, the 95% Wilson score interval of each point (``ci95`` in report.json), and the clean
accuracy a grey band; tables show ``accuracy [low, high] (n=...)``. The header states the
number of images and the smallest drop they can detect, the preprocessing when the report
has it, and why mCE against AlexNet is absent when it is.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from ironsight.robustness.schema import Example

MAX_EXAMPLES = 120  # ~10 KB each as PNG: keeps the page a few MB at most
_DPI = 110

CSS = """
body{font-family:-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;margin:0;
  background:#f6f7f9;color:#1f2328}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{margin:0 0 4px;font-size:26px} h2{margin:28px 0 10px;font-size:20px}
.meta{color:#57606a;font-size:13px}
.banner{padding:14px 18px;border-radius:8px;margin:18px 0;font-weight:600;font-size:18px}
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


def png_data_uri(fig: Figure) -> str:
    canvas = FigureCanvasAgg(fig)
    buf = io.BytesIO()
    canvas.print_png(buf)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


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


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _num(x, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _severity_plot(report: dict) -> str | None:
    conds = report["conditions"]
    if not conds:
        return None
    fig = Figure(figsize=(6.4, 4.0), dpi=_DPI)
    ax = fig.add_subplot()
    clean = report["clean"]["accuracy"]
    clean_ci = report["clean"].get("ci95")
    names = sorted({c["name"] for c in conds})
    cmap = palette(len(names))
    for color, name in zip(cmap, names, strict=True):
        cells = sorted(
            (c for c in conds if c["name"] == name and c["accuracy"] is not None),
            key=lambda c: c["severity"],
        )
        xs = [c["severity"] for c in cells]
        ys = [100 * c["accuracy"] for c in cells]
        bands = [c.get("ci95") for c in cells]
        if clean is not None:
            xs, ys = [0, *xs], [100 * clean, *ys]
            bands = [clean_ci, *bands]
        ax.plot(xs, ys, marker="o", ms=4, lw=1.6, color=color, label=name)
        _band(ax, xs, bands, color)
    if clean is not None:
        ax.axhline(100 * clean, color="#444", ls="--", lw=1, label="clean")
        if clean_ci:
            ax.axhspan(100 * clean_ci[0], 100 * clean_ci[1], color="#444", alpha=0.08, lw=0)
    ax.set_xlabel("severity (0 = clean)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_xticks(range(0, max(c["severity"] for c in conds) + 1))
    ax.grid(alpha=0.3)
    ax.set_title("Accuracy vs corruption severity (bands: 95% Wilson score interval)", fontsize=10)
    ax.legend(
        fontsize=7,
        ncol=2 if len(names) > 8 else 1,
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        frameon=False,
    )
    fig.tight_layout()
    return png_data_uri(fig)


def _band(ax, xs: list, bands: list, color) -> None:
    """Shade the 95% intervals around one curve (points without an interval are skipped)."""
    pts = [(x, b) for x, b in zip(xs, bands, strict=True) if b]
    if len(pts) >= 2:
        ax.fill_between(
            [x for x, _ in pts],
            [100 * b[0] for _, b in pts],
            [100 * b[1] for _, b in pts],
            color=color,
            alpha=0.15,
            lw=0,
        )
    elif pts:
        x, b = pts[0]
        ax.errorbar(
            [x], [50 * (b[0] + b[1])], yerr=[[50 * (b[1] - b[0])]], color=color, lw=1,
            capsize=3, fmt="none",
        )


def palette(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab20" if n > 10 else "tab10"]
    return [cmap(i % cmap.N) for i in range(n)]


def _attack_plot(report: dict) -> str | None:
    attacks = report["attacks"]
    if not attacks:
        return None
    fig = Figure(figsize=(6.4, 4.0), dpi=_DPI)
    ax = fig.add_subplot()
    names = sorted({a["name"] for a in attacks})
    for color, name in zip(palette(len(names)), names, strict=True):
        rows = sorted(
            (a for a in attacks if a["name"] == name and a["accuracy"] is not None),
            key=lambda a: a["eps"],
        )
        xs = [255 * a["eps"] for a in rows]
        ax.plot(
            xs,
            [100 * a["accuracy"] for a in rows],
            marker="o",
            ms=4,
            lw=1.6,
            color=color,
            label=name,
        )
        _band(ax, xs, [a.get("ci95") for a in rows], color)
    chance = 100 / len(report["class_names"])
    ax.axhline(chance, color="#a40e26", ls=":", lw=1, label=f"chance ({chance:.0f}%)")
    ax.set_xlabel("eps × 255 (pixel units)")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title("Robust accuracy vs attack budget (bands: 95% Wilson score interval)", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return png_data_uri(fig)


def _heatmap(report: dict) -> str | None:
    conds = [c for c in report["conditions"]]
    if not conds:
        return None
    names = sorted({c["name"] for c in conds})
    sevs = sorted({c["severity"] for c in conds})
    grid = np.full((len(names), len(sevs)), np.nan)
    for c in conds:
        if c["accuracy"] is not None:
            grid[names.index(c["name"]), sevs.index(c["severity"])] = 100 * c["accuracy"]
    fig = Figure(figsize=(5.2, 0.9 + 0.32 * len(names)), dpi=_DPI)
    ax = fig.add_subplot()
    im = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(sevs)), [str(s) for s in sevs])
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("severity")
    for i in range(len(names)):
        for j in range(len(sevs)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    ax.set_title("Accuracy by condition and severity")
    fig.tight_layout()
    return png_data_uri(fig)


def _confusion_plot(report: dict) -> str | None:
    cm = np.asarray(report["clean"]["confusion_matrix"])
    if cm.size == 0 or cm.sum() == 0:
        return None
    names = report["class_names"]
    size = min(9.0, 2.4 + 0.45 * len(names))
    fig = Figure(figsize=(size, size * 0.85), dpi=_DPI)
    ax = fig.add_subplot()
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if len(names) <= 20:
        for i in range(len(names)):
            for j in range(len(names)):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        str(cm[i, j]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if frac[i, j] > 0.5 else "black",
                    )
    fig.colorbar(im, ax=ax, label="fraction of the true class")
    ax.set_title("Clean confusion matrix")
    fig.tight_layout()
    return png_data_uri(fig)


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
    from ironsight.robustness.report import example_lines

    lines = example_lines(report)
    if not examples and not lines:
        return ""
    return ("<h2>Examples</h2>" + bullets(lines, "examples-notes")
            + (example_cells(examples, report["class_names"]) if examples else ""))


def render_html(report: dict, examples: Sequence[Example] = ()) -> str:
    """Render the report as one self-contained HTML page.

    Args:
        report: The dict from :func:`ironsight.robustness.report.build_report`.
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
    from ironsight.robustness.report import (  # report imports this module at call time
        ci_text,
        header_lines,
        result_tables,
        summary_rows,
    )

    ci = clean.get("ci95")
    cards = [
        card(
            "clean accuracy"
            + (f" · 95% CI [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}], n={clean.get('n_labeled')}" if ci else ""),
            _pct(s["clean_accuracy"]),
        ),
        card("mean corruption accuracy", _pct(s["mean_corruption_accuracy"])),
        card("clean ECE (15 bins)", _num(clean["ece"])),
        card("clean macro F1", _num(clean["macro_f1"])),
    ]
    if s.get("mce") is not None:
        cards.append(card("mCE vs baseline", _num(s["mce"])))
        cards.append(card("relative mCE vs baseline", _num(s["relative_mce"])))
    if s.get("alexnet"):
        cards.append(card("mCE vs AlexNet (ImageNet-C)", _num(s["alexnet"]["mce"])))

    plots = []
    for uri, caption in (
        (
            _severity_plot(report),
            "Accuracy per condition as severity grows; dashed: clean; shaded bands: 95% Wilson "
            "score interval of each point.",
        ),
        (_heatmap(report), "Accuracy (%) of each condition x severity cell."),
        (
            _attack_plot(report),
            "Robust accuracy per attack as the budget eps grows; bands: 95% Wilson score interval.",
        ),
        (_confusion_plot(report), "Clean confusion matrix, rows normalized; numbers are counts."),
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
    names = report["class_names"]
    parts.append("<h2>Clean data per class</h2>")
    parts.append(
        html_table(
            ["class", "accuracy [95% CI]", "precision", "recall", "F1", "support"],
            [
                [
                    names[i],
                    ci_text(clean["per_class"][i])
                    if clean.get("per_class")
                    else _pct(clean["per_class_accuracy"][i]),
                    _num(clean["precision"][i]),
                    _num(clean["recall"][i]),
                    _num(clean["f1"][i]),
                    clean["support"][i],
                ]
                for i in range(len(names))
            ],
        )
    )
    parts.append("<h2>Run</h2>" + html_table(["", "value"], meta_rows))
    parts.append("</main></body></html>")
    return "\n".join(p for p in parts if p)
