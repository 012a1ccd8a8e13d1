"""Real faults mid-job: a killed predictor actor, a SIGKILLed job, an S3 outage, two runs on
one OUTPUT, and driver memory as the corpus grows. Every test checks that each input row ends
up in OUTPUT exactly once (or, for a failed run, that OUTPUT holds only whole shards).
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from ironsight.cluster import synthetic
from ironsight.cluster.errors import InvalidInput, JobFailed
from ironsight.cluster.models import ModelSource
from ironsight.cluster.output_lock import LOCK
from ironsight.cluster.pipeline import run_classify
from ironsight.cluster.sink import SUCCESS
from tests.reliability.conftest import (
    IRONSIGHT,
    REPO,
    config,
    part_files,
    predictor_actors,
    read_output,
)

pytestmark = pytest.mark.cluster


# ---- an S3 endpoint that can go away: a TCP proxy in front of moto -----------------------

class FlakyProxy:
    """Forwards TCP connections to ``target``; :meth:`outage` drops them for a while.

    While down, open connections are cut and new ones are reset on accept, as when an
    object store restarts. moto keeps its state: only the network path goes away.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.up = threading.Event()
        self.up.set()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.refused = 0
        self.refusal = threading.Event()  # set when a connection is refused during an outage
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if not self.up.is_set():
                self.refused += 1
                self.refusal.set()
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with self._lock:
                    self._conns.discard(s)
                try:
                    s.close()
                except OSError:
                    pass

    def down(self) -> None:
        self.refusal.clear()
        self.up.clear()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for s in conns:
            _reset(s)

    def outage(self, seconds: float, wait_for_refusal: float = 0.0) -> None:
        """Down for ``seconds``; with ``wait_for_refusal``, for ``seconds`` after the first
        refused connection (waiting at most that long for one), so the outage is sure to meet
        the job however its requests happen to be timed."""
        self.down()
        if wait_for_refusal:
            self.refusal.wait(wait_for_refusal)
        time.sleep(seconds)
        self.up.set()

    def close(self) -> None:
        self._server.close()
        self.down()


def _reset(s: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a dying server's kernel would."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    except OSError:
        pass


# Few attempts per operation, so "the endpoint stays down" fails in seconds; 4 attempts
# (0.5 + 1 + 2 s of backoff, the storage layer is the only one retrying) still ride out the
# 2-second outage below.
S3_ATTEMPTS = "4"
OUTAGE_S = 2.0


@pytest.fixture(scope="module")
def proxy(s3_server):
    host, port = s3_server.removeprefix("http://").split(":")
    p = FlakyProxy((host, int(port)))
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "IRONSIGHT_S3_MAX_ATTEMPTS")}
    os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{p.port}"
    os.environ["IRONSIGHT_S3_MAX_ATTEMPTS"] = S3_ATTEMPTS
    yield p
    p.close()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def ray_cpu(proxy):
    """The module's Ray starts after the proxy, so its workers reach S3 through it too."""
    import ray

    from ironsight.cluster.raycluster import connect

    if ray.is_initialized():
        ray.shutdown()
    with connect(None, num_cpus=2):
        yield


@pytest.fixture
def bucket(proxy):
    import boto3

    # Not `random`: tests/conftest.py restores its state after every test, so two tests in a
    # row drew the same name and the second found the first one's output. uuid4 reads urandom.
    name = f"rel-{uuid.uuid4().hex[:16]}"
    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket=name)
    return f"s3://{name}"


def _s3_parts(uri: str) -> dict[str, int]:
    """Row count of each committed part file under an s3:// OUTPUT."""
    from ironsight.cluster import storage

    out = storage.resolve(uri)
    return {
        i.base_name: pq.ParquetFile(io.BytesIO(storage.read_bytes(out.join(i.base_name)))).metadata.num_rows
        for i in storage.list_files(out, suffix=".parquet")
        if i.base_name.startswith("part-")
    }


def _when(predicate, action, timeout: float = 120.0) -> threading.Thread:
    """Run ``action`` in a background thread once ``predicate()`` holds."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                action()
                return
            time.sleep(0.05)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


@pytest.mark.slow  # ~70 s: runs in `make test-slow` (CI) to keep the default suite < 15 min
def test_s3_outage_mid_job_is_ridden_out(ray_cpu, proxy, bucket):
    synthetic.write_corpus(f"{bucket}/in", 400, seed=2, rows_per_file=100, row_group_size=25, size=32)
    out = f"{bucket}/out"
    from ironsight.cluster import storage

    loc = storage.resolve(out)

    def some_committed() -> bool:
        try:
            return len(storage.list_files(loc, suffix=".parquet")) >= 1
        except Exception:  # noqa: BLE001 - polled while the job writes
            return False

    refused_before = proxy.refused
    # Down once a shard is committed, until OUTAGE_S after the job's first refused request: a
    # fixed window could fall between its requests (the rest of the shards still inferring).
    t = _when(some_committed, lambda: proxy.outage(OUTAGE_S, wait_for_refusal=60))
    slow = ModelSource(name="mobilenet_v3_small", random_weights=True)  # so the outage lands mid-job
    summary = run_classify(config(f"{bucket}/in", out, max_rows_per_shard=25, source=slow, batch_size=16))
    t.join(timeout=90)
    assert proxy.refused > refused_before, "the outage should have hit the job"
    parts = _s3_parts(out)
    assert sum(parts.values()) == 400 == summary.rows and len(parts) == summary.shards_total == 16
    assert storage.exists(loc.join(SUCCESS))


@pytest.mark.slow
def test_s3_staying_down_fails_clearly_and_keeps_only_whole_shards(ray_cpu, proxy, bucket):
    synthetic.write_corpus(f"{bucket}/in", 800, seed=4, rows_per_file=200, row_group_size=25, size=32)
    out = f"{bucket}/out"
    from ironsight.cluster import storage

    loc = storage.resolve(out)

    def some_committed() -> bool:
        try:
            return len(storage.list_files(loc, suffix=".parquet")) >= 2
        except Exception:  # noqa: BLE001
            return False

    t = _when(some_committed, proxy.down)
    slow = ModelSource(name="mobilenet_v3_small", random_weights=True)  # so the outage lands mid-job
    try:
        with pytest.raises(JobFailed) as info:
            run_classify(config(f"{bucket}/in", out, max_rows_per_shard=25, source=slow, batch_size=16))
    finally:
        t.join(timeout=30)
        proxy.up.set()
    assert info.value.exit_code == 1
    message = str(info.value)
    print("JobFailed:", message)
    assert "failed" in message and ("s3://" in message or "Ray pipeline" in message), message
    parts = _s3_parts(out)
    print(f"committed before the failure: {len(parts)} of 32 shards")
    assert 1 <= len(parts) < 32
    assert all(rows == 25 for rows in parts.values())  # whole shards only
    assert not storage.exists(loc.join(SUCCESS))
    # The same job resumes once the endpoint is back, here in the same process: the failed
    # run could not delete its lock on the dead endpoint, and a lock this process no longer
    # holds is taken over at once (another process on this host would wait for it to expire).
    resumed = run_classify(config(f"{bucket}/in", out, max_rows_per_shard=25, source=slow, batch_size=16))
    assert resumed.shards_skipped == len(parts) and resumed.rows == 800 - 25 * len(parts)
    assert storage.exists(loc.join(SUCCESS))
    assert sum(_s3_parts(out).values()) == 800


def test_a_lock_that_cannot_be_deleted_does_not_turn_a_finished_run_into_a_failure(tmp_path):
    """Removing the lock is the run's last write; if the storage refuses it, the run succeeded.

    The storage is a real local directory behind a filesystem that refuses deletes (as S3 does
    when it goes away between the lock's read-back and its DELETE).
    """
    import pyarrow as pa
    import pyarrow.fs as pafs
    from fsspec.implementations.local import LocalFileSystem

    from ironsight.cluster import storage
    from ironsight.cluster.output_format import LABELS_SCHEMA
    from ironsight.cluster.output_lock import OutputLock
    from ironsight.cluster.sink import LabelSink

    class RefusesDeletes(LocalFileSystem):
        def rm_file(self, path):
            raise OSError("the storage refused the delete")

        def rm(self, path, recursive=False, maxdepth=None):
            raise OSError("the storage refused the delete")

    out = tmp_path / "out"
    sink = LabelSink.open(str(out), spec_hash="s" * 16, header={"model": {"name": "m"}}, expected_shards=["a"])
    rows = {"id": ["x"], "pred_label": [1], "pred_label_name": ["one"], "pred_score": [0.5],
            "pred_topk_labels": [[1]], "pred_topk_scores": [[0.5]], "error": [None],
            "pred_worker": [None], "decode_worker": [None]}
    sink.commit("a", pa.table(rows, schema=LABELS_SCHEMA))
    sink.finish({"summary": {"rows": 1}})
    sink._lock.release()  # swap the real lock for one on the refusing filesystem
    refusing = storage.Location(pafs.PyFileSystem(pafs.FSSpecHandler(RefusesDeletes())), str(out), str(out))
    sink._lock = OutputLock.acquire(refusing)
    sink.close()  # must not raise: everything is committed, only the lock stays behind
    assert (out / SUCCESS).is_file() and (out / LOCK).is_file()
    assert sink._lock is None


# ---- a predictor actor killed mid-job ----------------------------------------------------

def _kill_a_predictor(killed: list[int]) -> None:
    alive = predictor_actors("ALIVE")
    if alive:
        os.kill(int(alive[0]["Pid"]), signal.SIGKILL)
        killed.append(int(alive[0]["Pid"]))


def test_a_killed_predictor_actor_loses_no_row_and_duplicates_none(ray_cpu, tmp_path):
    corpus = tmp_path / "in"
    n = 1200
    synthetic.write_corpus(str(corpus), n, seed=9, rows_per_file=300, row_group_size=50, size=48)
    out = tmp_path / "out"
    killed: list[int] = []
    t = _when(lambda: len(part_files(out)) >= 3, lambda: _kill_a_predictor(killed))
    slow = ModelSource(name="mobilenet_v3_small", random_weights=True)
    summary = run_classify(config(str(corpus), out, source=slow, batch_size=16, actors=1))
    t.join(timeout=30)
    assert killed, "no predictor actor was alive to kill"
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)
    ids = read_output(out).column("id").to_pylist()
    assert len(ids) == n == len(set(ids)) == summary.rows
    assert (out / SUCCESS).is_file()


# ---- the job process SIGKILLed, then rerun ------------------------------------------------

@pytest.fixture(scope="module")
def kill_corpus(tmp_path_factory) -> tuple[str, int]:
    path = tmp_path_factory.mktemp("kill-corpus")
    n = 1500
    synthetic.write_corpus(str(path), n, seed=5, rows_per_file=500, row_group_size=50, size=48)
    return str(path), n


def _classify_args(corpus: str, out: Path) -> list[str]:
    return [*IRONSIGHT, "classify", corpus, str(out), "--model", "mobilenet_v3_small", "--random-weights",
            "--max-rows-per-shard", "50", "--batch-size", "16", "--actors", "1", "--no-progress"]


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=REPO)


def _temps(out: Path) -> list[str]:
    try:
        return [n for n in os.listdir(out) if n.startswith(".part-") and ".tmp-" in n]
    except FileNotFoundError:
        return []


def _kill_and_resume(corpus: str, n: int, out: Path, until) -> dict:
    """Start the job, SIGKILL its process group when ``until()`` holds, rerun, check rows."""
    args = _classify_args(corpus, out)
    proc = _start(args)
    deadline = time.monotonic() + 240
    try:
        while not until():
            assert time.monotonic() < deadline, "the kill point was never reached"
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    committed = {p.name: p.stat().st_mtime_ns for p in part_files(out)}
    assert not (out / SUCCESS).exists()
    resumed = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ids = pads.dataset(str(out), format="parquet").to_table(columns=["id"]).column("id").to_pylist()
    assert len(ids) == n == len(set(ids))  # every row exactly once
    assert {p.name: p.stat().st_mtime_ns for p in part_files(out) if p.name in committed} == committed
    assert f"{len(committed)} already committed" in resumed.stdout
    assert not _temps(out) and not (out / LOCK).exists()
    return committed


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 7])
def test_sigkill_after_k_commits_then_rerun_is_exactly_once(kill_corpus, tmp_path, k):
    corpus, n = kill_corpus
    out = tmp_path / "out"
    committed = _kill_and_resume(corpus, n, out, lambda: time.sleep(0.02) or len(part_files(out)) >= k)
    assert k <= len(committed) < n // 50


@pytest.mark.slow
def test_sigkill_during_a_shard_publish_then_rerun_is_exactly_once(kill_corpus, tmp_path):
    """Killed while a ``.part-*.tmp-*`` file exists: the half-published shard is redone."""
    corpus, n = kill_corpus
    out = tmp_path / "out"
    seen: list[str] = []

    def publishing() -> bool:  # polled without sleeping: a publish lasts milliseconds
        seen[:] = _temps(out)
        return bool(seen) and len(part_files(out)) >= 2

    _kill_and_resume(corpus, n, out, publishing)
    assert seen


# ---- two runs on one OUTPUT ----------------------------------------------------------------

HOLD_LOCK = """
import sys, time
from ironsight.cluster import storage
from ironsight.cluster.output_lock import OutputLock
out = storage.resolve(sys.argv[1])
storage.makedirs(out)
lock = OutputLock.acquire(out)
print("locked", flush=True)
time.sleep(600)
"""


def test_a_second_run_on_a_locked_output_is_refused_and_a_crashed_lock_is_taken_over(ray_cpu, tmp_path):
    corpus = tmp_path / "in"
    synthetic.write_corpus(str(corpus), 60, seed=1, rows_per_file=60, row_group_size=30, size=32)
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, cwd=REPO,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(InvalidInput) as info:
            run_classify(config(str(corpus), out))
        message = str(info.value)
        assert f"pid {holder.pid}" in message and "in use by another run" in message, message
        assert info.value.exit_code == 2 and not part_files(out)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert json.loads((out / LOCK).read_text())["pid"] == holder.pid  # the crash left it behind
    summary = run_classify(config(str(corpus), out))
    assert summary.rows == 60 and not (out / LOCK).exists()


def test_a_lock_from_another_host_expires_when_its_heartbeat_stops(ray_cpu, tmp_path):
    from ironsight.cluster.output_lock import LOCK_STALE_AFTER_S

    corpus = tmp_path / "in"
    synthetic.write_corpus(str(corpus), 60, seed=1, rows_per_file=60, row_group_size=30, size=32)
    out = tmp_path / "out"
    out.mkdir()
    body = {"owner": "x", "host": "elsewhere", "pid": 1}
    (out / LOCK).write_text(json.dumps({**body, "heartbeat": time.time() - 10}))
    with pytest.raises(InvalidInput, match="in use by another run"):
        run_classify(config(str(corpus), out))
    (out / LOCK).write_text(json.dumps({**body, "heartbeat": time.time() - LOCK_STALE_AFTER_S - 1}))
    assert run_classify(config(str(corpus), out)).rows == 60


# ---- driver memory as the corpus grows -----------------------------------------------------

MEASURE = """
import resource, sys
from ironsight.cluster.models import ModelSource
from ironsight.cluster.pipeline import ClassifyConfig, run_classify
from ironsight.cluster.raycluster import connect
with connect(None, num_cpus=2):
    s = run_classify(ClassifyConfig(input=sys.argv[1], output=sys.argv[2], progress=False,
                                    source=ModelSource(name="demo_cnn", random_weights=True),
                                    max_rows_per_shard=100, batch_size=64))
print("rows", s.rows, "maxrss_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
"""


def _peak_rss_mb(tmp_path: Path, n: int) -> float:
    corpus = tmp_path / f"in-{n}"
    synthetic.write_corpus(str(corpus), n, seed=3, rows_per_file=500, row_group_size=100, size=64)
    result = subprocess.run([sys.executable, "-c", MEASURE, str(corpus), str(tmp_path / f"out-{n}")],
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    words = result.stdout.split()
    assert int(words[words.index("rows") + 1]) == n
    return int(words[words.index("maxrss_kb") + 1]) / 1024


@pytest.mark.slow
def test_driver_peak_memory_stays_flat_as_the_corpus_grows_4x(tmp_path):
    small = _peak_rss_mb(tmp_path, 500)
    large = _peak_rss_mb(tmp_path, 2000)
    print(f"driver peak RSS: {small:.0f} MB at 500 rows, {large:.0f} MB at 2000 rows")
    assert large <= 1.2 * small + 50, (small, large)


# ---- a corpus larger than the object store ---------------------------------------------------

STORE_MB = 80  # Ray's floor is 75 MB
SPILL = """
import sys, ray
from ray._private.internal_api import get_memory_info_reply, get_state_from_address
from ironsight.cluster.models import ModelSource
from ironsight.cluster.pipeline import ClassifyConfig, run_classify
ray.init(num_cpus=2, object_store_memory={store} * 2**20, include_dashboard=False,
         _node_ip_address="127.0.0.1", log_to_driver=False)
s = run_classify(ClassifyConfig(input=sys.argv[1], output=sys.argv[2], progress=False,
                                source=ModelSource(name="demo_cnn", random_weights=True),
                                max_rows_per_shard=500, batch_size=128))
stats = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address)).store_stats
print("rows", s.rows, "spilled", stats.spilled_bytes_total, "avail", stats.object_store_bytes_avail, flush=True)
"""


@pytest.mark.slow
def test_a_corpus_larger_than_the_object_store_streams_through_with_spilling_bounded(tmp_path):
    n = 8000  # decoded to 64x64x3 uint8 for demo_cnn: 12 KB an image, 94 MB in all > the store
    decoded_mb = n * 64 * 64 * 3 / 2**20
    assert decoded_mb > STORE_MB
    corpus = tmp_path / "in"
    synthetic.write_corpus(str(corpus), n, seed=8, rows_per_file=2000, row_group_size=250, size=64)
    result = subprocess.run([sys.executable, "-c", SPILL.format(store=STORE_MB), str(corpus), str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    words = result.stdout.split()
    rows, spilled = int(words[words.index("rows") + 1]), int(words[words.index("spilled") + 1])
    avail = int(words[words.index("avail") + 1])
    print(f"{n} images, {decoded_mb:.0f} MB decoded through a {avail / 2**20:.0f} MB object store; "
          f"spilled {spilled / 2**20:.1f} MB")
    assert avail <= (STORE_MB + 1) * 2**20
    assert rows == n and pads.dataset(str(tmp_path / "out"), format="parquet").count_rows() == n
    # Ray Data's backpressure keeps the stream inside the store: allowed, at most a quarter of
    # what went through may spill to disk (a stage that buffered the corpus would spill most).
    assert spilled <= 0.25 * decoded_mb * 2**20
