"""The run history's database: its tables, their schema version, and the connection that creates
or upgrades them (`HistoryDatabase`; the queries are `ironsight.jobs.history.store.HistoryStore`).

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
of each identity (older ones are deleted as newer ones succeed).

| opening a database of schema | what happens                                                |
|------------------------------|-------------------------------------------------------------|
| none yet                     | the tables are created, version `SCHEMA_VERSION` recorded   |
| 1                            | `pid`, `process_start` added (`ALTER TABLE ... ADD COLUMN`, safe with other processes doing the same), then schema 3's |
| 2                            | `ironsight_outcomes` created, `identity`, `identity_parts` added; older rows have no identity and are never a reference |
| newer than this Ironsight's  | refused (exit 2): upgrade Ironsight or use another `--history-db` |
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

from ironsight.cluster.errors import InvalidInput
from ironsight.jobs.history.db import create_engine, error_line, history_url, safe_url

__all__ = ["META", "METADATA", "OUTCOMES", "RUNS", "SCHEMA_VERSION", "HistoryDatabase"]

log = logging.getLogger("ironsight")

SCHEMA_VERSION = 3

METADATA = sa.MetaData()
META = sa.Table(
    "ironsight_meta",
    METADATA,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
)
RUNS = sa.Table(
    "ironsight_runs",
    METADATA,
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
OUTCOMES = sa.Table(
    "ironsight_outcomes",
    METADATA,
    sa.Column("run_id", sa.Integer, primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
)
# Columns each schema version added, in order: opening an older database adds them.
_ADDED_COLUMNS = {2: ("pid", "process_start"), 3: ("identity", "identity_parts")}

# PostgreSQL advisory lock held while the schema is created or upgraded (any 64-bit number
# that no other application on the server uses for its own lock: "ironsigh" in ASCII).
_SCHEMA_LOCK_KEY = 0x69726F6E73696768


class HistoryDatabase:
    """The connection to a run history, its schema created or upgraded on first use.

    Args:
        url: SQLAlchemy URL or file path; default `history_url()`.

    >>> import tempfile
    >>> HistoryDatabase(tempfile.mkdtemp() + "/h.db").schema_version == SCHEMA_VERSION
    True
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
                    METADATA.create_all(self.engine, checkfirst=True)
                    break
                except sa.exc.OperationalError as exc:
                    if "already exists" not in str(exc) or attempt == 2:
                        raise
            with self.engine.begin() as conn:
                row = conn.execute(
                    sa.select(META.c.value).where(META.c.key == "schema_version")
                ).first()
                if row is None:
                    conn.execute(
                        sa.insert(META).values(key="schema_version", value=str(SCHEMA_VERSION))
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
                    present = {c["name"] for c in sa.inspect(self.engine).get_columns(RUNS.name)}
                    if name in present:
                        continue
                    column = RUNS.c[name]
                    ddl = f"ALTER TABLE {RUNS.name} ADD COLUMN {name} {column.type.compile(self.engine.dialect)}"
                    try:
                        with self.engine.begin() as conn:
                            conn.execute(sa.text(ddl))
                    except sa.exc.OperationalError as exc:
                        if "duplicate column" not in str(exc).lower():
                            raise
            with self.engine.begin() as conn:
                conn.execute(
                    sa.update(META)
                    .where(META.c.key == "schema_version",
                           sa.cast(META.c.value, sa.Integer) < SCHEMA_VERSION)
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
                sa.select(META.c.value).where(META.c.key == "schema_version")
            ).scalar_one()
        return int(value)
