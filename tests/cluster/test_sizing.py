"""plan_resources: the actor pool and the decode stage always fit in the cluster together."""

from __future__ import annotations

import pytest

from ironsight.cluster import synthetic
from ironsight.cluster.models import ModelSource
from ironsight.cluster.pipeline import (
    ClassifyConfig,
    decode_task_args,
    plan_resources,
    run_classify,
)


@pytest.mark.parametrize("cpus", [1, 2, 3, 4, 6, 8, 16, 64])
@pytest.mark.parametrize("actors", [None, 1, 3])
def test_cpu_actors_leave_room_for_a_decode_task(cpus, actors):
    plan = plan_resources(actors, "auto", resources={"CPU": float(cpus)})
    decode = decode_task_args()["num_cpus"]
    assert plan["device"] == "cpu" and plan["num_gpus"] == 0
    assert plan["size"] == (actors or max(1, cpus // 2))
    assert plan["size"] * plan["num_cpus"] + decode <= cpus
    assert plan["threads"] >= 1
    # torch threads cover the cores (decode shares them) without piling several per core
    assert plan["size"] * plan["threads"] <= max(cpus, plan["size"]) * 1.5
    if plan["size"] <= cpus:
        assert plan["size"] * plan["threads"] >= cpus * 0.75


@pytest.mark.parametrize("cpus", [2, 8, 16])
def test_gpu_actors_take_one_gpu_and_leave_a_cpu_for_decoding(cpus):
    plan = plan_resources(None, "auto", resources={"CPU": float(cpus), "GPU": 2.0})
    assert plan["size"] == 2 and plan["num_gpus"] == 1
    assert plan["size"] * plan["num_cpus"] + decode_task_args()["num_cpus"] <= cpus


@pytest.mark.slow
def test_a_four_cpu_cluster_without_gpus_finishes(tmp_path):
    # Before, 2 actors x 1.75 CPUs left 0.5 CPU on 4: no decode task (1 CPU) could ever start
    # and the job waited forever.
    import ray

    from ironsight.cluster.raycluster import connect

    synthetic.write_corpus(str(tmp_path / "in"), 120, seed=3, rows_per_file=60, row_group_size=30)
    if ray.is_initialized():
        ray.shutdown()
    with connect(None, num_cpus=4):
        summary = run_classify(ClassifyConfig(
            input=str(tmp_path / "in"), output=str(tmp_path / "out"), batch_size=32, progress=False,
            source=ModelSource(name="demo_cnn", random_weights=True)))
    assert summary.rows == 120 and summary.rows_per_worker and len(summary.rows_per_worker) <= 2
