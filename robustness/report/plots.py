"""The plots of report.html and compare.html, drawn with matplotlib's object API (``Figure``
rendered by the Agg canvas: no ``pyplot``, no change to the global backend or rcParams) and
returned as base64 PNG ``data:`` URIs; None when a plot has nothing to draw.

| function              | page         | plot                                                   |
|-----------------------|--------------|--------------------------------------------------------|
| :func:`severity_plot` | report.html  | accuracy per condition vs severity, 95% bands          |
| :func:`heatmap`       | report.html  | accuracy of each condition x severity cell             |
| :func:`attack_plot`   | report.html  | robust accuracy vs eps per attack, 95% bands           |
| :func:`confusion_plot`| report.html  | the clean confusion matrix, rows normalized            |
| :func:`pareto_plot`   | compare.html | two metrics of every model, the Pareto front joined    |
| :func:`conditions_plot` | compare.html | every model's accuracy per condition, grouped bars   |
"""

from __future__ import annotations

import base64
import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_DPI = 110
_LABELS = {"accuracy": "clean accuracy (%)", "corruption_accuracy": "mean corruption accuracy (%)",
           "images_per_s": "images/s at the best batch size", "memory_mb": "peak inference memory (MB)"}
_PERCENT = {"accuracy", "corruption_accuracy"}
_TITLES = {"accuracy_vs_images_per_s": "Accuracy vs throughput", "accuracy_vs_corruption":
           "Clean vs corruption accuracy", "accuracy_vs_memory": "Accuracy vs memory"}


def png_data_uri(fig: Figure) -> str:
    canvas = FigureCanvasAgg(fig)
    buf = io.BytesIO()
    canvas.print_png(buf)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def palette(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab20" if n > 10 else "tab10"]
    return [cmap(i % cmap.N) for i in range(n)]


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


def severity_plot(report: dict) -> str | None:
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


def attack_plot(report: dict) -> str | None:
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


def heatmap(report: dict) -> str | None:
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


def confusion_plot(report: dict) -> str | None:
    """The clean confusion matrix over :func:`~ironsight.robustness.report.tables.shown_classes`
    (every class up to 30; else the classes seen, at most 30), rows normalized over all
    predictions of the true class."""
    from ironsight.robustness.report.tables import shown_classes

    full = np.asarray(report["clean"]["confusion_matrix"])
    if full.size == 0 or full.sum() == 0:
        return None
    shown = shown_classes(report)
    names = [report["class_names"][i] for i in shown]
    cm = full[np.ix_(shown, shown)]
    totals = full[shown].sum(axis=1, keepdims=True)
    size = min(9.0, 2.4 + 0.45 * len(names))
    fig = Figure(figsize=(size, size * 0.85), dpi=_DPI)
    ax = fig.add_subplot()
    frac = np.divide(cm, totals, out=np.zeros(cm.shape, dtype=float), where=totals > 0)
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


def _value(row: dict, key: str) -> float | None:
    v = row.get(key)
    return None if v is None else (100 * v if key in _PERCENT else v)


def pareto_plot(report: dict, key: str, x: str, y: str, x_higher: bool) -> str | None:
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


def conditions_plot(report: dict) -> str | None:
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
