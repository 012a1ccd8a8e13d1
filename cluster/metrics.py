"""Prometheus metrics of Ironsight jobs, recorded through ``ray.util.metrics``.

Every metric is recorded in the driver (the only committer of a labeling run; an audit builds
its report there), once per committed shard or once per report: nothing is recorded per row
or inside actors. Ray's metrics agent on each node serves them in Prometheus text on
``http://NODE:<metrics-export-port>/metrics`` (8080 under KubeRay) with the prefix ``ray_``,
next to Ray's own metrics. They live here, in ``cluster``, because the labeling pipeline
records them and ``cluster`` never imports ``jobs``.

| scraped name                               | type    | tags (besides job, kind, model) | unit / meaning |
|--------------------------------------------|---------|---------------------------------|----------------|
| ``ray_ironsight_images_processed_total``   | counter | ``status`` = ok / error         | images written with a label (ok) or an error row |
| ``ray_ironsight_error_rows_total``         | counter |                                 | rows whose image could not be read or decoded |
| ``ray_ironsight_shards_committed_total``   | counter |                                 | output shards published by a labeling run |
| ``ray_ironsight_images_per_second``        | gauge   |                                 | images/s of the run so far (wall clock) |
| ``ray_ironsight_audit_accuracy``           | gauge   | ``family``, ``condition``, ``severity``, ``eps`` | top-1 accuracy in [0, 1] |
| ``ray_ironsight_audit_duration_seconds``   | gauge   |                                 | wall time of the audit |
| ``ray_ironsight_gate_verdict``             | gauge   |                                 | 1 the release gate passed, 0 it failed |
| ``ray_ironsight_gate_verdicts_total``      | counter | ``verdict`` = pass / fail       | gate evaluations, for alerts over a window |

Common tags: ``job`` (the spec's ``name``, or ``KIND:OUTPUT-BASENAME`` for a plain CLI run),
``kind`` (classify / audit) and ``model``. Audit accuracy rows: ``family=clean,
condition=clean, severity=0, eps=0``; one per corruption cell (``family=corruption``,
``severity`` 1-5); one per attack budget (``family=attack``, ``condition`` the attack,
``eps`` like ``0.007843``). Ray adds ``SessionName``, ``NodeAddress``, ``WorkerId``...

Gauges and scrapes: Ray's agent keeps a gauge value for twice its report interval (2 x 10 s
by default) after the driver last sent it, and a driver sends a value only when it is set.
So the driver re-sets its gauges every ``GAUGE_REFRESH_S`` seconds (a daemon thread) for
``GAUGE_HOLD_S`` after their last change: a gauge set once at the end of an audit stays
visible to a 30 s scrape while the driver lives. Once the driver exits its gauges go within
about 20 s; counters stay. Alert on ``ray_ironsight_gate_verdicts_total`` (a counter) rather
than on the gauge. Recording never fails a job: an error is logged once at debug level and
the metric is skipped.
"""

from __future__ import annotations

import contextvars
import logging
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = [
    "METRICS",
    "JobTags",
    "ProgressMetrics",
    "current_job",
    "job_context",
    "record_audit",
]

log = logging.getLogger("ironsight")

JobTags = dict[str, str]
_BASE_TAGS = ("job", "kind", "model")

# name -> (type, description, extra tag keys). Counter names end in _total as Prometheus
# expects; Ray exports them unchanged with its ``ray_`` prefix.
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "ironsight_images_processed_total": (
        "counter", "Images written by the job: status=ok with a label, status=error as an error row.",
        ("status",)),
    "ironsight_error_rows_total": (
        "counter", "Rows whose image could not be read or decoded (they carry an error).", ()),
    "ironsight_shards_committed_total": (
        "counter", "Output shards a labeling run published.", ()),
    "ironsight_images_per_second": (
        "gauge", "Images per second of the run so far, wall clock.", ()),
    "ironsight_audit_accuracy": (
        "gauge", "Top-1 accuracy in [0, 1] of an audit cell: clean, a condition at a severity, or "
        "an attack at an eps.", ("family", "condition", "severity", "eps")),
    "ironsight_audit_duration_seconds": (
        "gauge", "Wall time of the audit in seconds.", ()),
    "ironsight_gate_verdict": (
        "gauge", "Release gate of the last audit: 1 passed, 0 failed.", ()),
    "ironsight_gate_verdicts_total": (
        "counter", "Release gate evaluations by verdict (pass or fail).", ("verdict",)),
}

# Re-send gauges faster than Ray's agent forgets them (2 x the 10 s report interval), for
# long enough that a slow scraper (KubeRay PodMonitor: every 30 s) sees a value set once.
GAUGE_REFRESH_S = 5.0
GAUGE_HOLD_S = 600.0

_current: contextvars.ContextVar[JobTags | None] = contextvars.ContextVar("ironsight_job", default=None)
_made: dict[str, Any] = {}
_warned: set[str] = set()
# (name, tags) -> (value, monotonic time it was set); read by the refresher thread
_gauges: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[float, float]] = {}
_gauges_lock = threading.Lock()
_refresher: threading.Thread | None = None


@contextmanager
def job_context(*, job: str, kind: str, model: str | None = None) -> Iterator[JobTags]:
    """Tag every metric recorded in the block with this job.

    >>> with job_context(job="nightly", kind="audit", model="resnet50") as tags:
    ...     current_job("classify") == tags
    True
    >>> current_job("classify")["job"]
    'classify'
    """
    tags = {"job": str(job), "kind": str(kind), "model": str(model or "")}
    token = _current.set(tags)
    try:
        yield tags
    finally:
        _current.reset(token)


def current_job(kind: str) -> JobTags:
    """The tags of the job running now, or ``job=kind`` for a library call outside any job."""
    return dict(_current.get() or {"job": kind, "kind": kind, "model": ""})


def _metric(name: str):
    """The ``ray.util.metrics`` object for ``name``, made on first use (importing is free)."""
    made = _made.get(name)
    if made is None:
        from ray.util import metrics as ray_metrics

        kind, description, extra = METRICS[name]
        cls = {"counter": ray_metrics.Counter, "gauge": ray_metrics.Gauge}[kind]
        made = _made[name] = cls(name, description=description, tag_keys=_BASE_TAGS + extra)
    return made


def _record(name: str, value: float, tags: JobTags) -> None:
    """Inc a counter / set a gauge; a counter is only ever increased by a positive value."""
    try:
        metric = _metric(name)
        if METRICS[name][0] == "counter":
            if value > 0:
                metric.inc(float(value), tags=tags)
        elif value is not None and math.isfinite(value):
            metric.set(float(value), tags=tags)
            with _gauges_lock:
                _gauges[(name, tuple(sorted(tags.items())))] = (float(value), time.monotonic())
            _start_refresher()
    except Exception as exc:  # metrics are never worth failing a job for
        if name not in _warned:
            _warned.add(name)
            log.debug("metric %s not recorded: %s", name, exc)


def _start_refresher() -> None:
    global _refresher
    with _gauges_lock:
        if _refresher is None or not _refresher.is_alive():
            _refresher = threading.Thread(target=_refresh, name="ironsight-gauges", daemon=True)
            _refresher.start()


def _refresh() -> None:
    """Re-set every gauge changed in the last ``GAUGE_HOLD_S`` seconds, every few seconds."""
    while True:
        time.sleep(GAUGE_REFRESH_S)
        now = time.monotonic()
        with _gauges_lock:
            for key in [k for k, (_, at) in _gauges.items() if now - at > GAUGE_HOLD_S]:
                del _gauges[key]
            live = list(_gauges.items())
        for (name, tags), (value, _) in live:
            try:
                _metric(name).set(value, tags=dict(tags))
            except Exception:  # noqa: S112 - the first failure was logged by _record
                continue


class ProgressMetrics:
    """Metrics of one labeling run, bound to the job running when it is made."""

    def __init__(self) -> None:
        self.tags = current_job("classify")

    def shard_committed(self, rows: int, errors: int, images_per_s: float) -> None:
        """One shard of ``rows`` rows (``errors`` of them error rows) was published."""
        _record("ironsight_images_processed_total", rows - errors, {**self.tags, "status": "ok"})
        _record("ironsight_images_processed_total", errors, {**self.tags, "status": "error"})
        _record("ironsight_error_rows_total", errors, self.tags)
        _record("ironsight_shards_committed_total", 1, self.tags)
        self.rate(images_per_s)

    def rate(self, images_per_s: float) -> None:
        _record("ironsight_images_per_second", images_per_s, self.tags)


def _eps(value: float) -> str:
    return f"{float(value):.6f}".rstrip("0").rstrip(".") or "0"


def record_audit(report: dict[str, Any], wall_s: float) -> None:
    """Record an audit's accuracies, images, duration and gate verdict from its report dict.

    Cells with no accuracy (no labeled rows) are skipped.
    """
    tags = current_job("audit")
    data = report.get("data") or {}
    images, errors = int(data.get("images") or 0), int(data.get("error_rows") or 0)
    _record("ironsight_images_processed_total", images, {**tags, "status": "ok"})
    _record("ironsight_images_processed_total", errors, {**tags, "status": "error"})
    _record("ironsight_error_rows_total", errors, tags)
    if wall_s > 0:
        _record("ironsight_images_per_second", images / wall_s, tags)
    _record("ironsight_audit_duration_seconds", wall_s, tags)
    cells = [("clean", "clean", 0, 0.0, (report.get("clean") or {}).get("accuracy"))]
    cells += [("corruption", c["name"], c["severity"], 0.0, c.get("accuracy"))
              for c in report.get("conditions") or []]
    cells += [("attack", a["name"], 0, a["eps"], a.get("accuracy")) for a in report.get("attacks") or []]
    for family, condition, severity, eps, accuracy in cells:
        if accuracy is None:
            continue
        cell = {"family": family, "condition": str(condition), "severity": str(int(severity)),
                "eps": _eps(eps)}
        _record("ironsight_audit_accuracy", accuracy, {**tags, **cell})
    gate = report.get("gate")
    if gate:
        passed = bool(gate.get("passed"))
        _record("ironsight_gate_verdict", 1.0 if passed else 0.0, tags)
        _record("ironsight_gate_verdicts_total", 1, {**tags, "verdict": "pass" if passed else "fail"})
