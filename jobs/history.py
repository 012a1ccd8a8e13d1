"""Run history: every `ironsight classify/audit/run` records what ran and how it ended.

The store is a SQL database reached through SQLAlchemy 2 Core: by default an embedded SQLite
file `$IRONSIGHT_HOME/history.db` (`IRONSIGHT_HOME` defaults to `~/.local/share/ironsight`),
or any SQLAlchemy URL in `IRONSIGHT_HISTORY_URL` / `--history-db`. The schema is created on
first use and its version kept in `ironsight_meta`.

| database   | URL                                                  | tested against             |
|------------|------------------------------------------------------|----------------------------|
| SQLite     | `sqlite:////abs/path/history.db`, or a plain path    | one file per machine       |
| PostgreSQL | `postgresql+psycopg://USER:PASSWORD@HOST:5432/DB` (`postgres://` and `postgresql://` mean the same; driver: `pip install 'ironsight[postgres]'`) | a real server (Debian's), shared by every runner |

Many processes and hosts may record into one PostgreSQL database at once: ids come from the
server's sequence, each run's end is one `UPDATE` of its own row, and creating or upgrading
the schema is serialized by an advisory lock. A database that cannot be opened (server down,
wrong password, no driver) is refused with its URL, password masked (`user:***@host`), the
driver's reason and what to check: `ironsight history` exits 2, a job runs on without history
and says so. Passwords never reach a message or log; connections time out after
`CONNECT_TIMEOUT_S` (10 s; `?connect_timeout=N` in the URL wins).

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
|                        | audits add their gate's floors, `gate_thresholds` (for `history --html`) |
| `error`                | first line of the error of a failed run, credentials redacted    |
| `host`, `pid`          | the host and process id that recorded the run (schema 2)         |
| `process_start`        | that process's identity: pid namespace, boot id, start time in clock ticks (schema 2) |
| `identity`, `identity_parts` | what an audit measured (`run_identity`): sha256 and its readable parts (schema 3) |

Table `ironsight_outcomes` (schema 3): `run_id`, `data`, the per-image correctness of an
audit's clean and condition cells (`Outcomes`), kept only for the latest succeeded judged run
of each identity (older ones are deleted as newer ones succeed). Opening a schema 2 database
creates the table and adds the columns; older rows have no identity and are never a reference.

Abandoned runs: a process SIGKILLed (or OOM-killed, or its machine rebooted) never records its
end. When `ironsight history` lists runs, and when a run starts, every `running` run recorded
on this host whose process is gone, or whose pid now belongs to another process (the start
time differs), is marked `abandoned` with the error "process N on HOST exited without
recording an end". A run recorded on another host (or in another pid namespace) cannot be
checked from here: it stays `running` and the table shows its host. Rows written by schema 1
(no pid) are left as they are. Opening a schema 1 database adds the columns (`ALTER TABLE ...
ADD COLUMN`, safe with other processes doing the same) and sets the version to 2.

Regressions: when a named audit finishes, it is compared with the previous `succeeded` run
of the same identity (`run_identity`: job name, eval set, suite with severities and attacks,
model card or architecture, image count; not the weights, which is what a nightly tracks). A
`regressed` or `gate_failed` run is never the reference, so a regression keeps being reported
until the job is back to its last good level. An audit without a job name (`ironsight audit`
without `--name`, a spec without `name`) is recorded but never judged.

| a regression is a metric (clean accuracy, a condition's accuracy over its severities) whose... |
|-------------------------------------------------------------------------------------------------|
| drop is larger than the gate's `max_drop_vs_baseline` (default `DEFAULT_MAX_DROP`, 0.02 absolute) |
| AND is significant: exact McNemar on the images and cells both runs share (`Outcomes`), or, when they share none, 95% Wilson intervals that do not overlap (`ironsight.robustness.metrics.compare_runs`) |

(the one rule, `ironsight.robustness.stats.is_regression`). A 4-point drop on 100 images is
within noise; 10 points on 1,000 is not. The run is then `regressed` and the CLI exits 4 (a
failed release gate exits 3 and takes precedence). The audit's report.json says what it was
compared with under `history` (`RunRecorder.judge_audit`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import logging
import os
import re
import socket
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
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

SCHEMA_VERSION = 3
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
    # schema 3: what the run measured (see `run_identity`); runs compare only within one
    sa.Column("identity", sa.String(64)),
    sa.Column("identity_parts", sa.JSON),
)
# Schema 3: per-image correctness of an audit's clean and condition cells (see `Outcomes`),
# kept for the latest succeeded run of each identity so the next run can pair its images.
_outcomes = sa.Table(
    "ironsight_outcomes",
    _meta,
    sa.Column("run_id", sa.Integer, primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
)
# Columns each schema version added, in order: opening an older database adds them.
_ADDED_COLUMNS = {2: ("pid", "process_start"), 3: ("identity", "identity_parts")}


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
        scheme, _, rest = value.partition("://")
        if scheme in ("postgres", "postgresql"):  # no driver named: psycopg 3, not psycopg2
            return "postgresql+psycopg://" + rest
        return value
    return "sqlite:///" + str(Path(value).expanduser().resolve())


def safe_url(url: str) -> str:
    """`url` with its password masked, for messages and logs.

    >>> safe_url("postgresql+psycopg://ci:s3cret@db.internal:5432/ironsight")
    'postgresql+psycopg://ci:***@db.internal:5432/ironsight'
    >>> safe_url("postgresql+psycopg://db.internal/ironsight?user=ci&password=s3cret")
    'postgresql+psycopg://db.internal/ironsight?password=***&user=ci'
    """
    try:
        text = sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        text = url
    return _scrub(text, url)


def _scrub(text: str, url: str | None) -> str:
    """`text` without the password of `url` (as written or URL-encoded) or other credentials;
    unlike `_redact`, a URL keeps its user name (`user:***@host`: whose password to check)
    and a query keeps its other parameters.

    >>> _scrub("auth failed for postgresql://ci:pw@db/x?password=pw&sslmode=require", None)
    'auth failed for postgresql://ci:***@db/x?password=***&sslmode=require'
    """
    try:
        password = sa.engine.make_url(url).password if url else None
    except sa.exc.ArgumentError:
        password = None
    if password:
        from urllib.parse import quote

        for form in {str(password), quote(str(password), safe="")}:
            text = text.replace(form, "***")
    text = re.sub(r"(://[^/\s:@]+):[^/\s@]+@", r"\1:***@", text)
    text = re.sub(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", "***", text)
    return re.sub(r"(?i)((?:secret|token|password|key)[\w-]*\s*[=:]\s*)[^\s&]+", r"\1***", text)


def _error_line(exc: BaseException, url: str | None = None) -> str:
    """The first line of a database error, without SQLAlchemy's wrapper or a credential.

    >>> _error_line(RuntimeError("connection failed: refused\\n\\tIs the server running?"))
    'connection failed: refused'
    """
    orig = getattr(exc, "orig", None)  # the driver's own error inside SQLAlchemy's
    text = str(orig if orig is not None else exc).strip()
    return _scrub(text.splitlines()[0] if text else type(exc).__name__, url)


# Seconds to wait for a database server to accept a connection (libpq `connect_timeout`; a URL
# query `?connect_timeout=N` wins), and for another process's SQLite write to end: an
# unreachable host fails the command instead of hanging it; two runs finishing at once wait.
CONNECT_TIMEOUT_S = 10
SQLITE_BUSY_TIMEOUT_S = 30
# PostgreSQL advisory lock held while the schema is created or upgraded (any 64-bit number
# that no other application on the server uses for its own lock: "ironsigh" in ASCII).
_SCHEMA_LOCK_KEY = 0x69726F6E73696768


def _create_engine(url: str) -> sa.engine.Engine:
    """The engine for a history URL.

    | backend    | options                                                                  |
    |------------|--------------------------------------------------------------------------|
    | SQLite     | waits up to `SQLITE_BUSY_TIMEOUT_S` for another process's write          |
    | PostgreSQL | `CONNECT_TIMEOUT_S`; pooled connections are checked before use (a job    |
    |            | records its end hours after its start, maybe after a server restart);   |
    |            | session time zone UTC                                                    |
    """
    parsed = sa.engine.make_url(url)
    options: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        options["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    elif parsed.get_backend_name() == "postgresql":
        options["pool_pre_ping"] = True
        # times come back in UTC whatever the server's TimeZone (as SQLite's do)
        connect: dict[str, Any] = {}
        if "options" not in parsed.query:  # the URL's own libpq options win
            connect["options"] = "-c timezone=UTC"
        if "connect_timeout" not in parsed.query:
            connect["connect_timeout"] = CONNECT_TIMEOUT_S
        options["connect_args"] = connect
    return sa.create_engine(parsed, **options)


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
    identity: str | None = None  # schema 3: `run_identity` hash; None for older rows
    identity_parts: dict[str, Any] | None = None

    @property
    def compared_with(self) -> int | None:
        """The run this audit was judged against, or None (first of its identity, not judged)."""
        return (self.metrics or {}).get("compared_with_run")

    @property
    def judged(self) -> bool:
        """Whether this run was checked for regressions (named audits; not ad-hoc ones)."""
        return bool((self.metrics or {}).get("judged"))

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
        out["compared_with"] = self.compared_with
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
            self.engine = _create_engine(self.url)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
            fix = (
                "use postgresql+psycopg://USER:PASSWORD@HOST:5432/DATABASE and install its "
                "driver, psycopg 3: pip install 'ironsight[postgres]'"
                if self.url.startswith("postgresql") else
                "pass a SQLAlchemy URL like sqlite:////path/history.db or "
                "postgresql+psycopg://USER:PASSWORD@HOST:5432/DATABASE and install its driver"
            )
            raise InvalidInput(
                f"history database URL {self._safe_url()!r} cannot be used "
                f"({_error_line(exc, self.url)}); {fix}"
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
        return safe_url(self.url)

    def _open_error(self, exc: BaseException) -> InvalidInput:
        """Why the database cannot be opened: its URL (password masked), the driver's reason
        and what to check."""
        if self.engine.dialect.name == "sqlite":
            fix = "check the path or URL (IRONSIGHT_HISTORY_URL / --history-db)"
        else:
            fix = ("check the host, port, database, user and password in IRONSIGHT_HISTORY_URL / "
                   "--history-db and that the server accepts connections from this host")
        return InvalidInput(
            f"cannot open the run history at {self._safe_url()}: "
            f"{_error_line(exc, self.url)}; {fix}"
        )

    @contextlib.contextmanager
    def _schema_lock(self) -> Iterator[None]:
        """Hold the PostgreSQL schema lock while the schema is created or upgraded.

        Two processes creating the same table at once in PostgreSQL: one fails on a unique
        index of the catalog, not with "already exists". So processes opening a new (or
        older) database queue on an advisory lock and the later ones find the schema done.
        SQLite locks the whole file for DDL; there the retry in `_init_schema` suffices.
        """
        if self.engine.dialect.name != "postgresql":
            yield
            return
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
            conn.commit()
            try:
                yield
            finally:
                try:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": _SCHEMA_LOCK_KEY})
                    conn.commit()
                except sa.exc.SQLAlchemyError:
                    conn.invalidate()  # closing the session releases the lock

    def _init_schema(self) -> None:
        try:
            with self._schema_lock():
                self._create_or_upgrade_schema()
        except sa.exc.SQLAlchemyError as exc:  # the lock's own connection
            raise self._open_error(exc) from exc

    def _create_or_upgrade_schema(self) -> None:
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
            raise self._open_error(exc) from exc
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
        identity: str | None = None,
        identity_parts: dict[str, Any] | None = None,
    ) -> None:
        """Record how a run ended; `metrics`, `output`, `weights_hash` and the identity
        replace what was stored."""
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
        if identity is not None:
            values["identity"] = identity
            values["identity_parts"] = identity_parts
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

    def previous_success(self, job: str, before_run_id: int, identity: str | None = None) -> Run | None:
        """The latest `succeeded` run of `job` older than `before_run_id`, or None; with
        `identity`, only a run of that identity (rows from before schema 3 have none)."""
        query = (
            sa.select(_runs)
            .where(_runs.c.job == job, _runs.c.status == "succeeded", _runs.c.id < before_run_id)
            .order_by(_runs.c.id.desc())
            .limit(1)
        )
        if identity is not None:
            query = query.where(_runs.c.identity == identity)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else self._run(row)

    def save_outcomes(self, run_id: int, outcomes: Outcomes, identity: str | None = None) -> None:
        """Keep `run_id`'s per-image outcomes; with `identity`, drop those of its older runs
        of that identity (only the latest succeeded run is ever a reference)."""
        data = outcomes.to_bytes()
        with self.engine.begin() as conn:
            if identity is not None:
                older = sa.select(_runs.c.id).where(_runs.c.identity == identity, _runs.c.id < run_id)
                conn.execute(sa.delete(_outcomes).where(_outcomes.c.run_id.in_(older)))
            conn.execute(sa.delete(_outcomes).where(_outcomes.c.run_id == run_id))
            conn.execute(sa.insert(_outcomes).values(run_id=run_id, data=data))

    def outcomes(self, run_id: int) -> Outcomes | None:
        """The per-image outcomes kept for `run_id`, or None (not kept, pruned, unreadable)."""
        with self.engine.connect() as conn:
            data = conn.execute(sa.select(_outcomes.c.data).where(_outcomes.c.run_id == run_id)).scalar()
        if data is None:
            return None
        try:
            return Outcomes.from_bytes(data)
        except (ValueError, OSError, KeyError) as exc:
            log.warning("run %d: stored per-image outcomes are unreadable (%s); comparing totals only",
                        run_id, exc)
            return None

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
            identity=m["identity"],
            identity_parts=m["identity_parts"],
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
    """One metric that dropped by more than allowed AND significantly against the reference run.

    `before`/`after` are the accuracies the test compared (on the shared images when paired);
    `test` is `mcnemar_exact` (paired, with `p_value`) or `wilson_overlap` (unpaired).
    """

    metric: str
    before: float
    after: float
    allowed: float
    test: str = ""
    p_value: float | None = None
    n: int | None = None

    def __str__(self) -> str:
        if self.test == "mcnemar_exact":
            how = f" on {self.n} paired image results, exact McNemar p={self.p_value:.2g}"
        elif self.test == "wilson_overlap":
            how = f"; 95% intervals do not overlap (at least {self.n} image results each)"
        else:
            how = ""
        return (
            f"{self.metric} dropped from {self.before:.4f} to {self.after:.4f} "
            f"(-{self.before - self.after:.4f}{how}; allowed drop {self.allowed:.4f})"
        )


def _id_keys(ids: list) -> np.ndarray:
    """64-bit keys of image ids (the first 8 bytes of blake2b): pairs images without their ids."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little") for i in ids],
        dtype=np.uint64,
    )


def _group(cell: str) -> str:
    """The metric a cell counts towards: `clean`, or the condition of `CONDITION@SEVERITY`."""
    return cell.split("@", 1)[0]


@dataclasses.dataclass(frozen=True)
class Outcomes:
    """Per-image correctness of one audit, cell by cell: what pairs two runs image by image.

    | field    | meaning                                                                 |
    |----------|-------------------------------------------------------------------------|
    | `keys`   | uint64 per image: first 8 bytes of blake2b(id), sorted                  |
    | `cells`  | `clean`, or `CONDITION@SEVERITY` (attacks are not kept)                 |
    | `values` | int8, cells x images: 1 right, 0 wrong, -1 not in that cell (error row) |

    Stored compressed (`numpy.savez_compressed`, read back without pickle): about a byte per
    image and cell before compression. A repeated id keeps its last row.

    >>> import pyarrow as pa
    >>> t = pa.table({"id": ["a", "b", "a", "b"], "kind": ["clean", "clean", "corruption", "corruption"],
    ...               "condition": ["clean", "clean", "fog", "fog"], "severity": [0, 0, 3, 3],
    ...               "correct": [True, False, False, False]})
    >>> o = Outcomes.from_predictions(t)
    >>> o.cells, o.counts()
    (('clean', 'fog@3'), {'clean': [1, 2], 'fog': [0, 2]})
    >>> Outcomes.from_bytes(o.to_bytes()).counts() == o.counts()
    True
    """

    keys: np.ndarray
    cells: tuple[str, ...]
    values: np.ndarray

    @classmethod
    def from_predictions(cls, table: Any) -> Outcomes:
        """From the audit's predictions table (`ironsight.robustness.schema.PREDICTIONS_SCHEMA`)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        t = table.select(["id", "kind", "condition", "severity", "correct"])
        t = t.filter(pc.is_in(t["kind"], value_set=pa.array(["clean", "corruption"])))
        ids = pc.unique(t["id"])  # an Array
        keys = _id_keys(ids.to_pylist())
        order = np.argsort(keys, kind="stable")
        position = np.empty(len(order), np.int64)
        position[order] = np.arange(len(order))
        row_pos = position[pc.index_in(t["id"], value_set=ids).to_numpy(zero_copy_only=False)]
        kinds = t["kind"].to_numpy(zero_copy_only=False)
        conditions = t["condition"].to_numpy(zero_copy_only=False)
        severities = t["severity"].to_numpy(zero_copy_only=False)
        names = np.where(kinds == "clean", "clean",
                         np.char.add(np.char.add(conditions.astype(str), "@"), severities.astype(str)))
        cells, row_cell = np.unique(names, return_inverse=True)
        values = np.full((len(cells), len(keys)), -1, np.int8)
        values[row_cell, row_pos] = t["correct"].to_numpy(zero_copy_only=False).astype(np.int8)
        return cls(keys[order], tuple(str(c) for c in cells), values)

    def counts(self) -> dict[str, list[int]]:
        """`{metric: [right, total]}` for `clean` and each condition (all its severities)."""
        out: dict[str, list[int]] = {}
        for i, cell in enumerate(self.cells):
            k, n = out.setdefault(_group(cell), [0, 0])
            row = self.values[i]
            out[_group(cell)] = [k + int((row == 1).sum()), n + int((row >= 0).sum())]
        return out

    def to_bytes(self) -> bytes:
        import io

        buf = io.BytesIO()
        np.savez_compressed(buf, keys=self.keys, cells=np.array(self.cells, dtype=str), values=self.values)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Outcomes:
        import io

        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            keys, cells, values = z["keys"], z["cells"], z["values"]
        if values.shape != (len(cells), len(keys)) or keys.dtype != np.uint64 or values.dtype != np.int8:
            raise ValueError("shapes or types do not match")
        return cls(keys, tuple(str(c) for c in cells), values)

    def to_table(self) -> Any:
        """As a predictions table with the columns `ironsight.robustness.metrics.compare_runs`
        reads (ids are the keys in hex; label 1, prediction 1 when right, else 0)."""
        import pyarrow as pa

        hex_ids = np.array([format(int(k), "016x") for k in self.keys], dtype=object)
        parts = []
        for i, cell in enumerate(self.cells):
            present = np.flatnonzero(self.values[i] >= 0)
            right = self.values[i][present] == 1
            condition, _, severity = cell.partition("@")
            n = len(present)
            parts.append(pa.table({
                "id": pa.array(hex_ids[present].tolist(), pa.string()),
                "kind": pa.array(["clean" if cell == "clean" else "corruption"] * n, pa.string()),
                "condition": pa.array([condition] * n, pa.string()),
                "severity": pa.array(np.full(n, int(severity or 0), np.int32)),
                "eps": pa.array(np.zeros(n)),
                "label": pa.array(np.ones(n, np.int64)),
                "prediction": pa.array(right.astype(np.int64)),
                "correct": pa.array(right),
            }))
        return pa.concat_tables(parts) if parts else None


def compare_metrics(
    previous: dict[str, Any],
    current: dict[str, Any],
    max_drop: float = DEFAULT_MAX_DROP,
    previous_outcomes: Outcomes | None = None,
    current_outcomes: Outcomes | None = None,
) -> list[dict[str, Any]]:
    """Clean accuracy and each condition's accuracy, compared with the one rule of
    `ironsight.robustness.stats.is_regression` (a drop > `max_drop` AND significant).

    With both runs' `Outcomes` this is `ironsight.robustness.metrics.compare_runs` (the one
    per-cell comparison of `--baseline` and the gate): exact McNemar on the images both runs
    have, Wilson-interval overlap when they share none; a condition is its cell pooled over
    the severities both runs have. Without them, unpaired from the `counts` each run's metrics
    carry; a metric with neither is not compared.
    Conditions in only one of the two runs are not compared. Returns one dict a metric:
    `metric`, `regression`, `allowed` and `ironsight.robustness.stats.Change.to_json()`.
    """
    from ironsight.robustness import stats

    names = [("clean", "clean accuracy")]
    before_cond = previous.get("per_condition") or {}
    after_cond = current.get("per_condition") or {}
    names += [(c, f"{c} mean accuracy") for c in sorted(set(before_cond) & set(after_cond))]
    before_counts = previous.get("counts") or {}
    after_counts = current.get("counts") or {}
    out = []
    tables = (None if previous_outcomes is None or current_outcomes is None
              else (previous_outcomes.to_table(), current_outcomes.to_table()))
    if tables is not None and tables[0] is not None and tables[1] is not None:
        from ironsight.robustness.metrics import compare_runs

        wanted = dict(names)
        for cell in compare_runs(*tables, max_drop):
            if cell.kind in ("clean", "condition_mean") and cell.name in wanted:
                out.append({"metric": wanted[cell.name], "regression": cell.regression,
                            "allowed": max_drop, **cell.change.to_json()})
        return out
    for key, metric in names:
        if key in before_counts and key in after_counts and before_counts[key][1] and after_counts[key][1]:
            change = stats.unpaired_change(*before_counts[key], *after_counts[key])
        else:
            continue
        out.append({"metric": metric, "regression": stats.is_regression(change, max_drop),
                    "allowed": max_drop, **change.to_json()})
    return out


def detect_regressions(
    previous: dict[str, Any],
    current: dict[str, Any],
    max_drop: float = DEFAULT_MAX_DROP,
    previous_outcomes: Outcomes | None = None,
    current_outcomes: Outcomes | None = None,
) -> list[Regression]:
    """The regressions among `compare_metrics`: drops beyond `max_drop` that are significant.

    >>> prev = {"clean_accuracy": 0.90, "per_condition": {"fog": 0.60, "blur": 0.50},
    ...         "counts": {"clean": [900, 1000], "fog": [600, 1000], "blur": [500, 1000]}}
    >>> cur = {"clean_accuracy": 0.89, "per_condition": {"fog": 0.40, "blur": 0.49},
    ...        "counts": {"clean": [890, 1000], "fog": [400, 1000], "blur": [490, 1000]}}
    >>> [r.metric for r in detect_regressions(prev, cur)]
    ['fog mean accuracy']
    """
    return [
        Regression(c["metric"], c["reference"], c["new"], max_drop, c["test"], c["p_value"], c["n"])
        for c in compare_metrics(previous, current, max_drop, previous_outcomes, current_outcomes)
        if c["regression"]
    ]


def run_identity(spec: Any, images: int | None = None) -> tuple[str, dict[str, Any]]:
    """What a run measured, as `(sha256 hex, readable parts)`; runs compare only within one.

    | part         | from                                                                 |
    |--------------|----------------------------------------------------------------------|
    | `job`        | the spec's `name`; `ad_hoc: true` when it was not given (never judged) |
    | `input`, `label_column` | the eval set (local paths made absolute, symlinks resolved) |
    | `suite`, `severities`, `attacks` | the suite as run (built-in name or file), attacks with eps and steps |
    | `model`      | `card:PATH` for a model card, else `arch:NAME`; NOT the weights, which a nightly tracks |
    | `images`     | rows audited (images plus error rows)                                |

    The seed is not part of it: a different seed is a fair repeat, judged by the tests.
    """
    import hashlib as _hashlib
    import json

    from ironsight.cluster import paths

    def where(uri: str) -> str:
        try:
            return paths.normalize(uri)
        except ValueError:
            return uri

    parts: dict[str, Any] = {"job": spec.name, "kind": spec.kind, "input": where(spec.input)}
    if "name" not in spec.model_fields_set:
        parts["ad_hoc"] = True
    parts["model"] = f"card:{where(spec.model_card)}" if spec.model_card else f"arch:{spec.model}"
    if spec.kind == "audit":
        from ironsight.jobs.audit import resolve_suite
        from ironsight.robustness.suites import list_suites

        suite = resolve_suite(spec.suite, spec.severities)
        parts["label_column"] = spec.label_column
        parts["suite"] = spec.suite if spec.suite in list_suites() else where(spec.suite)
        parts["severities"] = list(suite.severities)
        parts["attacks"] = [[a.name, list(a.eps), a.steps] for a in suite.attacks]
        parts["images"] = images
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return _hashlib.sha256(text.encode()).hexdigest(), parts


def gate_thresholds(spec: Any) -> dict[str, Any] | None:
    """The accuracy floors of the spec's gate, kept with each audit run for `history --html`:
    `{"clean": 0.8 or None, "conditions": {"default": 0.3, "fog": 0.2}}`; None without a gate
    or when the gate cannot be read now (best effort: the run's outcome matters more).
    """
    gate_path = getattr(spec, "gate", None)
    if not gate_path:
        return None
    from ironsight.robustness.gate import load_gate

    try:
        gate = load_gate(gate_path)
    except (IronsightError, OSError):
        return None
    return {"clean": gate.clean_accuracy_min, "conditions": dict(gate.condition_accuracy_min or {})}


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
        self.identity: str | None = None
        self.identity_parts: dict[str, Any] | None = None
        self.outcomes: Outcomes | None = None
        self._metrics: dict[str, Any] | None = None  # an audit's, once judged
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
            console("ironsight: warning: run history disabled for this run: "
                    + _error_line(exc, getattr(self.store, "url", None)))
            self.store = None
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._finished or self.store is None or self.run_id is None or exc is None:
            return
        try:
            if isinstance(exc, GateFailed) and self.spec.kind == "audit":
                report = _read_json(self.spec.output.rstrip("/") + "/report.json")
                metrics = self._metrics if self._metrics is not None else (audit_metrics(report) if report else {})
                self._finish("gate_failed", metrics, error=str(exc).splitlines()[0],
                             weights_hash=((report or {}).get("model") or {}).get("weights_sha256"),
                             identity=self.identity, identity_parts=self.identity_parts)
                return
            message = str(exc).splitlines()[0] if str(exc) else ""
            if not isinstance(exc, IronsightError):
                message = "".join(traceback.format_exception_only(exc_type, exc)).strip()
            self._finish("failed", None, error=message or exc_type.__name__)
        except sa.exc.SQLAlchemyError as db_exc:
            console("ironsight: warning: could not record the run's end: "
                    + _error_line(db_exc, self.store.url))

    def _finish(self, status: str, metrics: dict | None, **kw: Any) -> None:
        self._finished = True
        if metrics is not None and self.spec.kind == "audit":  # for `history --html`'s gate lines
            metrics = {**metrics, "gate_thresholds": gate_thresholds(self.spec)}
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
            console("ironsight: warning: could not record the run's end: "
                    + _error_line(exc, self.store.url))

    def judge_audit(self, report: dict[str, Any], predictions: Any = None) -> dict[str, Any]:
        """Compare a finished audit with the reference run of its identity; nothing is recorded
        yet (`audit_finished` does). Returns the report's `history` section:

        | key            | meaning                                                        |
        |----------------|----------------------------------------------------------------|
        | `run_id`       | this run's id in the history (None when history is off)        |
        | `identity`, `identity_parts` | `run_identity`                                   |
        | `judged`       | False for an audit without a job name (`--name`): never compared |
        | `compared_with`| the reference run's id: the latest `succeeded` run of the same identity, or None |
        | `regressions`  | `Regression`s: drop > allowed AND significant                  |
        | `comparisons`  | every compared metric with its test, p-value or intervals, verdict |

        `run_audit` calls it (as `AuditConfig.history`) with the predictions table before it
        writes report.json; the reference's per-image outcomes pair the two runs' images.
        """
        data = report.get("data") or {}
        images = None if data.get("images") is None else int(data["images"]) + int(data.get("error_rows") or 0)
        self.identity, self.identity_parts = run_identity(self.spec, images)
        judged = not self.identity_parts.get("ad_hoc")
        metrics = audit_metrics(report)
        metrics["judged"] = judged
        self.outcomes = Outcomes.from_predictions(predictions) if predictions is not None else None
        if self.outcomes is not None:
            metrics["counts"] = self.outcomes.counts()
        comparisons: list[dict[str, Any]] = []
        self.regressions, self.compared_with = [], None
        if judged and self.store is not None and self.run_id is not None:
            try:
                previous = self.store.previous_success(self.spec.name, self.run_id, identity=self.identity)
                if previous is not None:
                    comparisons = compare_metrics(previous.metrics, metrics, max_drop_for(self.spec),
                                                  self.store.outcomes(previous.id), self.outcomes)
                    self.compared_with = previous
            except sa.exc.SQLAlchemyError as exc:
                console(f"ironsight: warning: could not read the run history to compare with: {exc}")
        self.regressions = [
            Regression(c["metric"], c["reference"], c["new"], c["allowed"], c["test"], c["p_value"], c["n"])
            for c in comparisons if c["regression"]
        ]
        if self.compared_with is not None:
            metrics["compared_with_run"] = self.compared_with.id
            metrics["regressions"] = [dataclasses.asdict(r) for r in self.regressions]
        self._metrics = metrics
        return {
            "run_id": self.run_id,
            "identity": self.identity,
            "identity_parts": self.identity_parts,
            "judged": judged,
            "compared_with": None if self.compared_with is None else self.compared_with.id,
            "regressions": [{**dataclasses.asdict(r), "message": str(r)} for r in self.regressions],
            "comparisons": comparisons,
        }

    def audit_finished(self, report: dict[str, Any], predictions: Any = None) -> list[Regression]:
        """Record a finished audit; returns its regressions against the reference run.

        The run is `regressed` when there are any, else `succeeded`. Judged here unless
        `judge_audit` already ran (with `predictions`, the audit's predictions table, the
        comparison is paired image by image; without, it uses the stored counts).
        """
        if self.store is None:
            return []
        try:
            return self._audit_finished(report, predictions)
        except sa.exc.SQLAlchemyError as exc:
            console("ironsight: warning: could not record the run's end: "
                    + _error_line(exc, self.store.url))
            return []

    def _audit_finished(self, report: dict[str, Any], predictions: Any) -> list[Regression]:
        if self._metrics is None:
            self.judge_audit(report, predictions)
        status = "regressed" if self.regressions else "succeeded"
        self._finish(status, self._metrics, weights_hash=(report.get("model") or {}).get("weights_sha256"),
                     identity=self.identity, identity_parts=self.identity_parts)
        if status == "succeeded" and self._metrics.get("judged") and self.outcomes is not None:
            self.store.save_outcomes(self.run_id, self.outcomes, identity=self.identity)
        return self.regressions


    def regression_text(self) -> str:
        """What dropped, in plain words, one metric a line."""
        prev = self.compared_with
        head = (
            f"ironsight: regression: job {self.spec.name!r} run {self.run_id} (identity "
            f"{(self.identity or '?')[:8]}) is worse than its last succeeded run {prev.id if prev else '?'}"
            + (f" ({_fmt_time(prev.started_at)})" if prev else "")
            + f"; exit {EXIT_REGRESSED}:"
        )
        return "\n".join([head, *(f"  - {r}" for r in self.regressions)])


# --------------------------------------------------------------------------- trends

TREND_LAST = 30  # runs a trend page (`history JOB --html`) covers unless --last says otherwise
_TREND_MARKERS = {  # status: (marker, colour) of a point
    "succeeded": ("o", "#0969da"),
    "regressed": ("v", "#cf222e"),
    "gate_failed": ("X", "#cf222e"),
}
_TREND_CSS = """
body{font-family:-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;margin:0;
  background:#f6f7f9;color:#1f2328}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{margin:0 0 4px;font-size:26px} h2{margin:28px 0 10px;font-size:20px}
.meta{color:#57606a;font-size:13px}
.warn{background:#fff8c5;border:1px solid #d4a72c;border-radius:8px;padding:10px 16px;font-size:14px}
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

    >>> run = Run(1, "n", "audit", None, None, None, None, _utcnow(), None, "succeeded", None,
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


def _png_data_uri(fig: Any) -> str:
    """A matplotlib `Figure` as an inline PNG (as `ironsight.robustness.html` embeds plots)."""
    import base64
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _trend_plot(series: TrendSeries) -> str:
    """The series as a PNG data URI: accuracy per run (marker by status), gate floor dashed."""
    from matplotlib.figure import Figure

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
    return _png_data_uri(fig)


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
        f"Generated {escape(_fmt_time(_utcnow()))}.</p>",
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
        status = escape(_status_cell(r))
        if r.status in ("failed", "gate_failed", "regressed", "abandoned"):
            status = f'<span class="bad">{status}</span>'
        parts.append(
            f"<tr><td>#{r.id}</td><td>{escape(_fmt_time(r.started_at))}</td>"
            f"<td>{escape(_fmt_duration(r.duration_s))}</td><td>{status}</td>"
            f"<td>{escape(r.model or '-')}</td><td>{escape((r.weights_hash or '-')[:12])}</td>"
            f"<td>{escape(r.host or '-')}</td><td>{escape((r.error or '')[:160])}</td></tr>"
        )
    parts.append("</table></div></main></body></html>")
    return "\n".join(parts) + "\n"


def write_trend_html(store: HistoryStore, job: str, out: str, last: int = TREND_LAST) -> int:
    """Write `job`'s trend page to `out` (a local path or s3:// URI, written atomically);
    returns the number of plots. A job without runs is refused (InvalidInput)."""
    from ironsight.cluster import storage

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
        raise InvalidInput(f"--html {out}: cannot write the trend page: {storage.os_reason(exc)}") from exc
    return page.count("<figure ")


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
            str(r.id), r.job, r.kind, (r.identity or "-")[:8], _fmt_time(r.started_at),
            _fmt_duration(r.duration_s), _status_cell(r), _compared_cell(r), r.model or "-",
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
