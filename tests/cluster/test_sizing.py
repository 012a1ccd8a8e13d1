"""plan_resources: the actor pool and the decode stage always fit in the cluster together."""

from __future__ import annotations

import math
import os

import pytest

from ironsight.cluster import synthetic
from ironsight.cluster.engine import MIN_THREAD_EFFICIENCY, decode_task_args, plan_resources
from ironsight.cluster.models import ModelSource
from ironsight.cluster.pipeline import ClassifyConfig, run_classify
from ironsight.cluster.predictor import CostProfile


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


# Costs per image (ms): decode on one core, model on 1 and on 2 torch threads.
IDLE_SMALL = CostProfile(decode_ms=0.3, model_ms=1.1, model_ms_2=0.7)  # demo_cnn at 64 px, idle
BUSY_SMALL = CostProfile(decode_ms=0.3, model_ms=3.0, model_ms_2=50.0)  # the same on a loaded node
HEAVY_MODEL = CostProfile(decode_ms=0.6, model_ms=600.0, model_ms_2=320.0)  # resnet50 at 224 px
HEAVY_DECODE = CostProfile(decode_ms=6.0, model_ms=3.0, model_ms_2=1.8)  # small model, 4k JPEGs


@pytest.mark.parametrize("cpus", [1, 2, 3, 4, 8, 16, 64])
@pytest.mark.parametrize("cost", [IDLE_SMALL, BUSY_SMALL, HEAVY_MODEL, HEAVY_DECODE,
                                  CostProfile(decode_ms=1.0, model_ms=5.0)])
@pytest.mark.parametrize("actors", [None, 3])
def test_a_measured_plan_fits_the_cluster_and_never_oversubscribes_a_busy_node(cpus, cost, actors):
    plan = plan_resources(actors, "cpu", resources={"CPU": float(cpus)}, cost=cost)
    assert plan["size"] * plan["num_cpus"] + decode_task_args()["num_cpus"] <= cpus
    assert plan["size"] >= 1 and plan["threads"] >= 1 and plan["decode_tasks"] >= 1
    if actors:
        assert plan["size"] == actors
    if cost.two_thread_efficiency is None or cost.two_thread_efficiency < MIN_THREAD_EFFICIENCY:
        assert plan["threads"] == 1  # a busy node (or one core): no threads waiting on each other
    # the actors' threads never ask for more than the cores the decode share leaves them
    assert plan["size"] * plan["threads"] <= max(plan["size"], math.ceil(cpus * (1 - cost.decode_share)))


def test_the_plan_follows_the_measured_costs():
    plans = {name: plan_resources(None, "cpu", resources={"CPU": 16.0}, cost=c) for name, c in
             (("idle", IDLE_SMALL), ("busy", BUSY_SMALL), ("model", HEAVY_MODEL), ("decode", HEAVY_DECODE))}
    assert plans["decode"]["decode_tasks"] > plans["idle"]["decode_tasks"] > plans["model"]["decode_tasks"] == 1
    assert plans["model"]["threads"] == 2 and plans["busy"]["threads"] == 1
    assert plans["busy"]["size"] > plans["idle"]["size"]  # more 1-thread actors instead of threads
    assert plans["model"]["batch_hint"] < plans["idle"]["batch_hint"]
    two = plan_resources(None, "cpu", resources={"CPU": 2.0}, cost=IDLE_SMALL)
    assert (two["size"], two["threads"], two["num_cpus"]) == (1, 2, 1.0)  # measured best, idle


def test_a_measured_pool_has_no_more_actors_than_inputs():
    # Ray warns on the console about an actor pool larger than its input blocks (one shard)
    assert plan_resources(None, "cpu", resources={"CPU": 2.0}, cost=BUSY_SMALL, inputs=1)["size"] == 1
    assert plan_resources(None, "cpu", resources={"CPU": 2.0}, cost=BUSY_SMALL, inputs=5)["size"] == 2
    assert plan_resources(3, "cpu", resources={"CPU": 8.0}, cost=BUSY_SMALL, inputs=1)["size"] == 3  # asked for


def test_a_gpu_plan_does_not_measure():
    def measure():
        raise AssertionError("measured for a GPU plan")

    plan = plan_resources(None, "auto", resources={"CPU": 8.0, "GPU": 1.0}, cost=measure)
    assert plan["num_gpus"] == 1


def test_measure_cost_times_decode_and_the_model_and_restores_torch_threads(tmp_path):
    import torch

    from ironsight.cluster.corpus import plan_corpus
    from ironsight.cluster.predictor import measure_cost

    synthetic.write_corpus(str(tmp_path / "in"), 20, seed=4, rows_per_file=20, row_group_size=10, size=128)
    plan = plan_corpus(str(tmp_path / "in"))
    before = torch.get_num_threads()
    cost = measure_cost(ModelSource(name="demo_cnn", random_weights=True).load("cpu"), plan,
                        max_pixels=10**8, images=8, budget_s=0.2)
    assert torch.get_num_threads() == before
    assert cost.decode_ms > 0 and cost.model_ms > 0 and 0 < cost.decode_share < 1
    if (os.cpu_count() or 1) >= 2:
        assert cost.model_ms_2 > 0 and cost.two_thread_efficiency > 0
