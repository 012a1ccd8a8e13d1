"""``ironsight compare`` as the CLI and ``ironsight run`` start it: a ``CompareJob`` spec
(:mod:`ironsight.jobs.spec`) checked, turned into a :class:`~ironsight.jobs.compare.CompareConfig`,
run under the run history, and summed up in a few lines.

| checked before torch is imported    | refused with (exit 2)                                |
|-------------------------------------|------------------------------------------------------|
| the eval set exists, OUTPUT's bucket | as ``ironsight audit``                              |
| each model's local card and weights | "model N (NAME): --model-card ... does not exist"    |
| ``--objective``                     | the objective's message, with a did-you-mean         |

Then, before Ray starts: every model loaded and run once on CPU, the eval set's footers,
OUTPUT (:func:`~ironsight.jobs.compare.plan_compare`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ironsight.cluster import storage
from ironsight.cluster.errors import InvalidInput
from ironsight.jobs.compare import (
    NO_MODELS,
    CompareConfig,
    CompareResult,
    ModelEntry,
    plan_compare,
    run_compare,
    unique_names,
)
from ironsight.jobs.run_spec import config_from_spec, sigterm_interrupts


def compare_config_from_spec(spec: Any, progress: bool | None) -> CompareConfig:
    """A :class:`CompareConfig` from a validated ``CompareJob`` (``ironsight.jobs.spec``)."""
    from ironsight.jobs.audit import AuditConfig, resolve_suite

    choices = spec.model_choices()
    roots = spec.effective_roots()
    sources = [replace(c.source(), allowed_roots=roots) for c in choices]
    derived = [_derived_name(c) for c in choices]
    names = unique_names([c.name for c in choices], derived)
    models = tuple(ModelEntry(n, s) for n, s in zip(names, sources, strict=True))
    if not models:
        raise InvalidInput(NO_MODELS)
    audit = config_from_spec(AuditConfig, spec, source=models[0].source,
                             suite=resolve_suite(spec.suite, spec.severities), progress=progress)
    return CompareConfig(audit=audit, models=models, objective=spec.objective, profile=spec.profile)


def _derived_name(choice: Any) -> str:
    """A model's label from what names it: the card's ``name``, else the registered name."""
    if choice.model_card:
        from ironsight.cluster.models.card import load_card

        return load_card(choice.model_card).name
    return choice.model


def compare_spec(spec: Any, progress: bool | None, *, verbose: bool = False) -> tuple[CompareResult, Any]:
    """Run a ``CompareJob`` as ``ironsight compare`` does (checks first, history, SIGTERM, Ray);
    returns ``(CompareResult, RunRecorder)``."""
    from ironsight.jobs.spec_checks import missing_model_files

    storage.check_input(spec.input, spec.effective_roots())  # a missing eval set: before torch
    storage.check_bucket(storage.resolve(spec.output))
    for i, choice in enumerate(spec.model_choices()):
        missing = missing_model_files(choice)
        if missing:
            raise InvalidInput(f"model {i + 1} ({choice.name or choice.model or choice.model_card}): {missing[0]}")
    if spec.objective:  # bad text: exit 2 in a second, before torch
        from ironsight.robustness.objective import parse_objective

        parse_objective(spec.objective)
    from ironsight.cluster.predictor import check_device

    check_device(spec.device, spec.address)
    from ironsight.cluster.raycluster import connect
    from ironsight.jobs.history import RunRecorder
    from ironsight.jobs.observability import job_context

    cfg = compare_config_from_spec(spec, progress)
    with sigterm_interrupts() as reinstall, RunRecorder(spec) as record, job_context(spec, record.run_id):
        prepared = plan_compare(cfg)  # objective, OUTPUT, eval set, every model
        with connect(spec.address, quiet=not verbose):
            reinstall()  # ray.init replaced it
            result = run_compare(cfg, prepared=prepared)
        record.compare_finished(result.report)
    return result, record


def summary_lines(result: CompareResult) -> list[str]:
    """What ``ironsight compare`` prints: one line per model, the recommendation, the reports."""
    lines = []
    for e in result.entries:
        clean = e.report.get("clean") or {}
        mca = (e.report.get("summary") or {}).get("mean_corruption_accuracy")
        mark = " (random weights: speed and memory only)" if e.random_weights else ""
        reused = " [reused]" if e.name in result.reused else ""
        acc = clean.get("accuracy")
        lines.append(f"  {e.name:<20} accuracy {_pct(acc)}  corruption accuracy {_pct(mca)}{mark}{reused}")
    from ironsight.robustness.report.comparison import recommendation_lines

    lines += recommendation_lines(result.report)
    lines.append(f"reports: {result.paths.get('html')} (and compare.json, compare.md; models/NAME/ per model)")
    return lines


def _pct(value: Any) -> str:
    return "  n/a" if value is None else f"{100 * float(value):5.1f}%"
