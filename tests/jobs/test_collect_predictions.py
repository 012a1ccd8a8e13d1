"""The audit's driver assembly (``ironsight.jobs.variants.collect_predictions``) keeps each
prediction once when Ray Data re-delivers batches, and carries where each row was computed.

Ray Data retries the batches a lost actor (or a lost node) had in flight, so the same
(id, kind, condition, severity, eps) can arrive twice; the fake dataset below re-delivers
batches the way a retry does, without Ray.
"""

from __future__ import annotations

import numpy as np

from ironsight.jobs.variants import collect_predictions
from ironsight.robustness.schema import PREDICTIONS_SCHEMA


class Redelivered:
    """Anything with Ray Data's ``iter_batches``: yields the given batches in order."""

    def __init__(self, batches):
        self.batches = batches

    def iter_batches(self, *, batch_size=None, batch_format="numpy"):
        assert batch_size is None and batch_format == "numpy"
        yield from self.batches


def batch(ids, *, kind="clean", condition="clean", severity=0, eps=0.0, pred=None, errors=None,
          worker="aaaaaaaa/11/-", decode="bbbbbbbb/22"):
    n = len(ids)
    pred = [1] * n if pred is None else pred
    return {
        "id": np.asarray(ids, dtype=object),
        "kind": np.full(n, kind, dtype=object),
        "condition": np.full(n, condition, dtype=object),
        "severity": np.full(n, severity, np.int32),
        "eps": np.full(n, eps, np.float64),
        "label_true": np.ones(n, np.int64),
        "label": np.asarray(pred, np.int64),
        "score": np.full(n, 0.9, np.float32),
        "error": np.asarray(errors or [None] * n, dtype=object),
        "worker": np.full(n, worker, dtype=object),
        "decode_worker": np.full(n, decode, dtype=object),
    }


def test_retried_batches_are_kept_once_and_the_drop_is_logged(ironsight_log):
    clean = batch(["a", "b", "c"], errors=[None, None, "corrupt: bad bytes"])
    fog = batch(["a", "b"], kind="corruption", condition="fog", severity=3, pred=[1, 0])
    fgsm = batch(["a", "b"], kind="attack", condition="fgsm", eps=2 / 255, pred=[0, 0])
    # the retry of a lost actor's batches: the same rows again, from another actor on another
    # node (its prediction may even differ in the last bits; the first to arrive is kept)
    retried_clean = batch(["a", "b", "c"], errors=[None, None, "corrupt: bad bytes"],
                          worker="cccccccc/33/-", decode="dddddddd/44")
    retried_fog = batch(["b"], kind="corruption", condition="fog", severity=3, pred=[1],
                        worker="cccccccc/33/-")
    fog_s4 = batch(["a"], kind="corruption", condition="fog", severity=4)  # another severity: new
    fgsm_eps = batch(["a"], kind="attack", condition="fgsm", eps=4 / 255)  # another eps: new
    stream = Redelivered([clean, fog, retried_clean, fgsm, retried_fog, fog_s4, fgsm_eps, fgsm])

    table, clean_err = collect_predictions(stream, total=11, show_progress=False)

    keys = list(zip(*(table.column(c).to_pylist() for c in ("id", "kind", "condition", "severity", "eps")),
                    strict=True))
    assert len(keys) == len(set(keys)) == 2 + 2 + 2 + 1 + 1  # clean a, b; fog@3; fgsm@2; fog@4; fgsm@4
    assert clean_err == ["corrupt: bad bytes"]  # the error row of c, once
    assert table.schema.names == [*PREDICTIONS_SCHEMA.names, "pred_worker", "decode_worker"]
    rows = {(r["id"], r["condition"], r["severity"]): r for r in table.to_pylist()}
    # the first delivery wins: b under fog@3 was predicted 0 (wrong) by aaaaaaaa, not 1
    assert rows[("b", "fog", 3)]["prediction"] == 0 and rows[("b", "fog", 3)]["correct"] is False
    assert rows[("b", "fog", 3)]["pred_worker"] == "aaaaaaaa/11/-"
    assert rows[("a", "clean", 0)]["decode_worker"] == "bbbbbbbb/22"
    # dropped: 3 retried clean rows (c's error too), b's fog@3 again, the whole fgsm@2 batch again
    assert "dropped 6 duplicate predictions" in ironsight_log.text


def test_without_duplicates_nothing_is_dropped_and_old_batches_without_worker_columns_work(ironsight_log):
    old = batch(["a", "b"])
    del old["worker"], old["decode_worker"]
    table, clean_err = collect_predictions(Redelivered([old]), total=2, show_progress=False)
    assert table.num_rows == 2 and clean_err == []
    assert table.column("pred_worker").null_count == 2  # unknown, not invented
    assert "duplicate" not in ironsight_log.text


def test_two_rows_that_share_an_id_are_two_images_and_both_are_kept(ironsight_log):
    """The key is the eval-set row (shard << 32 | place), not the id: an eval set that repeats an
    id loses no image, while a retried batch of the same rows is still dropped."""
    first = batch(["dup", "dup", "x"], pred=[1, 0, 1])
    first["row"] = np.array([0, 1, 2], np.int64)
    retried = batch(["dup", "dup", "x"], pred=[1, 0, 1], worker="cccccccc/33/-")
    retried["row"] = first["row"].copy()
    other_shard = batch(["dup"], pred=[1])
    other_shard["row"] = np.array([(1 << 32) + 0], np.int64)

    table, _ = collect_predictions(Redelivered([first, retried, other_shard]), total=4, show_progress=False)

    assert table.column("id").to_pylist().count("dup") == 3  # rows 0 and 1 of shard 0, row 0 of shard 1
    assert table.num_rows == 4
    assert sorted(table.column("correct").to_pylist()) == [False, True, True, True]
    assert "dropped 3 duplicate predictions" in ironsight_log.text
