"""The audit's actors make the variants on their device (jobs.variants.AuditPredictor), from clean
blocks decoded once per shard (jobs.variants.decode_eval_rows); no Ray: the UDFs are called as
Ray Data calls them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ironsight.cluster import corpus as corpus_mod
from ironsight.cluster import synthetic
from ironsight.cluster.models import ModelSource
from ironsight.cluster.predictor import CostProfile, Predictor
from ironsight.jobs import variants
from ironsight.jobs.variants import (
    ROW_KEY_BITS,
    AuditPredictor,
    audit_cost,
    clean_blocks,
    decode_eval_rows,
    model_passes,
)
from ironsight.robustness.conditions import apply_condition
from ironsight.robustness.suites import AttackSpec, Suite

SOURCE = ModelSource(name="demo_cnn", random_weights=True)
CONDITIONS = ("gaussian_noise", "contrast")
SEVERITIES = (1, 4)


@pytest.fixture(autouse=True)
def keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def clean_batch(n: int, errors: tuple[int, ...] = ()) -> dict[str, np.ndarray]:
    """What decode_eval_rows yields: decoded images, row keys, labels, errors."""
    images = np.stack([np.asarray(synthetic.render_image(5, i, 48)[0]) for i in range(n)])
    return {
        "id": np.array([f"img-{i}" for i in range(n)], object),
        "row": np.arange(n, dtype=np.int64) + (3 << ROW_KEY_BITS),
        "label_true": np.array([i % 8 if i != 1 else -1 for i in range(n)], np.int64),  # row 1: no label
        "image": images,
        "error": np.array(["truncated: cut short" if i in errors else None for i in range(n)], object),
        "decode_worker": np.full(n, "node/7", object),
    }


def test_one_row_per_variant_and_each_corruption_predicted_as_apply_condition_makes_it():
    b = clean_batch(6, errors=(2,))
    p = AuditPredictor(SOURCE, attacks=(AttackSpec("fgsm", (0.0, 2 / 255), steps=1),), seed=3,
                       conditions=CONDITIONS, severities=SEVERITIES, device="cpu", cpu_threads=1)
    out = p(b)
    keys = list(zip(out["row"].tolist(), out["kind"].tolist(), out["condition"].tolist(),
                    out["severity"].tolist(), out["eps"].tolist(), strict=True))
    assert len(keys) == len(set(keys))
    # clean + 2 x 2 corruptions for every row (the decode error too); attacks on the 4 labeled
    # rows that decoded (not row 1: no label; not row 2: no image), at 2 eps
    assert len(keys) == 6 * (1 + 4) + 4 * 2
    assert set(out) >= {"id", "row", "label_true", "decode_worker", "label", "score", "error", "worker"}
    assert set(out["decode_worker"]) == {"node/7"} and set(out["worker"]) == {p.worker}

    reference = Predictor(SOURCE, device="cpu", cpu_threads=1, top_k=1)
    ok = [i for i in range(6) if i != 2]
    for name in CONDITIONS:
        for severity in SEVERITIES:
            sel = (out["condition"] == name) & (out["severity"] == severity)
            got = {int(r): (int(lab), float(s), e) for r, lab, s, e in
                   zip(out["row"][sel], out["label"][sel], out["score"][sel], out["error"][sel], strict=True)}
            assert got[int(b["row"][2])][0] == -1 and got[int(b["row"][2])][2].startswith("truncated:")
            # the image alone through apply_condition: what the report's example shows
            alone = np.stack([apply_condition(name, b["image"][i], severity, seed=3, key=str(b["id"][i])) for i in ok])
            ref = reference({"image": alone, "error": np.full(len(ok), None, object)})
            for j, i in enumerate(ok):
                label, score, error = got[int(b["row"][i])]
                assert error is None and label == ref["label"][j], (name, severity, i)
                assert score == pytest.approx(float(ref["score"][j]), abs=2e-3)
    clean = out["kind"] == "clean"
    eps0 = (out["kind"] == "attack") & (out["eps"] == 0)
    assert dict(zip(out["row"][eps0].tolist(), out["label"][eps0].tolist(), strict=True)) == {
        r: lab for r, lab, t in zip(out["row"][clean].tolist(), out["label"][clean].tolist(),
                                    b["label_true"].tolist(), strict=True) if t >= 0 and lab >= 0}


def test_a_batch_of_decode_errors_only_yields_error_rows_and_no_attack():
    b = clean_batch(3, errors=(0, 1, 2))
    p = AuditPredictor(SOURCE, attacks=(AttackSpec("fgsm", (2 / 255,), steps=1),), seed=0,
                       conditions=CONDITIONS, severities=SEVERITIES, device="cpu", cpu_threads=1)
    out = p(b)
    assert len(out["row"]) == 3 * 5 and "attack" not in set(out["kind"])
    assert all(e.startswith("truncated:") for e in out["error"]) and (out["label"] == -1).all()


def test_decode_eval_rows_yields_clean_blocks_within_the_limit_and_clean_blocks_counts_them(tmp_path):
    synthetic.write_corpus(str(tmp_path / "eval"), 30, seed=1, rows_per_file=15, row_group_size=5, size=32)
    plan = corpus_mod.plan_corpus(str(tmp_path / "eval"), label_column="label", max_rows_per_shard=256)
    pre = SOURCE.validate().info.preprocess
    shards = list(plan.shards)
    limits = {shards[-1].index: 4}  # --max-images stops inside the last shard
    blocks = [blk for s in shards for blk in decode_eval_rows({"shard": np.array([s.index])}, plan=plan,
                                                              preprocess=pre, limits=limits, block_rows=4)]
    assert len(blocks) == clean_blocks(shards, limits, 4)
    assert all(len(blk["id"]) <= 4 for blk in blocks)
    assert set(blocks[0]) == {"id", "row", "label_true", "image", "error", "decode_worker"}
    rows = np.concatenate([blk["row"] for blk in blocks])
    assert len(rows) == len(set(rows.tolist())) == sum(limits.get(s.index, s.num_rows) for s in shards)
    assert (rows >> ROW_KEY_BITS).max() == shards[-1].index
    assert all(blk["image"].shape[1:] == (pre.crop, pre.crop, 3) for blk in blocks)
    assert (np.concatenate([blk["label_true"] for blk in blocks]) >= 0).all()


def test_the_cpu_plan_counts_every_variant_so_the_actors_get_the_cores(monkeypatch):
    from ironsight.cluster.engine import plan_resources

    suite = Suite("s", CONDITIONS, (1, 2, 3, 4, 5), (AttackSpec("fgsm", (2 / 255,), steps=1),))
    assert model_passes(suite) == 1 + 10 + 4
    one = CostProfile(decode_ms=2.0, model_ms=1.0, model_ms_2=0.55)  # decode-heavy for one pass
    monkeypatch.setattr(variants, "measure_cost", lambda model, plan, max_pixels: one)
    cost = audit_cost(None, None, suite)
    assert cost.model_ms == 15.0 and cost.decode_ms == 2.0
    classify = plan_resources(None, "cpu", resources={"CPU": 8.0}, cost=one)
    audited = plan_resources(None, "cpu", resources={"CPU": 8.0}, cost=cost)
    assert classify["decode_tasks"] == 5  # one clean pass: decoding is most of the work
    assert audited["decode_tasks"] == 1  # every variant counted: one decode task, the rest to actors
    assert audited["size"] * audited["num_cpus"] == pytest.approx(7.0)
    # an audit's actors: one torch thread each, an actor per model core, at most one per block
    spread = plan_resources(None, "cpu", resources={"CPU": 8.0}, cost=cost, one_thread_actors=True, inputs=100)
    assert (spread["size"], spread["threads"], audited["threads"]) == (7, 1, 2)
    few = plan_resources(None, "cpu", resources={"CPU": 8.0}, cost=cost, one_thread_actors=True, inputs=3)
    assert few["size"] == 3


def test_blocks_spread_an_audit_over_every_worker():
    from ironsight.jobs.variants import MIN_BLOCK_ROWS, block_rows_for

    assert block_rows_for(100, 64, "cpu", {"CPU": 2.0}) == 25  # 4 blocks: two for each core
    assert block_rows_for(10_000, 64, "cpu", {"CPU": 2.0}) == 64  # plenty: the batch size
    assert block_rows_for(20, 64, "cpu", {"CPU": 8.0}) == MIN_BLOCK_ROWS  # never tiny blocks
    assert block_rows_for(400, 64, "auto", {"CPU": 8.0, "GPU": 2.0}) == 64  # per GPU, not per CPU
    assert block_rows_for(400, 64, "cpu", {"CPU": 8.0, "GPU": 2.0}) == 25


def test_the_audits_decode_stage_imports_neither_torch_nor_ray():
    """Ray ships decode_eval_rows by reference: a decode task imports jobs.variants, which must
    not pull torch in (seconds of CPU per worker, taken from the actors beside it)."""
    import subprocess
    import sys

    from ray import cloudpickle

    assert b"ironsight.jobs.variants" in cloudpickle.dumps(decode_eval_rows)  # by reference
    fresh = ("import sys; from ironsight.jobs.variants import decode_eval_rows;"
             "print([m for m in ('torch', 'torchvision', 'ray') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", fresh], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("early_stop", [True, False])
def test_attack_rows_are_the_sweeps_and_early_stop_false_is_torchattacks(early_stop):
    """Labels = the model's clean classes (every row attacked); early_stop False: each row is
    the prediction of run_attack's (torchattacks') image; True: never more robust than that."""
    from ironsight.robustness.attack_sweep import predict
    from ironsight.robustness.attacks import run_attack

    b = clean_batch(8)
    spec = AttackSpec("pgd", (2 / 255, 8 / 255), steps=3, early_stop=early_stop)
    p = AuditPredictor(SOURCE, attacks=(spec,), seed=5, device="cpu", cpu_threads=1)
    x = p.to_device(b["image"])
    b["label_true"] = predict(p.model, x)[0].numpy()
    out = p(b)
    for eps in spec.eps:
        sel = (out["kind"] == "attack") & (out["eps"] == eps)
        assert sorted(out["row"][sel].tolist()) == sorted(b["row"].tolist())
        got = dict(zip(out["row"][sel].tolist(), out["label"][sel].tolist(), strict=True))
        adv = run_attack(p.model, x, torch.from_numpy(b["label_true"]), name="pgd", eps=eps, steps=3, seed=5)
        ref = dict(zip(b["row"].tolist(), predict(p.model, adv)[0].tolist(), strict=True))
        if early_stop:
            robust = sum(got[r] == t for r, t in zip(b["row"].tolist(), b["label_true"].tolist(), strict=True))
            assert robust <= sum(ref[r] == t for r, t in zip(b["row"].tolist(), b["label_true"].tolist(), strict=True))
        else:
            assert got == ref
