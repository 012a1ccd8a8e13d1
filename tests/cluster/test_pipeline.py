"""The bulk-labeling pipeline on a real (embedded) Ray with two logical GPUs."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from ironsight.cluster import synthetic
from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.models import ModelSource
from ironsight.cluster.output_format import LABELS_SCHEMA
from ironsight.cluster.pipeline import ClassifyConfig, run_classify

N_ROWS = 600


@pytest.fixture(scope="module")
def ray_two_gpus(s3_server):
    """One small Ray per module (Ray's ray_start_regular_shared), with 2 *logical* GPUs.

    Started after the S3 endpoint so its workers inherit AWS_ENDPOINT_URL, as a user's would.
    """
    import ray

    from ironsight.cluster.raycluster import connect

    if ray.is_initialized():
        ray.shutdown()
    with connect(None, num_cpus=2, num_gpus=2):
        yield


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("corpus")
    synthetic.write_corpus(str(path), N_ROWS, seed=7, rows_per_file=200, row_group_size=100)
    return str(path)


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory) -> str:
    """Good images mixed with zero bytes, random bytes, a truncated JPEG and a null image."""
    path = tmp_path_factory.mktemp("bad")
    img, _ = synthetic.render_image(1, 1, 64)
    good = synthetic.encode(img)
    blobs = [good, b"", np.random.default_rng(0).bytes(500), good[: len(good) // 2], None, good]
    ids = [f"r{i}" for i in range(len(blobs))]
    pq.write_table(pa.table({"id": ids, "image": pa.array(blobs, pa.binary())}), path / "part-0.parquet")
    return str(path)


def cfg(input: str, output, **kw) -> ClassifyConfig:
    kw.setdefault("source", ModelSource(name="demo_cnn", random_weights=True))
    kw.setdefault("batch_size", 32)
    kw.setdefault("max_rows_per_shard", 100)
    kw.setdefault("progress", False)
    return ClassifyConfig(input=input, output=str(output), **kw)


def read_output(out) -> pa.Table:
    return pads.dataset(str(out), format="parquet").to_table()


def test_every_row_exactly_once_across_two_gpu_pinned_actors(ray_two_gpus, corpus, tmp_path):
    # Ray's pool gives each batch to the least-busy actor (ties go to the first), so a model
    # slower than decode is needed for work to queue up and reach both actors.
    out = tmp_path / "labels"
    slow = ModelSource(name="mobilenet_v3_small", random_weights=True)
    summary = run_classify(cfg(corpus, out, source=slow))
    table = read_output(out)
    ids = table.column("id").to_pylist()
    truth = pads.dataset(corpus, format="parquet").to_table(columns=["id"]).column("id").to_pylist()
    assert len(ids) == N_ROWS and sorted(ids) == sorted(truth)
    assert len(set(ids)) == N_ROWS
    assert summary.rows == N_ROWS and summary.error_rows == 0
    # two actors, each pinned to a different logical GPU, both did work
    gpus = {w.rsplit("/", 1)[1] for w in summary.rows_per_worker}  # node/pid/gpus
    assert len(summary.rows_per_worker) == 2, summary.rows_per_worker
    assert gpus == {"0", "1"}
    assert all(n > 0 for n in summary.rows_per_worker.values())
    assert (out / "_SUCCESS").is_file()
    assert len(list(out.glob("part-*.parquet"))) == summary.shards_total == 6
    labels = table.column("pred_label").to_pylist()
    assert all(isinstance(v, int) and 0 <= v < 1000 for v in labels)


def test_output_files_follow_the_labels_schema(ray_two_gpus, corpus, tmp_path):
    out = tmp_path / "labels"
    run_classify(cfg(corpus, out, top_k=3))
    part = pq.read_table(next(out.glob("part-*.parquet")))
    assert part.schema.remove_metadata().equals(LABELS_SCHEMA)
    assert b"demo_cnn" in part.schema.metadata[b"ironsight.header"]
    assert b"random-init" in part.schema.metadata[b"ironsight.header"]
    row = part.slice(0, 1).to_pylist()[0]
    assert len(row["pred_topk_labels"]) == 3 and row["pred_label"] == row["pred_topk_labels"][0]
    assert row["pred_label_name"] in synthetic.CLASS_NAMES
    assert row["pred_topk_scores"] == sorted(row["pred_topk_scores"], reverse=True)
    assert 0 < row["pred_score"] <= 1


def test_corrupt_images_become_error_rows_and_the_job_finishes(ray_two_gpus, bad_corpus, tmp_path):
    out = tmp_path / "labels"
    summary = run_classify(cfg(bad_corpus, out))
    rows = {r["id"]: r for r in read_output(out).to_pylist()}
    assert len(rows) == 6
    assert rows["r0"]["error"] is None and rows["r5"]["error"] is None
    assert rows["r0"]["pred_label"] >= 0 and rows["r0"]["pred_score"] > 0
    assert rows["r1"]["error"].startswith("empty")
    assert rows["r2"]["error"].startswith("not_an_image")
    assert rows["r3"]["error"].startswith("truncated")
    assert rows["r4"]["error"].startswith("null_image")
    assert all(rows[i]["pred_label"] is None and rows[i]["pred_topk_labels"] is None for i in ("r1", "r2", "r3", "r4"))
    assert summary.error_rows == 4
    assert summary.errors_by_reason == {"empty": 1, "not_an_image": 1, "truncated": 1, "null_image": 1}


def test_rerunning_a_finished_job_is_a_no_op(ray_two_gpus, corpus, tmp_path):
    out = tmp_path / "labels"
    run_classify(cfg(corpus, out))
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    again = run_classify(cfg(corpus, out))
    assert again.already_complete and again.rows == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")} == before


def test_an_output_written_by_another_spec_is_refused_unless_overwrite(ray_two_gpus, corpus, tmp_path):
    out = tmp_path / "labels"
    run_classify(cfg(corpus, out, top_k=5))
    with pytest.raises(InvalidInput, match="different job"):
        run_classify(cfg(corpus, out, top_k=2))
    summary = run_classify(cfg(corpus, out, top_k=2, overwrite=True))
    assert summary.rows == N_ROWS
    assert len(pq.read_table(next(out.glob("part-*.parquet"))).column("pred_topk_labels")[0]) == 2


def test_labels_from_s3_to_s3(ray_two_gpus, s3_bucket, tmp_path):
    synthetic.write_corpus(f"{s3_bucket}/corpus", 120, seed=3, rows_per_file=60, row_group_size=30)
    summary = run_classify(cfg(f"{s3_bucket}/corpus", f"{s3_bucket}/labels"))
    assert summary.rows == 120
    from ironsight.cluster import storage

    out = storage.resolve(f"{s3_bucket}/labels")
    names = sorted(i.base_name for i in storage.list_files(out))
    assert len([n for n in names if n.startswith("part-")]) == summary.shards_total
    assert storage.exists(out.join("_SUCCESS")) and storage.exists(out.join("_manifest.json"))
    total = sum(
        pq.read_table(io.BytesIO(storage.read_bytes(out.join(n)))).num_rows for n in names if n.startswith("part-")
    )
    assert total == 120
