"""``ironsight compare``: several models on one eval set and suite, side by side.

    check everything: objective, OUTPUT, eval set, each model (run once on CPU) ──► Ray
    per distinct preprocessing: the eval rows decoded ONCE in CPU tasks (jobs.variants.clean_dataset),
        materialized (clean images only) when two or more models share them
    per model: jobs.variants.predict_variants on its own actors, which make every (condition,
        severity) variant on their device ──► OUTPUT/models/NAME/ report.json,
        report.md, report.html, predictions.parquet (what `ironsight audit` writes for it), then
        entry.json: the model's identity, which marks it finished
    per model in turn: one profiling actor (num_gpus=1 on GPU) ──► latency, throughput, memory,
        parameters, FLOPs (ironsight.robustness.profiling)
    all: expected accuracy under the suite's mix, ranking, objective ──► OUTPUT/compare.json|md|html

| what                         | how                                                          |
|------------------------------|--------------------------------------------------------------|
| models on one device         | one model at a time, each with the audit's actor pool         |
| at least as many GPUs as models | every model at once, one GPU (one actor) each             |
| timings                      | after every prediction is done, one model at a time: nothing else runs on its device |
| a model's numbers            | those of ``ironsight audit`` of that model alone with the same seed, to the last digit |
| rerun into the same OUTPUT   | a model whose entry.json holds the same identity (weights sha256, preprocessing, eval set, suite, seed, max images) is not run again: its report and profile are reused |
| a crash between models       | only the model in flight is lost                             |
| OUTPUT holds another comparison | refused (exit 2) unless ``--overwrite``: another eval set or suite |
| ``--random-weights`` models  | measured for speed and memory; marked so in every report      |
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ironsight.cluster import corpus as corpus_mod
from ironsight.cluster import storage, storage_errors
from ironsight.cluster.errors import InvalidInput, JobFailed
from ironsight.cluster.models import ModelSource
from ironsight.cluster.progress import status
from ironsight.jobs.audit import (
    MAX_REPORT_BYTES,
    AuditConfig,
    AuditPlan,
    _examples,
    _write_outputs,
    audit_predictions,
    audit_report,
    plan_audit,
)
from ironsight.jobs.spec import AUDIT_ROWS_PER_SHARD
from ironsight.jobs.variants import block_rows_for, clean_dataset
from ironsight.robustness.schema import PREDICTIONS_SCHEMA
from ironsight.robustness.suites import Suite

log = logging.getLogger("ironsight")

MARKER = "_compare.json"  # OUTPUT's comparison: its eval set and suite (refuse another's)
ENTRY = "entry.json"  # OUTPUT/models/NAME/: written last, the model's identity and profile
NO_MODELS = "name the models to compare: --model-card CARD.yaml or --model NAME=WEIGHTS, repeated"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ModelEntry:
    """One model of a comparison: its label (unique, a folder name) and where it comes from."""

    name: str
    source: ModelSource


def unique_names(wanted: list[str | None], derived: list[str]) -> list[str]:
    """Each model's label: the one given, else derived from the model; a clash gets ``-2``...

    >>> unique_names([None, None, "mine"], ["resnet18", "resnet18", "demo"])
    ['resnet18', 'resnet18-2', 'mine']
    """
    given = {w for w in wanted if w}
    if len(given) < len([w for w in wanted if w]):
        dup = next(w for w in wanted if w and wanted.count(w) > 1)
        raise InvalidInput(f"model name {dup!r} is given twice; each model of a comparison needs its own name")
    out: list[str] = []
    for want, base in zip(wanted, derived, strict=True):
        if want:
            out.append(want)
            continue
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-.") or "model"
        name, n = base, 1
        while name in out or name in given:
            n += 1
            name = f"{base}-{n}"
        out.append(name)
    for name in out:
        if not _NAME.match(name):
            raise InvalidInput(f"model name {name!r}: use letters, digits, '.', '_' and '-' (it names a folder)")
    return out


@dataclass(frozen=True)
class CompareConfig:
    """A comparison: ``audit``, the audit every model gets (eval set, suite, seed, sizes,
    device...; its ``source`` is the first model's, its ``output`` the comparison's OUTPUT),
    and the models, the objective and whether to profile them."""

    audit: AuditConfig
    models: tuple[ModelEntry, ...]
    objective: str | None = None
    profile: bool = True

    @classmethod
    def of(cls, models: tuple[ModelEntry, ...], *, objective: str | None = None, profile: bool = True,
           **audit: Any) -> CompareConfig:
        """From the audit's fields as keywords (``input=``, ``output=``, ``suite=``, ...)."""
        if len(models) < 1:
            raise InvalidInput(NO_MODELS)
        return cls(AuditConfig(source=models[0].source, **audit), tuple(models), objective, profile)

    def __post_init__(self) -> None:
        if len(self.models) < 1:
            raise InvalidInput(NO_MODELS)

    def audit_config(self, model: ModelEntry) -> AuditConfig:
        """The ``ironsight audit`` of this one model into ``OUTPUT/models/NAME``."""
        return replace(self.audit, source=model.source, output=model_dir(self.audit.output, model.name),
                       overwrite=True)  # OUTPUT as a whole was checked (_refuse_other_comparison)


def model_dir(output: str, name: str) -> str:
    """``OUTPUT/models/NAME``: that model's ``ironsight audit`` OUTPUT (local or ``s3://``)."""
    return posixpath.join(output.rstrip("/"), "models", name)


@dataclass
class ComparePlan:
    """What :func:`plan_compare` checked and loaded before Ray starts."""

    audits: dict[str, AuditPlan]
    identities: dict[str, str]
    finished: dict[str, dict]  # name -> entry.json of a model already done with this identity
    objective: Any = None  # ironsight.robustness.objective.Objective


@dataclass
class CompareResult:
    report: dict[str, Any]
    entries: list
    paths: dict[str, str]
    ran: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    wall_s: float = 0.0


def plan_compare(cfg: CompareConfig) -> ComparePlan:
    """Check everything a comparison can check without Ray; the CLI calls it before Ray starts.

    | checked                                   | refused with (exit 2)                        |
    |-------------------------------------------|----------------------------------------------|
    | ``--objective``                           | the objective's message (did-you-mean)       |
    | OUTPUT: another comparison's eval set or suite | "already holds the comparison of ..."   |
    | the eval set, ``--max-images``            | as ``ironsight audit``                       |
    | each model: name, card, weights (run once on CPU) | "model NAME: ..." and the model's message |
    """
    objective = None
    if cfg.objective:
        from ironsight.robustness.objective import parse_objective

        objective = parse_objective(cfg.objective)
    _refuse_other_comparison(cfg)
    corpus = corpus_mod.plan_corpus(  # once, before the models: its errors are not blamed on one
        cfg.audit.input, image_column=cfg.audit.image_column, id_column=cfg.audit.id_column,
        label_column=cfg.audit.label_column, max_rows_per_shard=AUDIT_ROWS_PER_SHARD,
        allowed_roots=cfg.audit.allowed_roots, can_skip=False,
    )
    audits: dict[str, AuditPlan] = {}
    identities: dict[str, str] = {}
    finished: dict[str, dict] = {}
    for m in cfg.models:
        try:
            audits[m.name] = plan_audit(cfg.audit_config(m), corpus=corpus)
        except InvalidInput as exc:
            raise InvalidInput(f"model {m.name}: {exc}") from None
        identities[m.name] = model_identity(cfg, audits[m.name])
        entry = _read_entry(cfg.audit.output, m.name)
        if entry is not None and entry.get("identity") == identities[m.name]:
            finished[m.name] = entry
    return ComparePlan(audits=audits, identities=identities, finished=finished, objective=objective)


def model_identity(cfg: CompareConfig, plan: AuditPlan) -> str:
    """sha256 of what a model's numbers depend on: the model (weights sha256, preprocessing,
    classes), the eval set (INPUT, columns, rows audited), the suite, the seed."""
    info = plan.model.info
    rows = plan.rows
    parts = {
        "model": {"name": info.name, "weights_sha256": plan.model.weights_sha256,
                  "preprocess": info.preprocess.to_dict(), "classes": list(info.class_names)},
        "input": cfg.audit.input, "label_column": plan.corpus.label_column,
        "image_column": cfg.audit.image_column, "id_column": cfg.audit.id_column, "rows": rows,
        # the mix weighs the numbers afterwards: changing it re-runs nothing
        "suite": {k: v for k, v in cfg.audit.suite.to_dict().items() if k != "mix"}, "seed": cfg.audit.seed,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def run_compare(cfg: CompareConfig, *, prepared: ComparePlan | None = None) -> CompareResult:
    """Run the comparison on the connected Ray; write every model's reports and the comparison.

    Raises:
        InvalidInput: a bad eval set, suite, model, objective or OUTPUT; nothing ran.
        JobFailed: a model's pipeline or profiling failed (finished models are kept).
    """
    from ironsight.robustness.report.comparison import CompareEntry, build_compare_report
    from ironsight.robustness.report.write import write_compare_reports

    started = time.monotonic()
    prepared = prepared or plan_compare(cfg)
    _write_marker(cfg)
    todo = [m for m in cfg.models if m.name not in prepared.finished]
    for name in prepared.finished:
        status(f"model {name}: already compared into {cfg.audit.output} with the same identity; reusing its report")
    examples = _predict_all(cfg, prepared, todo)
    profiles = _profile_all(cfg, prepared) if cfg.profile else {}
    entries = []
    for m in cfg.models:
        plan = prepared.audits[m.name]
        folder = storage.resolve(model_dir(cfg.audit.output, m.name))
        report = json.loads(storage.read_bytes(folder.join("report.json"), max_bytes=MAX_REPORT_BYTES,
                                               what="report.json"))
        table = pq.read_table(pa.BufferReader(storage.read_bytes(
            folder.join("predictions.parquet"), max_bytes=4 * MAX_REPORT_BYTES, what="predictions.parquet")),
            columns=list(PREDICTIONS_SCHEMA.names))
        entries.append(CompareEntry(
            name=m.name, report=report, profile=profiles.get(m.name),
            random_weights=m.source.random_weights, mix=_mix(table, cfg.audit.suite),
            examples=examples[m.name] if m.name in examples else _examples(
                plan.corpus, plan.shards, plan.model.info.preprocess, cfg.audit_config(m), table, model=plan.model),
        ))
    first = prepared.audits[cfg.models[0].name]
    data = {"input": cfg.audit.input, "images": entries[0].report.get("data", {}).get("images"),
            "label_column": first.corpus.label_column, "max_images": cfg.audit.max_images, "seed": cfg.audit.seed}
    report = build_compare_report(entries, suite=cfg.audit.suite.name, data=data, objective=prepared.objective)
    try:
        written = write_compare_reports(cfg.audit.output, report, entries)
    except OSError as exc:
        raise JobFailed(f"writing the comparison to {cfg.audit.output} failed: {storage_errors.os_reason(exc)}") from exc
    ran = [m.name for m in todo]
    return CompareResult(report=report, entries=entries, paths=written, ran=ran,
                         reused=[m.name for m in cfg.models if m.name not in ran],
                         wall_s=time.monotonic() - started)


def _predict_all(cfg: CompareConfig, prepared: ComparePlan, todo: list[ModelEntry]) -> dict[str, list]:
    """Every model of ``todo`` through its actors; the eval rows of each preprocessing decoded
    once (the clean images: each model's actors make the variants on their device). Returns
    each model's report examples."""
    import ray

    groups: dict[str, list[ModelEntry]] = {}
    for m in todo:
        key = json.dumps(prepared.audits[m.name].model.info.preprocess.to_dict(), sort_keys=True)
        groups.setdefault(key, []).append(m)
    gpus = int(ray.cluster_resources().get("GPU", 0)) if cfg.audit.device != "cpu" else 0
    together = len(todo) > 1 and gpus >= len(todo)
    decoded: dict[str, Any] = {}
    for members in groups.values():
        plan = prepared.audits[members[0].name]
        ds = clean_dataset(plan.corpus, plan.shards, plan.limits, plan.model.info.preprocess,
                           block_rows_for(plan.rows, cfg.audit.batch_size, cfg.audit.device))
        if len(members) > 1:  # decoded once, read by each model
            status(f"decoding the eval set once for {', '.join(m.name for m in members)}")
            ds = ds.materialize()
        for m in members:
            decoded[m.name] = ds

    def one(m: ModelEntry) -> list:
        return _predict_one(cfg, prepared, m, decoded[m.name], actors=1 if together else cfg.audit.actors)

    if together:  # one GPU (one actor) each, all at once
        with ThreadPoolExecutor(max_workers=len(todo)) as pool:
            futures = {m.name: pool.submit(one, m) for m in todo}
            return {name: f.result() for name, f in futures.items()}
    return {m.name: one(m) for m in todo}


def _predict_one(cfg: CompareConfig, prepared: ComparePlan, m: ModelEntry, clean: Any, *,
                 actors: int | None) -> list:
    """One model's predictions and reports, as ``run_audit`` writes them, then its entry.json."""
    plan = prepared.audits[m.name]
    acfg = cfg.audit_config(m)
    table, clean_err = audit_predictions(acfg, plan, clean, actors=actors, desc=m.name)
    report = audit_report(table, clean_err, acfg, plan.corpus, plan.model, plan.rows)
    examples = _examples(plan.corpus, plan.shards, plan.model.info.preprocess, acfg, table,
                         model=plan.model, report=report)
    _write_outputs(acfg.output, report, table, examples)
    _write_entry(cfg.audit.output, m.name, {"identity": prepared.identities[m.name], "name": m.name,
                                      "random_weights": m.source.random_weights, "profile": None})
    status(f"model {m.name}: clean accuracy {report['clean'].get('accuracy')}, written to {acfg.output}")
    return examples


def _profile_all(cfg: CompareConfig, prepared: ComparePlan) -> dict[str, dict]:
    """Each model's :class:`ModelProfile`, one model at a time in its own actor (one GPU on a
    GPU cluster; on CPU the cores and torch threads one predictor actor gets), so no other
    model's work disturbs the timings. A reused model keeps the profile its entry.json holds."""
    import ray

    from ironsight.cluster.engine import plan_resources

    res = plan_resources(cfg.audit.actors, cfg.audit.device)
    gpu = res["num_gpus"] > 0
    threads = None if gpu else res.get("threads")
    cpus = 1 if gpu else min(threads or 1, float(ray.cluster_resources().get("CPU", 1)))
    out: dict[str, dict] = {}
    for m in cfg.models:
        entry = _read_entry(cfg.audit.output, m.name) or {}
        if entry.get("profile"):
            out[m.name] = entry["profile"]
            continue
        plan = prepared.audits[m.name]
        actor = ray.remote(Profiler).options(num_gpus=1 if gpu else 0, num_cpus=cpus).remote()
        try:
            out[m.name] = ray.get(actor.profile.remote(m.source, plan.model.info.preprocess.crop,
                                                       "cuda:0" if gpu else "cpu", threads))
        except ray.exceptions.RayError as exc:
            from ironsight.cluster.errors import ray_error_message

            raise JobFailed(f"profiling model {m.name} failed: {ray_error_message(exc)}") from exc
        finally:
            ray.kill(actor)
        _write_entry(cfg.audit.output, m.name, {**entry, "profile": out[m.name]})
    return out


class Profiler:
    """The profiling actor's class (``ray.remote`` at use): loads one model, times it, exits."""

    def profile(self, source: ModelSource, input_size: int, device: str, threads: int | None = None) -> dict:
        from ironsight.robustness.profiling import profile_model

        loaded = source.load(device)
        return profile_model(loaded.module, input_size, device=device, threads=threads).to_dict()


def _mix(table: pa.Table, suite: Suite) -> dict | None:
    mix = getattr(suite, "mix", ())
    if not mix:
        return None
    from ironsight.robustness.mix import expected_accuracy

    return expected_accuracy(table, mix)


def _read_entry(output: str, name: str) -> dict | None:
    """entry.json of OUTPUT/models/NAME when its reports are all there; None otherwise."""
    folder = storage.resolve(model_dir(output, name))
    try:
        if not all(storage.exists(folder.join(f)) for f in (ENTRY, "report.json", "predictions.parquet")):
            return None
        data = json.loads(storage.read_bytes(folder.join(ENTRY), max_bytes=1 << 20, what=ENTRY))
    except (OSError, ValueError, InvalidInput):
        return None
    return data if isinstance(data, dict) else None


def _write_entry(output: str, name: str, entry: dict) -> None:
    target = storage.resolve(model_dir(output, name)).join(ENTRY)
    try:
        storage.publish_bytes(target, json.dumps(entry, indent=2, sort_keys=True).encode())
    except OSError as exc:
        raise JobFailed(f"writing {target.uri} failed: {storage_errors.os_reason(exc)}") from exc


def _marker(cfg: CompareConfig) -> dict:
    return {"input": cfg.audit.input, "suite": cfg.audit.suite.name, "label_column": cfg.audit.label_column}


def _refuse_other_comparison(cfg: CompareConfig) -> None:
    """Refuse an OUTPUT holding the comparison of another eval set or suite, unless ``--overwrite``.

    Other models, weights or seeds are the same comparison: a model whose identity changed is
    run again, the others are reused. With ``--overwrite`` the comparison files and the
    folders of this run's models are replaced; nothing else in OUTPUT is touched.
    """
    target = storage.resolve(cfg.audit.output).join(MARKER)
    if cfg.audit.overwrite or not storage.exists(target):
        return
    try:
        theirs = json.loads(storage.read_bytes(target, max_bytes=1 << 20, what=MARKER))
    except (ValueError, UnicodeDecodeError):
        theirs = None
    ours = _marker(cfg)
    if not isinstance(theirs, dict):
        raise InvalidInput(f"OUTPUT {cfg.audit.output} holds a {MARKER} that is not Ironsight's; choose another "
                           "OUTPUT, or pass --overwrite to replace it")
    differs = [k for k in ours if theirs.get(k) != ours[k]]
    if differs:
        what = ", ".join(f"{k} {theirs.get(k)!r} (this comparison: {ours[k]!r})" for k in differs)
        raise InvalidInput(f"OUTPUT {cfg.audit.output} already holds the comparison of another eval set or "
                           f"suite: {what}. Choose another OUTPUT, or pass --overwrite to replace it")


def _write_marker(cfg: CompareConfig) -> None:
    out = storage.resolve(cfg.audit.output)
    storage.makedirs(out)
    storage.publish_bytes(out.join(MARKER), json.dumps(_marker(cfg), indent=2).encode())
