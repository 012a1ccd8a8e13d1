"""The `ironsight history` table: one line a run, and the cell formats the trend page shares."""

from __future__ import annotations

import datetime as dt
import socket

from ironsight.jobs.history.store import Run


def fmt_time(value: dt.datetime | None) -> str:
    return "-" if value is None else value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def status_cell(run: Run) -> str:
    """The status, with the host of a run still `running` on another machine."""
    if run.status == "running" and run.host and run.host != socket.gethostname():
        return f"running on {run.host}"
    return run.status


def _compared_cell(run: Run) -> str:
    """Which run an audit was judged against: its id, `none` (first of its identity), `ad hoc`
    (no job name: never judged), `-` (not an audit, or not judged yet)."""
    m = run.metrics or {}
    if run.compared_with is not None:
        return str(run.compared_with)
    if "judged" not in m:
        return "-"
    return "none" if m["judged"] else "ad hoc"


def format_table(runs: list[Run]) -> str:
    """The `ironsight history` table."""
    header = ("id", "job", "kind", "identity", "started (UTC)", "duration", "status", "vs run",
              "model", "headline")
    rows = [
        (
            str(r.id), r.job, r.kind, (r.identity or "-")[:8], fmt_time(r.started_at),
            fmt_duration(r.duration_s), status_cell(r), _compared_cell(r), r.model or "-",
            r.headline(),
        )
        for r in runs
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
