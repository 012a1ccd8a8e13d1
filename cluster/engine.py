"""The streaming engine every Ray job of Ironsight runs: classify, audit and compare.

    shards ──► decode task per shard (CPU, streaming: ``decoded``) ──► predictor actor pool
        (one per GPU, or sized to the cores: ``plan_resources``, ``predicted``) ──► driver:
        ``drain``, each row kept once by the job's dedupe key, handed to the job's ``keep``

| job      | decode function | predictor | dedupe key | what ``keep`` does |
|----------|-----------------|-----------|------------|--------------------|
| classify | ``cluster.decode.read_and_decode`` | ``Predictor`` | ``(shard, row)``: :class:`ShardRows` | assembles whole shards and commits them on threads (``cluster.assembly.assemble_shards``) |
| audit, compare | ``jobs.variants.decode_eval_rows`` | ``AuditPredictor`` (variants made on its device) | ``(row, kind, condition, severity, eps)``: :class:`KeySet` | collects the predictions table (``jobs.variants.collect_predictions``) |

One place to change how work is batched, placed or deduplicated: the resource plan, the two
operators and the driver's loop are here, and each job only says what it decodes, predicts and
keeps.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.predictor import CostProfile

log = logging.getLogger("ironsight")


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
    one_thread_actors: bool = False,
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
    | threads per actor     | 1 when the 2nd thread's efficiency ``m1 / (2 m2)`` < :data:`MIN_THREAD_EFFICIENCY` (a busy node: threads wait on each other) or the caller asks for ``one_thread_actors`` (an audit); else ``round(model cores / actors)`` (decode's idle share is used), at most ``ceil(model cores)`` in all |
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
        one_thread_actors: on a measured CPU plan, one torch thread per actor and an actor per
            model core (up to ``inputs``) whatever the threads' efficiency: an audit's blocks are
            independent and each is dozens of model passes, so actors beat threads (100 images
            of mobilenet_v3_small's audit on 2 cores: 16.7 s of work per 1-thread actor, two
            of them, against 20.9 s on one 2-thread actor; measured on this project's machine).

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
        efficient = eff is not None and eff >= MIN_THREAD_EFFICIENCY and not one_thread_actors
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


# ---- the stream: shards -> decode tasks -> predictor actors --------------------------------

def decoded(shards: Sequence[int], decode: Callable[..., Iterator[dict]], decode_kwargs: dict[str, Any]) -> Any:
    """A Ray Dataset of ``decode`` run once per shard index of ``shards``, as CPU tasks.

    ``decode(items, **decode_kwargs)`` is a Ray Data UDF: ``items["shard"]`` holds one shard
    index; it yields decoded blocks (``image`` (N, H, W, 3) uint8, ``error`` and the columns the
    predictor passes through). The tasks are :func:`decode_task_args` (one CPU, a memory
    request: a separate operator from the predictors). Ironsight's decode functions:
    ``ironsight.cluster.decode.read_and_decode`` (classify) and
    ``ironsight.jobs.variants.decode_eval_rows`` (audit, compare).
    """
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False  # the job's own progress is shown
    items = ray.data.from_items([{"shard": int(i)} for i in shards], override_num_blocks=len(shards))
    return items.map_batches(decode, batch_size=1, fn_kwargs=decode_kwargs, **decode_task_args())


def predicted(ds: Any, predictor: type, predictor_kwargs: dict[str, Any], res: dict[str, Any], *,
              batch_size: int, in_flight: int | None = None, wait_for_actors_s: float | None = None) -> Any:
    """``ds`` through a pool of ``predictor`` actors sized by ``res`` (:func:`plan_resources`).

    ``predictor(**predictor_kwargs, device=res["device"], cpu_threads=res["threads"])`` is built
    once per actor (``ironsight.cluster.predictor.Predictor`` or a subclass) and called with
    batches of ``batch_size`` rows. Ray Data restarts a killed actor and retries its in-flight
    batches (``max_restarts=-1``, ``max_task_retries=-1``): the duplicates that may make are
    dropped by :func:`drain`. ``in_flight``: at most that many batches queued on one actor
    (Ray Data's ``max_tasks_in_flight_per_actor``; None: its default, which let the first
    actor up take all four blocks of a 100-image audit while the second one idled).
    ``wait_for_actors_s``: the pool starts work only once all its actors are up, failing the
    job if they are not within that many seconds (Ray Data's ``wait_for_min_actors_s``, set on
    this dataset's context only); None: work starts on the first actor up, and a short job
    may end before a slow node's actor has loaded its model.
    """
    from ray.data import ActorPoolStrategy

    pool = {} if in_flight is None else {"max_tasks_in_flight_per_actor": in_flight}
    out = ds.map_batches(
        predictor,
        fn_constructor_kwargs={**predictor_kwargs, "device": res["device"], "cpu_threads": res.get("threads")},
        compute=ActorPoolStrategy(size=res["size"], **pool),
        num_gpus=res["num_gpus"],
        num_cpus=res["num_cpus"],
        batch_size=batch_size,
    )
    if wait_for_actors_s is not None:
        out.context.wait_for_min_actors_s = wait_for_actors_s  # this dataset's copy of the context
    return out


def batches(ds: Any, *, prefetch_batches: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """``ds``'s batches as the actors made them (no re-batching), in NumPy: what :func:`drain`
    takes. ``ds`` is anything with Ray Data's ``iter_batches`` (tests pass a stand-in);
    ``prefetch_batches`` is passed on when given."""
    extra = {} if prefetch_batches is None else {"prefetch_batches": prefetch_batches}
    return ds.iter_batches(batch_size=None, batch_format="numpy", **extra)


# ---- the driver's exactly-once drain -----------------------------------------------------

class ShardRows:
    """Dedupe key ``(shard, row)`` (classify): a bitmap per shard being assembled.

    A row is fresh the first time it arrives; a row repeated within a batch counts once. When
    a shard is whole the caller calls :meth:`done`: its bitmap is freed, and any later row of
    it is a duplicate (a batch Ray retried after the shard was committed). Memory: one byte per
    row of the shards in flight.

    >>> from types import SimpleNamespace as S
    >>> rows = ShardRows([S(index=0, row_start=0, num_rows=3), S(index=1, row_start=3, num_rows=2)])
    >>> rows({"shard": np.array([0, 0, 1, 0]), "row": np.array([0, 1, 3, 0])}).tolist()
    [True, True, True, False]
    >>> rows.done(1); rows({"shard": np.array([1, 0]), "row": np.array([4, 2])}).tolist()
    [False, True]
    """

    def __init__(self, shards: Iterable[Any]) -> None:
        self._shape = {s.index: (s.row_start, s.num_rows) for s in shards}
        self._seen: dict[int, np.ndarray] = {}
        self._done: set[int] = set()

    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        shards = batch["shard"]
        fresh = np.zeros(len(shards), bool)
        for shard_index in np.unique(shards):
            index = int(shard_index)
            if index in self._done:
                continue
            at = np.flatnonzero(shards == shard_index)
            start, n = self._shape[index]
            rows = batch["row"][at] - start
            seen = self._seen.get(index)
            if seen is None:
                seen = self._seen[index] = np.zeros(n, bool)
            new = ~seen[rows]
            _, first = np.unique(rows, return_index=True)  # a row repeated within this batch counts once
            once = np.zeros(len(rows), bool)
            once[first] = True
            new &= once
            seen[rows[new]] = True
            fresh[at[new]] = True
        return fresh

    def done(self, index: int) -> None:
        """Shard ``index`` is whole: free its bitmap; its rows are duplicates from now on."""
        self._seen.pop(index, None)
        self._done.add(index)


class KeySet:
    """Dedupe key: a tuple of columns (the audit: ``row, kind, condition, severity, eps``).

    The keys seen are held in a set (~100 bytes a key: for eval sets, not corpora). A batch
    without a column uses its ``fallback`` column instead (``{"row": "id"}``: batches from
    before rows had keys).

    >>> keys = KeySet(("row", "kind"), fallback={"row": "id"})
    >>> keys({"row": np.array([1, 1, 2]), "kind": np.array(["a", "a", "a"], object)}).tolist()
    [True, False, True]
    >>> len(keys)
    2
    """

    def __init__(self, columns: Sequence[str], *, fallback: dict[str, str] | None = None) -> None:
        self.columns = tuple(columns)
        self.fallback = dict(fallback or {})
        self._seen: set[tuple] = set()

    def __len__(self) -> int:
        return len(self._seen)

    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        cols = [batch[c if c in batch else self.fallback[c]].tolist() for c in self.columns]
        n = len(cols[0]) if cols else 0
        fresh = np.zeros(n, bool)
        seen = self._seen
        for i, key in enumerate(zip(*cols, strict=True)):
            if key not in seen:
                seen.add(key)
                fresh[i] = True
        return fresh


@dataclass
class Drained:
    """What :func:`drain` saw: rows kept and dropped, seconds waiting for Ray Data."""

    kept: int = 0
    dropped: int = 0
    wait_s: float = 0.0


def drain(batches: Iterable[dict[str, np.ndarray]], *, dedupe: Callable[[dict[str, np.ndarray]], np.ndarray],
          keep: Callable[[dict[str, np.ndarray]], None], after_batch: Callable[[], None] | None = None) -> Drained:
    """The driver's loop over predicted batches: each row kept once, the first time it arrives.

    | step | what |
    |------|------|
    | wait | ``next(batches)`` (timed: :attr:`Drained.wait_s`) |
    | dedupe | ``dedupe(batch)``: a bool mask of the rows not seen before (:class:`ShardRows`, :class:`KeySet`); the rest are counted as dropped |
    | keep | ``keep(rows)`` with the fresh rows only (the batch itself when all are fresh; not called when none are): classify assembles shards and commits them, the audit collects a table |
    | after | ``after_batch()`` after every batch (classify books the commits that returned) |

    Ray Data retries the batches a lost actor or node had in flight, so the same rows can come
    twice; dropping them here is what makes every job's output exactly-once. When the loop
    stops, returning or raising, Ray Data's iterator is closed: its ``finally`` shuts the
    executor down (actors, tasks, their CPUs). On an error the traceback keeps the iterator
    alive, and a rerun in the same Ray (a resume from Python) would otherwise find the failed
    run's actors still holding the CPUs and wait forever.
    """
    stats = Drained()
    clock = time.perf_counter
    it = iter(batches)
    try:
        while True:
            t0 = clock()
            batch = next(it, None)
            stats.wait_s += clock() - t0
            if batch is None:
                break
            fresh = dedupe(batch)
            kept = int(fresh.sum())
            stats.kept += kept
            stats.dropped += len(fresh) - kept
            if kept:
                keep(batch if kept == len(fresh) else {k: v[fresh] for k, v in batch.items()})
            if after_batch is not None:
                after_batch()
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
    return stats
