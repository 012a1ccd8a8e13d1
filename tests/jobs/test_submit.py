"""`ironsight submit/status/logs/stop` against a real token-authenticated Ray head on loopback."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from ironsight.cluster import synthetic
from ironsight.jobs.cli import main
from ironsight.jobs.rayjobs import job_client
from ironsight.jobs.submit import scheduled_submission_id
from tests.conftest import parent_pids

RAY = str(Path(sys.executable).with_name("ray"))
IRONSIGHT = [sys.executable, "-m", "ironsight.jobs.cli"]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _processes_of(temp_dir: str) -> set[int]:
    """PIDs whose command line names our temp dir, plus all their descendants (workers rename
    themselves to ``ray::...``, so they are found through their parent raylet)."""
    roots = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if temp_dir in cmd:
                roots.add(int(entry))
    parents = parent_pids()
    found, frontier = set(roots), set(roots)
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    found.discard(os.getpid())
    return found


def _kill_head(temp_dir: str) -> None:
    """Stop exactly the Ray processes of this head (`ray stop` would kill every Ray here)."""
    pids = _processes_of(temp_dir)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.2)
        pids = {p for p in pids if Path(f"/proc/{p}").exists()}
        if not pids:
            return


@pytest.fixture(scope="module")
def ray_head():
    """A real `ray start --head` with token auth on loopback; yields (jobs address, token)."""
    token = secrets.token_hex(32)
    # Short path: Ray's Unix sockets live under it (108-byte limit).
    temp_dir = tempfile.mkdtemp(prefix="is-e1-", dir="/tmp")
    gcs, dash, client, agent, metrics, rtenv = _free_ports(6)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "IRONSIGHT_JOBS"))}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        # The job's entrypoint is `ironsight run ...`: the venv's scripts must be on its PATH.
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        IRONSIGHT_CACHE=os.path.join(temp_dir, "cache"),
    )
    cmd = [
        RAY, "start", "--head", f"--port={gcs}", "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
        f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
        f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={rtenv}",
        "--num-cpus=2", f"--object-store-memory={200 * 1024 * 1024}", f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    try:
        started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stderr[-3000:]
        address = f"http://127.0.0.1:{dash}"
        deadline = time.monotonic() + 60
        while True:  # the dashboard's job module comes up a little after `ray start` returns
            try:
                with socket.create_connection(("127.0.0.1", dash), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the dashboard never listened"
                time.sleep(0.5)
        yield address, token
    finally:
        _kill_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def authed(ray_head, monkeypatch):
    """This process holds the token the way a user's shell would: RAY_AUTH_TOKEN only."""
    address, token = ray_head
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "IRONSIGHT_JOBS_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    return address


@pytest.fixture(scope="module")
def audit_spec(tmp_path_factory) -> tuple[Path, Path]:
    """A small audit spec with absolute paths; returns (spec path, output dir)."""
    root = tmp_path_factory.mktemp("submit")
    synthetic.write_corpus(str(root / "eval"), 64, seed=3, rows_per_file=64, row_group_size=32)
    suite = root / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "tiny", "conditions": ["gaussian_noise"],
                                     "severities": [1], "attacks": []}))
    out = root / "audit-out"
    spec = root / "audit.yaml"
    spec.write_text(yaml.safe_dump({
        "kind": "audit", "name": "submit-test", "input": str(root / "eval"), "output": str(out),
        "model": "demo_cnn", "random_weights": True, "suite": str(suite), "max_images": 32,
        "batch_size": 16, "actors": 1, "device": "cpu",
    }))
    return spec, out


# --- no cluster needed ------------------------------------------------------------------------

T0 = datetime(2026, 11, 23, 2, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("other_name", "other_hash", "other_time"),
    [
        ("nightly", "aaaaaaaaaaaaaaaa", T0 + timedelta(days=1)),  # next slot
        ("nightly", "bbbbbbbbbbbbbbbb", T0),                      # changed spec
        ("weekly", "aaaaaaaaaaaaaaaa", T0),                       # other job
    ],
)
def test_scheduled_ids_are_stable_and_distinct(other_name, other_hash, other_time):
    first = scheduled_submission_id("nightly", "aaaaaaaaaaaaaaaa", T0)
    assert first == scheduled_submission_id("nightly", "aaaaaaaaaaaaaaaa", T0.replace(tzinfo=None))
    assert first != scheduled_submission_id(other_name, other_hash, other_time)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"kind": "audit", "input": "/e", "output": "/o", "model": "demo_cnn", "top_k": 3},
         "top_k"),
        ({"kind": "audit", "input": "eval/", "output": "/o", "model": "demo_cnn",
          "random_weights": True}, "relative path"),
    ],
    ids=["invalid-field", "relative-path"],
)
def test_bad_spec_exits_2_before_contacting_the_cluster(tmp_path, capsys, spec, needle):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    # Nothing listens on this port: reaching the cluster would exit 1, not 2.
    rc = main(["submit", str(path), "--address", f"http://127.0.0.1:{_free_ports(1)[0]}"])
    assert rc == 2
    assert needle in capsys.readouterr().err


def test_unreachable_cluster_exits_1_with_a_plain_message(audit_spec, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    port = _free_ports(1)[0]
    rc = main(["status", "some-id", "--address", f"127.0.0.1:{port}"])
    assert rc == 1
    err = capsys.readouterr().err
    assert f"cannot reach the Ray Jobs API at http://127.0.0.1:{port}" in err
    assert "Traceback" not in err


def test_no_address_exits_2_and_names_the_fix(capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("IRONSIGHT_JOBS_ADDRESS", raising=False)
    assert main(["logs", "some-id"]) == 2
    assert "IRONSIGHT_JOBS_ADDRESS" in capsys.readouterr().err


# --- a real token-authenticated head ----------------------------------------------------------

SUBMISSION_ID = "ironsight-submit-test-audit-1"


@pytest.mark.cluster
def test_audit_job_runs_to_success_on_the_cluster(authed, audit_spec, capsys):
    spec, out = audit_spec
    rc = main(["submit", str(spec), "--address", authed, "--submission-id", SUBMISSION_ID,
               "--wait", "--follow"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-4000:]
    assert f"submitted {SUBMISSION_ID}" in captured.out
    assert f"{SUBMISSION_ID}: SUCCEEDED" in captured.err
    assert "reports:" in captured.out  # --follow streamed the driver's log as it ran
    report = json.loads((out / "report.json").read_text())
    assert report  # written by the job on the cluster, read back here
    assert main(["logs", SUBMISSION_ID, "--address", authed]) == 0
    assert "reports:" in capsys.readouterr().out  # the driver's last line, from the cluster
    assert main(["status", SUBMISSION_ID, "--address", authed]) == 0
    status = capsys.readouterr().out
    assert f"{SUBMISSION_ID}: SUCCEEDED" in status
    assert "ironsight run ironsight-spec.yaml" in status


@pytest.mark.cluster
def test_resubmitting_an_existing_id_does_not_run_again(authed, audit_spec, capsys):
    spec, out = audit_spec
    if not (out / "report.json").exists():
        pytest.skip("needs the job of test_audit_job_runs_to_success_on_the_cluster")
    before = (out / "report.json").stat().st_mtime_ns
    rc = main(["submit", str(spec), "--address", authed, "--submission-id", SUBMISSION_ID])
    assert rc == 0
    assert "already exists" in capsys.readouterr().out
    jobs = [j for j in job_client(authed).list_jobs() if j.submission_id == SUBMISSION_ID]
    assert len(jobs) == 1
    assert (out / "report.json").stat().st_mtime_ns == before


@pytest.mark.cluster
def test_a_job_that_fails_on_the_cluster_exits_with_its_drivers_code_and_the_log_tail(
    authed, tmp_path, capsys
):
    # Valid here, fails on the cluster as soon as the driver reads the suite (before any Ray
    # work, so the test stays short). The driver exits 2 (invalid input) and `submit --wait`
    # passes that on: a scheduler tells a broken spec from a crash (1) or a regression (4).
    spec = tmp_path / "broken.yaml"
    spec.write_text(yaml.safe_dump({
        "kind": "audit", "input": str(tmp_path / "eval"), "output": str(tmp_path / "o"),
        "model": "demo_cnn", "random_weights": True, "suite": str(tmp_path / "no-such-suite.yaml"),
    }))
    rc = main(["submit", str(spec), "--address", authed, "--wait"])
    err = capsys.readouterr().err
    assert rc == 2, err[-2000:]
    assert ": FAILED" in err
    assert "last 40 log lines" in err
    assert "no-such-suite.yaml" in err  # the driver's own error, from the cluster's log


@pytest.mark.cluster
@pytest.mark.parametrize(
    ("token", "expected"),
    [(None, "requires a token, set RAY_AUTH_TOKEN"), ("wrong-token", "rejected the token")],
    ids=["no-token", "wrong-token"],
)
def test_a_client_without_the_token_is_refused(ray_head, tmp_path, token, expected):
    address, real_token = ray_head
    # A clean shell: no Ray settings, and a HOME without ~/.ray/auth_token.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(tmp_path)
    if token:
        env["RAY_AUTH_TOKEN"] = token
    done = subprocess.run([*IRONSIGHT, "status", SUBMISSION_ID, "--address", address],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"refused: the cluster at {address}" in done.stderr
    assert expected in done.stderr
    assert "Traceback" not in done.stderr
    assert real_token not in done.stdout + done.stderr


@pytest.mark.cluster
def test_stopping_a_finished_job_says_so(authed, audit_spec, capsys):
    if not (audit_spec[1] / "report.json").exists():
        pytest.skip("needs the job of test_audit_job_runs_to_success_on_the_cluster")
    assert main(["stop", SUBMISSION_ID, "--address", authed]) == 0
    assert f"{SUBMISSION_ID}: not running (SUCCEEDED); nothing to stop" in capsys.readouterr().out


@pytest.mark.cluster
def test_unknown_id_exits_2_and_names_it(authed, capsys):
    assert main(["status", "no-such-job", "--address", authed]) == 2
    assert "no job 'no-such-job' on the cluster" in capsys.readouterr().err


@pytest.mark.cluster
def test_a_nightly_audit_that_regressed_exits_4_from_submit_status_and_history(authed, audit_spec, capsys):
    """The issue's whole story: declare, validate, submit to the token-protected head, wait,
    and get exit 4 plus the reason when the run is worse than the previous successful night of
    the SAME job identity; `status` and `history` (the real SQLite file the cluster's runs
    wrote) say the same. Night 1 gets every image right; night 2 (the eval set relabelled in
    place, so the same ids) gets none right: paired exact McNemar, significant."""
    from ironsight.jobs.history import HistoryStore
    from tests.jobs.test_run_identity import _relabel

    base_spec, _ = audit_spec
    spec_data = yaml.safe_load(base_spec.read_text())
    eval_dir = base_spec.parent / "nightly-eval"
    shutil.copytree(spec_data["input"], eval_dir)
    out = base_spec.parent / "nightly-out"
    spec = base_spec.parent / "nightly.yaml"
    spec.write_text(yaml.safe_dump({**spec_data, "name": "submit-nightly", "input": str(eval_dir),
                                    "output": str(out)}))
    assert main(["validate", str(spec)]) == 0
    capsys.readouterr()

    _relabel(eval_dir, lambda p: p)  # night 1: the model's own predictions are the labels
    rc = main(["submit", str(spec), "--address", authed, "--submission-id", "ironsight-nightly-1", "--wait"])
    assert rc == 0, capsys.readouterr().err[-4000:]
    capsys.readouterr()
    store = HistoryStore()
    good = store.runs(job="submit-nightly")[-1]
    assert good.status == "succeeded"

    _relabel(eval_dir, lambda p: (p + 1) % 8)  # night 2: every image now wrong
    sid = "ironsight-submit-nightly-regressed-1"
    rc = main(["submit", str(spec), "--address", authed, "--submission-id", sid, "--wait"])
    err = capsys.readouterr().err
    assert rc == 4, err[-4000:]
    assert f"{sid}: FAILED" in err
    assert f"last succeeded run {good.id}" in err and "clean accuracy dropped from 1.0000 to 0.0000" in err
    assert (out / "report.json").is_file()  # the regressed run still wrote its reports

    assert main(["status", sid, "--address", authed]) == 0
    assert "exit code: 4 (regressed against the previous successful run)" in capsys.readouterr().out
    last = store.runs(job="submit-nightly")[-1]
    assert (last.status, last.compared_with, last.identity) == ("regressed", good.id, good.identity)
    assert main(["history", "--job", "submit-nightly"]) == 0
    assert "regressed" in capsys.readouterr().out
