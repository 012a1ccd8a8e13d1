"""Classify's driver side: predicted rows assembled into whole shards, each committed once.

    engine.drain (each (shard, row) once: ShardRows) ──► assemble_shards' keep: rows into their
        shard ──► a whole shard: _shard_table (LABELS_SCHEMA + kept input columns) ──► one of
        COMMIT_THREADS threads: LabelSink.commit ──► summary, progress, duplicate-id count

The driver is the only committer (:func:`ironsight.cluster.pipeline.run_classify` streams,
this module assembles and commits). Results are small (ids and top-k), so a shard is held in
memory until all of its rows have arrived; in-flight shards are bounded by the decode
concurrency, so driver memory does not grow with the corpus.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from ironsight.cluster import corpus as corpus_mod
from ironsight.cluster import engine, reader
from ironsight.cluster.decode import as_error, count_reasons
from ironsight.cluster.errors import JobFailed
from ironsight.cluster.progress import Progress

if TYPE_CHECKING:
    from ironsight.cluster.models import LoadedModel
    from ironsight.cluster.pipeline import ClassifySummary
    from ironsight.cluster.sink import LabelSink

# Duplicate-id check budget: 5 M rows x 8 bytes = 40 MB of driver memory at most.
DUPLICATE_CHECK_ROWS = 5_000_000
# Shards committed at once, on threads beside the driver's loop (benchmarks/driver_ceiling.py:
# a commit waits on the disk or the object store for longer than the loop takes to assemble
# the next shard, so one at a time capped the driver at ~16 GPUs' worth of rows on S3).
COMMIT_THREADS = 4



@dataclass
class _Partial:
    """A shard being assembled in the driver."""

    expected: int
    parts: list[dict[str, np.ndarray]] = field(default_factory=list)
    count: int = 0


def assemble_shards(
    batches: Iterable[dict[str, np.ndarray]],
    plan: corpus_mod.CorpusPlan,
    model: LoadedModel,
    pending: list[corpus_mod.Shard],
    sink: LabelSink,
    summary: ClassifySummary,
    progress_enabled: bool | None,
) -> dict[str, float]:
    """Classify's side of the engine's drain: assemble predicted rows into shards, commit each
    when whole.

    :func:`ironsight.cluster.engine.drain` keeps each ``(shard, row)`` once
    (:class:`~ironsight.cluster.engine.ShardRows`; a row of a shard already committed is a
    duplicate too) and hands the fresh rows here; ``summary`` is updated as shards commit.
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
    once = engine.ShardRows(pending)
    class_names = model.info.class_names
    progress = Progress(sum(s.num_rows for s in pending), progress_enabled)
    errors_by_reason: Counter[str] = Counter(summary.errors_by_reason)
    workers: Counter[str] = Counter()
    # A 64-bit hash per labeled row, to count ids given to several rows: 8 bytes a row, so the
    # check covers the first DUPLICATE_CHECK_ROWS rows (40 MB) and driver memory stays bounded.
    id_hashes: list[np.ndarray] = []
    hashed = 0
    commit_wait_s = 0.0
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

    def keep(batch: dict[str, np.ndarray]) -> None:
        """Fresh rows into their shards; a whole shard goes to a commit thread."""
        shards_col = batch["shard"]
        for shard_index in np.unique(shards_col):
            shard = by_index[int(shard_index)]
            sel = shards_col == shard_index
            part = {k: v[sel] for k, v in batch.items()}
            p = partial.get(shard.index)
            if p is None:
                p = partial[shard.index] = _Partial(shard.num_rows)
            p.parts.append(part)
            p.count += int(sel.sum())
            workers.update(part["worker"].tolist())
            if p.count == p.expected:
                kept = reader.read_kept(plan, shard) if plan.keep_columns else None
                table = _shard_table(p.parts, class_names, kept)
                inflight.append((pool.submit(commit, shard.shard_id, table), table))
                del partial[shard.index]
                once.done(shard.index)

    pool = ThreadPoolExecutor(COMMIT_THREADS, thread_name_prefix="ironsight-commit")
    try:
        drained = engine.drain(batches, dedupe=once, keep=keep, after_batch=lambda: settle(block=False))
        settle(block=True)
    finally:
        # no commit outlives this call: the sink closes and releases OUTPUT's lock next
        pool.shutdown(wait=True, cancel_futures=True)
    summary.duplicates_dropped += drained.dropped
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
    wait_s = drained.wait_s
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
