"""Run history: a real SQLite file, the `ironsight history` command, and regressions of a real
audit run through `ironsight run` (exit 4)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import pyarrow as pa
import pytest

from ironsight.cluster import liveness, synthetic
from ironsight.cluster.errors import GateFailed, InvalidInput, JobFailed
from ironsight.jobs.history import (
    DEFAULT_MAX_DROP,
    HistoryStore,
    RunRecorder,
    detect_regressions,
    history_url,
)
from ironsight.jobs.history.schema import SCHEMA_VERSION
from ironsight.jobs.spec import AuditJob, ClassifyJob

IRONSIGHT = [sys.executable, "-m", "ironsight.jobs.cli"]
UTC = dt.timezone.utc


@pytest.fixture
def db(tmp_path) -> str:
    return str(tmp_path / "history.db")


def _spec(name: str = "nightly", **kw) -> AuditJob:
    return AuditJob(name=name, input="eval/", output="out/", model="demo_cnn",
                    random_weights=True, **kw)


def test_schema_and_version_are_created_on_first_use(db) -> None:
    store = HistoryStore(db)
    assert store.schema_version == SCHEMA_VERSION == 3
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
    assert {"ironsight_meta", "ironsight_runs", "ironsight_outcomes"} <= tables


def test_a_newer_schema_is_refused_with_the_fix(db) -> None:
    HistoryStore(db)
    with sqlite3.connect(db) as conn:
        conn.execute("update ironsight_meta set value='99' where key='schema_version'")
    with pytest.raises(InvalidInput, match="schema version 99.*upgrade Ironsight"):
        HistoryStore(db)


def test_runs_survive_reopening_and_keep_utc_times(db) -> None:
    started = dt.datetime(2026, 3, 29, 0, 30, tzinfo=UTC)
    rid = HistoryStore(db).start(job="j", kind="classify", model="m", started_at=started)
    HistoryStore(db).finish(rid, "succeeded", {"rows": 8}, output="o/",
                            ended_at=started + dt.timedelta(seconds=90))
    (run,) = HistoryStore(db).runs()
    assert (run.id, run.status, run.metrics, run.output) == (rid, "succeeded", {"rows": 8}, "o/")
    assert run.started_at == started and run.started_at.tzinfo is not None
    assert run.duration_s == 90


@pytest.mark.parametrize(("job", "last", "expected"), [
    (None, None, ["a", "b", "a", "b"]),
    ("a", None, ["a", "a"]),
    (None, 3, ["b", "a", "b"]),
    ("b", 1, ["b"]),
])
def test_runs_filter_by_job_and_last(db, job, last, expected) -> None:
    store = HistoryStore(db)
    for name in ["a", "b", "a", "b"]:
        store.start(job=name, kind="audit")
    assert [r.job for r in store.runs(job=job, last=last)] == expected


def test_previous_success_skips_failed_and_regressed_runs_and_other_jobs(db) -> None:
    store = HistoryStore(db)
    ok = store.start(job="n", kind="audit")
    store.finish(ok, "succeeded", {})
    for status in ("failed", "regressed", "gate_failed"):
        store.finish(store.start(job="n", kind="audit"), status, {})
    store.finish(store.start(job="other", kind="audit"), "succeeded", {})
    current = store.start(job="n", kind="audit")
    assert store.previous_success("n", current).id == ok
    assert store.previous_success("n", ok) is None


def _with_counts(metrics: dict, n: int) -> dict:
    """Metrics as an audit of `n` images records them: accuracies and [right, total] counts."""
    counts = {"clean": [round(metrics["clean_accuracy"] * n), n]}
    counts.update({k: [round(v * n), n] for k, v in metrics["per_condition"].items()})
    return {**metrics, "counts": counts}


# Changed with run identity (issue 12): a drop must also be significant. Runs of 1,000 images
# (unpaired: Wilson intervals) keep the old verdicts; the same drops on 100 images are noise.
@pytest.mark.parametrize(("after", "max_drop", "n", "dropped"), [
    ({"clean_accuracy": 0.90, "per_condition": {"fog": 0.60}}, DEFAULT_MAX_DROP, 1000, []),
    ({"clean_accuracy": 0.885, "per_condition": {"fog": 0.59}}, DEFAULT_MAX_DROP, 1000, []),
    ({"clean_accuracy": 0.85, "per_condition": {"fog": 0.60}}, DEFAULT_MAX_DROP, 1000, ["clean accuracy"]),
    ({"clean_accuracy": 0.85, "per_condition": {"fog": 0.60}}, 0.10, 1000, []),
    ({"clean_accuracy": 0.90, "per_condition": {"fog": 0.30}}, DEFAULT_MAX_DROP, 1000,
     ["fog mean accuracy"]),
    ({"clean_accuracy": 0.99, "per_condition": {"blur": 0.0}}, DEFAULT_MAX_DROP, 1000, []),
    ({"clean_accuracy": 0.85, "per_condition": {"fog": 0.56}}, DEFAULT_MAX_DROP, 100, []),
])
def test_detect_regressions(after, max_drop, n, dropped) -> None:
    before = {"clean_accuracy": 0.90, "per_condition": {"fog": 0.60}}
    found = detect_regressions(_with_counts(before, n), _with_counts(after, n), max_drop)
    assert [r.metric for r in found] == dropped
    assert all(r.test == "wilson_overlap" for r in found)


def test_metrics_without_counts_are_not_judged() -> None:
    """Rows from before schema 3 carry accuracies only: no test can be run, so no regression."""
    assert detect_regressions({"clean_accuracy": 0.9}, {"clean_accuracy": 0.1}) == []


def test_recorder_records_a_failure_without_credentials(db) -> None:
    store = HistoryStore(db)
    with pytest.raises(JobFailed):
        with RunRecorder(_spec(), store):
            raise JobFailed("cannot read s3://AKIAABCDEFGHIJKLMNOP:hunter2@bucket/x: denied")
    (run,) = store.runs()
    assert run.status == "failed" and run.ended_at is not None
    assert "denied" in run.error and "hunter2" not in run.error and "AKIA" not in run.error


def test_recorder_records_gate_failure_with_the_written_report(db, tmp_path) -> None:
    report = {"clean": {"accuracy": 0.5}, "summary": {"per_condition": []}, "attacks": [],
              "gate": {"passed": False}, "model": {"weights_sha256": "ab" * 32}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    spec = AuditJob(name="n", input="eval/", output=str(tmp_path), model="demo_cnn",
                    random_weights=True)
    store = HistoryStore(db)
    with pytest.raises(GateFailed):
        with RunRecorder(spec, store):
            raise GateFailed("release gate failed (1 checks):\n  - clean accuracy 0.5 < 0.8")
    (run,) = store.runs()
    assert (run.status, run.metrics["clean_accuracy"], run.metrics["gate"]) == (
        "gate_failed", 0.5, "failed")
    assert run.weights_hash == "ab" * 32 and run.error.startswith("release gate failed")


@pytest.mark.parametrize(("gate", "found", "status"), [
    (None, [("clean accuracy", DEFAULT_MAX_DROP)], "regressed"),
    ("max_drop_vs_baseline: 0.3\n", [], "succeeded"),
    ("clean_accuracy_min: 0.5\n", [("clean accuracy", DEFAULT_MAX_DROP)], "regressed"),
])
def test_recorder_uses_the_gate_threshold(db, tmp_path, gate, found, status) -> None:
    spec_kw = {}
    if gate is not None:
        (tmp_path / "gate.yaml").write_text(gate)
        spec_kw["gate"] = str(tmp_path / "gate.yaml")
    store = HistoryStore(db)
    report = {"clean": {"accuracy": 0.9}, "summary": {"per_condition": []}, "attacks": [],
              "data": {"images": 100, "error_rows": 0}}
    with RunRecorder(_spec(**spec_kw), store) as rec:  # 90 of 100 right
        assert rec.audit_finished(report, _clean_predictions([True] * 90 + [False] * 10)) == []
    with RunRecorder(_spec(**spec_kw), store) as rec:  # 20 of those 90 now wrong: significant
        regressions = rec.audit_finished({**report, "clean": {"accuracy": 0.7}},
                                         _clean_predictions([True] * 70 + [False] * 30))
    assert [(r.metric, r.allowed) for r in regressions] == found
    assert all(r.test == "mcnemar_exact" and r.p_value < 0.001 for r in regressions)
    assert [r.status for r in store.runs()] == ["succeeded", status]


def _clean_predictions(correct: list[bool]) -> pa.Table:
    """An audit's predictions table with clean rows only, image `i` right when `correct[i]`."""
    n = len(correct)
    return pa.table({"id": [f"img{i}" for i in range(n)], "kind": ["clean"] * n,
                     "condition": ["clean"] * n, "severity": pa.array([0] * n, pa.int32()),
                     "correct": correct})


def test_unreachable_history_does_not_stop_the_job(tmp_path, monkeypatch, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the database's directory should be
    monkeypatch.setenv("IRONSIGHT_HISTORY_URL", str(blocker / "sub" / "h.db"))
    spec = ClassifyJob(input="i/", output="o/", model="demo_cnn", random_weights=True)
    with RunRecorder(spec) as rec:
        ran = True
    assert ran and rec.run_id is None
    assert "run history disabled" in capsys.readouterr().err


def test_history_url_prefers_flag_then_env(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("IRONSIGHT_HISTORY_URL", "sqlite:////env.db")
    assert history_url(str(tmp_path / "f.db")) == f"sqlite:///{tmp_path}/f.db"
    assert history_url() == "sqlite:////env.db"
    monkeypatch.delenv("IRONSIGHT_HISTORY_URL")
    monkeypatch.setenv("IRONSIGHT_HOME", str(tmp_path))
    assert history_url() == f"sqlite:///{tmp_path}/history.db"


def _cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*IRONSIGHT, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_history_command_table_and_json(db) -> None:
    store = HistoryStore(db)
    rid = store.start(job="nightly", kind="audit", model="demo_cnn")
    store.finish(rid, "regressed", {"clean_accuracy": 0.8125, "mean_corruption_accuracy": 0.5})
    store.start(job="labels", kind="classify", model="resnet50")
    table = _cli("history", "--history-db", db)
    assert table.returncode == 0, table.stderr
    header, first, second = table.stdout.splitlines()
    assert header.split()[:3] == ["id", "job", "kind"]
    assert "regressed" in first and "clean 0.812" in first and "demo_cnn" in first
    assert "running" in second
    only = json.loads(_cli("history", "--history-db", db, "--job", "nightly", "--json").stdout)
    assert [(r["id"], r["status"]) for r in only] == [(rid, "regressed")]
    assert _cli("history", "--history-db", db, "--last", "0").returncode == 2


def _open_history(url: str, barrier) -> None:
    from ironsight.jobs.history import HistoryStore

    barrier.wait()
    HistoryStore(url)


@pytest.mark.parametrize("round_", range(4))
def test_processes_opening_a_new_database_at_once_all_succeed(tmp_path, round_):
    """A scheduler and the run it starts create the schema at the same moment (seen in CI)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")  # spawn cannot import this test module (importlib mode)
    barrier = ctx.Barrier(4)
    url = f"sqlite:///{tmp_path}/history.db"
    procs = [ctx.Process(target=_open_history, args=(url, barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]


# ---- schema 2: the recording process, abandoned runs ------------------------------------

# The schema 1 table as Ironsight 0.1 created it (before pid/process_start).
SCHEMA_1 = """
CREATE TABLE ironsight_meta (key VARCHAR(64) NOT NULL, value VARCHAR(256) NOT NULL, PRIMARY KEY (key));
CREATE TABLE ironsight_runs (id INTEGER NOT NULL, job VARCHAR(256) NOT NULL, kind VARCHAR(32) NOT NULL,
  spec_hash VARCHAR(64), model VARCHAR(256), weights_hash VARCHAR(64), scheduled_for DATETIME,
  started_at DATETIME NOT NULL, ended_at DATETIME, status VARCHAR(16) NOT NULL, output TEXT,
  metrics JSON, error TEXT, host VARCHAR(256), PRIMARY KEY (id));
CREATE INDEX ix_ironsight_runs_job ON ironsight_runs (job);
INSERT INTO ironsight_meta VALUES ('schema_version', '1');
INSERT INTO ironsight_runs (job, kind, started_at, status, metrics, host)
  VALUES ('old', 'audit', '2026-01-02 03:04:05.000000', 'running', '{}', 'HOSTNAME');
"""


@pytest.fixture
def schema_1_db(tmp_path) -> str:
    path = str(tmp_path / "v1.db")
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA_1.replace("HOSTNAME", socket.gethostname()))
    return path


def test_a_schema_1_database_is_upgraded_in_place(schema_1_db) -> None:
    store = HistoryStore(schema_1_db)
    assert store.schema_version == SCHEMA_VERSION  # 1 -> 3 in one go (was == 2 before schema 3)
    with sqlite3.connect(schema_1_db) as conn:
        columns = {r[1] for r in conn.execute("pragma table_info(ironsight_runs)")}
    assert {"pid", "process_start", "identity", "identity_parts"} <= columns
    new = store.start(job="new", kind="classify")
    old, fresh = store.runs()
    assert (old.job, old.status, old.pid) == ("old", "running", None)  # no pid: never judged
    assert (fresh.id, fresh.pid) == (new, os.getpid())
    assert store.mark_abandoned() == []
    assert HistoryStore(schema_1_db).schema_version == SCHEMA_VERSION  # reopening changes nothing


@pytest.mark.parametrize("round_", range(2))
def test_processes_upgrading_a_schema_1_database_at_once_all_succeed(schema_1_db, round_):
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_open_history, args=(f"sqlite:///{schema_1_db}", barrier))
             for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert HistoryStore(schema_1_db).schema_version == SCHEMA_VERSION


# A process that records a run start, says its run id, and waits to be killed.
VICTIM = """
import sys, time
from ironsight.jobs.history import HistoryStore, RunRecorder
from ironsight.jobs.spec import ClassifyJob
spec = ClassifyJob(name="victim", input="i/", output="o/", model="demo_cnn", random_weights=True)
with RunRecorder(spec, HistoryStore(sys.argv[1])) as rec:
    print(rec.run_id, flush=True)
    time.sleep(600)
"""


def test_a_sigkilled_run_is_shown_abandoned_and_later_runs_are_unaffected(db) -> None:
    victim = subprocess.Popen([sys.executable, "-c", VICTIM, db], stdout=subprocess.PIPE, text=True)
    try:
        run_id = int(victim.stdout.readline())
        store = HistoryStore(db)
        assert store.mark_abandoned() == []  # alive: left running
        assert store.get(run_id).status == "running"
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    proc = _cli("--log-format", "json", "history", "--history-db", db, "--json")
    assert proc.returncode == 0, proc.stderr
    (run,) = json.loads(proc.stdout)
    host = socket.gethostname()
    assert (run["id"], run["status"], run["pid"]) == (run_id, "abandoned", victim.pid)
    assert run["error"] == f"process {victim.pid} on {host} exited without recording an end"
    (record,) = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert record["level"] == "WARNING" and f"run {run_id} marked abandoned" in record["message"]
    table = _cli("history", "--history-db", db)
    assert "abandoned" in table.stdout.splitlines()[1]
    with RunRecorder(_spec(name="victim"), HistoryStore(db)) as rec:
        rec.audit_finished({"clean": {"accuracy": 0.9}, "summary": {"per_condition": []},
                            "attacks": []})
    assert [r.status for r in HistoryStore(db).runs()] == ["abandoned", "succeeded"]


def _set(db: str, run_id: int, **values) -> None:
    with sqlite3.connect(db) as conn:
        for key, value in values.items():
            conn.execute(f"update ironsight_runs set {key} = ? where id = ?", (value, run_id))


def test_a_reused_pid_is_not_mistaken_for_the_run(db) -> None:
    """The pid is alive (it is this test's), but it started at another time: the run is gone."""
    store = HistoryStore(db)
    rid = store.start(job="j", kind="classify")
    namespace, boot, start = liveness.process_identity(os.getpid()).split("/")
    _set(db, rid, process_start=f"{namespace}/{boot}/{int(start) - 1}")
    assert store.mark_abandoned() == [rid]
    assert store.get(rid).status == "abandoned"


def test_a_run_from_before_a_reboot_is_abandoned(db) -> None:
    store = HistoryStore(db)
    rid = store.start(job="j", kind="classify")
    namespace, _, start = liveness.process_identity(os.getpid()).split("/")
    _set(db, rid, process_start=f"{namespace}/00000000-dead-beef-0000-000000000000/{start}")
    assert store.mark_abandoned() == [rid]


@pytest.mark.parametrize(("host", "namespace"), [("other-host", None), (None, "pid:[1]")])
def test_runs_this_host_cannot_check_stay_running(db, host, namespace) -> None:
    """Another host, or a container with its own pid namespace: left running, host shown."""
    store = HistoryStore(db)
    rid = store.start(job="j", kind="classify")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    _, boot, start = liveness.process_identity(os.getpid()).split("/")
    _set(db, rid, pid=int(dead), host=host or socket.gethostname(),
         process_start=f"{namespace or os.readlink('/proc/self/ns/pid')}/{boot}/{start}")
    assert store.mark_abandoned() == []
    table = _cli("history", "--history-db", db)
    expected = "running on other-host" if host else "running"
    assert expected in table.stdout.splitlines()[1]


@pytest.mark.slow  # a real classify on an embedded Ray: 30-120 s on 2 busy cores
def test_a_sigkilled_ironsight_run_is_abandoned_in_history(tmp_path) -> None:
    db = str(tmp_path / "history.db")
    synthetic.write_corpus(str(tmp_path / "in"), 400, seed=4, rows_per_file=200,
                           row_group_size=50, size=48)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"kind: classify\nname: archive\ninput: {tmp_path / 'in'}\noutput: {tmp_path / 'out'}\n"
        "model: mobilenet_v3_small\nrandom_weights: true\nactors: 1\nbatch_size: 16\n"
        "max_rows_per_shard: 50\n")
    env = {**os.environ, "IRONSIGHT_HISTORY_URL": db}
    job = subprocess.Popen([*IRONSIGHT, "run", str(spec), "--no-progress"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not list((tmp_path / "out").glob("part-*.parquet")):  # mid-job: a shard is out
            assert job.poll() is None and time.monotonic() < deadline, "the job never got going"
            time.sleep(0.2)
        (running,) = HistoryStore(db).runs()
        assert running.status == "running" and running.pid == job.pid
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    listed = json.loads(_cli("history", "--history-db", db, "--json").stdout)
    assert [(r["job"], r["status"]) for r in listed] == [("archive", "abandoned")]
    assert f"process {job.pid} on" in listed[0]["error"]
    rerun = _cli("run", str(spec), "--no-progress", env={"IRONSIGHT_HISTORY_URL": db}, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert [r.status for r in HistoryStore(db).runs()] == ["abandoned", "succeeded"]
