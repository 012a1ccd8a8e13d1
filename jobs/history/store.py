"""The run history's queries: one row a run (`Run`), recorded and read by `HistoryStore`.

The tables, their schema version and the connection are `ironsight.jobs.history.schema`
(`HistoryDatabase`, which `HistoryStore` extends with the queries below).

| method             | what it does                                                          |
|--------------------|-----------------------------------------------------------------------|
| `start`, `finish`  | record a run as `running`; record how it ended (one `UPDATE` of its own row) |
| `mark_abandoned`   | mark `abandoned` the `running` runs of this host whose process is gone |
| `runs`, `get`      | runs, oldest first (of one job, the last N); one run by id            |
| `previous_success` | the latest `succeeded` run of a job (of one identity) before a run    |
| `save_outcomes`, `outcomes` | an audit's per-image outcomes, kept for the reference run only |

Abandoned runs: a process SIGKILLed (or OOM-killed, or its machine rebooted) never records its
end. When `ironsight history` lists runs, and when a run starts, every `running` run recorded
on this host whose process is gone, or whose pid now belongs to another process (the start
time differs), is marked `abandoned` with the error "process N on HOST exited without
recording an end" (`ironsight.cluster.liveness`). A run recorded on another host (or in
another pid namespace) cannot be checked from here: it stays `running` and the table shows its
host. Rows written by schema 1 (no pid) are left as they are.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import socket
from typing import Any

import sqlalchemy as sa

from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.liveness import process_exists, process_identity
from ironsight.jobs.history.db import as_utc, redact, utcnow
from ironsight.jobs.history.outcomes import Outcomes
from ironsight.jobs.history.schema import OUTCOMES, RUNS, HistoryDatabase

log = logging.getLogger("ironsight")

__all__ = ["STATUSES", "HistoryStore", "Run"]

STATUSES = ("running", "succeeded", "failed", "gate_failed", "regressed", "abandoned")
_ERROR_CHARS = 500


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


class HistoryStore(HistoryDatabase):
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
                sa.insert(RUNS).values(
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
            done = conn.execute(sa.update(RUNS).where(RUNS.c.id == run_id).values(**values))
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
        query = sa.select(RUNS.c.id, RUNS.c.pid, RUNS.c.process_start).where(
            RUNS.c.status == "running", RUNS.c.host == host, RUNS.c.pid.is_not(None)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        marked = []
        for run_id, pid, identity in rows:
            if process_exists(pid, identity) is not False:
                continue
            with self.engine.begin() as conn:
                done = conn.execute(
                    sa.update(RUNS)
                    .where(RUNS.c.id == run_id, RUNS.c.status == "running")
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
        query = sa.select(RUNS).order_by(RUNS.c.id.desc())
        if job is not None:
            query = query.where(RUNS.c.job == job)
        if last is not None:
            query = query.limit(last)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [self._run(r) for r in reversed(rows)]

    def get(self, run_id: int) -> Run:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(RUNS).where(RUNS.c.id == run_id)).first()
        if row is None:
            raise InvalidInput(f"run {run_id} is not in the history at {self._safe_url()}")
        return self._run(row)

    def previous_success(self, job: str, before_run_id: int, identity: str | None = None) -> Run | None:
        """The latest `succeeded` run of `job` older than `before_run_id`, or None; with
        `identity`, only a run of that identity (rows from before schema 3 have none)."""
        query = (
            sa.select(RUNS)
            .where(RUNS.c.job == job, RUNS.c.status == "succeeded", RUNS.c.id < before_run_id)
            .order_by(RUNS.c.id.desc())
            .limit(1)
        )
        if identity is not None:
            query = query.where(RUNS.c.identity == identity)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else self._run(row)

    def save_outcomes(self, run_id: int, outcomes: Outcomes, identity: str | None = None) -> None:
        """Keep `run_id`'s per-image outcomes; with `identity`, drop those of its older runs
        of that identity (only the latest succeeded run is ever a reference)."""
        data = outcomes.to_bytes()
        with self.engine.begin() as conn:
            if identity is not None:
                older = sa.select(RUNS.c.id).where(RUNS.c.identity == identity, RUNS.c.id < run_id)
                conn.execute(sa.delete(OUTCOMES).where(OUTCOMES.c.run_id.in_(older)))
            conn.execute(sa.delete(OUTCOMES).where(OUTCOMES.c.run_id == run_id))
            conn.execute(sa.insert(OUTCOMES).values(run_id=run_id, data=data))

    def outcomes(self, run_id: int) -> Outcomes | None:
        """The per-image outcomes kept for `run_id`, or None (not kept, pruned, unreadable)."""
        with self.engine.connect() as conn:
            data = conn.execute(sa.select(OUTCOMES.c.data).where(OUTCOMES.c.run_id == run_id)).scalar()
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
