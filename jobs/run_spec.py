"""Running a classify or audit job spec as the CLI does: the checks that need no torch, then
the job under the run history, with SIGTERM unwinding it like Ctrl-C.

| name                      | what                                                              |
|---------------------------|-------------------------------------------------------------------|
| :func:`config_from_spec`  | the run's config dataclass from a spec: shared fields copied by name |
| :func:`check_before_torch` | INPUT, OUTPUT's bucket, local model files, INPUT's footers: pyarrow only |
| :func:`classify_spec`     | ``ironsight classify`` / a ``kind: classify`` spec, end to end    |
| :func:`audit_spec`        | ``ironsight audit`` / a ``kind: audit`` spec, end to end          |
| :func:`sigterm_interrupts` | SIGTERM raises :class:`Terminated` while a job runs              |

``ironsight compare`` runs through ``ironsight.jobs.compare_cli.compare_spec``; the Python API
(``ironsight.jobs.api``) calls :func:`classify_spec` and :func:`audit_spec` too.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from pydantic import BaseModel

from ironsight.cluster.errors import InvalidInput
from ironsight.jobs.observability import job_context
from ironsight.jobs.spec import AuditJob, ClassifyJob

C = TypeVar("C")


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: unwinds the job like Ctrl-C does (``finally`` blocks run, Ray shuts down)."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        self.signal_name = signal.Signals(signum).name
        super().__init__(f"interrupted by {self.signal_name}")


@contextmanager
def sigterm_interrupts() -> Iterator[Callable[[], None]]:
    """Make SIGTERM raise :class:`Terminated` in the main thread for the duration of the block.

    Yields ``install``: call it again after ``ray.init``, which puts its own handler in place
    (``sys.exit(15)``, plus a C++ one that prints a stack). The handler raises once; later
    SIGTERMs are ignored while the job unwinds. The previous handler is restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    raised = False

    def on_sigterm(signum: int, _frame: object) -> None:
        nonlocal raised
        if raised:
            return
        raised = True
        raise Terminated(signum)

    def install() -> None:
        signal.signal(signal.SIGTERM, on_sigterm)

    previous = signal.getsignal(signal.SIGTERM)
    install()
    try:
        yield install
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def config_from_spec(config: type[C], spec: BaseModel, **derived: Any) -> C:
    """The run's configuration (``ClassifyConfig``, ``AuditConfig``, also the one a
    ``CompareConfig`` holds: a dataclass) from a validated spec: every field the spec has of the
    same name, the allowed roots as
    :meth:`~ironsight.jobs.spec_roots.WithinRoots.effective_roots` normalises them,
    then ``derived``: what the spec states another way (the model source, the suite with its
    severities, the progress display).

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Config:
    ...     input: str
    ...     output: str
    ...     top_k: int = 5
    ...     allowed_roots: tuple[str, ...] = ()
    ...     progress: bool | None = None
    >>> job = ClassifyJob(input="s3://b/in", output="s3://b/out", model="resnet18", top_k=3,
    ...                   random_weights=True, allowed_roots="s3://b/")
    >>> config_from_spec(Config, job, progress=False)
    Config(input='s3://b/in', output='s3://b/out', top_k=3, allowed_roots=('s3://b',), progress=False)
    """
    shared = {f.name for f in dataclasses.fields(config) if f.init} & set(type(spec).model_fields)
    values = {name: getattr(spec, name) for name in shared}
    if "allowed_roots" in shared:
        values["allowed_roots"] = spec.effective_roots()
    return config(**{**values, **derived})


def check_before_torch(spec: ClassifyJob | AuditJob) -> Any:
    """What a job can check with pyarrow alone, before torch and Ray are imported; returns
    INPUT's plan (``spec.plan_input()``) for the job to reuse.

    | checked                                        | refused with (exit 2)                 |
    |------------------------------------------------|---------------------------------------|
    | INPUT exists, inside the allowed roots         | "INPUT ... does not exist"            |
    | OUTPUT's bucket exists (``s3://``)             | the bucket named                      |
    | a local ``--weights`` or ``--model-card`` file exists | the file named, with a did-you-mean |
    | INPUT's footers and columns                    | the file and column named             |

    Parsing the card, loading the weights and the device come next, after torch's import.
    """
    from ironsight.cluster import storage
    from ironsight.jobs.spec_checks import missing_model_files

    storage.check_input(spec.input, spec.effective_roots())
    storage.check_bucket(storage.resolve(spec.output))
    missing = missing_model_files(spec)
    if missing:
        raise InvalidInput(missing[0])
    return spec.plan_input()


def classify_spec(spec: ClassifyJob, progress: bool | None, *, verbose: bool = False,
                  source: Any = None) -> tuple[Any, Any]:
    """Run a classify spec as ``ironsight classify`` does (history, SIGTERM, Ray); returns
    ``(ClassifySummary, RunRecorder)``. ``source`` replaces ``spec.source()`` (the Python
    API's in-memory module, ``ironsight.jobs.api``)."""

    corpus = check_before_torch(spec)  # a missing INPUT, a wrong column: in a second
    from ironsight.cluster.predictor import check_device

    check_device(spec.device, spec.address)  # --device cuda with no GPU here: torch alone, no Ray
    from ironsight.cluster.pipeline import (
        ClassifyConfig,
        completed_summary,
        plan_classify,
        run_classify,
        validate_model,
    )
    from ironsight.cluster.raycluster import connect
    from ironsight.jobs.history import RunRecorder

    cfg = config_from_spec(ClassifyConfig, spec, source=spec.source() if source is None else source,
                           progress=progress, keep_columns=tuple(spec.keep_columns or ()))
    with sigterm_interrupts() as reinstall, RunRecorder(spec) as record, job_context(spec, record.run_id):
        plan = plan_classify(cfg, corpus=corpus)  # the flags; the footers were read above
        model = validate_model(cfg.source)  # the card and weights, before Ray
        summary = completed_summary(cfg, plan, model)  # a finished job: done, Ray never starts
        if summary is None:
            with connect(spec.address, quiet=not verbose):
                reinstall()  # ray.init replaced it
                summary = run_classify(cfg, plan=plan, model=model)
        record.classify_succeeded(summary)
    return summary, record


def audit_spec(spec: AuditJob, progress: bool | None, *, verbose: bool = False,
               source: Any = None) -> tuple[Any, Any, list]:
    """Run an audit spec as ``ironsight audit`` does (history, SIGTERM, Ray); returns
    ``(AuditResult, RunRecorder, regressions)``; a failed gate raises ``GateFailed`` after the
    reports are written. ``source`` replaces ``spec.source()`` (``ironsight.jobs.api``)."""

    corpus = check_before_torch(spec)  # a missing eval set, a wrong column: in a second
    from ironsight.cluster.predictor import check_device

    check_device(spec.device, spec.address)  # --device cuda with no GPU here: torch alone, no Ray
    from ironsight.cluster.raycluster import connect
    from ironsight.jobs.audit import AuditConfig, plan_audit, resolve_suite, run_audit
    from ironsight.jobs.history import RunRecorder

    cfg = config_from_spec(AuditConfig, spec, source=spec.source() if source is None else source,
                           suite=resolve_suite(spec.suite, spec.severities), progress=progress)
    with sigterm_interrupts() as reinstall, RunRecorder(spec) as record, job_context(spec, record.run_id):
        prepared = plan_audit(cfg, corpus=corpus)  # gate, baseline, model, OUTPUT
        with connect(spec.address, quiet=not verbose):
            reinstall()  # ray.init replaced it
            # the run history judges the audit before report.json is written (its "history")
            result = run_audit(dataclasses.replace(cfg, history=record.judge_audit), prepared=prepared)
        regressions = record.audit_finished(result.report)
    return result, record, regressions
