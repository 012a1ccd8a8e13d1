"""Run history: every `ironsight classify/audit/run` records what ran and how it ended.

The store is a SQL database reached through SQLAlchemy 2 Core: by default an embedded SQLite
file `$IRONSIGHT_HOME/history.db` (`IRONSIGHT_HOME` defaults to `~/.local/share/ironsight`),
or any SQLAlchemy URL in `IRONSIGHT_HISTORY_URL` / `--history-db` (e.g.
`postgresql+psycopg://host/db` for a team database; install its driver yourself, only SQLite
is tested). The schema is created on first use and its version kept in `ironsight_meta`.

| table `ironsight_runs` | meaning                                                          |
|------------------------|------------------------------------------------------------------|
| `id`                   | run id, increasing                                               |
| `job`, `kind`          | the spec's `name` and `kind` (classify / audit)                  |
| `spec_hash`            | hash of the validated spec (every field, `ironsight.cluster.sink.spec_hash`) |
| `model`, `weights_hash`| model name; sha256 of its weights when the run got that far      |
| `scheduled_for`        | the schedule tick that started it (`ironsight schedule`), or null |
| `started_at`, `ended_at` | UTC                                                            |
| `status`               | running, succeeded, failed, gate_failed, regressed, abandoned    |
| `output`               | OUTPUT location                                                  |
| `metrics`              | headline metrics JSON (see `classify_metrics`, `audit_metrics`)  |
| `error`                | first line of the error of a failed run, credentials redacted    |
| `host`, `pid`          | the host and process id that recorded the run (schema 2)         |
| `process_start`        | that process's identity: pid namespace, boot id, start time in clock ticks (schema 2) |

Abandoned runs: a process SIGKILLed (or OOM-killed, or its machine rebooted) never records its
end. When `ironsight history` lists runs, and when a run starts, every `running` run recorded
on this host whose process is gone, or whose pid now belongs to another process (the start
time differs), is marked `abandoned` with the error "process N on HOST exited without
recording an end". A run recorded on another host (or in another pid namespace) cannot be
checked from here: it stays `running` and the table shows its host. Rows written by schema 1
(no pid) are left as they are. Opening a schema 1 database adds the columns (`ALTER TABLE ...
ADD COLUMN`, safe with other processes doing the same) and sets the version to 2.

Regressions: when an audit finishes, its metrics are compared with the previous `succeeded`
run of the same job name (a `regressed` or `gate_failed` run is never the reference, so a
regression keeps being reported until the job is back to its last good level). A regression
is a drop of clean accuracy or of one condition's mean accuracy by more than the gate's
`max_drop_vs_baseline`, or, without a gate (or a gate without that key), by more than
`DEFAULT_MAX_DROP` (0.02 absolute). The run is then `regressed` and the CLI exits 4 (a failed
release gate exits 3 and takes precedence).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import re
import socket
import traceback
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ironsight.cluster.errors import GateFailed, InvalidInput, IronsightError
from ironsight.jobs.observability import console

__all__ = [
    "DEFAULT_MAX_DROP",
    "EXIT_REGRESSED",
    "STATUSES",
    "HistoryStore",
    "Regression",
    "Run",
    "RunRecorder",
    "audit_metrics",
    "classify_metrics",
    "default_history_url",
    "detect_regressions",
    "history_url",
]

log = logging.getLogger("ironsight")

SCHEMA_VERSION = 2
STATUSES = ("running", "succeeded", "failed", "gate_failed", "regressed", "abandoned")
# Absolute accuracy drop that counts as a regression when the spec's gate sets no
# max_drop_vs_baseline: 2 points is above the run-to-run noise of a fixed-seed audit of a
# few thousand images, and small enough to catch a broken preprocessing change.
DEFAULT_MAX_DROP = 0.02
EXIT_REGRESSED = 4  # distinct from 3 (release gate failed): the gate passed, the job got worse
# Env var a scheduler sets for the run it starts: the tick (ISO 8601, UTC) it fires for.
SCHEDULED_FOR_ENV = "IRONSIGHT_SCHEDULED_FOR"
_ERROR_CHARS = 500

_meta = sa.MetaData()
_meta_table = sa.Table(
    "ironsight_meta",
    _meta,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
)
_runs = sa.Table(
    "ironsight_runs",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job", sa.String(256), nullable=False, index=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("spec_hash", sa.String(64)),
    sa.Column("model", sa.String(256)),
    sa.Column("weights_hash", sa.String(64)),
    sa.Column("scheduled_for", sa.DateTime(timezone=True)),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("ended_at", sa.DateTime(timezone=True)),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("output", sa.Text),
    sa.Column("metrics", sa.JSON),
    sa.Column("error", sa.Text),
    sa.Column("host", sa.String(256)),
    # schema 2: which process recorded the run, to find runs whose process died
    sa.Column("pid", sa.Integer),
    sa.Column("process_start", sa.String(128)),
)
# Columns each schema version added, in order: opening an older database adds them.
_ADDED_COLUMNS = {2: ("pid", "process_start")}


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes; every stored datetime is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.timezone.utc)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a Linux process, None if it is gone."""
    text = _read(f"/proc/{pid}/stat")
    if text is None:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
    return fields[0], fields[19]  # stat fields 3 (state) and 22 (starttime)


def process_identity(pid: int) -> str | None:
    """What tells process `pid` apart from a later process given the same pid (Linux only):
    `PIDNS/BOOT_ID/START_TICKS`; None where /proc does not say.

    >>> process_identity(os.getpid()) == process_identity(os.getpid())
    True
    """
    stat = _proc_stat(pid)
    namespace = _read_link("/proc/self/ns/pid")
    boot = _read("/proc/sys/kernel/random/boot_id")
    if stat is None or namespace is None or boot is None:
        return None
    return f"{namespace}/{boot}/{stat[1]}"


def _read_link(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def process_exists(pid: int, identity: str | None) -> bool | None:
    """Whether the process that recorded `identity` as `pid` still runs on this host.

    True: it does. False: it exited (or is a zombie), or `pid` is now another process, or
    the machine rebooted since. None: cannot tell from here (another pid namespace).

    >>> process_exists(os.getpid(), process_identity(os.getpid()))
    True
    """
    if identity:
        namespace, _, rest = identity.partition("/")
        boot, _, start = rest.partition("/")
        if namespace != _read_link("/proc/self/ns/pid"):
            return None
        if boot != _read("/proc/sys/kernel/random/boot_id"):
            return False  # rebooted since: every process of that boot is gone
        stat = _proc_stat(pid)
        return stat is not None and stat[0] not in ("Z", "X") and stat[1] == start
    try:  # no /proc identity was recorded: only whether some process has this pid
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return None
    return True


def default_history_url() -> str:
    """`sqlite:///$IRONSIGHT_HOME/history.db` (`IRONSIGHT_HOME`: `~/.local/share/ironsight`)."""
    home = os.environ.get("IRONSIGHT_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share", "ironsight"
    )
    return "sqlite:///" + str(Path(home).resolve() / "history.db")


def history_url(value: str | None = None) -> str:
    """The history database URL: `value` (a URL or a file path), else the env, else the default.

    >>> history_url("/tmp/h.db")
    'sqlite:////tmp/h.db'
    >>> history_url("postgresql+psycopg://db.internal/ironsight")
    'postgresql+psycopg://db.internal/ironsight'
    """
    value = value or os.environ.get("IRONSIGHT_HISTORY_URL")
    if not value:
        return default_history_url()
    if "://" in value:
        return value
    return "sqlite:///" + str(Path(value).expanduser().resolve())


@dataclasses.dataclass(frozen=True)
class Run:
    """One row of the history."""

    id: int
    job: str
    kind: str
    spec_hash: str | None
    model: str | None
    weights_hash: str | None
    scheduled_for: dt.datetime | None
    started_at: dt.datetime
    ended_at: dt.datetime | None
    status: str
    output: str | None
    metrics: dict[str, Any]
    error: str | None
    host: str | None
    pid: int | None = None

    @property
    def duration_s(self) -> float | None:
        if self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()

    def headline(self) -> str:
        """The one metric a table shows: accuracies for audits, rows and speed for labeling."""
        m = self.metrics or {}
        if self.kind == "audit" and m.get("clean_accuracy") is not None:
            text = f"clean {m['clean_accuracy']:.3f}"
            if m.get("mean_corruption_accuracy") is not None:
                text += f", corrupted {m['mean_corruption_accuracy']:.3f}"
            return text
        if self.kind == "classify" and "rows" in m:
            return f"{m['rows']} rows, {m.get('error_rows', 0)} errors, {m.get('images_per_s', 0):.3g} img/s"
        return (self.error or "")[:60]

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("scheduled_for", "started_at", "ended_at"):
            out[key] = out[key].isoformat() if out[key] is not None else None
        out["duration_s"] = self.duration_s
        return out


def _redact(text: str) -> str:
    """Drop credentials an error message may carry (URL user:password, AWS keys, tokens)."""
    text = re.sub(r"(://)[^/\s:@]+:[^/\s@]+@", r"\1***@", text)
    text = re.sub(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", "***", text)
    return re.sub(r"(?i)((?:secret|token|password|key)[\w-]*\s*[=:]\s*)\S+", r"\1***", text)


class HistoryStore:
    """Run history in a SQL database; the schema is created on first use.

    Args:
        url: SQLAlchemy URL or file path; default `history_url()`.

    >>> import tempfile
    >>> store = HistoryStore(tempfile.mkdtemp() + "/h.db")
    >>> rid = store.start(job="nightly", kind="audit", model="demo_cnn")
    >>> store.finish(rid, "succeeded", {"clean_accuracy": 0.9}, output="out/")
    >>> [(r.job, r.status, r.metrics["clean_accuracy"]) for r in store.runs()]
    [('nightly', 'succeeded', 0.9)]
    """

    def __init__(self, url: str | None = None) -> None:
        self.url = history_url(url)
        try:
            self.engine = sa.create_engine(self.url)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
            raise InvalidInput(
                f"history database URL {self._safe_url()!r} cannot be used ({exc}); pass a "
                "SQLAlchemy URL like sqlite:////path/history.db and install its driver"
            ) from exc
        if self.engine.dialect.name == "sqlite":
            db = self.engine.url.database
            if db and db != ":memory:":
                try:
                    Path(db).parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise InvalidInput(
                        f"cannot create the run history's directory {Path(db).parent}: {exc}; "
                        "set IRONSIGHT_HOME or --history-db to a writable place"
                    ) from exc
        self._init_schema()

    def _safe_url(self) -> str:
        return _redact(self.url)

    def _init_schema(self) -> None:
        try:
            # create_all checks, then creates: two processes opening a new database at once
            # (a scheduler and the run it starts) can both pass the check; the loser retries.
            for attempt in range(3):
                try:
                    _meta.create_all(self.engine, checkfirst=True)
                    break
                except sa.exc.OperationalError as exc:
                    if "already exists" not in str(exc) or attempt == 2:
                        raise
            with self.engine.begin() as conn:
                row = conn.execute(
                    sa.select(_meta_table.c.value).where(_meta_table.c.key == "schema_version")
                ).first()
                if row is None:
                    conn.execute(
                        sa.insert(_meta_table).values(key="schema_version", value=str(SCHEMA_VERSION))
                    )
                    return
        except sa.exc.IntegrityError:
            return  # another process created it at the same moment
        except sa.exc.SQLAlchemyError as exc:
            raise InvalidInput(
                f"cannot open the run history at {self._safe_url()}: {str(exc).splitlines()[0]}; "
                "check the path or URL (IRONSIGHT_HISTORY_URL / --history-db)"
            ) from exc
        if int(row.value) > SCHEMA_VERSION:
            raise InvalidInput(
                f"run history {self._safe_url()} has schema version {row.value}, newer than this "
                f"Ironsight's {SCHEMA_VERSION}; upgrade Ironsight or use another --history-db"
            )
        if int(row.value) < SCHEMA_VERSION:
            self._migrate(int(row.value))

    def _migrate(self, version: int) -> None:
        """Add the columns of the schema versions after `version`, then record the new version.

        Another process may be migrating the same database: a column it added first is not
        an error, and the version only ever moves up.
        """
        try:
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for name in _ADDED_COLUMNS.get(target, ()):
                    present = {c["name"] for c in sa.inspect(self.engine).get_columns(_runs.name)}
                    if name in present:
                        continue
                    column = _runs.c[name]
                    ddl = f"ALTER TABLE {_runs.name} ADD COLUMN {name} {column.type.compile(self.engine.dialect)}"
                    try:
                        with self.engine.begin() as conn:
                            conn.execute(sa.text(ddl))
                    except sa.exc.OperationalError as exc:
                        if "duplicate column" not in str(exc).lower():
                            raise
            with self.engine.begin() as conn:
                conn.execute(
                    sa.update(_meta_table)
                    .where(_meta_table.c.key == "schema_version",
                           sa.cast(_meta_table.c.value, sa.Integer) < SCHEMA_VERSION)
                    .values(value=str(SCHEMA_VERSION))
                )
        except sa.exc.SQLAlchemyError as exc:
            raise InvalidInput(
                f"cannot upgrade the run history at {self._safe_url()} from schema {version} to "
                f"{SCHEMA_VERSION}: {str(exc).splitlines()[0]}; check that it is writable"
            ) from exc
        log.info("run history %s upgraded from schema %d to %d", self._safe_url(), version, SCHEMA_VERSION)

    @property
    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(_meta_table.c.value).where(_meta_table.c.key == "schema_version")
            ).scalar_one()
        return int(value)

    def start(
        self,
        *,
        job: str,
        kind: str,
        spec_hash: str | None = None,
        model: str | None = None,
        weights_hash: str | None = None,
        output: str | None = None,
        scheduled_for: dt.datetime | None = None,
        started_at: dt.datetime | None = None,
    ) -> int:
        """Record a run as `running`; returns its id."""
        with self.engine.begin() as conn:
            result = conn.execute(
                sa.insert(_runs).values(
                    job=job,
                    kind=kind,
                    spec_hash=spec_hash,
                    model=model,
                    weights_hash=weights_hash,
                    output=output,
                    scheduled_for=scheduled_for,
                    started_at=started_at or _utcnow(),
                    status="running",
                    metrics={},
                    host=socket.gethostname(),
                    pid=os.getpid(),
                    process_start=process_identity(os.getpid()),
                )
            )
            return int(result.inserted_primary_key[0])

    def finish(
        self,
        run_id: int,
        status: str,
        metrics: dict[str, Any] | None = None,
        output: str | None = None,
        *,
        error: str | None = None,
        weights_hash: str | None = None,
        ended_at: dt.datetime | None = None,
    ) -> None:
        """Record how a run ended; `metrics`, `output`, `weights_hash` replace what was stored."""
        if status not in STATUSES or status == "running":
            raise ValueError(f"status {status!r}; expected one of {STATUSES[1:]}")
        values: dict[str, Any] = {"status": status, "ended_at": ended_at or _utcnow()}
        if metrics is not None:
            values["metrics"] = metrics
        if output is not None:
            values["output"] = output
        if error is not None:
            values["error"] = _redact(error)[:_ERROR_CHARS]
        if weights_hash is not None:
            values["weights_hash"] = weights_hash
        with self.engine.begin() as conn:
            done = conn.execute(sa.update(_runs).where(_runs.c.id == run_id).values(**values))
        if done.rowcount != 1:
            raise InvalidInput(f"run {run_id} is not in the history at {self._safe_url()}")

    def mark_abandoned(self) -> list[int]:
        """Mark `abandoned` the `running` runs of this host whose process is gone; their ids.

        A run is checked only when it was recorded on this host, in this pid namespace and
        since the last boot; else (another host, a container with its own pids, a schema 1
        row without a pid) it is left `running`. A run whose recording process is alive is
        untouched.
        """
        host = socket.gethostname()
        query = sa.select(_runs.c.id, _runs.c.pid, _runs.c.process_start).where(
            _runs.c.status == "running", _runs.c.host == host, _runs.c.pid.is_not(None)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        marked = []
        for run_id, pid, identity in rows:
            if process_exists(pid, identity) is not False:
                continue
            with self.engine.begin() as conn:
                done = conn.execute(
                    sa.update(_runs)
                    .where(_runs.c.id == run_id, _runs.c.status == "running")
                    .values(status="abandoned",
                            error=f"process {pid} on {host} exited without recording an end")
                )
            if done.rowcount == 1:
                marked.append(run_id)
                log.warning("run %d marked abandoned: process %d on %s exited without recording an end",
                            run_id, pid, host)
        return marked

    def runs(self, job: str | None = None, last: int | None = None) -> list[Run]:
        """Runs, oldest first; only `job`'s when given, only the `last` N when given."""
        query = sa.select(_runs).order_by(_runs.c.id.desc())
        if job is not None:
            query = query.where(_runs.c.job == job)
        if last is not None:
            query = query.limit(last)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [self._run(r) for r in reversed(rows)]

    def get(self, run_id: int) -> Run:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(_runs).where(_runs.c.id == run_id)).first()
        if row is None:
            raise InvalidInput(f"run {run_id} is not in the history at {self._safe_url()}")
        return self._run(row)

    def previous_success(self, job: str, before_run_id: int) -> Run | None:
        """The latest `succeeded` run of `job` older than `before_run_id`, or None."""
        query = (
            sa.select(_runs)
            .where(_runs.c.job == job, _runs.c.status == "succeeded", _runs.c.id < before_run_id)
            .order_by(_runs.c.id.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else self._run(row)

    @staticmethod
    def _run(row: sa.Row) -> Run:
        m = row._mapping
        return Run(
            id=m["id"],
            job=m["job"],
            kind=m["kind"],
            spec_hash=m["spec_hash"],
            model=m["model"],
            weights_hash=m["weights_hash"],
            scheduled_for=_aware(m["scheduled_for"]),
            started_at=_aware(m["started_at"]),
            ended_at=_aware(m["ended_at"]),
            status=m["status"],
            output=m["output"],
            metrics=m["metrics"] or {},
            error=m["error"],
            host=m["host"],
            pid=m["pid"],
        )


# --------------------------------------------------------------------------- metrics


def classify_metrics(summary: Any) -> dict[str, Any]:
    """Headline metrics of a labeling run from its `ClassifySummary`."""
    return {
        "rows": summary.rows,
        "rows_total": summary.rows_total,
        "error_rows": summary.error_rows,
        "images_per_s": round(float(summary.images_per_s), 2),
        "wall_s": round(float(summary.wall_s), 2),
        "already_complete": bool(summary.already_complete),
    }


def audit_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """Headline metrics of an audit from its `report.json` dict.

    >>> audit_metrics({"clean": {"accuracy": 0.9}, "summary": {"mean_corruption_accuracy": 0.5,
    ...     "per_condition": [{"name": "fog", "mean_accuracy": 0.5}]},
    ...     "attacks": [{"name": "fgsm", "eps": 0.0078, "accuracy": 0.2}], "gate": None})
    ... # doctest: +NORMALIZE_WHITESPACE
    {'clean_accuracy': 0.9, 'mean_corruption_accuracy': 0.5, 'per_condition': {'fog': 0.5},
     'attacks': [{'name': 'fgsm', 'eps': 0.0078, 'accuracy': 0.2}], 'gate': None}
    """
    summary = report.get("summary") or {}
    gate = report.get("gate")
    return {
        "clean_accuracy": (report.get("clean") or {}).get("accuracy"),
        "mean_corruption_accuracy": summary.get("mean_corruption_accuracy"),
        "per_condition": {p["name"]: p.get("mean_accuracy") for p in summary.get("per_condition", [])},
        "attacks": [
            {"name": a["name"], "eps": a["eps"], "accuracy": a.get("accuracy")}
            for a in report.get("attacks") or []
        ],
        "gate": None if not gate else ("passed" if gate.get("passed") else "failed"),
    }


@dataclasses.dataclass(frozen=True)
class Regression:
    """One metric that dropped by more than allowed against the previous successful run."""

    metric: str
    before: float
    after: float
    allowed: float

    def __str__(self) -> str:
        return (
            f"{self.metric} dropped from {self.before:.4f} to {self.after:.4f} "
            f"(-{self.before - self.after:.4f}; allowed drop {self.allowed:.4f})"
        )


def detect_regressions(
    previous: dict[str, Any], current: dict[str, Any], max_drop: float = DEFAULT_MAX_DROP
) -> list[Regression]:
    """Drops of clean accuracy and of each condition's mean accuracy beyond `max_drop`.

    Conditions in only one of the two runs are not compared.

    >>> prev = {"clean_accuracy": 0.90, "per_condition": {"fog": 0.60, "blur": 0.50}}
    >>> cur = {"clean_accuracy": 0.89, "per_condition": {"fog": 0.40, "blur": 0.50}}
    >>> [str(r) for r in detect_regressions(prev, cur)]
    ['fog mean accuracy dropped from 0.6000 to 0.4000 (-0.2000; allowed drop 0.0200)']
    """
    pairs = [("clean accuracy", previous.get("clean_accuracy"), current.get("clean_accuracy"))]
    before_cond = previous.get("per_condition") or {}
    after_cond = current.get("per_condition") or {}
    for name in sorted(set(before_cond) & set(after_cond)):
        pairs.append((f"{name} mean accuracy", before_cond[name], after_cond[name]))
    return [
        Regression(metric, before, after, max_drop)
        for metric, before, after in pairs
        if before is not None and after is not None and before - after > max_drop + 1e-12
    ]


def max_drop_for(spec: Any) -> float:
    """The spec's gate `max_drop_vs_baseline`, else `DEFAULT_MAX_DROP`."""
    gate_path = getattr(spec, "gate", None)
    if gate_path:
        from ironsight.robustness.gate import load_gate

        value = load_gate(gate_path).max_drop_vs_baseline
        if value is not None:
            return float(value)
    return DEFAULT_MAX_DROP


# --------------------------------------------------------------------------- recording


def _spec_hash(spec: Any) -> str:
    from ironsight.cluster.sink import spec_hash

    return spec_hash(spec.model_dump(mode="json"))


def _model_name(spec: Any) -> str | None:
    return spec.model or (Path(spec.model_card).stem if spec.model_card else None)


def _scheduled_for() -> dt.datetime | None:
    value = os.environ.get(SCHEDULED_FOR_ENV)
    if not value:
        return None
    try:
        return _aware(dt.datetime.fromisoformat(value))
    except ValueError:
        log.warning("ignoring %s=%r: not an ISO 8601 time", SCHEDULED_FOR_ENV, value)
        return None


def _read_json(uri: str) -> dict[str, Any] | None:
    """A small JSON file from a local path or s3:// URI, or None when it cannot be read."""
    import json

    from ironsight.cluster import storage

    try:
        return json.loads(storage.read_bytes(storage.resolve(uri)))
    except Exception:  # best effort: the run's own outcome matters more than its metrics
        return None


class RunRecorder:
    """Context manager recording one job run: `running` on entry, its outcome on exit.

    Leaving the block with an exception records `failed` (or `gate_failed` for
    `GateFailed`, with the metrics of the report the audit wrote) and lets it propagate. If the
    history cannot be opened the job still runs, with a warning.

    Args:
        spec: A validated `ClassifyJob` or `AuditJob`.
        store: Where to record; default `HistoryStore()`.
    """

    def __init__(self, spec: Any, store: HistoryStore | None = None) -> None:
        self.spec = spec
        self.store = store
        self.run_id: int | None = None
        self.regressions: list[Regression] = []
        self.compared_with: Run | None = None
        self._finished = False

    def __enter__(self) -> RunRecorder:
        try:
            self.store = self.store or HistoryStore()
            self.store.mark_abandoned()
            self.run_id = self.store.start(
                job=self.spec.name,
                kind=self.spec.kind,
                spec_hash=_spec_hash(self.spec),
                model=_model_name(self.spec),
                output=self.spec.output,
                scheduled_for=_scheduled_for(),
            )
        except (IronsightError, sa.exc.SQLAlchemyError) as exc:
            console(f"ironsight: warning: run history disabled for this run: {exc}")
            self.store = None
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._finished or self.store is None or self.run_id is None or exc is None:
            return
        try:
            if isinstance(exc, GateFailed) and self.spec.kind == "audit":
                report = _read_json(self.spec.output.rstrip("/") + "/report.json")
                metrics = audit_metrics(report) if report else {}
                self._finish("gate_failed", metrics, error=str(exc).splitlines()[0],
                             weights_hash=((report or {}).get("model") or {}).get("weights_sha256"))
                return
            message = str(exc).splitlines()[0] if str(exc) else ""
            if not isinstance(exc, IronsightError):
                message = "".join(traceback.format_exception_only(exc_type, exc)).strip()
            self._finish("failed", None, error=message or exc_type.__name__)
        except sa.exc.SQLAlchemyError as db_exc:
            console(f"ironsight: warning: could not record the run's end: {db_exc}")

    def _finish(self, status: str, metrics: dict | None, **kw: Any) -> None:
        self._finished = True
        self.store.finish(self.run_id, status, metrics, **kw)

    def classify_succeeded(self, summary: Any) -> None:
        """Record a finished labeling run."""
        if self.store is None:
            return
        manifest = _read_json(self.spec.output.rstrip("/") + "/_manifest.json") or {}
        try:
            self._finish(
                "succeeded",
                classify_metrics(summary),
                weights_hash=(manifest.get("model") or {}).get("weights_sha256"),
            )
        except sa.exc.SQLAlchemyError as exc:
            console(f"ironsight: warning: could not record the run's end: {exc}")

    def audit_finished(self, report: dict[str, Any]) -> list[Regression]:
        """Record a finished audit; returns its regressions against the last successful run.

        The run is `regressed` when there are any, else `succeeded`.
        """
        if self.store is None:
            return []
        try:
            return self._audit_finished(report)
        except sa.exc.SQLAlchemyError as exc:
            console(f"ironsight: warning: could not record the run's end: {exc}")
            return []

    def _audit_finished(self, report: dict[str, Any]) -> list[Regression]:
        metrics = audit_metrics(report)
        previous = self.store.previous_success(self.spec.name, self.run_id)
        self.compared_with = previous
        if previous is not None:
            self.regressions = detect_regressions(
                previous.metrics, metrics, max_drop_for(self.spec)
            )
            metrics["compared_with_run"] = previous.id
            metrics["regressions"] = [dataclasses.asdict(r) for r in self.regressions]
        self._finish(
            "regressed" if self.regressions else "succeeded",
            metrics,
            weights_hash=(report.get("model") or {}).get("weights_sha256"),
        )
        return self.regressions


    def regression_text(self) -> str:
        """What dropped, in plain words, one metric a line."""
        prev = self.compared_with
        head = (
            f"ironsight: regression: job {self.spec.name!r} run {self.run_id} is worse than its "
            f"last succeeded run {prev.id if prev else '?'}"
            + (f" ({_fmt_time(prev.started_at)})" if prev else "")
            + f"; exit {EXIT_REGRESSED}:"
        )
        return "\n".join([head, *(f"  - {r}" for r in self.regressions)])


# --------------------------------------------------------------------------- CLI


def _fmt_time(value: dt.datetime | None) -> str:
    return "-" if value is None else value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _status_cell(run: Run) -> str:
    """The status, with the host of a run still `running` on another machine."""
    if run.status == "running" and run.host and run.host != socket.gethostname():
        return f"running on {run.host}"
    return run.status


def format_table(runs: list[Run]) -> str:
    """The `ironsight history` table."""
    header = ("id", "job", "kind", "started (UTC)", "duration", "status", "model", "headline")
    rows = [
        (
            str(r.id), r.job, r.kind, _fmt_time(r.started_at), _fmt_duration(r.duration_s),
            _status_cell(r), r.model or "-", r.headline(),
        )
        for r in runs
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _history_command(args: Any) -> int:
    import json

    if args.last is not None and args.last < 1:
        raise InvalidInput(f"--last {args.last}: expected a positive number of runs")
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


def add_commands(subparsers: Any, formatter: Any) -> None:
    """Add `ironsight history`."""
    p = subparsers.add_parser(
        "history",
        help="past runs: job, kind, start, duration, status, model, headline metric",
        description="List recorded runs, oldest first. Every classify, audit and run is "
        "recorded in the run history: an SQLite file $IRONSIGHT_HOME/history.db (default "
        "~/.local/share/ironsight/history.db) or the SQLAlchemy URL in IRONSIGHT_HISTORY_URL.",
        epilog="examples:\n  ironsight history --last 10\n  ironsight history --job nightly "
        "--json\n  ironsight history --history-db team-history.db\n\nstatuses:\n"
        "  running      recording now; 'running on HOST' when recorded on another host\n"
        "  succeeded    finished\n"
        "  failed       the job failed (exit 1)\n"
        "  gate_failed  the audit's release gate failed (exit 3)\n"
        "  regressed    an audit dropped more than the gate's max_drop_vs_baseline (default\n"
        "               0.02) against the last succeeded run (exit 4)\n"
        "  abandoned    its process on this host exited without recording an end (SIGKILL,\n"
        "               out of memory, reboot); checked whenever runs are listed or started",
        formatter_class=formatter,
    )
    p.add_argument("--job", metavar="NAME", help="only runs of this job name")
    p.add_argument("--last", type=int, metavar="N", help="only the last N runs")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.add_argument(
        "--history-db", metavar="URL_OR_PATH", default=None,
        help="history database: file path or SQLAlchemy URL (default: $IRONSIGHT_HISTORY_URL "
        "or $IRONSIGHT_HOME/history.db)",
    )
    p.set_defaults(handler=_history_command)
