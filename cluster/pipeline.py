"""The bulk-labeling pipeline: corpus -> decode (CPU tasks) -> predict (GPU actors) -> sink.

    plan (footers only) ──► pending shards ──► read+decode task per shard (CPU, streaming)
        ──► Predictor actor pool (one per GPU, model loaded once) ──► driver: per-shard
        assembly, dedupe by (shard, row), atomic commit when a shard is whole ──► _SUCCESS

The stream, its resource plan and the driver's exactly-once loop are the engine's
(:mod:`ironsight.cluster.engine`, shared with the audit); this module says what classify
decodes (``read_and_decode``), predicts (:class:`Predictor`) and does with the rows it keeps
(:func:`~ironsight.cluster.assembly.assemble_shards`: whole shards committed on threads).

Rows are keyed by ``(shard, row)``: if Ray re-delivers output after retrying a task or
restarting an actor, the duplicate is dropped, so each input row is written exactly once
(:class:`ironsight.cluster.sink.LabelSink`, one atomic commit per shard).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from ironsight.cluster import corpus as corpus_mod
from ironsight.cluster import engine, paths
from ironsight.cluster.assembly import assemble_shards
from ironsight.cluster.decode import DEFAULT_MAX_PIXELS, read_and_decode
from ironsight.cluster.errors import InvalidInput, JobFailed, ray_error_message
from ironsight.cluster.models import LoadedModel, ModelSource
from ironsight.cluster.output_format import stable_hash
from ironsight.cluster.predictor import Predictor, measure_cost
from ironsight.cluster.progress import status
from ironsight.cluster.sink import LabelSink

log = logging.getLogger("ironsight")


@dataclass(frozen=True)
class ClassifyConfig:
    """Everything a bulk-labeling run needs; the CLI and job specs build one of these."""

    input: str
    output: str
    source: ModelSource
    top_k: int = 5
    batch_size: int = 64
    actors: int | None = None
    image_column: str | None = None
    id_column: str | None = None
    max_rows_per_shard: int = 4096
    skip_bad_files: bool = False
    overwrite: bool = False
    device: str = "auto"
    max_pixels: int = DEFAULT_MAX_PIXELS
    torch_compile: bool = False  # torch.compile in each actor; outputs agree with eager to ~1e-6
    progress: bool | None = None  # None: a bar on a terminal, log lines otherwise
    # Roots that image paths in corpus rows must lie in (ironsight.cluster.paths); () means no limit.
    allowed_roots: tuple[str, ...] = ()
    # Input columns copied to the output rows (("*",): all but the image column); see corpus.
    keep_columns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # OUTPUT a folder apart from INPUT: refused when the config is built, which the CLI
        # does before Ray starts (ironsight.cluster.paths.check_output).
        paths.check_output(self.input, self.output)


@dataclass
class ClassifySummary:
    """What a run did; printed at the end and written to ``_SUCCESS``."""

    output: str
    rows: int = 0
    rows_total: int = 0
    shards_total: int = 0
    shards_skipped: int = 0
    shards_processed: int = 0
    error_rows: int = 0
    errors_by_reason: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    images_per_s: float = 0.0
    rows_per_worker: dict[str, int] = field(default_factory=dict)
    duplicates_dropped: int = 0
    duplicate_ids: int = 0
    duplicate_check_rows: int | None = None  # set when only the first N rows were checked
    already_complete: bool = False
    skipped_files: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def render(self) -> str:
        if self.already_complete:
            return f"{self.output} is already complete ({self.rows_total} rows); nothing to do."
        lines = [
            f"labeled {self.rows} rows in {self.wall_s:.1f}s ({self.images_per_s:.1f} images/s)",
            f"  shards: {self.shards_processed} processed, {self.shards_skipped} already committed,"
            f" {self.shards_total} in all ({self.rows_total} rows)",
            f"  error rows: {self.error_rows}"
            + (
                " (" + ", ".join(f"{k}: {v}" for k, v in sorted(self.errors_by_reason.items())) + ")"
                if self.errors_by_reason
                else ""
            ),
        ]
        if self.duplicate_ids:
            lines.append(
                f"  duplicate ids: {self.duplicate_ids} rows repeat an id of an earlier row"
                " (each still has its own output row)"
            )
        if self.duplicate_check_rows is not None:
            lines.append(f"  duplicate ids checked over the first {self.duplicate_check_rows} rows only")
        if self.skipped_files:
            lines.append(f"  skipped files: {len(self.skipped_files)}")
            lines += [f"    {f}: {why}" for f, why in self.skipped_files]
        if len(self.rows_per_worker) > 1:
            lines.append(f"  actors: {len(self.rows_per_worker)}")
        lines.append(f"  output: {self.output}")
        return "\n".join(lines)


def validate_model(source: ModelSource) -> LoadedModel:
    """Load the model once in the driver so bad weights fail before any actor starts."""
    return source.validate()


def announce_preprocessing(model: LoadedModel) -> str:
    """Say at job start, in one line on stderr, how images become the model's input.

    The same record goes into the outputs (``report.json``'s ``preprocessing``, the Parquet
    metadata key ``ironsight.preprocessing``); a JSON log handler gets it as a log record.
    """
    line = f"model {model.info.name}: {model.info.preprocess.summary()}"
    status(line, preprocessing=model.info.preprocess.to_dict())
    return line


def output_rows_hash(cfg: ClassifyConfig, plan: corpus_mod.CorpusPlan, model: LoadedModel) -> str:
    """The OUTPUT's owner identity: a hash of what decides the output rows (corpus, model,
    weights, preprocessing, top-k, pixel cap), not of batch size, actors or other tuning.

    Stored as ``ironsight.spec_hash`` in every part file's footer and in the manifest; a run
    with another hash is another job (refused without ``--overwrite``). Not the submission
    identity (``ironsight.jobs.submit.validated_spec_hash``, every spec field).
    """
    return stable_hash(
        {
            "corpus": plan.fingerprint(),
            "model": model.info.name,
            "weights_sha256": model.weights_sha256,
            "preprocess": model.info.preprocess.__dict__,
            "top_k": cfg.top_k,
            "max_pixels": cfg.max_pixels,
        }
    )


def _check_flags(cfg: ClassifyConfig) -> None:
    if cfg.top_k < 1:
        raise InvalidInput(f"--top-k must be at least 1, got {cfg.top_k}")
    if cfg.batch_size < 1:
        raise InvalidInput(f"--batch-size must be at least 1, got {cfg.batch_size}")


def plan_classify(cfg: ClassifyConfig, *, corpus: corpus_mod.CorpusPlan | None = None) -> corpus_mod.CorpusPlan:
    """Check the tuning flags and plan the corpus from its footers; needs no Ray.

    The CLI calls this before it starts Ray, so a bad flag or a bad file (a corrupted or
    inconsistent footer, another schema) is refused in a second, not after Ray's start-up.

    ``corpus`` is the plan when the caller made it already (``ClassifyJob.plan_input``, before
    torch was imported); it is returned after the flags are checked.

    Raises:
        InvalidInput: a bad flag, or a bad file that ``cfg.skip_bad_files`` does not skip.
    """
    _check_flags(cfg)
    if corpus is not None:
        return corpus
    return corpus_mod.plan_corpus(
        cfg.input,
        image_column=cfg.image_column,
        id_column=cfg.id_column,
        max_rows_per_shard=cfg.max_rows_per_shard,
        skip_bad_files=cfg.skip_bad_files,
        allowed_roots=cfg.allowed_roots,
        keep_columns=cfg.keep_columns,
    )


def _sink_header(cfg: ClassifyConfig, plan: corpus_mod.CorpusPlan, model: LoadedModel) -> dict[str, Any]:
    return {
        "input": cfg.input,
        "model": {"name": model.info.name, "weights_sha256": model.weights_sha256},
        "preprocessing": model.info.preprocess.to_dict(),
        "top_k": cfg.top_k,
        "num_shards": len(plan.shards),
        "num_rows": plan.num_rows,
        "versions": _versions(),
    }


def completed_summary(
    cfg: ClassifyConfig, plan: corpus_mod.CorpusPlan, model: LoadedModel
) -> ClassifySummary | None:
    """The summary of a no-op rerun when OUTPUT already holds this very job, complete; else None.

    Needs no Ray: the CLI asks before it starts Ray, so rerunning a finished job answers
    "already complete" in the time it takes to read the footers. "Complete" is decided as
    :func:`run_classify` decides it: ``_SUCCESS`` present and every planned shard committed
    under this job's spec hash (OUTPUT opened through :class:`LabelSink`, which also refuses
    another job's OUTPUT). Without ``_SUCCESS`` nothing is opened and None is returned.
    """
    from ironsight.cluster import storage
    from ironsight.cluster.sink import SUCCESS

    if not storage.exists(storage.resolve(cfg.output).join(SUCCESS)):
        return None
    sink = LabelSink.open(
        cfg.output,
        spec_hash=output_rows_hash(cfg, plan, model),
        header=_sink_header(cfg, plan, model),
        expected_shards=[s.shard_id for s in plan.shards],
        overwrite=cfg.overwrite,
    )
    try:
        if not (sink.is_complete and len(sink.committed) == len(plan.shards)):
            return None
    finally:
        sink.close()
    return ClassifySummary(
        output=cfg.output, rows_total=plan.num_rows, shards_total=len(plan.shards),
        shards_skipped=len(plan.shards), already_complete=True,
        skipped_files=[tuple(x) for x in plan.skipped],
    )


def run_classify(
    cfg: ClassifyConfig,
    *,
    plan: corpus_mod.CorpusPlan | None = None,
    model: LoadedModel | None = None,
) -> ClassifySummary:
    """Label every row of ``cfg.input`` into ``cfg.output`` exactly once; resumable.

    Ray must already be initialised (:func:`ironsight.cluster.raycluster.connect`).

    Args:
        cfg: the job.
        plan: :func:`plan_classify`'s result for ``cfg`` when the caller planned before
            starting Ray; planned here when None.
        model: ``validate_model(cfg.source)`` when the caller validated it before starting
            Ray; validated here when None.

    Raises:
        InvalidInput: bad corpus, columns, model or OUTPUT; nothing was written.
        JobFailed: the run started and could not finish; committed shards stay valid.
    """
    import ray

    started = time.monotonic()
    _check_flags(cfg)
    if plan is None:
        plan = plan_classify(cfg)
    if model is None:
        model = validate_model(cfg.source)
    if model.info.num_classes < cfg.top_k:
        log.warning("top-k %d > %d classes; returning %d", cfg.top_k, model.info.num_classes, model.info.num_classes)
    announce_preprocessing(model)
    digest = output_rows_hash(cfg, plan, model)
    header = _sink_header(cfg, plan, model)
    sink = LabelSink.open(
        cfg.output,
        spec_hash=digest,
        header=header,
        expected_shards=[s.shard_id for s in plan.shards],
        overwrite=cfg.overwrite,
    )
    summary = ClassifySummary(
        output=cfg.output,
        rows_total=plan.num_rows,
        shards_total=len(plan.shards),
        skipped_files=[tuple(x) for x in plan.skipped],
    )
    try:
        if sink.is_complete and len(sink.committed) == len(plan.shards):
            summary.already_complete = True
            summary.shards_skipped = len(plan.shards)
            return summary
        pending = [s for s in plan.shards if s.shard_id not in sink.committed]
        summary.shards_skipped = len(plan.shards) - len(pending)
        if pending:
            _stream(cfg, plan, model, pending, sink, summary)
        if len(sink.committed) != len(plan.shards):
            missing = sorted(set(s.shard_id for s in plan.shards) - set(sink.committed))
            raise JobFailed(f"{len(missing)} shards were not committed (first: {missing[:3]}); rerun to resume")
        summary.wall_s = time.monotonic() - started
        summary.images_per_s = summary.rows / summary.wall_s if summary.wall_s else 0.0
        sink.finish({"summary": summary.to_json(), "spec_hash": digest})
        return summary
    except ray.exceptions.RayError as exc:
        raise JobFailed(f"the Ray pipeline failed: {ray_error_message(exc)}") from exc
    finally:
        sink.close()


def _stream(
    cfg: ClassifyConfig,
    plan: corpus_mod.CorpusPlan,
    model: LoadedModel,
    pending: list[corpus_mod.Shard],
    sink: LabelSink,
    summary: ClassifySummary,
) -> None:
    """Classify's stream on the engine: ``read_and_decode`` tasks, :class:`Predictor` actors,
    :func:`~ironsight.cluster.assembly.assemble_shards` in the driver."""
    # CPU actors are sized from this job's measured costs per image (measure_cost: ~1-3 s)
    res = engine.plan_resources(cfg.actors, cfg.device, inputs=len(pending),
                                cost=lambda: measure_cost(model, plan, max_pixels=cfg.max_pixels))
    decoded = engine.decoded([s.index for s in pending], read_and_decode,
                             {"plan": plan, "preprocess": model.info.preprocess, "max_pixels": cfg.max_pixels})
    predicted = engine.predicted(decoded, Predictor, {
        "source": cfg.source, "top_k": cfg.top_k, "torch_compile": cfg.torch_compile,
        # decode_worker: the node/pid that decoded each row, into the output (_shard_table)
        "passthrough": ("id", "shard", "row", "decode_worker"),
    }, res, batch_size=cfg.batch_size)
    started = time.monotonic()
    timing = assemble_shards(engine.batches(predicted, prefetch_batches=2), plan, model, pending, sink, summary,
                       cfg.progress)
    log.debug("streamed %d shards in %.1fs; the driver spent %.1fs assembling and committing "
              "and %.1fs waiting for batches", len(pending), time.monotonic() - started,
              timing["busy_s"], timing["wait_s"], extra={"driver": timing})


def _versions() -> dict[str, str]:
    import platform

    import pyarrow
    import ray
    import torch
    import torchvision

    from ironsight.cluster import __version__

    return {
        "ironsight": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "ray": ray.__version__,
        "pyarrow": pyarrow.__version__,
        "host": os.uname().nodename if hasattr(os, "uname") else "",
    }
