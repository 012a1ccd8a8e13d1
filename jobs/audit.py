"""The distributed robustness audit: eval set -> decode -> predict/corrupt/attack -> report.

    plan (footers) ──► CPU task per shard: read, decode ONCE, emit clean blocks ──►
    AuditPredictor actors (one per GPU): the clean batch onto the device once, predicted; each
    condition's severities made there as tensors (corrupt_batch) and predicted; each attack at
    each epsilon on the clean rows ──► driver: predictions table ──► metrics,
    report.json/md/html, release gate

The stream (decode function, AuditPredictor, the driver's collection) is
:mod:`ironsight.jobs.variants`, on :mod:`ironsight.cluster.engine`; this module plans the audit,
runs it and writes its reports. Corruptions are pure functions of (image id, condition,
severity, seed), so any variant can be regenerated later: the report's example images are
recomputed in the driver for a few ids instead of being shipped back through the pipeline.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ironsight.cluster import corpus as corpus_mod
from ironsight.cluster import metrics as job_metrics
from ironsight.cluster import paths, reader, storage, storage_errors
from ironsight.cluster.decode import count_reasons, decode_rows
from ironsight.cluster.errors import GateFailed, InvalidInput, JobFailed
from ironsight.cluster.models import ModelSource
from ironsight.cluster.pipeline import announce_preprocessing
from ironsight.cluster.preprocess import Preprocess
from ironsight.jobs.spec import AUDIT_ROWS_PER_SHARD
from ironsight.jobs.variants import (
    audit_cost,
    block_rows_for,
    clean_blocks,
    clean_dataset,
    collect_predictions,
    predict_variants,
    variants_per_image,
)
from ironsight.robustness.conditions import IMAGENET_C_CONDITIONS, apply_condition
from ironsight.robustness.schema import PREDICTIONS_SCHEMA, Example
from ironsight.robustness.suites import Suite, get_suite

log = logging.getLogger("ironsight")

EXAMPLES_PER_CONDITION = 2
_IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class AuditConfig:
    input: str
    output: str
    source: ModelSource
    suite: Suite
    label_column: str | None = "label"
    image_column: str | None = None
    id_column: str | None = None
    max_images: int | None = None
    seed: int = 0
    baseline: str | None = None
    gate: str | None = None
    overwrite: bool = False  # replace another audit's reports in OUTPUT instead of refusing
    activation_maps: bool = True  # the example images' activation maps (report.html)
    batch_size: int = 64
    actors: int | None = None
    device: str = "auto"
    progress: bool | None = None
    # Roots that image paths in corpus rows must lie in (ironsight.cluster.paths); () means no limit.
    allowed_roots: tuple[str, ...] = ()
    # Run history's judge (`ironsight.jobs.history.RunRecorder.judge_audit`): called with the
    # report and the predictions table before the reports are written; what it returns is
    # report.json's "history" section.
    history: Callable[[dict, pa.Table], dict | None] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # OUTPUT a folder apart from the eval set: refused when the config is built, which
        # the CLI does before Ray starts.
        paths.check_output(self.input, self.output, input_name="eval set INPUT")


@dataclass
class AuditResult:
    report: dict[str, Any]
    paths: dict[str, str]
    rows: int = 0
    error_rows: int = 0
    wall_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)


def resolve_suite(name_or_path: str, severities: list[int] | None) -> Suite:
    """A built-in or YAML suite, optionally with its severities replaced."""
    try:
        suite = get_suite(name_or_path)
    except (ValueError, FileNotFoundError) as exc:
        raise InvalidInput(f"--suite {name_or_path}: {exc}") from exc
    if severities:
        from dataclasses import replace

        suite = replace(suite, severities=tuple(severities))
    return suite


@dataclass(frozen=True)
class AuditPlan:
    """What :func:`plan_audit` checked and loaded before Ray starts; :func:`run_audit` uses it."""

    corpus: corpus_mod.CorpusPlan
    shards: list
    limits: dict[int, int]
    model: Any  # ironsight.cluster.models.LoadedModel, validated on CPU
    gate: Any = None
    baseline: dict | None = None
    baseline_predictions: pa.Table | None = None

    @property
    def rows(self) -> int:
        """The eval-set rows audited (``--max-images`` applied)."""
        return sum(self.limits.get(s.index, s.num_rows) for s in self.shards)


def plan_audit(cfg: AuditConfig, *, corpus: corpus_mod.CorpusPlan | None = None) -> AuditPlan:
    """Check everything an audit can check without Ray; the CLI calls it before Ray starts.

    | checked                                   | refused with (exit 2)                      |
    |-------------------------------------------|--------------------------------------------|
    | the eval set: files, footers, columns     | :class:`InvalidInput` naming file/column   |
    | ``--max-images``                          | "must be at least 1"                       |
    | the gate and ``--baseline`` files         | their own messages                         |
    | the model: name, card, weights (run once on CPU) | the model's message                 |
    | OUTPUT: another audit's report.json, not writable | "already holds the audit of …" / "cannot write" |

    Object-store errors (a bucket that does not exist, a host that does not resolve, refused
    credentials) fail here too, at once (:mod:`ironsight.cluster.storage`). A missing eval set
    takes well under a second instead of Ray's start-up first. ``corpus`` is the eval set's
    plan when the caller made it already (``AuditJob.plan_input``, before torch was imported).
    """
    from ironsight.robustness.gate import load_gate

    if corpus is None:
        corpus = corpus_mod.plan_corpus(
            cfg.input,
            image_column=cfg.image_column,
            id_column=cfg.id_column,
            label_column=cfg.label_column,
            max_rows_per_shard=AUDIT_ROWS_PER_SHARD,
            allowed_roots=cfg.allowed_roots,
            can_skip=False,  # an audit has no skip_bad_files: the refusal must not suggest it
        )
    if cfg.max_images is not None and cfg.max_images < 1:
        raise InvalidInput(f"--max-images must be at least 1, got {cfg.max_images}")
    gate = load_gate(cfg.gate) if cfg.gate else None
    baseline = _load_baseline(cfg.baseline) if cfg.baseline else None
    baseline_predictions = _load_baseline_predictions(cfg.baseline) if cfg.baseline else None
    model = cfg.source.validate()
    shards, limits = _select(corpus, cfg.max_images)
    _refuse_other_audit(cfg, model.info.name)  # before any work
    _prepare_output(cfg.output)  # a read-only or unwritable OUTPUT fails now, not after the audit
    return AuditPlan(corpus=corpus, shards=shards, limits=limits, model=model, gate=gate,
                     baseline=baseline, baseline_predictions=baseline_predictions)


def audit_predictions(cfg: AuditConfig, prepared: AuditPlan, clean: Any = None, *, actors: int | None = None,
                      desc: str = "auditing") -> tuple[pa.Table, list[str]]:
    """One model's predictions table and the errors of its clean rows that did not decode
    (:func:`~ironsight.jobs.variants.collect_predictions`): ``clean``, the decoded eval rows
    (:func:`~ironsight.jobs.variants.clean_dataset`; made here when None, ``ironsight compare``
    passes one per preprocessing), through ``cfg.source``'s AuditPredictor actors, planned from
    this audit's measured cost. ``actors`` overrides ``cfg.actors`` (compare: one GPU each)."""
    block = block_rows_for(prepared.rows, cfg.batch_size, cfg.device)
    if clean is None:
        clean = clean_dataset(prepared.corpus, prepared.shards, prepared.limits, prepared.model.info.preprocess, block)
    predicted = predict_variants(clean, cfg.source, cfg.suite, seed=cfg.seed, batch_size=block,
                                 actors=cfg.actors if actors is None else actors, device=cfg.device,
                                 cost=lambda: audit_cost(prepared.model, prepared.corpus, cfg.suite),
                                 inputs=clean_blocks(prepared.shards, prepared.limits, block))
    return collect_predictions(predicted, prepared.rows * variants_per_image(cfg.suite), cfg.progress, desc=desc)


def run_audit(cfg: AuditConfig, *, prepared: AuditPlan | None = None) -> AuditResult:
    """Run the audit on the connected Ray; write predictions and reports into ``cfg.output``.

    ``prepared`` is :func:`plan_audit`'s result when the caller checked before starting Ray;
    planned here when None.

    Raises:
        InvalidInput: bad eval set, suite, model, baseline or gate file; nothing ran.
        GateFailed: the audit ran and its release gate failed (reports are written first).
    """
    from ironsight.robustness.gate import evaluate_gate

    started = time.monotonic()
    if prepared is None:
        prepared = plan_audit(cfg)
    plan, shards, model = prepared.corpus, prepared.shards, prepared.model
    gate, baseline, baseline_predictions = prepared.gate, prepared.baseline, prepared.baseline_predictions
    announce_preprocessing(model)
    table, clean_err = audit_predictions(cfg, prepared)
    inference_s = time.monotonic() - started
    report = audit_report(table, clean_err, cfg, plan, model, prepared.rows,
                          baseline=baseline, baseline_predictions=baseline_predictions)
    result_gate = evaluate_gate(report, gate, baseline) if gate is not None else None
    if result_gate is not None:
        report["gate"] = result_gate.to_dict()
    if cfg.history is not None:
        report["history"] = cfg.history(report, table)
    examples = _examples(plan, shards, model.info.preprocess, cfg, table, model=model, report=report)
    paths = _write_outputs(cfg.output, report, table, examples)
    result = AuditResult(
        report=report, paths=paths, rows=table.num_rows, error_rows=len(clean_err),
        wall_s=time.monotonic() - started, timings={"pipeline_s": inference_s},
    )
    job_metrics.record_audit(report, result.wall_s)  # accuracies and gate verdict, also when it failed
    if result_gate is not None and not result_gate.passed:
        failed = "\n".join(f"  - {c.message}" for c in result_gate.failed)
        raise GateFailed(f"release gate failed ({len(result_gate.failed)} checks):\n{failed}\nreports: {paths.get('html')}")
    return result


def audit_report(table: pa.Table, clean_err: list[str], cfg: AuditConfig, plan: corpus_mod.CorpusPlan,
                 model: Any, total_rows: int, *, baseline: dict | None = None,
                 baseline_predictions: pa.Table | None = None) -> dict[str, Any]:
    """report.json's content for one model's predictions (no gate, no history yet)."""
    from ironsight.robustness.report.build import build_report

    info = model.info
    report = build_report(
        table,
        class_names=info.class_names,
        model={"name": info.name, "weights_sha256": model.weights_sha256, "input_size": info.preprocess.crop},
        data={
            "input": cfg.input,
            "images": total_rows - len(clean_err),
            "error_rows": len(clean_err),
            "errors_by_reason": dict(count_reasons(clean_err)),
            "label_column": plan.label_column,
        },
        seed=cfg.seed,
        suite=cfg.suite.name,
        baseline=baseline,
        baseline_predictions=baseline_predictions,  # paired (McNemar) changes when present
        imagenet_model=info.num_classes == _IMAGENET_CLASSES,
        imagenet_c_conditions=IMAGENET_C_CONDITIONS,
    )
    report["preprocessing"] = info.preprocess.to_dict()  # the pixels these numbers come from
    if cfg.suite.mix:  # expected accuracy under the suite's operating-condition mix
        from ironsight.robustness.mix import expected_accuracy

        report["mix"] = expected_accuracy(table, cfg.suite.mix)
    return report


def _select(plan: corpus_mod.CorpusPlan, max_images: int | None) -> tuple[list, dict[int, int]]:
    """The shards to audit and, for the last one, how many of its rows (``--max-images``)."""
    if max_images is None:
        return list(plan.shards), {}
    shards, limits, left = [], {}, max_images
    for s in plan.shards:
        if left <= 0:
            break
        shards.append(s)
        if s.num_rows > left:
            limits[s.index] = left
        left -= s.num_rows
    return shards, limits


def _load_baseline(uri: str) -> dict:
    loc = storage.resolve(uri)
    if not storage.exists(loc):
        raise InvalidInput(f"--baseline {uri} does not exist; pass the report.json of a previous audit")
    try:
        data = json.loads(storage.read_bytes(loc))
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"--baseline {uri} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or "conditions" not in data or "clean" not in data:
        raise InvalidInput(f"--baseline {uri} is not an Ironsight report.json (no 'clean'/'conditions')")
    return data


def _load_baseline_predictions(uri: str) -> pa.Table | None:
    """The ``predictions.parquet`` next to a ``--baseline`` report.json, for per-image paired
    comparisons; None (the report compares unpaired, and says so) when it is absent or
    unreadable."""
    import posixpath

    loc = storage.resolve(posixpath.join(posixpath.dirname(uri), "predictions.parquet"))
    try:
        if not storage.exists(loc):
            return None
        data = storage.read_bytes(loc, max_bytes=4 * MAX_REPORT_BYTES, what="baseline predictions.parquet")
        return pq.read_table(pa.BufferReader(data), columns=list(PREDICTIONS_SCHEMA.names))
    except (InvalidInput, OSError, pa.ArrowException) as exc:
        log.warning("baseline %s: its predictions.parquet cannot be read (%s); comparing unpaired", uri, exc)
        return None


def _examples(plan, shards, preprocess: Preprocess, cfg: AuditConfig, table: pa.Table, *,
              model: Any = None, report: dict | None = None) -> list[Example]:
    """The reports' examples: misclassified images per condition, with activation maps.

    | step | what |
    |------|------|
    | pick | per cell (clean, and each corruption at the suite's worst severity): up to |
    |      | :data:`EXAMPLES_PER_CONDITION` misclassified labeled rows of ``table``, by id; on an |
    |      | unlabeled eval set the first ids (nothing can be called misclassified) |
    | pixels | the picked ids are read again from the eval set and decoded in the driver; a |
    |      | corruption is recomputed (conditions are pure functions of id, severity, seed) |
    | maps | with ``model`` (the driver's :class:`~ironsight.cluster.models.LoadedModel`) and |
    |      | ``cfg.activation_maps``: the map of the predicted class per image |
    |      | (:func:`ironsight.robustness.cam.activation_maps`, on CPU) |

    Attack rows are not shown: the adversarial image is not kept. With ``report``, its
    ``"examples"`` section lists per cell the misclassified count and the ids shown, and the
    map method (``None`` when maps are off), so the HTML and Markdown can say "no
    misclassified example" for a cell.
    """
    worst = max(cfg.suite.severities) if cfg.suite.severities else 0
    cells = [("clean", 0)] + [(name, worst) for name in cfg.suite.conditions]
    rows = table.filter(pc.is_in(table.column("kind"), pa.array(["clean", "corruption"])))
    rows = rows.select(["id", "condition", "severity", "label", "prediction", "correct"]).to_pylist()
    labeled = any(r["label"] >= 0 for r in rows)
    by_cell: dict[tuple[str, int], list[dict]] = {c: [] for c in cells}
    for r in sorted(rows, key=lambda r: r["id"]):  # by id: the table's order depends on Ray
        cell = (r["condition"], r["severity"])
        if cell in by_cell and (not labeled or (r["label"] >= 0 and not r["correct"])):
            by_cell[cell].append(r)
    picks = {c: found[:EXAMPLES_PER_CONDITION] for c, found in by_cell.items()}
    pixels = _decode_ids(plan, shards, preprocess, {r["id"] for found in picks.values() for r in found})
    out = []
    for (name, severity), found in picks.items():
        for r in found:
            if r["id"] not in pixels:
                continue
            img = pixels[r["id"]]
            if name != "clean":
                img = apply_condition(name, img, severity, seed=cfg.seed, key=r["id"])
            out.append(Example(name, severity, img, int(r["label"]), int(r["prediction"]), id=r["id"]))
    method, failed = None, None
    if out and model is not None and getattr(cfg, "activation_maps", True):
        import torch

        from ironsight.robustness.cam import activation_maps

        started = time.monotonic()
        x = torch.from_numpy(np.stack([ex.image for ex in out])).permute(0, 3, 1, 2).float().div_(255.0)
        try:
            maps, method = activation_maps(model, x, [ex.prediction for ex in out])  # (N, H, W) in [0, 1]
        except Exception as exc:  # a map is an illustration: the audit's numbers stand without it
            failed = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log.warning("activation maps failed (%s); report.html shows the examples without them", failed)
            maps, method = [None] * len(out), None
        for ex, cam in zip(out, maps, strict=True):
            ex.cam, ex.method = cam, method
        if method:
            log.debug("activation maps (%s) of %d examples: %.1f s", method, len(out), time.monotonic() - started)
    if report is not None:
        report["examples"] = {
            "misclassified_only": labeled,
            "per_condition": EXAMPLES_PER_CONDITION,
            "activation_maps": method,
            "activation_maps_error": failed,  # why there are none although they were asked for
            "cells": [
                {"condition": name, "severity": severity, "misclassified": len(by_cell[(name, severity)]) if labeled else None,
                 "ids": [ex.id for ex in out if (ex.condition, ex.severity) == (name, severity)]}
                for name, severity in cells
            ],
        }
    return out


def _decode_ids(plan, shards, preprocess: Preprocess, wanted: set[str]) -> dict[str, np.ndarray]:
    """id -> (H, W, 3) uint8 for the ``wanted`` ids that decode, reading the shards in order
    and stopping once all are found."""
    found: dict[str, np.ndarray] = {}
    for shard in shards:
        if len(found) == len(wanted):
            break
        for batch in reader.iter_shard(plan, shard, batch_rows=AUDIT_ROWS_PER_SHARD):
            idx = [i for i, key in enumerate(batch["id"]) if str(key) in wanted and str(key) not in found]
            if idx:
                images, errors = decode_rows([batch["image"][i] for i in idx], [batch["error"][i] for i in idx], preprocess)
                found.update({str(batch["id"][i]): images[j] for j, i in enumerate(idx) if errors[j] is None})
            if len(found) == len(wanted):
                break
    return found


AUDIT_FILES = ("report.json", "report.md", "report.html", "predictions.parquet")
MAX_REPORT_BYTES = 256 * 1024 * 1024  # a report.json larger than this is not one of ours


def _refuse_other_audit(cfg: AuditConfig, model_name: str) -> None:
    """Refuse an OUTPUT whose ``report.json`` is another audit's, unless ``cfg.overwrite``.

    Identity is (model name, eval set INPUT, suite), without the weights: a nightly audit of
    retrained weights into its fixed OUTPUT is the same audit (run history compares the two;
    the old report stays in history, not in OUTPUT). The same audit rerun
    into its own OUTPUT replaces its reports; another model's, eval set's or suite's is
    refused with :class:`InvalidInput` (exit 2), as ``classify`` refuses another job's
    OUTPUT. A ``report.json`` that is not an Ironsight report is refused the same way.
    With ``--overwrite`` only :data:`AUDIT_FILES` are replaced; nothing else is touched.
    """
    out = storage.resolve(cfg.output)
    target = out.join("report.json")
    if cfg.overwrite or not storage.exists(target):
        return
    ours = {"model": model_name, "input": cfg.input, "suite": cfg.suite.name}
    try:
        data = json.loads(storage.read_bytes(target, max_bytes=MAX_REPORT_BYTES, what="report.json"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = None
    if not (isinstance(data, dict) and isinstance(data.get("model"), dict)):
        raise InvalidInput(
            f"OUTPUT {cfg.output} holds a report.json that is not an Ironsight audit report; "
            "choose another OUTPUT, or pass --overwrite to replace it (only report.json/.md/.html "
            "and predictions.parquet are written)"
        )
    their_data = data.get("data") if isinstance(data.get("data"), dict) else {}
    theirs = {
        "model": data["model"].get("name"),
        "input": their_data.get("input"),
        "suite": data.get("suite"),
    }
    differs = [k for k in ours if theirs[k] != ours[k]]
    if differs:
        what = ", ".join(f"{k} {theirs[k]!r} (this audit: {ours[k]!r})" for k in differs)
        raise InvalidInput(
            f"OUTPUT {cfg.output} already holds the audit of another model, eval set or suite: "
            f"{what}. Choose another OUTPUT, or pass --overwrite to replace its reports "
            "(only report.json/.md/.html and predictions.parquet are replaced)"
        )


def _prepare_output(output: str) -> None:
    """Create a local OUTPUT folder and check that it takes files, or say in one line why not.

    Nothing is written but a probe file, removed at once; the reports overwrite only the
    files the audit writes (``report.json``, ``report.md``, ``report.html``,
    ``predictions.parquet``), and nothing in OUTPUT is ever deleted.
    """
    out = storage.resolve(output)
    if out.is_s3:
        return
    if os.path.exists(out.path) and not os.path.isdir(out.path):
        raise InvalidInput(f"OUTPUT {output} is a file, not a folder: the audit writes its reports into a folder")
    try:
        os.makedirs(out.path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".ironsight-probe-", dir=out.path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InvalidInput(f"cannot write to OUTPUT {output}: {storage_errors.os_reason(exc)}") from None


def _write_outputs(output: str, report: dict, table: pa.Table, examples) -> dict[str, str]:
    """Reports and predictions.parquet published into OUTPUT, a local folder or an s3:// prefix.

    A failed write (disk full, read-only, no permission) is a one-line :class:`JobFailed`
    naming OUTPUT and the OS reason.
    """
    try:
        return _write_outputs_to(output, report, table, examples)
    except OSError as exc:
        where = getattr(exc, "filename", None) or output
        raise JobFailed(f"writing the audit's results to {where} failed: {storage_errors.os_reason(exc)}") from exc


def _write_outputs_to(output: str, report: dict, table: pa.Table, examples) -> dict[str, str]:
    from ironsight.robustness.report.write import write_reports

    out = storage.resolve(output)
    paths = write_reports(report, output, examples)  # each file published straight to OUTPUT
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    target = out.join("predictions.parquet")
    storage.publish_bytes(target, sink.getvalue())
    paths["predictions"] = target.uri
    return paths
