"""Structured logs and the job context that tags logs and metrics.

``ironsight --log-format json`` (or ``IRONSIGHT_LOG_FORMAT=json``) makes every log record one
JSON object per line on stderr:

| field        | meaning                                                              |
|--------------|----------------------------------------------------------------------|
| `ts`         | UTC time, ISO 8601 with milliseconds (`2026-11-23T15:04:05.123Z`)     |
| `level`      | DEBUG, INFO, WARNING, ERROR                                          |
| `logger`     | `ironsight`, `ironsight.progress`, `ironsight.schedule`, `ray....`    |
| `message`    | the human sentence                                                   |
| `job`, `kind`, `model`, `run_id` | the job running, where known (`run_id`: its history id) |
| `rows_done`, `rows_total`, `images_per_s`, `error_rows`, `eta_s` | progress records of a labeling run |
| `exc`        | the traceback, when a record carries one                             |

Only these fields (and other ``extra=`` fields Ironsight itself passes) are written; nothing
is copied from the environment. Progress records replace the `[ironsight] N/M rows ...` lines.
The job summary on stdout stays plain text.

Ray's own output (its token-authentication warning, Ray Data's execution lines, worker output,
the C++ core worker's log lines) stays off the console unless ``ironsight -v``
(``ironsight.cluster.raycluster.connect``, ``quiet``); with ``-v`` it is Ray's plain text
even in JSON mode. Off a terminal, progress is a line (or record) every 10 s, never a bar:

| stderr                  | classify, audit                              | demo: data and training          |
|-------------------------|----------------------------------------------|----------------------------------|
| a terminal              | a live tqdm bar                              | tqdm bars                        |
| a file, pipe, CI log    | `[ironsight] ...` every 10 s and at the end  | a line at the start and the end  |
| `--no-progress`         | lines, as in a file                          | start and end lines              |
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import PurePosixPath
from typing import Any

from ironsight.cluster import metrics

__all__ = [
    "LOG_FORMATS",
    "LOG_FORMAT_ENV",
    "JsonFormatter",
    "configure_logging",
    "console",
    "job_context",
    "job_name",
]

LOG_FORMAT_ENV = "IRONSIGHT_LOG_FORMAT"
LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "ironsight_log_context", default=None
)
# Attributes every LogRecord has; anything else on a record came from ``extra=`` or our filter.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, context and ``extra`` fields."""

    structured = True  # ironsight.cluster.pipeline's progress checks this to log records, not lines

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.timezone.utc)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in out:
                out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, allow_nan=False, default=str)


class _ContextFilter(logging.Filter):
    """Adds the running job's fields (job, kind, model, run_id) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def resolve_format(value: str | None) -> str:
    """The log format: the flag, else ``IRONSIGHT_LOG_FORMAT``, else text.

    >>> resolve_format("json")
    'json'
    """
    fmt = (value or os.environ.get(LOG_FORMAT_ENV) or "text").strip().lower()
    if fmt not in LOG_FORMATS:
        from ironsight.cluster.errors import InvalidInput

        raise InvalidInput(f"log format {fmt!r} (from --log-format or {LOG_FORMAT_ENV}); expected one of {', '.join(LOG_FORMATS)}")
    return fmt


def configure_logging(fmt: str, *, verbose: bool = False) -> None:
    """Send log records to stderr as text lines (``logging.basicConfig``, as before) or JSON.

    JSON replaces the root logger's handlers. The format is also put in
    ``IRONSIGHT_LOG_FORMAT`` so that the runs a scheduler starts log the same way.
    """
    level = logging.DEBUG if verbose else logging.INFO
    os.environ[LOG_FORMAT_ENV] = fmt
    if fmt != "json":
        logging.basicConfig(level=level, format=TEXT_FORMAT, stream=sys.stderr)
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(_ContextFilter())
    root.addHandler(handler)
    root.setLevel(level)


def structured() -> bool:
    """Whether records go out as JSON (a root handler has a :class:`JsonFormatter`)."""
    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)


def console(message: str, level: int = logging.WARNING) -> None:
    """A message for the person at the console: a plain stderr line, or a record in JSON mode.

    ``message`` starts with ``ironsight: warning:`` / ``ironsight: error:`` as the text
    console has always shown; in JSON mode that prefix goes and the level says it.
    """
    if structured():
        text = message
        for prefix in ("ironsight: warning: ", "ironsight: error: ", "ironsight: "):
            if text.startswith(prefix):
                text = text[len(prefix):]
                break
        logging.getLogger("ironsight").log(level, text)
    else:
        print(message, file=sys.stderr, flush=True)


def job_name(spec: Any) -> str:
    """The ``job`` tag of a run: the spec's ``name``, or ``KIND:OUTPUT-BASENAME`` when the
    name was not given (a plain ``ironsight classify``), so that two ad-hoc runs differ.

    >>> from ironsight.jobs.spec import ClassifyJob
    >>> job_name(ClassifyJob(input="in/", output="s3://b/labels/2026-11/", model="demo_cnn",
    ...                      random_weights=True))
    'classify:2026-11'
    >>> job_name(ClassifyJob(name="archive", input="in/", output="out/", model="demo_cnn",
    ...                      random_weights=True))
    'archive'
    """
    if "name" in getattr(spec, "model_fields_set", {"name"}):
        return spec.name
    base = PurePosixPath(str(spec.output).rstrip("/")).name or str(spec.output)
    return f"{spec.kind}:{base}"


def _model_name(spec: Any) -> str:
    if hasattr(spec, "model_label"):  # a comparison (CompareJob): its models
        return spec.model_label()
    if getattr(spec, "model", None):
        return spec.model
    card = getattr(spec, "model_card", None)
    return PurePosixPath(str(card)).stem if card else ""


@contextmanager
def job_context(spec: Any, run_id: int | None = None) -> Iterator[dict[str, Any]]:
    """Tag the metrics and log records of the block with the spec's job, kind and model."""
    fields = {"job": job_name(spec), "kind": spec.kind, "model": _model_name(spec)}
    if run_id is not None:
        fields["run_id"] = run_id
    token = _context.set(fields)
    try:
        with metrics.job_context(job=fields["job"], kind=fields["kind"], model=fields["model"]):
            yield fields
    finally:
        _context.reset(token)
