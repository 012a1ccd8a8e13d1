"""The driver commits whole shards on threads beside its loop (assembly.assemble_shards).

A commit waits on the disk or the object store longer than the loop needs to assemble the next
shard; one at a time, that wait capped one driver at ~16 GPUs' worth of rows on S3
(benchmarks/driver_ceiling.py). These tests hold: commits really overlap, each shard is
committed once and counted once, a failed commit fails the job, and no commit is still running
when assemble_shards returns or raises.
"""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from ironsight.cluster import assembly, pipeline, synthetic
from ironsight.cluster import corpus as corpus_mod
from ironsight.cluster.errors import JobFailed
from ironsight.cluster.sink import LabelSink, ShardRecord

MODEL = SimpleNamespace(info=SimpleNamespace(class_names=("a", "b", "c")))


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    synthetic.write_corpus(str(root), 60, rows_per_file=60, row_group_size=20, size=8)
    plan = corpus_mod.plan_corpus(str(root), max_rows_per_shard=20)
    assert [s.num_rows for s in plan.shards] == [20, 20, 20]
    return plan


def _batches(plan):
    """One predicted batch per shard, as the predictor actors return them."""
    for shard in plan.shards:
        n = shard.num_rows
        rows = np.arange(shard.row_start, shard.row_start + n, dtype=np.int64)
        yield {"shard": np.full(n, shard.index, np.int64), "row": rows,
               "id": np.array([f"r{r}" for r in rows], dtype=object),
               "label": np.zeros(n, np.int64), "score": np.ones(n, np.float32),
               "topk_labels": np.tile(np.array([0, 1], np.int64), (n, 1)),
               "topk_scores": np.tile(np.array([0.6, 0.4], np.float32), (n, 1)),
               "error": np.full(n, None, dtype=object), "worker": np.full(n, "w", dtype=object)}


class StubSink:
    """Counts the commits running at once; ``barrier`` holds each until that many run."""

    def __init__(self, barrier: int | None = None, fail: str | None = None) -> None:
        self.barrier = threading.Barrier(barrier, timeout=20) if barrier else None
        self.fail, self.lock = fail, threading.Lock()
        self.active = self.most = 0
        self.done: list[str] = []

    def commit(self, shard_id, table):
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
        try:
            if self.barrier is not None:
                self.barrier.wait()  # BrokenBarrierError unless the others are in flight too
            else:
                time.sleep(0.3)
            if shard_id == self.fail:
                raise JobFailed(f"could not commit shard {shard_id}: disk full")
            self.done.append(shard_id)
            return ShardRecord(table.num_rows, 0, "0" * 64, f"part-{shard_id}.parquet")
        finally:
            with self.lock:
                self.active -= 1

    def flush_manifest(self, force=False):
        pass


def _summary(plan):
    return pipeline.ClassifySummary(output="o", rows_total=plan.num_rows, shards_total=len(plan.shards))


def test_commits_run_at_once_and_each_shard_counts_once(plan):
    assert assembly.COMMIT_THREADS >= 3
    sink, summary = StubSink(barrier=3), _summary(plan)
    timing = assembly.assemble_shards(_batches(plan), plan, MODEL, plan.shards, sink, summary, False)
    assert sink.most == 3 and sink.active == 0
    assert sorted(sink.done) == sorted(s.shard_id for s in plan.shards)
    assert (summary.rows, summary.shards_processed, summary.duplicate_ids) == (60, 3, 0)
    assert timing["commit_s"] > 0 and timing["commit_wait_s"] <= timing["busy_s"]


def test_a_failed_commit_fails_the_job_and_leaves_no_commit_running(plan):
    sink, summary = StubSink(fail=plan.shards[1].shard_id), _summary(plan)
    with pytest.raises(JobFailed, match="disk full"):
        assembly.assemble_shards(_batches(plan), plan, MODEL, plan.shards, sink, summary, False)
    assert sink.active == 0
    assert summary.rows == 20 * summary.shards_processed and summary.shards_processed < 3


def test_threaded_commits_into_a_real_sink_write_every_row_once(plan, tmp_path):
    import pyarrow.dataset as pads

    out = str(tmp_path / "out")
    sink = LabelSink.open(out, spec_hash="0123456789abcdef", header={},
                          expected_shards=[s.shard_id for s in plan.shards])
    summary = _summary(plan)
    try:
        assembly.assemble_shards(_batches(plan), plan, MODEL, plan.shards, sink, summary, False)
    finally:
        sink.close()
    ids = pads.dataset(out, format="parquet", ignore_prefixes=["_", "."]).to_table().column("id").to_pylist()
    assert sorted(ids) == sorted(f"r{r}" for r in range(60))
    with open(tmp_path / "out" / "_manifest.json") as f:
        manifest = json.load(f)
    assert manifest["committed_rows"] == 60 and len(manifest["shards"]) == 3


def test_a_batch_redelivered_after_its_shard_was_committed_is_dropped_not_a_failure(plan):
    """Ray Data may retry an actor task whose outputs already arrived (a bundle of blocks from
    several shards, the actor lost after the first shard's batches): those rows come again after
    their shard was committed. They are duplicates, not the start of an incomplete shard."""
    first = next(_batches(plan))
    redelivered = [*_batches(plan), {k: v.copy() for k, v in first.items()}]
    sink, summary = StubSink(), _summary(plan)
    assembly.assemble_shards(iter(redelivered), plan, MODEL, plan.shards, sink, summary, False)
    assert sorted(sink.done) == sorted(s.shard_id for s in plan.shards)  # each committed once
    assert (summary.rows, summary.duplicates_dropped) == (60, 20)
