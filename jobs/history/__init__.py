"""Run history: every `ironsight classify/audit/run` records what ran and how it ended.

| module     | holds                                                                      |
|------------|----------------------------------------------------------------------------|
| `db`       | the database URL (`history_url`, `IRONSIGHT_HISTORY_URL`, `--history-db`), the engine, `safe_url` (password masked) |
| `schema`   | the tables, `SCHEMA_VERSION`, `HistoryDatabase` (the connection; creates or upgrades the schema) |
| `store`    | `HistoryStore` (the queries: record, read, abandoned runs) and its rows, `Run` |
| `outcomes` | `Outcomes`: an audit's per-image correctness, what pairs two runs image by image |
| `compare`  | `run_identity`, headline metrics, `compare_metrics` / `detect_regressions` (the regression rule) |
| `recorder` | `RunRecorder`: records one job run and judges a named audit against its reference |
| `table`    | the `ironsight history` table                                              |
| `trends`   | a job's trend page (`ironsight history JOB --html`)                        |
| `cli`      | the `ironsight history` command                                            |

Process liveness (which `running` runs were abandoned) is `ironsight.cluster.liveness`. This
package exports the API the rest of Ironsight uses (and `add_commands`, for `ironsight.jobs.cli`);
everything else is imported from its module. A regressed audit exits `EXIT_REGRESSED` (4), from
the one exit-code table in `ironsight.cluster.errors`.
"""

from __future__ import annotations

from ironsight.jobs.history.cli import add_commands
from ironsight.jobs.history.compare import (
    DEFAULT_MAX_DROP,
    Regression,
    audit_metrics,
    classify_metrics,
    compare_metrics,
    detect_regressions,
    run_identity,
)
from ironsight.jobs.history.db import default_history_url, history_url
from ironsight.jobs.history.outcomes import Outcomes
from ironsight.jobs.history.recorder import RunRecorder
from ironsight.jobs.history.store import STATUSES, HistoryStore, Run

__all__ = [
    "DEFAULT_MAX_DROP",
    "STATUSES",
    "HistoryStore",
    "Outcomes",
    "Regression",
    "Run",
    "RunRecorder",
    "add_commands",
    "audit_metrics",
    "classify_metrics",
    "compare_metrics",
    "default_history_url",
    "detect_regressions",
    "history_url",
    "run_identity",
]
