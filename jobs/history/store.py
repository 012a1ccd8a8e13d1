"""The run history's store: one row a run, in the SQL database of `ironsight.jobs.history.db`.

The schema is created on first use and its version kept in `ironsight_meta`. Many processes
and hosts may record into one PostgreSQL database at once: ids come from the server's
sequence, each run's end is one `UPDATE` of its own row, and creating or upgrading the schema
is serialized by an advisory lock.

| table `ironsight_runs` | meaning                                                          |
|------------------------|------------------------------------------------------------------|
| `id`                   | run id, increasing                                               |
| `job`, `kind`          | the spec's `name` and `kind` (classify / audit)                  |
| `spec_hash`            | hash of the validated spec (every field, `ironsight.jobs.submit.validated_spec_hash`) |
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
recording an end" (`ironsight.cluster.liveness`). A run recorded on another host (or in
another pid namespace) cannot be checked from here: it stays `running` and the table shows its
host. Rows written by schema 1 (no pid) are left as they are. Opening a schema 1 database adds
the columns (`ALTER TABLE ... ADD COLUMN`, safe with other processes doing the same) and sets
the version to 2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.liveness import process_exists, process_identity
from ironsight.jobs.history.db import (
    as_utc,
    create_engine,
    error_line,
    history_url,
    redact,
    safe_url,
    utcnow,
)
from ironsight.jobs.history.outcomes import Outcomes

log = logging.getLogger("ironsight")

SCHEMA_VERSION = 3
STATUSES = ("running", "succeeded", "failed", "gate_failed", "regressed", "abandoned")
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

# PostgreSQL advisory lock held while the schema is created or upgraded (any 64-bit number
# that no other application on the server uses for its own lock: "ironsigh" in ASCII).
_SCHEMA_LOCK_KEY = 0x69726F6E73696768


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
        """The one metric a table shows: accuracies for audits, rows and speed for labeling, the
        models and the recommended one for a comparison."""
        m = self.metrics or {}
        if self.kind == "audit" and m.get("clean_accuracy") is not None:
            text = f"clean {m['clean_accuracy']:.3f}"
            if m.get("mean_corruption_accuracy") is not None:
                text += f", corrupted {m['mean_corruption_accuracy']:.3f}"
            return text
        if self.kind == "compare" and m.get("models"):
            best = m.get("recommended")
            return f"{len(m['models'])} models" + (f", recommended {best}" if best else "")
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
            self.engine = create_engine(self.url)
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
                f"({error_line(exc, self.url)}); {fix}"
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
            f"{error_line(exc, self.url)}; {fix}"
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
                    started_at=started_at or utcnow(),
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
        values: dict[str, Any] = {"status": status, "ended_at": ended_at or utcnow()}
        if metrics is not None:
            values["metrics"] = metrics
        if output is not None:
            values["output"] = output
        if error is not None:
            values["error"] = redact(error)[:_ERROR_CHARS]
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
            scheduled_for=as_utc(m["scheduled_for"]),
            started_at=as_utc(m["started_at"]),
            ended_at=as_utc(m["ended_at"]),
            status=m["status"],
            output=m["output"],
            metrics=m["metrics"] or {},
            error=m["error"],
            host=m["host"],
            pid=m["pid"],
            identity=m["identity"],
            identity_parts=m["identity_parts"],
        )
