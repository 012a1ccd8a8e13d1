"""The engine's driver loop (cluster/engine.py: drain, ShardRows, KeySet): each row kept once,
whatever Ray Data re-delivers, and Ray Data's iterator closed however the loop ends. No Ray:
the batches are made by hand, as the predictor actors return them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ironsight.cluster import engine

SHARDS = [SimpleNamespace(index=0, row_start=0, num_rows=4), SimpleNamespace(index=1, row_start=4, num_rows=3)]


def rows_batch(shard: int, rows: list[int], tag: str = "a") -> dict[str, np.ndarray]:
    return {"shard": np.full(len(rows), shard, np.int64), "row": np.asarray(rows, np.int64),
            "tag": np.full(len(rows), tag, dtype=object)}


class Closing:
    """An iterator over batches that records whether it was closed (Ray Data's shuts its
    executor down when closed)."""

    def __init__(self, batches) -> None:
        self.batches, self.closed = iter(batches), False

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.batches)

    def close(self) -> None:
        self.closed = True


def test_shard_rows_keeps_each_row_once_and_drops_rows_of_a_finished_shard():
    once = engine.ShardRows(SHARDS)
    kept: list[tuple[int, int, str]] = []

    def keep(batch):
        kept.extend(zip(batch["shard"].tolist(), batch["row"].tolist(), batch["tag"].tolist(), strict=True))
        if sum(1 for s, _, _ in kept if s == 0) == 4:
            once.done(0)  # shard 0 committed

    stream = [rows_batch(0, [0, 1]), rows_batch(0, [1, 2, 2], "retry"), rows_batch(1, [4, 5]),
              rows_batch(0, [3]), rows_batch(0, [0, 1, 2, 3], "late"),  # a retried batch of a committed shard
              rows_batch(1, [6, 5], "b")]
    stats = engine.drain(Closing(stream), dedupe=once, keep=keep)
    assert sorted((s, r) for s, r, _ in kept) == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 4), (1, 5), (1, 6)]
    assert ("late" not in {t for _, _, t in kept}) and (0, 2, "retry") in kept
    assert (stats.kept, stats.dropped) == (7, 1 + 1 + 4 + 1)  # row 1 again, row 2 twice in a batch, late, row 5


def test_key_set_keeps_the_first_of_each_key_and_falls_back_to_another_column():
    keys = engine.KeySet(("row", "kind"), fallback={"row": "id"})
    first = {"row": np.array([0, 1]), "kind": np.array(["clean", "clean"], object), "p": np.array([1, 2])}
    again = {"row": np.array([1, 0, 2]), "kind": np.array(["clean", "attack", "clean"], object), "p": np.array([9, 3, 4])}
    no_row = {"id": np.array([1]), "kind": np.array(["clean"], object), "p": np.array([9])}
    got = []
    stats = engine.drain([first, again, no_row], dedupe=keys, keep=lambda b: got.extend(b["p"].tolist()))
    assert got == [1, 2, 3, 4] and stats.dropped == 2 and len(keys) == 4


def test_the_iterator_is_closed_when_the_loop_ends_or_keep_raises():
    done = Closing([rows_batch(0, [0])])
    engine.drain(done, dedupe=engine.ShardRows(SHARDS), keep=lambda b: None)
    assert done.closed
    failing = Closing([rows_batch(0, [0]), rows_batch(0, [1])])

    def keep(batch):
        raise RuntimeError("commit failed")

    with pytest.raises(RuntimeError, match="commit failed"):
        engine.drain(failing, dedupe=engine.ShardRows(SHARDS), keep=keep)
    assert failing.closed


def test_after_batch_runs_after_every_batch_even_one_with_nothing_fresh():
    calls = []
    engine.drain([rows_batch(0, [0]), rows_batch(0, [0])], dedupe=engine.ShardRows(SHARDS),
                 keep=lambda b: calls.append("keep"), after_batch=lambda: calls.append("after"))
    assert calls == ["keep", "after", "after"]
