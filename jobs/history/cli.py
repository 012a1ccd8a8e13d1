"""`ironsight history`: list the recorded runs, or draw one job's trend page (`--html`)."""

from __future__ import annotations

from typing import Any

from ironsight.cluster.errors import InvalidInput
from ironsight.jobs.history.store import HistoryStore
from ironsight.jobs.history.table import format_table
from ironsight.jobs.history.trends import TREND_LAST, write_trend_html


def _history_command(args: Any) -> int:
    import json

    if args.last is not None and args.last < 1:
        raise InvalidInput(f"--last {args.last}: expected a positive number of runs")
    if args.job_name and args.job and args.job_name != args.job:
        raise InvalidInput(f"job {args.job_name!r} and --job {args.job!r}: name one job")
    args.job = args.job or args.job_name
    if args.html:
        return _trend_command(args)
    store = HistoryStore(args.history_db)
    store.mark_abandoned()
    runs = store.runs(job=args.job, last=args.last)
    if args.json:
        print(json.dumps([r.to_json() for r in runs], indent=2))
        return 0
    if not runs:
        where = f" of job {args.job!r}" if args.job else ""
        print(f"no runs{where} recorded in {store._safe_url()}")
        return 0
    print(format_table(runs))
    return 0


def _trend_command(args: Any) -> int:
    if not args.job:
        raise InvalidInput("--html draws the trend of one job: name it, as in "
                           "`ironsight history nightly --html trend.html`")
    if args.json:
        raise InvalidInput("--html and --json: choose one")
    store = HistoryStore(args.history_db)
    store.mark_abandoned()
    last = args.last or TREND_LAST
    plots = write_trend_html(store, args.job, args.html, last)
    print(f"wrote {args.html}: trend of job {args.job!r} over its last {last} runs at most, "
          f"{plots} plots")
    return 0


def add_commands(subparsers: Any, formatter: Any) -> None:
    """Add `ironsight history`."""
    p = subparsers.add_parser(
        "history",
        help="past runs: job, kind, start, duration, status, model, headline metric",
        description="List recorded runs, oldest first. Every classify, audit and run is "
        "recorded in the run history: an SQLite file $IRONSIGHT_HOME/history.db (default "
        "~/.local/share/ironsight/history.db) or the SQLAlchemy URL in IRONSIGHT_HISTORY_URL.",
        epilog="examples:\n  ironsight history --last 10\n  ironsight history --job nightly "
        "--json\n  ironsight history --history-db team-history.db\n"
        "  ironsight history nightly --html trend.html --last 60\n"
        "  IRONSIGHT_HISTORY_URL=postgresql+psycopg://USER:PASSWORD@HOST:5432/DB ironsight history"
        "\n\nstatuses:\n"
        "  running      recording now; 'running on HOST' when recorded on another host\n"
        "  succeeded    finished\n"
        "  failed       the job failed (exit 1)\n"
        "  gate_failed  the audit's release gate failed (exit 3)\n"
        "  regressed    a named audit dropped more than the gate's max_drop_vs_baseline\n"
        "               (default 0.02), significantly, against the last succeeded run of the\n"
        "               same identity (column 'vs run'; exit 4)\n"
        "  abandoned    its process on this host exited without recording an end (SIGKILL,\n"
        "               out of memory, reboot); checked whenever runs are listed or started",
        formatter_class=formatter,
    )
    p.add_argument("job_name", nargs="?", metavar="JOB", help="only runs of this job name "
                   "(the same as --job)")
    p.add_argument("--job", metavar="NAME", help="only runs of this job name")
    p.add_argument("--last", type=int, metavar="N",
                   help=f"only the last N runs (with --html: default {TREND_LAST})")
    p.add_argument(
        "--html", metavar="OUT.html", default=None,
        help="write JOB's trend instead: one self-contained HTML page (inline plots, no "
        "external resource) with clean and per-condition accuracy across its last N runs and "
        "the gate floors recorded with each run",
    )
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.add_argument(
        "--history-db", metavar="URL_OR_PATH", default=None,
        help="history database: file path or SQLAlchemy URL (default: $IRONSIGHT_HISTORY_URL "
        "or $IRONSIGHT_HOME/history.db)",
    )
    p.set_defaults(handler=_history_command)
