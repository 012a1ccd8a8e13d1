"""The bulk-labeling pipeline: corpus -> decode (CPU tasks) -> predict (GPU actors) -> sink.

    plan (footers only) ──► pending shards ──► read+decode task per shard (CPU, streaming)
        ──► Predictor actor pool (one per GPU, model loaded once) ──► driver: per-shard
        assembly, dedupe by (shard, row), atomic commit when a shard is whole ──► _SUCCESS

The driver is the only committer. Results are small (ids and top-k), so it assembles each
shard in memory until all of its rows have arrived, then publishes it through
:class:`ironsight.cluster.sink.LabelSink`. Rows are keyed by ``(shard, row)``: if Ray re-delivers output
after retrying a task or restarting an actor, the duplicate is dropped, so each input row is
written exactly once. In-flight shards are bounded by the decode concurrency, so driver
memory does not grow with the corpus.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ironsight.cluster import corpus as corpus_mod
from ironsight.cluster import paths, reader
from ironsight.cluster.decode import (  # noqa: F401  (decode_rows, DECODE_BLOCK_ROWS: ironsight.jobs.audit imports them from here)
    DECODE_BLOCK_ROWS,
    DEFAULT_MAX_PIXELS,
    as_error,
    count_reasons,
    decode_rows,
    read_and_decode,
)
from ironsight.cluster.errors import InvalidInput, JobFailed, ray_error_message
from ironsight.cluster.models import LoadedModel, ModelSource
from ironsight.cluster.predictor import (  # noqa: F401  (check_device: re-exported)
    CostProfile,
    Predictor,
    check_device,
    measure_cost,
)
from ironsight.cluster.progress import Progress, status
from ironsight.cluster.sink import LabelSink, stable_hash

log = logging.getLogger("ironsight")

# Duplicate-id check budget: 5 M rows x 8 bytes = 40 MB of driver memory at most.
DUPLICATE_CHECK_ROWS = 5_000_000
# Shards committed at once, on threads beside the driver's loop (benchmarks/driver_ceiling.py:
# a commit waits on the disk or the object store for longer than the loop takes to assemble
# the next shard, so one at a time capped the driver at ~16 GPUs' worth of rows on S3).
COMMIT_THREADS = 4


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


@dataclass
class _Partial:
    """A shard being assembled in the driver."""

    expected: int
    seen: np.ndarray  # (expected,) bool, indexed by row - row_start
    parts: list[dict[str, np.ndarray]] = field(default_factory=list)
    count: int = 0


# Memory a decode task reserves: a Parquet row group of encoded images plus one decoded block
# (DECODE_BLOCK_ROWS images; 38 MB at 224 px, 206 MB at 518 px). The request is also what
# keeps decoding out of the predictor actors (decode_task_args).
DECODE_TASK_MEMORY = 256 * 1024 * 1024


def decode_task_args() -> dict[str, Any]:
    """Ray remote args of a decode task: one CPU and :data:`DECODE_TASK_MEMORY` bytes of memory.

    The memory request is what keeps decode and predict two operators. Ray Data fuses a task
    stage into the actor stage after it when their remote args are compatible
    (``are_op_remote_args_compatible`` in ``ray/data/_internal/logical/rules/operator_fusion.py``),
    which would move decoding into the predictor actors, serialise it with inference, and
    bundle whole shards into one actor task. Compatible means equal after filling in
    ``num_cpus=1``, ``num_gpus=0`` and an upstream ``scheduling_strategy``:

    | decode args               | predictor args (2 CPUs, no GPU)        | fused? |
    |---------------------------|----------------------------------------|--------|
    | ``num_cpus=1``            | ``num_cpus=1.0, num_gpus=0``           | yes    |
    | ``num_cpus=1`` + a ``scheduling_strategy`` | the same (inherited)  | yes    |
    | ``num_cpus=1, memory=...``| ``num_cpus=1.0, num_gpus=0``           | no     |

    A ``ray_remote_args_fn`` also prevented fusion, but Ray deprecates it (removed in 2.64,
    with a ``RayDeprecationWarning`` on every job until then). ``memory`` is a resource every
    Ray node has, unlike a custom resource, and Ray compares the whole remote-args dict
    (``are_remote_args_compatible``; the release this was checked on is in
    docs/performance.md, "Tried and kept or dropped"). tests/reliability/test_console.py
    checks the operators of an executed classify stay separate.

    >>> decode_task_args()["num_cpus"], decode_task_args()["memory"] // 2**20
    (1, 256)
    """
    return {"num_cpus": 1, "memory": DECODE_TASK_MEMORY}


# The second torch thread must do at least this fraction of a thread's work to be worth having:
# below it (other work holds the cores and the threads wait on each other) actors run 1 thread.
MIN_THREAD_EFFICIENCY = 0.7


def plan_resources(
    actors: int | None, device: str, *, resources: dict[str, float] | None = None,
    cost: CostProfile | Callable[[], CostProfile] | None = None, inputs: int | None = None,
) -> dict[str, Any]:
    """Actor pool size and per-actor resources for the connected Ray cluster.

    One actor per GPU (``num_gpus=1``) when the cluster has GPUs and the device is not forced
    to CPU; each takes a fraction of a CPU so decode tasks always find cores (an actor pool
    holding every CPU would starve the decode stage and deadlock the pipeline).

    On CPU, with a ``cost`` (:func:`ironsight.cluster.predictor.measure_cost`, measured in the
    driver on this job's model and corpus), the plan follows the measured costs per image:
    ``d`` decode ms (one core), ``m1``/``m2`` model ms on 1/2 torch threads, ``C`` CPUs.

    | choice                | rule                                                              |
    |-----------------------|-------------------------------------------------------------------|
    | decode share ``f``    | ``d / (d + m1)``: decode's part of the CPU work per image          |
    | decode tasks          | ``max(1, round(C * f))`` CPUs left free for 1-CPU decode tasks (at most ``C - 1``): Ray runs that many at once |
    | model cores           | ``C * (1 - f)``, at least 1                                        |
    | threads per actor     | 1 when the 2nd thread's efficiency ``m1 / (2 m2)`` < :data:`MIN_THREAD_EFFICIENCY` (a busy node: threads wait on each other); else ``round(model cores / actors)`` (decode's idle share is used), at most ``ceil(model cores)`` in all |
    | actors                | ``--actors``, else ``round(model cores / threads)`` with threads 2 when efficient, 1 otherwise; at least 1, at most ``inputs`` |
    | CPUs per actor        | ``(C - decode tasks) / actors``, rounded down to 1/100             |
    | batch size            | ``--batch-size`` (64): on CPU the per-image cost is flat from ~16 images a batch, so it is not planned; ``batch_hint`` says the smallest batch that keeps Ray's per-batch overhead (~5 ms) under 5% of compute |

    So a decode-heavy job (a small model on large JPEGs) gets more decode tasks and fewer
    model cores; a heavy model gets every core but one's share; and on a node whose cores
    other work holds, actors run one thread each (more actors instead of more threads).

    Without a cost (``ironsight audit``, and callers that do not measure) the fixed rule:
    a quarter of the cores (at least one decode task's worth) stays free for decoding, one
    actor per two cores, and the actors' torch threads cover all the cores between them.

    Args:
        actors: pool size asked for (``--actors``); None sizes it from the cluster.
        device: ``auto``, ``cuda`` or ``cpu``.
        resources: the cluster's resources; None reads ``ray.cluster_resources()``.
        cost: measured costs per image, or a function measuring them (called only when the
            plan is for CPU actors: a GPU plan does not need it); None uses the fixed rule.
        inputs: the input blocks the actors will get (pending shards); a measured CPU pool
            sized from the cluster has no more actors than that (Ray warns, on the console,
            about an actor pool larger than its inputs).

    >>> plan = plan_resources(None, "auto", resources={"CPU": 16.0})
    >>> plan["size"], plan["num_cpus"], plan["threads"]
    (8, 1.5, 2)
    >>> plan_resources(None, "auto", resources={"CPU": 2.0})["threads"]
    2
    >>> plan_resources(None, "auto", resources={"CPU": 8.0, "GPU": 2.0})["num_cpus"]
    1.0
    >>> from ironsight.cluster.predictor import CostProfile
    >>> busy = CostProfile(decode_ms=0.3, model_ms=3.0, model_ms_2=50.0)   # threads collapse
    >>> {k: plan_resources(None, "cpu", resources={"CPU": 2.0}, cost=busy)[k] for k in ("size", "threads")}
    {'size': 2, 'threads': 1}
    >>> idle = CostProfile(decode_ms=0.3, model_ms=3.0, model_ms_2=1.7)
    >>> {k: plan_resources(None, "cpu", resources={"CPU": 2.0}, cost=idle)[k] for k in ("size", "threads")}
    {'size': 1, 'threads': 2}
    >>> heavy_decode = CostProfile(decode_ms=6.0, model_ms=3.0, model_ms_2=1.7)
    >>> plan_resources(None, "cpu", resources={"CPU": 16.0}, cost=heavy_decode)["decode_tasks"]
    11
    """
    nodes: list[float] = []  # CPUs of each node: read with the cluster's resources
    if resources is None:
        import ray

        resources = ray.cluster_resources()
        nodes = _node_cpus()
    cpus = float(resources.get("CPU", 1))
    gpus = int(resources.get("GPU", 0))
    if gpus and device != "cpu":
        n = actors or gpus
        if n > gpus:
            raise InvalidInput(f"--actors {n} asks for more GPU actors than the cluster's {gpus} GPUs")
        return {"size": n, "num_gpus": 1, "num_cpus": min(1.0, max(0.25, (cpus - 1) / n)), "device": device}
    if device == "cuda":
        raise InvalidInput("--device cuda was requested but the Ray cluster has no GPUs")
    decode = float(decode_task_args()["num_cpus"])
    if cost is None:
        n = actors or max(1, int(cpus // 2))
        reserve = max(decode, math.ceil(cpus / 4))
        threads = max(1, round(cpus / n))
        extra: dict[str, Any] = {}
    else:
        if callable(cost):
            cost = cost()
        share = cost.decode_share
        reserve = float(min(max(decode, round(cpus * share)), max(decode, cpus - 1)))
        model_cores = max(1.0, cpus * (1.0 - share))
        eff = cost.two_thread_efficiency
        efficient = eff is not None and eff >= MIN_THREAD_EFFICIENCY
        n = actors or max(1, min(inputs or math.inf, round(model_cores / (2 if efficient else 1))))
        # round(model cores / actors), never more threads in all than the model cores rounded up
        threads = max(1, min(round(model_cores / n), math.ceil(model_cores) // n)) if efficient else 1
        per_image = cost.model_ms if threads == 1 else cost.model_ms_2 * 2 / threads  # type: ignore[operator]
        extra = {"decode_share": share, "thread_efficiency": eff,
                 "batch_hint": max(1, math.ceil(5.0 / 0.05 / max(per_image, 1e-3)))}
    # Rounded down to 1/100 CPU so that n actors plus one decode task always fit: before,
    # (cpus - 0.5) / n per actor left half a CPU, and a 4-CPU cluster never ran a decode task.
    per = max(0.0, math.floor(100 * (cpus - reserve) / n) / 100)
    per = _fit_nodes(per, n, decode, nodes)  # one decode task must fit beside every node's actors
    if cost is not None:
        log.debug("CPU plan: %d actor(s) x %d torch thread(s), %d decode task(s) at once (measured per "
                 "image: decode %.2f ms, model %.2f ms on 1 thread, 2nd thread efficiency %s)",
                 n, threads, int(reserve), cost.decode_ms, cost.model_ms,
                 "n/a" if extra["thread_efficiency"] is None else f"{extra['thread_efficiency']:.2f}")
    return {"size": n, "num_gpus": 0, "num_cpus": per, "device": "cpu", "threads": threads,
            "decode_tasks": int(reserve), **extra}


def _node_cpus() -> list[float]:
    """CPUs of each live node of the connected Ray cluster."""
    import ray

    return [float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]


def _fit_nodes(per: float, actors: int, decode: float, nodes: list[float]) -> float:
    """CPUs per CPU actor, capped so that on every node its actors AND one decode task fit.

    Ray places each actor on one node, and a plan made from the cluster's total CPUs can fill
    every node with actors: 3 nodes of 3 CPUs, 3 actors of 2.66 CPUs leave 0.34 CPU on each,
    no decode task (1 CPU) can ever start, and the job waits forever. With ``ceil(actors /
    nodes)`` actors on a node, each may take ``(node CPUs - decode) / that``, on the smallest
    node that can run a decode task (a head node without CPUs holds neither).

    >>> _fit_nodes(2.66, 3, 1.0, [3.0, 3.0, 3.0])
    2.0
    >>> _fit_nodes(1.5, 6, 1.0, [0.0, 4.0, 4.0])  # 3 actors a node
    1.0
    >>> _fit_nodes(2.66, 3, 1.0, [9.0])  # one node: the plan stands
    2.66
    """
    usable = [c for c in nodes if c > decode]
    if len(usable) < 2:
        return per
    room = (min(usable) - decode) / math.ceil(actors / len(usable))
    return min(per, max(0.01, math.floor(100 * room) / 100))


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
    import ray.data
    from ray.data import ActorPoolStrategy

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours is rows/images-per-second aware and shard-exact
    # CPU actors are sized from this job's measured costs per image (measure_cost: ~1-3 s)
    res = plan_resources(cfg.actors, cfg.device, inputs=len(pending),
                         cost=lambda: measure_cost(model, plan, max_pixels=cfg.max_pixels))
    items = ray.data.from_items(
        [{"shard": s.index} for s in pending], override_num_blocks=len(pending)
    )
    decoded = items.map_batches(
        read_and_decode,
        batch_size=1,
        fn_kwargs={"plan": plan, "preprocess": model.info.preprocess, "max_pixels": cfg.max_pixels},
        **decode_task_args(),  # a separate operator from the predictors (see decode_task_args)
    )
    predicted = decoded.map_batches(
        Predictor,
        fn_constructor_kwargs={
            "source": cfg.source,
            "top_k": cfg.top_k,
            "device": res["device"],
            "cpu_threads": res.get("threads"),
            "torch_compile": cfg.torch_compile,
            # decode_worker: the node/pid that decoded each row, into the output (_shard_table)
            "passthrough": ("id", "shard", "row", "decode_worker"),
        },
        compute=ActorPoolStrategy(size=res["size"]),
        num_gpus=res["num_gpus"],
        num_cpus=res["num_cpus"],
        batch_size=cfg.batch_size,
        # Ray Data restarts a killed actor and retries its in-flight batches by default
        # (max_restarts=-1, max_task_retries=-1); duplicates this may produce are dropped by
        # (shard, row) below.
    )
    started = time.monotonic()
    batches = predicted.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2)
    timing = _assemble(batches, plan, model, pending, sink, summary, cfg.progress)
    log.debug("streamed %d shards in %.1fs; the driver spent %.1fs assembling and committing "
              "and %.1fs waiting for batches", len(pending), time.monotonic() - started,
              timing["busy_s"], timing["wait_s"], extra={"driver": timing})


def _assemble(
    batches: Iterable[dict[str, np.ndarray]],
    plan: corpus_mod.CorpusPlan,
    model: LoadedModel,
    pending: list[corpus_mod.Shard],
    sink: LabelSink,
    summary: ClassifySummary,
    progress_enabled: bool | None,
) -> dict[str, float]:
    """The driver's loop: assemble predicted batches into shards, commit each when whole.

    Rows are deduplicated by ``(shard, row)``; ``summary`` is updated as shards commit.
    Returns where the driver's time went, in wall seconds:

    | key        | time spent                                                          |
    |------------|---------------------------------------------------------------------|
    | ``wait_s`` | in ``next(batches)``: waiting for Ray Data to hand over a batch     |
    | ``busy_s`` | everything else: deduplication, assembly, ``sink.commit``, progress |
    | ``commit_s`` | inside :meth:`LabelSink.commit`, summed over the commit threads   |
    | ``commit_cpu_s`` | CPU of those threads in the commits (the rest: disk or object store) |
    | ``commit_wait_s`` | the part of ``busy_s`` the loop waited for commits to return   |
    | ``cpu_s``  | CPU of the whole driver process meanwhile (Ray Data's threads in it too) |

    ``benchmarks/driver_ceiling.py`` feeds it prepared batches to measure the driver alone.

    A whole shard is committed on one of :data:`COMMIT_THREADS` threads while the loop goes on
    assembling (Parquet encoding and the wait on the disk or object store release the GIL); at
    most twice that many commits are in flight. A shard's rows count (``summary``, progress)
    once its commit has returned; each shard is handed to exactly one commit, and none is
    left running when this returns or raises.

    Raises:
        JobFailed: the batches ended with a shard incomplete, or a commit failed.
    """
    by_index = {s.index: s for s in pending}
    partial: dict[int, _Partial] = {}
    class_names = model.info.class_names
    progress = Progress(sum(s.num_rows for s in pending), progress_enabled)
    errors_by_reason: Counter[str] = Counter(summary.errors_by_reason)
    workers: Counter[str] = Counter()
    # A 64-bit hash per labeled row, to count ids given to several rows: 8 bytes a row, so the
    # check covers the first DUPLICATE_CHECK_ROWS rows (40 MB) and driver memory stays bounded.
    id_hashes: list[np.ndarray] = []
    hashed = 0
    wait_s = commit_wait_s = 0.0
    spent = [0.0, 0.0]  # seconds inside sink.commit, wall and CPU, over the commit threads
    clock = time.perf_counter
    began, cpu_began = clock(), time.process_time()
    guard = threading.Lock()

    def commit(shard_id: str, table: pa.Table):
        t0, c0 = clock(), time.thread_time()
        try:
            return sink.commit(shard_id, table)
        finally:
            with guard:
                spent[0] += clock() - t0
                spent[1] += time.thread_time() - c0

    inflight: deque[tuple[Future, pa.Table]] = deque()

    def settle(block: bool) -> None:
        """Book the commits that returned (every one with ``block``), oldest first."""
        nonlocal commit_wait_s, hashed
        while inflight and (block or inflight[0][0].done() or len(inflight) > 2 * COMMIT_THREADS):
            future, table = inflight.popleft()
            t0 = clock()
            rec = future.result()  # a failed commit raises its JobFailed here
            commit_wait_s += clock() - t0
            summary.shards_processed += 1
            summary.rows += rec.rows
            summary.error_rows += rec.errors
            if hashed < DUPLICATE_CHECK_ROWS:
                ids = table.column("id").to_pylist()
                id_hashes.append(np.fromiter((hash(i) for i in ids), np.int64, len(ids)))
                hashed += len(ids)
            else:
                summary.duplicate_check_rows = hashed
            count_reasons(table.column("error").to_pylist(), errors_by_reason)
            progress.update(rec.rows, rec.errors)

    pool = ThreadPoolExecutor(COMMIT_THREADS, thread_name_prefix="ironsight-commit")
    it = iter(batches)
    try:
        while True:
            t0 = clock()
            batch = next(it, None)
            wait_s += clock() - t0
            if batch is None:
                break
            shards_col = batch["shard"]
            for shard_index in np.unique(shards_col):
                shard = by_index[int(shard_index)]
                sel = shards_col == shard_index
                rows = batch["row"][sel] - shard.row_start
                p = partial.get(shard.index)
                if p is None:
                    p = partial[shard.index] = _Partial(shard.num_rows, np.zeros(shard.num_rows, bool))
                fresh = ~p.seen[rows]
                # a row repeated within this batch counts once too
                _, first = np.unique(rows, return_index=True)
                keep_once = np.zeros(len(rows), bool)
                keep_once[first] = True
                fresh &= keep_once
                summary.duplicates_dropped += int((~fresh).sum())
                if not fresh.any():
                    continue
                p.seen[rows[fresh]] = True
                part = {k: v[sel][fresh] for k, v in batch.items()}
                p.parts.append(part)
                p.count += int(fresh.sum())
                workers.update(part["worker"].tolist())
                if p.count == p.expected:
                    kept = reader.read_kept(plan, shard) if plan.keep_columns else None
                    table = _shard_table(p.parts, class_names, kept)
                    inflight.append((pool.submit(commit, shard.shard_id, table), table))
                    del partial[shard.index]
            settle(block=False)
        settle(block=True)
    finally:
        # no commit outlives this call: the sink closes and releases OUTPUT's lock next
        pool.shutdown(wait=True, cancel_futures=True)
        # Ray Data's iterator is a generator whose `finally` shuts its executor down (actors,
        # tasks, their CPUs). Close it now: on an error the traceback keeps this frame, and with
        # it `it`, alive, so a rerun in the same Ray (a resume from Python) would find the failed
        # run's actors still holding the CPUs and wait forever.
        close = getattr(it, "close", None)
        if close is not None:
            close()
    progress.close()
    sink.flush_manifest(force=True)
    summary.errors_by_reason = dict(errors_by_reason)
    summary.rows_per_worker = dict(workers)
    if id_hashes:
        hashes = np.concatenate(id_hashes)
        summary.duplicate_ids = int(len(hashes) - len(np.unique(hashes)))
    if partial:
        incomplete = {by_index[i].shard_id: f"{p.count}/{p.expected}" for i, p in partial.items()}
        raise JobFailed(f"shards ended incomplete (rows seen/expected): {incomplete}")
    return {"busy_s": clock() - began - wait_s, "wait_s": wait_s, "commit_s": spent[0],
            "commit_cpu_s": spent[1], "commit_wait_s": commit_wait_s, "cpu_s": time.process_time() - cpu_began}


def _shard_table(parts: list[dict[str, np.ndarray]], class_names: tuple[str, ...],
                 kept: pa.Table | None = None) -> pa.Table:
    """Assemble a shard's rows (sorted by row index) into a :data:`LABELS_SCHEMA` table,
    followed by ``kept``'s columns (the shard's kept input columns, in row order)."""
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(cols["row"], kind="stable")
    cols = {k: v[order] for k, v in cols.items()}
    errors = [as_error(e) for e in cols["error"]]
    ok = np.array([e is None for e in errors], bool)
    labels = cols["label"]
    names = np.asarray(class_names, dtype=object)
    topk_labels = cols["topk_labels"]
    topk_scores = cols["topk_scores"]
    k = topk_labels.shape[1]
    n = len(errors)
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
    list_mask = pa.array(~ok)
    table = pa.table(
        {
            "id": pa.array(cols["id"].tolist(), pa.string()),
            "pred_label": pa.array(labels, pa.int64(), mask=~ok),
            "pred_label_name": pa.array(
                [names[i] if good else None for i, good in zip(labels, ok, strict=True)], pa.string()
            ),
            "pred_score": pa.array(cols["score"], pa.float32(), mask=~ok),
            "pred_topk_labels": pa.ListArray.from_arrays(
                offsets, pa.array(topk_labels.reshape(-1), pa.int64()), mask=list_mask
            ),
            "pred_topk_scores": pa.ListArray.from_arrays(
                offsets, pa.array(topk_scores.reshape(-1), pa.float32()), mask=list_mask
            ),
            "error": pa.array(errors, pa.string()),
            # where each row was predicted and decoded (null: a batch without the column)
            "pred_worker": _strings(cols.get("worker"), n),
            "decode_worker": _strings(cols.get("decode_worker"), n),
        }
    )
    if kept is not None:
        if kept.num_rows != n:
            raise JobFailed(f"kept columns hold {kept.num_rows} rows for a shard of {n}")
        for name in kept.column_names:
            table = table.append_column(kept.schema.field(name), kept.column(name))
    return table


def _strings(values: np.ndarray | None, n: int) -> pa.Array:
    """A string column of ``n`` rows from an object array; all null when ``values`` is None."""
    if values is None:
        return pa.nulls(n, pa.string())
    return pa.array([v if isinstance(v, str) else None for v in values], pa.string())



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
