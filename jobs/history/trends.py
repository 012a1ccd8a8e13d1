"""A job's trend page (`ironsight history JOB --html`): clean and per-condition accuracy across
its runs, with the gate floors recorded with each run, as one self-contained HTML page.
"""

from __future__ import annotations

import dataclasses

from ironsight.cluster.errors import InvalidInput
from ironsight.jobs.history.db import utcnow
from ironsight.jobs.history.store import HistoryStore, Run
from ironsight.jobs.history.table import fmt_duration, fmt_time, status_cell
from ironsight.robustness.report.style import PAGE_CSS

TREND_LAST = 30  # runs a trend page (`history JOB --html`) covers unless --last says otherwise
_TREND_MARKERS = {  # status: (marker, colour) of a point
    "succeeded": ("o", "#0969da"),
    "regressed": ("v", "#cf222e"),
    "gate_failed": ("X", "#cf222e"),
}
_TREND_CSS = PAGE_CSS + """.warn{background:#fff8c5;border:1px solid #d4a72c;border-radius:8px;padding:10px 16px;font-size:14px}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:14px}
figure{background:#fff;border:1px solid #d0d7de;border-radius:8px;margin:0;padding:10px}
figure img{width:100%;height:auto;display:block}
figcaption{font-size:13px;color:#57606a;margin-top:4px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;background:#fff;font-size:13px;margin-bottom:12px}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#eaeef2} td:first-child,th:first-child{text-align:left}
td small{color:#57606a} .bad{color:#a40e26;font-weight:600}
"""


@dataclasses.dataclass(frozen=True)
class TrendSeries:
    """One plot of a trend page: an accuracy across runs, with the gate floor of each run.

    `key` is `clean` or a condition's name; `values[i]` and `floors[i]` belong to `runs[i]`
    (None: not measured by that run / no floor recorded with it).
    """

    key: str
    title: str
    runs: list[Run]
    values: list[float | None]
    floors: list[float | None]


def trend_series(runs: list[Run]) -> list[TrendSeries]:
    """Clean accuracy, then each condition's mean accuracy (by name), over the `runs` that
    recorded accuracies (audits that finished: succeeded, regressed, gate_failed).

    >>> run = Run(1, "n", "audit", None, None, None, None, utcnow(), None, "succeeded", None,
    ...           {"clean_accuracy": 0.9, "per_condition": {"fog": 0.5},
    ...            "gate_thresholds": {"clean": 0.8, "conditions": {"default": 0.3}}}, None, None)
    >>> [(s.key, s.values, s.floors) for s in trend_series([run])]
    [('clean', [0.9], [0.8]), ('fog', [0.5], [0.3])]
    """
    measured = [
        r for r in runs
        if r.kind == "audit" and ((r.metrics or {}).get("clean_accuracy") is not None
                                  or (r.metrics or {}).get("per_condition"))
    ]
    if not measured:
        return []

    def floors(key: str) -> list[float | None]:
        out = []
        for r in measured:
            gate = r.metrics.get("gate_thresholds") or {}
            if key == "clean":
                out.append(gate.get("clean"))
            else:
                conditions = gate.get("conditions") or {}
                out.append(conditions.get(key, conditions.get("default")))
        return out

    series = [TrendSeries("clean", "clean accuracy", measured,
                          [r.metrics.get("clean_accuracy") for r in measured], floors("clean"))]
    names = sorted({name for r in measured for name in (r.metrics.get("per_condition") or {})})
    for name in names:
        values = [(r.metrics.get("per_condition") or {}).get(name) for r in measured]
        series.append(TrendSeries(name, f"{name}: mean accuracy over severities", measured,
                                  values, floors(name)))
    return series


def _trend_plot(series: TrendSeries) -> str:
    """The series as a PNG data URI: accuracy per run (marker by status), gate floor dashed."""
    from matplotlib.figure import Figure

    from ironsight.robustness.report.plots import png_data_uri

    nan = float("nan")
    x = list(range(len(series.runs)))
    y = [nan if v is None else v for v in series.values]
    fig = Figure(figsize=(6.4, 2.8), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.plot(x, y, color="#57606a", linewidth=1.2, zorder=1)
    for status, (marker, colour) in _TREND_MARKERS.items():
        idx = [i for i, r in enumerate(series.runs) if r.status == status and series.values[i] is not None]
        if idx:
            ax.scatter([x[i] for i in idx], [y[i] for i in idx], marker=marker, color=colour,
                       s=36, zorder=3, label=status)
    if any(f is not None for f in series.floors):
        ax.step(x, [nan if f is None else f for f in series.floors], where="mid",
                color="#a40e26", linestyle="--", linewidth=1.2, zorder=2, label="gate floor")
    ax.set_ylim(0.0, 1.02)
    ax.set_ylabel("accuracy")
    ax.set_title(series.title, fontsize=11)
    step = max(1, len(x) // 15)
    ax.set_xticks(x[::step], [f"#{r.id}" for r in series.runs][::step], fontsize=8)
    ax.set_xlabel("run")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return png_data_uri(fig)


def _fmt_acc(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def render_trend_html(job: str, runs: list[Run], *, last: int, source: str) -> str:
    """A self-contained HTML page of `job`'s `runs` (oldest first): one plot per series of
    `trend_series` with the gate floors recorded with each run (or a note that none were),
    a table of the values, and a table of the runs. No script, no external resource: the plots
    are inline PNGs, the CSS a `<style>` block. `source` is the database, password masked.
    """
    from html import escape

    series = trend_series(runs)
    measured = series[0].runs if series else []
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Ironsight trend: {escape(job)}</title>",
        f"<style>{_TREND_CSS}</style></head><body><main>",
        f"<h1>Trend of job <code>{escape(job)}</code></h1>",
        f'<p class="meta">The last {len(runs)} runs (at most {last}) recorded in '
        f"{escape(source)}; {len(measured)} of them recorded accuracies. "
        f"Generated {escape(fmt_time(utcnow()))}.</p>",
    ]
    if not series:
        parts.append('<p class="warn">None of these runs recorded accuracies (only finished '
                     "audits do): there is nothing to plot.</p>")
    elif not any(f is not None for s in series for f in s.floors):
        parts.append('<p class="warn">No gate thresholds are recorded with these runs (no gate '
                     "in the spec, or runs recorded before Ironsight kept them): no gate lines "
                     "are drawn.</p>")
    else:
        parts.append('<p class="meta">Dashed red line: the gate floor recorded with each run. '
                     "A condition's floor applies to every severity; the plot shows the mean "
                     "over severities.</p>")
    if series:
        parts.append("<h2>Accuracy per condition</h2>")
        parts.append('<div class="plots">')
        for s in series:
            known = [(r, v) for r, v in zip(s.runs, s.values, strict=True) if v is not None]
            caption = escape(s.title)
            if known:
                low, high = min(v for _, v in known), max(v for _, v in known)
                caption += (f": latest {_fmt_acc(known[-1][1])} (run #{known[-1][0].id}), "
                            f"range {_fmt_acc(low)} to {_fmt_acc(high)} over {len(known)} runs")
            parts.append(
                f'<figure data-series="{escape(s.key)}"><img alt="{escape(s.title)} per run" '
                f'src="{_trend_plot(s)}"><figcaption>{caption}</figcaption></figure>'
            )
        parts.append("</div>")
        parts.append("<h2>Values</h2>")
        parts.append('<div class="scroll"><table><tr><th>accuracy</th>'
                     + "".join(f"<th>#{r.id}</th>" for r in measured) + "</tr>")
        for s in series:
            cells = []
            for value, floor in zip(s.values, s.floors, strict=True):
                bad = value is not None and floor is not None and value < floor
                text = _fmt_acc(value) + (f"<br><small>floor {floor:.2f}</small>" if floor is not None else "")
                cells.append(f'<td class="bad">{text}</td>' if bad else f"<td>{text}</td>")
            parts.append(f"<tr><td>{escape(s.key)}</td>{''.join(cells)}</tr>")
        parts.append("</table></div>")
    parts.append("<h2>Runs</h2>")
    parts.append('<div class="scroll"><table><tr><th>run</th><th>started (UTC)</th>'
                 "<th>duration</th><th>status</th><th>model</th><th>weights</th><th>host</th>"
                 "<th>error</th></tr>")
    for r in runs:
        status = escape(status_cell(r))
        if r.status in ("failed", "gate_failed", "regressed", "abandoned"):
            status = f'<span class="bad">{status}</span>'
        parts.append(
            f"<tr><td>#{r.id}</td><td>{escape(fmt_time(r.started_at))}</td>"
            f"<td>{escape(fmt_duration(r.duration_s))}</td><td>{status}</td>"
            f"<td>{escape(r.model or '-')}</td><td>{escape((r.weights_hash or '-')[:12])}</td>"
            f"<td>{escape(r.host or '-')}</td><td>{escape((r.error or '')[:160])}</td></tr>"
        )
    parts.append("</table></div></main></body></html>")
    return "\n".join(parts) + "\n"


def write_trend_html(store: HistoryStore, job: str, out: str, last: int = TREND_LAST) -> int:
    """Write `job`'s trend page to `out` (a local path or s3:// URI, written atomically);
    returns the number of plots. A job without runs is refused (InvalidInput)."""
    from ironsight.cluster import storage, storage_errors

    runs = store.runs(job=job, last=last)
    if not runs:
        raise InvalidInput(
            f"no runs of job {job!r} recorded in {store._safe_url()}: no trend to draw; "
            "`ironsight history` lists the recorded jobs"
        )
    page = render_trend_html(job, runs, last=last, source=store._safe_url())
    try:
        storage.publish_bytes(storage.resolve(out), page.encode("utf-8"))
    except OSError as exc:
        raise InvalidInput(f"--html {out}: cannot write the trend page: {storage_errors.os_reason(exc)}") from exc
    return page.count("<figure ")
