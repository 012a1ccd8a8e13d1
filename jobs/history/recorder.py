"""Recording one job run in the history (`RunRecorder`): `running` on entry, its outcome on exit,
and an audit judged against the reference run of its identity (`ironsight.jobs.history.compare`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import traceback
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ironsight.cluster.errors import EXIT_REGRESSED, GateFailed, IronsightError
from ironsight.jobs.history.compare import (
    Regression,
    audit_metrics,
    classify_metrics,
    compare_metrics,
    gate_thresholds,
    max_drop_for,
    run_identity,
)
from ironsight.jobs.history.db import as_utc, error_line
from ironsight.jobs.history.outcomes import Outcomes
from ironsight.jobs.history.store import HistoryStore, Run
from ironsight.jobs.history.table import fmt_time
from ironsight.jobs.observability import console

log = logging.getLogger("ironsight")

# Env var a scheduler sets for the run it starts: the tick (ISO 8601, UTC) it fires for.
SCHEDULED_FOR_ENV = "IRONSIGHT_SCHEDULED_FOR"


def _model_name(spec: Any) -> str | None:
    if hasattr(spec, "model_label"):  # a comparison (CompareJob): its models, comma-separated
        return spec.model_label()
    return spec.model or (Path(spec.model_card).stem if spec.model_card else None)


def _scheduled_for() -> dt.datetime | None:
    value = os.environ.get(SCHEDULED_FOR_ENV)
    if not value:
        return None
    try:
        return as_utc(dt.datetime.fromisoformat(value))
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
        from ironsight.jobs.submit import validated_spec_hash  # the submission identity

        try:
            self.store = self.store or HistoryStore()
            self.store.mark_abandoned()
            self.run_id = self.store.start(
                job=self.spec.name,
                kind=self.spec.kind,
                spec_hash=validated_spec_hash(self.spec),
                model=_model_name(self.spec),
                output=self.spec.output,
                scheduled_for=_scheduled_for(),
            )
        except (IronsightError, sa.exc.SQLAlchemyError) as exc:
            console("ironsight: warning: run history disabled for this run: "
                    + error_line(exc, getattr(self.store, "url", None)))
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
                    + error_line(db_exc, self.store.url))

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
                    + error_line(exc, self.store.url))

    def compare_finished(self, report: dict[str, Any]) -> None:
        """Record a finished comparison (`ironsight compare`) from its compare.json content:
        metrics `{"models": {NAME: {"clean_accuracy", "mean_corruption_accuracy", "mix_accuracy",
        "random_weights"}}, "recommended": NAME or None}`. Comparisons are not judged."""
        if self.store is None:
            return
        metrics = {
            "models": {r["model"]: {"clean_accuracy": r.get("accuracy"),
                                    "mean_corruption_accuracy": r.get("corruption_accuracy"),
                                    "mix_accuracy": r.get("mix_accuracy"),
                                    "random_weights": r.get("random_weights")}
                       for r in report.get("models") or []},
            "recommended": (report.get("recommendation") or {}).get("winner"),
        }
        try:
            self._finish("succeeded", metrics)
        except sa.exc.SQLAlchemyError as exc:
            console("ironsight: warning: could not record the run's end: "
                    + error_line(exc, self.store.url))

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
                    + error_line(exc, self.store.url))
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
            + (f" ({fmt_time(prev.started_at)})" if prev else "")
            + f"; exit {EXIT_REGRESSED}:"
        )
        return "\n".join([head, *(f"  - {r}" for r in self.regressions)])
