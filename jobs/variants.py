"""The audit's stream: eval rows decoded once, every variant made and predicted on the actors'
device, the predictions collected once each in the driver (``ironsight audit`` and ``ironsight
compare``; the orchestration and the reports are :mod:`ironsight.jobs.audit`'s).

| piece | where it runs | what |
|-------|---------------|------|
| :func:`decode_eval_rows` | decode tasks (CPU) | a shard's eval rows read and decoded once, in clean blocks |
| :class:`AuditPredictor` | predictor actors (GPU or cores) | each clean batch onto the device once; clean, every (condition, severity) and every (attack, eps) predicted |
| :func:`collect_predictions` | the driver | one row per (row, kind, condition, severity, eps), retried batches dropped |

This module imports neither torch nor Ray at import time: a decode task imports it (Ray ships
:func:`decode_eval_rows` by reference) and needs neither.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from ironsight.cluster import corpus as corpus_mod
from ironsight.cluster import engine, reader
from ironsight.cluster.decode import DEFAULT_MAX_PIXELS, decode_rows, worker_identity
from ironsight.cluster.errors import JobFailed, ray_error_message
from ironsight.cluster.output_format import WORKER_COLUMNS
from ironsight.cluster.predictor import CostProfile, Predictor, as_error, measure_cost
from ironsight.cluster.preprocess import Preprocess
from ironsight.cluster.progress import progress
from ironsight.jobs.spec import AUDIT_ROWS_PER_SHARD
from ironsight.robustness.schema import PREDICTIONS_SCHEMA

if TYPE_CHECKING:
    from ironsight.cluster.models import ModelSource
    from ironsight.robustness.suites import AttackSpec, Suite

log = logging.getLogger("ironsight")

# An eval-set row's key: shard index << ROW_KEY_BITS | place in the shard (a shard holds far
# fewer than 2**32 rows).
ROW_KEY_BITS = 32
# What makes a prediction one: the eval-set row and the variant (the driver keeps each once).
PREDICTION_KEY = ("row", "kind", "condition", "severity", "eps")


def decode_eval_rows(
    items: dict[str, np.ndarray],
    *,
    plan: corpus_mod.CorpusPlan,
    preprocess: Preprocess,
    limits: dict[int, int],
    block_rows: int,
):
    """Ray Data UDF (CPU task): decode a shard's eval rows once; yield clean blocks of at most
    ``block_rows`` rows (so that the predictor actors share a shard's images).

    Yields ``id``, ``row`` (the eval-set row's key: shard << :data:`ROW_KEY_BITS` | place in the
    shard), ``label_true`` (-1 without a label column), ``image`` (N, H, W, 3) uint8, ``error``
    and ``decode_worker``; a shard stops at its ``--max-images`` limit (``limits``). The
    variants are made from these on the predictor's device (:class:`AuditPredictor`).
    """
    for shard_index in items["shard"]:
        shard = plan.shards[int(shard_index)]
        remaining = limits.get(shard.index, shard.num_rows)
        position = 0  # the row's place in the shard: with the shard, the row's key (collect_predictions)
        for batch in reader.iter_shard(plan, shard, batch_rows=AUDIT_ROWS_PER_SHARD):
            if remaining <= 0:
                break
            take = min(remaining, len(batch["id"]))
            remaining -= take
            rows = (shard.index << ROW_KEY_BITS) + np.arange(position, position + take, dtype=np.int64)
            position += take
            images, errors = decode_rows(batch["image"][:take], batch["error"][:take], preprocess)
            ids = np.asarray(batch["id"][:take], dtype=object)
            labels = np.asarray(batch["label"][:take], np.int64) if "label" in batch else np.full(take, -1, np.int64)
            worker = worker_identity()
            for lo in range(0, take, max(1, block_rows)):
                hi = min(take, lo + max(1, block_rows))
                yield {"id": ids[lo:hi], "row": rows[lo:hi], "label_true": labels[lo:hi], "image": images[lo:hi],
                       "error": np.asarray(errors[lo:hi], dtype=object),
                       "decode_worker": np.full(hi - lo, worker, dtype=object)}


class AuditPredictor(Predictor):
    """A :class:`Predictor` that makes and predicts every variant of a clean batch.

    | step | on the actor's device |
    |------|------------------------|
    | clean | the batch's decoded rows go to the device once (:meth:`Predictor.to_device`: the pinned staging buffer on CUDA) and are predicted |
    | corruptions | for each suite condition, :func:`~ironsight.robustness.conditions.batch.corrupt_batch` on that device tensor (batched tensor ops where the condition has them; NumPy image by image on :attr:`threads` threads otherwise), each severity predicted as it comes |
    | attacks | for clean rows that were predicted and have a label: each attack at each epsilon, in float32 (no autocast), model in eval mode |

    One output row per (row, kind, condition, severity, eps), as :func:`collect_predictions`
    keys them; a row that did not decode keeps its error in the clean row and in each
    corruption row (no attack). A variant equals :func:`~ironsight.robustness.conditions.apply_condition`
    on the image alone (what the report's examples show), rounded to 256 levels.
    """

    def __init__(self, source: ModelSource, *, attacks: tuple[AttackSpec, ...], seed: int,
                 conditions: tuple[str, ...] = (), severities: tuple[int, ...] = (), **kw) -> None:
        super().__init__(source, top_k=1, passthrough=("id", "row", "label_true", "decode_worker"), **kw)
        self.attacks = attacks
        self.seed = seed
        self.conditions = conditions
        self.severities = severities

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ironsight.robustness.conditions.batch import corrupt_batch

        errors = np.array([as_error(e) for e in batch["error"]], dtype=object)
        ok = np.array([e is None for e in errors], dtype=bool)
        x = self.to_device(batch["image"][ok]) if ok.any() else None  # (M, 3, H, W) float32 in [0, 1]
        keys = [str(k) for k in batch["id"][ok]]
        clean = self.predict(x, errors)
        parts = [self._rows(batch, clean, "clean", "clean", 0)]
        for name in self.conditions:
            variants = (corrupt_batch(name, x, self.severities, seed=self.seed, keys=keys, threads=self.threads)
                        if x is not None else ((s, None) for s in self.severities))
            for severity, variant in variants:
                parts.append(self._rows(batch, self.predict(variant, errors), "corruption", name, severity))
        attacked = np.array([e is None for e in clean["error"]], bool) & (batch["label_true"] >= 0)
        if self.attacks and attacked.any():
            parts += self._attack(batch, x, (np.cumsum(ok) - 1)[attacked], attacked, clean)
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _rows(self, batch: dict[str, np.ndarray], predicted: dict[str, np.ndarray], kind: str,
              condition: str, severity: int) -> dict[str, np.ndarray]:
        n = len(batch["id"])
        return {
            **{k: batch[k] for k in self.passthrough},
            **predicted,
            "kind": np.full(n, kind, dtype=object),
            "condition": np.full(n, condition, dtype=object),
            "severity": np.full(n, severity, np.int32),
            "eps": np.zeros(n, np.float64),
            "worker": np.full(n, self.worker, dtype=object),
        }

    def _attack(self, batch: dict[str, np.ndarray], x, places: np.ndarray, rows: np.ndarray,
                clean: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """The attacks on the batch's ``rows`` (mask), whose images are ``x[places]`` and whose
        clean predictions are in ``clean``: each attack's budgets in one
        :func:`~ironsight.robustness.attack_sweep.attack_sweep` (RobustBench's rule unless the
        suite's attack sets ``early_stop: false``)."""
        import torch

        from ironsight.robustness.attack_sweep import attack_sweep

        m = int(rows.sum())
        x = x[torch.as_tensor(places, device=x.device)]  # (M, 3, H, W) float32 in [0, 1], on the device
        x = x.contiguous(memory_format=torch.channels_last)  # the layout the model runs fastest in
        y = torch.from_numpy(batch["label_true"][rows]).to(self.device)
        known = (torch.from_numpy(clean["label"][rows]).to(self.device),
                 torch.from_numpy(clean["score"][rows]).to(self.device))
        fixed = {
            "id": batch["id"][rows],
            "row": batch["row"][rows],
            "label_true": batch["label_true"][rows],
            "decode_worker": batch["decode_worker"][rows],
            "kind": np.full(m, "attack", dtype=object),
            "severity": np.zeros(m, np.int32),
            "error": np.full(m, None, dtype=object),
            "worker": np.full(m, self.worker, dtype=object),
        }
        parts = []
        for spec in self.attacks:
            for out in attack_sweep(self.model, x, y, name=spec.name, eps=spec.eps, steps=spec.steps,
                                    alpha=spec.alpha, seed=self.seed, clean=known, early_stop=spec.early_stop):
                pred = out.predictions.cpu().numpy().astype(np.int64)
                conf = out.confidences.cpu().numpy().astype(np.float32)
                for eps in (e for e in spec.eps if float(e) == out.eps):  # a budget listed twice: twice
                    parts.append(
                        {
                            **fixed,
                            "condition": np.full(m, spec.name, dtype=object),
                            "eps": np.full(m, float(eps), np.float64),
                            "label": pred,
                            "score": conf,
                            "topk_labels": pred[:, None],
                            "topk_scores": conf[:, None],
                        }
                    )
        return parts


def clean_dataset(plan: corpus_mod.CorpusPlan, shards: list, limits: dict[int, int],
                  preprocess: Preprocess, block_rows: int) -> Any:
    """A Ray Dataset of the eval rows, decoded once per shard in the engine's decode tasks
    (:func:`decode_eval_rows`), in Ray blocks of at most ``block_rows`` rows (each goes to
    one actor): the clean images only."""
    ds = engine.decoded([s.index for s in shards], decode_eval_rows,
                        {"plan": plan, "preprocess": preprocess, "limits": limits, "block_rows": block_rows})
    # Ray Data merges what one task yields into blocks of up to 128 MB, and an actor gets a
    # block whole: a shard's clean blocks (all of a 100-image eval set) went to ONE actor while
    # the others idled. Streaming repartition: one Ray block per clean block.
    return ds.repartition(target_num_rows_per_block=block_rows)


def predict_variants(clean: Any, source: ModelSource, suite: Suite, *, seed: int, batch_size: int,
                     actors: int | None, device: str, cost: Callable[[], CostProfile] | None = None,
                     inputs: int | None = None) -> Any:
    """``clean`` (:func:`clean_dataset`) through a pool of :class:`AuditPredictor` actors (one
    per GPU, or sized to the cores): every variant made and predicted on the actor's device,
    and the suite's attacks on the clean rows.

    On CPU the pool is planned from ``cost`` (:func:`audit_cost`: decode per image against
    the model's work per image, every variant counted) by
    :func:`~ironsight.cluster.engine.plan_resources`: decoding is light next to it, so the
    actors get the cores and one decode task runs beside them; one torch thread per actor and
    an actor per core (the blocks are independent: actors beat threads), at most one per
    clean block (``inputs``; :func:`block_rows_for` makes at least two a core).
    """
    res = engine.plan_resources(actors, device, cost=cost, inputs=inputs, one_thread_actors=True)
    return engine.predicted(clean, AuditPredictor, {
        "source": source, "attacks": suite.attacks, "seed": seed,
        "conditions": suite.conditions, "severities": suite.severities,
    }, res, batch_size=batch_size, in_flight=1,  # a block is seconds of work: one queued per actor
        wait_for_actors_s=ACTORS_START_S)  # every actor up first: blocks are few, each is much work


def model_passes(suite: Suite) -> int:
    """The model's forward passes per image, in an audit's actor: clean, each (condition,
    severity), and per (attack, eps > 0) about 3 a step (forward and backward; FGSM is one step)
    plus the prediction of the adversarial image.

    >>> from ironsight.robustness.suites import AttackSpec, Suite
    >>> model_passes(Suite("s", ("fog",), (1, 2), (AttackSpec("fgsm", (0.0, 0.01)), AttackSpec("pgd", (0.01,), steps=10))))
    39
    """
    attacks = sum(1 + (3 * (1 if a.name == "fgsm" else a.steps) if eps else 0) for a in suite.attacks for eps in a.eps)
    return 1 + len(suite.conditions) * len(suite.severities) + attacks


def audit_cost(model: Any, plan: corpus_mod.CorpusPlan, suite: Suite) -> CostProfile:
    """This audit's :class:`~ironsight.cluster.predictor.CostProfile`: decode per image as
    measured (:func:`~ironsight.cluster.predictor.measure_cost`), the model's time per image
    times :func:`model_passes` (the corruptions' own CPU time is not counted: it only adds to
    the actors' side)."""
    one = measure_cost(model, plan, max_pixels=DEFAULT_MAX_PIXELS)
    k = model_passes(suite)
    return CostProfile(decode_ms=one.decode_ms, model_ms=one.model_ms * k,
                       model_ms_2=None if one.model_ms_2 is None else one.model_ms_2 * k)


# How long an audit waits for all its predictor actors to load the model before it fails (the
# plan sizes the pool to fit the cluster: a wait this long means the cluster cannot hold it).
ACTORS_START_S = 600.0

# A clean block is never cut below this many rows to spread an audit over the actors (the
# model's per-image cost on CPU is flat from ~16 images a batch).
MIN_BLOCK_ROWS = 16


def block_rows_for(rows: int, batch_size: int, device: str, resources: dict[str, float] | None = None) -> int:
    """Rows per clean block of an audit of ``rows`` eval rows: ``batch_size``, or fewer so
    that every worker (a GPU, or a CPU on a CPU plan) gets at least two blocks, at least
    :data:`MIN_BLOCK_ROWS`. Each row becomes dozens of variants, so blocks are the units the
    actors share: 100 rows in blocks of 64 gave one of two 1-thread actors 64% of the work
    (23.6 s of mobilenet_v3_small's audit against 9.8 s).

    >>> block_rows_for(100, 64, "cpu", {"CPU": 2.0})
    25
    >>> block_rows_for(100_000, 64, "cpu", {"CPU": 2.0}), block_rows_for(40, 64, "auto", {"CPU": 16.0, "GPU": 4.0})
    (64, 16)
    """
    if resources is None:
        import ray

        resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if device != "cpu" else 0
    workers = max(1, gpus or int(resources.get("CPU", 1)))
    return max(1, min(batch_size, max(MIN_BLOCK_ROWS, -(-rows // (2 * workers)))))


def clean_blocks(shards: list, limits: dict[int, int], block_rows: int) -> int:
    """How many blocks :func:`decode_eval_rows` yields (the predictor actors' inputs)."""
    per = AUDIT_ROWS_PER_SHARD
    total = 0
    for s in shards:
        rows = limits.get(s.index, s.num_rows)
        total += sum(-(-min(per, rows - lo) // max(1, block_rows)) for lo in range(0, rows, per))
    return total


def variants_per_image(suite: Suite) -> int:
    """Predictions one image yields: clean, each (condition, severity), each (attack, eps)."""
    return 1 + len(suite.conditions) * len(suite.severities) + sum(len(a.eps) for a in suite.attacks)


def collect_predictions(predicted: Any, total: int, show_progress: bool | None,
                        *, desc: str = "auditing") -> tuple[pa.Table, list[str]]:
    """Drain ``predicted`` in the driver into a :data:`PREDICTIONS_SCHEMA` table (rows that
    decoded), followed by ``pred_worker`` and ``decode_worker`` (where each row was predicted
    and decoded; null when a batch lacks them), and the error strings of the clean rows that
    did not decode.

    Each (row, kind, condition, severity, eps) is kept once, the first time it arrives: Ray Data
    retries the batches a lost actor or node had in flight, so the same prediction may come
    twice. ``row`` is the eval-set row (its shard and place, :data:`ROW_KEY_BITS`), not its id:
    two rows that share an id are two images, both kept (a batch without ``row`` is keyed by
    id). The drain is the engine's (:func:`ironsight.cluster.engine.drain`, keyed by a
    :class:`~ironsight.cluster.engine.KeySet`: ~100 bytes a prediction, for eval sets); the
    duplicates dropped are counted in a debug line (``-v``). ``predicted`` is anything with Ray
    Data's ``iter_batches(batch_size=None, batch_format="numpy")``.
    """
    import ray

    # A bar on a terminal, a line every 10 s in logs (ironsight.cluster.progress.Progress).
    bar = progress(total, show_progress, desc=desc, noun="predictions")
    names = ("id", "kind", "condition", "severity", "eps", "label_true", "label", "score", "error",
             "worker", "decode_worker")
    cols: dict[str, list] = {k: [] for k in names}

    def keep(batch: dict[str, np.ndarray]) -> None:
        n = len(batch["id"])
        for k in names:
            cols[k].append(batch[k] if k in batch else np.full(n, None, object))
        bar.update(n)

    try:
        drained = engine.drain(engine.batches(predicted), keep=keep,
                               dedupe=engine.KeySet(PREDICTION_KEY, fallback={"row": "id"}))
    except ray.exceptions.RayError as exc:
        raise JobFailed(f"the audit pipeline failed: {ray_error_message(exc)}") from exc
    finally:
        bar.close()
    if drained.dropped:
        log.debug("audit: dropped %d duplicate predictions (batches Ray retried after a lost "
                  "actor or node); %d kept", drained.dropped, drained.kept)
    merged = {k: np.concatenate(v) if v else np.array([], object) for k, v in cols.items()}
    errs = [as_error(e) for e in merged["error"]]
    ok = np.array([e is None for e in errs], bool)
    clean_err = [e for e, k in zip(errs, merged["kind"], strict=True) if e is not None and k == "clean"]
    label = merged["label_true"][ok].astype(np.int64)
    prediction = merged["label"][ok].astype(np.int64)
    table = pa.table(
        {
            "id": pa.array(merged["id"][ok].tolist(), pa.string()),
            "kind": pa.array(merged["kind"][ok].tolist(), pa.string()),
            "condition": pa.array(merged["condition"][ok].tolist(), pa.string()),
            "severity": pa.array(merged["severity"][ok].astype(np.int32), pa.int32()),
            "eps": pa.array(merged["eps"][ok].astype(np.float64), pa.float64()),
            "label": pa.array(label, pa.int64()),
            "prediction": pa.array(prediction, pa.int64()),
            "confidence": pa.array(merged["score"][ok].astype(np.float32), pa.float32()),
            "correct": pa.array((label == prediction) & (label >= 0)),
        },
        schema=PREDICTIONS_SCHEMA,
    )
    for column, key in zip(WORKER_COLUMNS, ("worker", "decode_worker"), strict=True):
        values = [v if isinstance(v, str) else None for v in merged[key][ok]]
        table = table.append_column(column, pa.array(values, pa.string()))
    return table, clean_err
