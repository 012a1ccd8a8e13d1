"""Classify and audit on a Ray cluster of three nodes, and a worker node lost mid-job.

The cluster is ``ray.cluster_utils.Cluster`` on this machine: a head and two workers, each a
raylet of its own with NODE_CPUS CPUs and its own object store, so tasks, actors and objects
really live on different nodes (what differs from separate machines is only the network).
With ``--actors 3`` each predictor takes at most 2 of a node's 3 CPUs (``plan_resources`` caps
an actor so that one decode task fits beside it on every node), so exactly one actor fits on
each node and the CPU left next to it runs decode tasks. The jobs run through the CLI in this process (``main([..., "--address",
ADDRESS])``), as a user's driver would, and every assertion about placement is read from
the outputs' ``pred_worker`` and ``decode_worker`` columns (``<node>/<pid>...``, ``<node>``
the first 8 hex digits of the Ray node id).

A node is lost by ``Cluster.remove_node(allow_graceful=False)``, once every predictor actor is
up and before the job has finished: the node's raylet, object store and every worker process
on it are killed at once, with the predictor actor and the decode tasks it held and the
decoded blocks in its object store. Ray Data re-runs the lost decode tasks, restarts the actor
(on a node with room) and retries the batches it had in flight, so rows can arrive twice; the
drivers keep each once (classify by (shard, row), the audit by (id, kind, condition, severity,
eps)). The checks: every input row exactly once in classify's output, each audit prediction
exactly once, both jobs finished. Each loss test first brings the cluster back to three nodes.

The cluster's files live in a private ``RAY_TMPDIR``: ``Cluster`` writes its address to
``$RAY_TMPDIR/ray/ray_current_cluster``, which would otherwise make every other Ray on this
machine that starts with ``ray.init()`` join this cluster. The fixture's finalizer shuts the
cluster down and fails the run if any process of it (raylet, GCS, worker) outlives it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from ironsight.cluster import synthetic

# A job that cannot make progress (a node's actors leaving no CPU for decoding) fails here,
# and the fixture still tears the cluster down, instead of hanging to the suite's limit.
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

NODE_CPUS = 3
ACTORS = 3  # one per node: 2 CPUs each (see the module docstring)
MODEL = ["--model", "demo_cnn", "--random-weights"]
SUITE_YAML = """\
name: tiny
conditions: [gaussian_noise]
severities: [3]
attacks:
  - {name: fgsm, eps: [0.0313725], steps: 1}
"""


def _processes_of(marker: str) -> list[str]:
    """Command lines of the live processes whose command line contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if marker in cmd and state != "Z":  # a zombie is already dead
                found.append(f"{entry}: {cmd[:160]}")
    return found


class ThreeNodes:
    def __init__(self, cluster, workers) -> None:
        self.cluster = cluster
        self.workers = list(workers)  # live worker nodes, oldest first

    @property
    def address(self) -> str:
        return self.cluster.address

    def top_up(self) -> None:
        """Back to three nodes after a test removed one (in the main thread: a node registers
        signal handlers, which Python allows there only)."""
        while len(self.workers) < 2:
            self.add_worker()

    def add_worker(self):
        node = self.cluster.add_node(num_cpus=NODE_CPUS, object_store_memory=120 * 2**20)
        self.cluster.wait_for_nodes()
        self.workers.append(node)
        return node

    def live_prefixes(self) -> set[str]:
        nodes = [self.cluster.head_node, *self.workers]
        return {n.node_id[:8] for n in nodes}

    def predictor_nodes(self) -> dict[str, str]:
        """Node id -> state of each predictor actor of the running job (read from the GCS)."""
        actors = self.cluster.global_state.actor_table(None)
        return {a["Address"]["NodeID"]: a["State"] for a in actors.values()
                if "Predictor" in a.get("ActorClassName", "") and a["State"] != "DEAD"}


@pytest.fixture(scope="module")
def three_nodes():
    import ray
    import ray.data
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    # The pool starts dispatching when ALL its actors are up (Ray Data's default is as soon as
    # one is): on this busy machine an actor may take longer to import torch than a small job
    # takes, and a node with a late actor would then predict nothing. With every actor up,
    # Ray Data hands a decoded block to the actor on the block's node (actor locality), so
    # each node's decodes are predicted there.
    ctx = ray.data.DataContext.get_current()
    saved_wait = ctx.wait_for_min_actors_s
    ctx.wait_for_min_actors_s = 300
    tmp = tempfile.mkdtemp(prefix="ism-", dir="/tmp")  # short: Ray's socket paths live under it
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tmp
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": NODE_CPUS, "object_store_memory": 120 * 2**20, "include_dashboard": False,
        })
        nodes = ThreeNodes(cluster, [])
        for _ in range(2):
            nodes.add_worker()
        yield nodes
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        ctx.wait_for_min_actors_s = saved_wait
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        deadline = time.monotonic() + 30
        while (left := _processes_of(tmp)) and time.monotonic() < deadline:
            time.sleep(0.5)
        shutil.rmtree(tmp, ignore_errors=True)
        assert not left, "processes of the test cluster outlived it:\n" + "\n".join(left)


def _node(worker: str) -> str:
    return worker.split("/", 1)[0]


def _classify(nodes: ThreeNodes, corpus: str, out: Path) -> int:
    from ironsight.jobs.cli import main

    return main(["classify", corpus, str(out), *MODEL, "--address", nodes.address,
                 "--actors", str(ACTORS), "--batch-size", "8", "--max-rows-per-shard", "30",
                 "--no-progress"])


def _audit(nodes: ThreeNodes, eval_set: str, suite: Path, out: Path) -> int:
    from ironsight.jobs.cli import main

    return main(["audit", eval_set, str(out), *MODEL, "--suite", str(suite), "--address", nodes.address,
                 "--actors", str(ACTORS), "--batch-size", "8", "--no-activation-maps", "--no-progress"])


def _ids(corpus: str) -> list[str]:
    return pads.dataset(corpus, format="parquet").to_table(columns=["id"]).column("id").to_pylist()


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("suite") / "tiny.yaml"
    path.write_text(SUITE_YAML)
    return path


def test_classify_predicts_and_decodes_on_every_node(three_nodes, tmp_path):
    three_nodes.top_up()
    corpus = tmp_path / "corpus"
    synthetic.write_corpus(str(corpus), 180, rows_per_file=30, row_group_size=15, seed=5)
    out = tmp_path / "labels"
    assert _classify(three_nodes, str(corpus), out) == 0
    table = pads.dataset(str(out), format="parquet").to_table()
    ids = table.column("id").to_pylist()
    assert sorted(ids) == sorted(_ids(str(corpus))) and len(set(ids)) == len(ids)
    nodes = three_nodes.live_prefixes()
    predicted = {_node(w) for w in table.column("pred_worker").to_pylist()}
    decoded = {_node(w) for w in table.column("decode_worker").to_pylist()}
    assert predicted == nodes, f"predicted on {predicted}, nodes {nodes}"
    assert decoded == nodes, f"decoded on {decoded}, nodes {nodes}"
    # one actor per node: one process per node predicted
    assert len({w for w in table.column("pred_worker").to_pylist()}) == ACTORS


def test_audit_predicts_and_decodes_on_every_node(three_nodes, suite, tmp_path):
    three_nodes.top_up()
    eval_set = tmp_path / "eval"
    synthetic.write_corpus(str(eval_set), 60, rows_per_file=10, row_group_size=10, seed=6)
    out = tmp_path / "audit"
    assert _audit(three_nodes, str(eval_set), suite, out) == 0
    table = pq.read_table(out / "predictions.parquet")
    nodes = three_nodes.live_prefixes()
    assert {_node(w) for w in table.column("pred_worker").to_pylist()} == nodes
    assert {_node(w) for w in table.column("decode_worker").to_pylist()} == nodes
    keys = _prediction_keys(table)
    assert len(keys) == len(set(keys)) == 60 * 3  # clean, gaussian_noise@3, fgsm@8/255
    assert (out / "report.json").is_file()


def _lose_a_node_mid_job(nodes: ThreeNodes, job, *, under_way) -> tuple[int, dict]:
    """Run ``job()`` (a CLI job; returns its exit code) in this thread while, in the
    background, the oldest worker node is killed outright once every predictor actor is
    alive (the pool then starts dispatching) and ``under_way()`` says the job has not
    finished, with the actor and the decode tasks on it. Returns the exit code and what the
    background thread did (``removed``: the node id; ``ready_at_removal``; ``error``)."""
    nodes.top_up()
    done = threading.Event()
    what: dict = {}

    def lose() -> None:
        victim = nodes.workers[0]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            actors = nodes.predictor_nodes()
            if len(actors) == ACTORS and actors.get(victim.node_id) == "ALIVE" and under_way():
                break
            time.sleep(0.2)
        else:
            what["error"] = "the job never had an actor alive on the victim node"
            return
        what["removed"] = victim.node_id
        what["ready_at_removal"] = not done.is_set() and under_way()
        nodes.cluster.remove_node(victim, allow_graceful=False)
        nodes.workers.remove(victim)

    thread = threading.Thread(target=lose, name="lose-a-node", daemon=True)
    thread.start()
    try:
        rc = job()
    finally:
        done.set()
        thread.join(timeout=60)
    assert "error" not in what, what["error"]
    assert what["ready_at_removal"], "the node was removed after the job had finished"
    return rc, what


def _prediction_keys(table) -> list[tuple]:
    columns = ("id", "kind", "condition", "severity", "eps")
    return list(zip(*(table.column(c).to_pylist() for c in columns), strict=True))


def test_a_worker_node_lost_mid_classify_still_gives_every_row_once(three_nodes, tmp_path):
    corpus = tmp_path / "corpus"
    n = 600
    synthetic.write_corpus(str(corpus), n, rows_per_file=30, row_group_size=15, seed=7)
    out = tmp_path / "labels"
    rc, what = _lose_a_node_mid_job(
        three_nodes, lambda: _classify(three_nodes, str(corpus), out),
        under_way=lambda: len(list(out.glob("part-*.parquet"))) < n // 30,  # shards left to commit
    )
    assert rc == 0
    assert (out / "_SUCCESS").is_file()
    table = pads.dataset(str(out), format="parquet").to_table()
    ids = table.column("id").to_pylist()
    assert len(ids) == n and len(set(ids)) == n and sorted(ids) == sorted(_ids(str(corpus)))
    assert table.column("error").null_count == n
    # the rows left after the loss were predicted on the nodes left
    assert {_node(w) for w in table.column("pred_worker").to_pylist()} - {what["removed"][:8]}


def test_a_worker_node_lost_mid_audit_still_finishes_with_each_prediction_once(three_nodes, suite, tmp_path):
    eval_set = tmp_path / "eval"
    n = 90
    synthetic.write_corpus(str(eval_set), n, rows_per_file=10, row_group_size=10, seed=8)
    out = tmp_path / "audit"
    rc, _ = _lose_a_node_mid_job(
        three_nodes, lambda: _audit(three_nodes, str(eval_set), suite, out),
        under_way=lambda: not (out / "predictions.parquet").exists(),  # written at the end
    )
    assert rc == 0
    keys = _prediction_keys(pq.read_table(out / "predictions.parquet"))
    assert len(keys) == len(set(keys)) == n * 3
    for name in ("report.json", "report.md", "report.html"):
        assert (out / name).is_file(), name
