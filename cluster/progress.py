"""The one progress reporter of every long loop: a job's rows, the audit's predictions,
synthetic data generation, demo training.

:class:`Progress` shows a live tqdm bar on a terminal and a plain line every 10 s otherwise
(a JSON ``ironsight.progress`` record under ``--log-format json``); :func:`progress` makes one
for a stage that records no job metrics; :func:`structured_logs` says whether the root
handler writes JSON (``ironsight.jobs.observability``), for other one-off records.
"""

from __future__ import annotations

import logging
import math
import sys
import time

from ironsight.cluster import metrics as job_metrics


def structured_logs() -> bool:
    """A root handler formats records as JSON (its formatter says ``structured = True``).

    >>> structured_logs()
    False
    """
    return any(getattr(h.formatter, "structured", False) for h in logging.getLogger().handlers)


def status(line: str, **extra: object) -> None:
    """One status line for the person at the console: ``[ironsight] LINE`` on stderr, like the
    progress lines; with JSON logs, an INFO record of the ``ironsight`` logger carrying
    ``extra``. Not for warnings and errors (``ironsight.jobs.observability.console``)."""
    if structured_logs():
        logging.getLogger("ironsight").info(line, extra=extra)
    else:
        print(f"[ironsight] {line}", file=sys.stderr, flush=True)


class Progress:
    """Progress of a job: a live tqdm bar on a terminal, a plain line every 10 s otherwise.

    | stderr is                        | shown                                                   |
    |----------------------------------|---------------------------------------------------------|
    | a terminal (or ``enabled=True``) | a tqdm bar (rows, images/s, ETA), redrawn in place      |
    | a file or pipe (logs, CI, jobs)  | ``[ironsight] 2000/20000 rows (10%), 610 images/s, 0 error rows, ETA 30s``: one line every 10 s and one at the end, no carriage returns |
    | JSON logs (``--log-format json``)| the same as an ``ironsight.progress`` record with rows_done, rows_total, images_per_s, error_rows, eta_s |

    ``enabled=False`` (``--no-progress``) means lines, never a bar. Classify calls ``update``
    once per committed shard, which also records the job's metrics
    (:mod:`ironsight.cluster.metrics`); the audit counts predictions (``noun="predictions"``,
    no metrics).
    """

    INTERVAL_S = 10.0

    def __init__(self, total: int, enabled: bool | None, *, desc: str = "labeling", unit: str = "img",
                 noun: str = "rows", metrics: bool = True) -> None:
        self.total, self.done, self.errors = total, 0, 0
        self.desc, self.noun = desc, noun
        self.started = self.last_log = time.monotonic()
        self.metrics = job_metrics.ProgressMetrics() if metrics else None
        tty = sys.stderr.isatty() if enabled is None else enabled
        self.bar = None
        if tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=unit, desc=desc, dynamic_ncols=True, smoothing=0.1)

    def update(self, rows: int, errors: int = 0) -> None:
        self.done += rows
        self.errors += errors
        now = time.monotonic()
        rate = self.done / max(now - self.started, 1e-9)
        if self.metrics is not None:
            self.metrics.shard_committed(rows, errors, rate)
        if self.bar is not None:
            self.bar.update(rows)
            if self.metrics is not None:
                self.bar.set_postfix(errors=self.errors, refresh=False)
            return
        if now - self.last_log >= self.INTERVAL_S or self.done >= self.total:
            self.last_log = now
            eta = max(self.total - self.done, 0) / rate if rate else math.inf
            pct = f"{100 * self.done / max(self.total, 1):.0f}%"
            if self.metrics is not None:
                line = (f"{self.done}/{self.total} rows ({pct}), {rate:.0f} images/s,"
                        f" {self.errors} error rows, ETA {eta:.0f}s")
            else:
                line = f"{self.desc}: {self.done}/{self.total} {self.noun} ({pct}), {rate:.0f} {self.noun}/s, ETA {eta:.0f}s"
            if structured_logs():
                fields = {"rows_done": self.done, "rows_total": self.total, "images_per_s": round(rate, 2),
                          "error_rows": self.errors, "eta_s": round(eta, 1) if math.isfinite(eta) else None}
                logging.getLogger("ironsight.progress").info(line, extra=fields)
            else:
                print(f"[ironsight] {line}", file=sys.stderr, flush=True)

    def set_postfix(self, refresh: bool = False, **fields: object) -> None:
        """Extra fields on the bar (``loss=0.31``); lines and records leave them out."""
        if self.bar is not None:
            self.bar.set_postfix(refresh=refresh, **fields)

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.rate(self.done / max(time.monotonic() - self.started, 1e-9))
        if self.bar is not None:
            self.bar.close()


def progress(total: int, enabled: bool | None, *, desc: str, noun: str) -> Progress:
    """A progress display for another stage than labeling (the audit's predictions): a bar
    on a terminal, a line every 10 s otherwise (:class:`Progress`), no job metrics."""
    return Progress(total, enabled, desc=desc, unit=noun[:4], noun=noun, metrics=False)
