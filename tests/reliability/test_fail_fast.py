"""Fail in seconds, and say why: what ``classify`` and ``audit`` decide before Ray starts.

Each test runs the real CLI in a child process and measures the child's own CPU time
(``RUSAGE_CHILDREN`` deltas: the box is shared, wall time says little). "Ray never started"
is made checkable two ways: ``RAY_ADDRESS=127.0.0.1:9`` (nothing listens there, so any
``ray.init`` would fail with Ray's own error instead of ours), and, where the job must look
like one that starts its own Ray (the ``--device cuda`` check), a fresh ``RAY_TMPDIR`` that a
started Ray would fill with its session folder.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
import uuid
from dataclasses import dataclass

import pytest

from ironsight.cluster import synthetic
from tests.conftest import moto_process
from tests.reliability.conftest import IRONSIGHT, REPO

NO_RAY = "127.0.0.1:9"  # a Ray address nothing answers on
MODEL = ["--model", "demo_cnn", "--random-weights"]
CPU_BUDGET_S = 5.0  # a bad input answers within this much of the CLI's own CPU time


@dataclass
class Run:
    rc: int
    cpu_s: float
    wall_s: float
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Run:
    """``ironsight ARGS`` in a child; its CPU time (user + system) from ``RUSAGE_CHILDREN``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.run([*IRONSIGHT, *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=timeout)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(proc.returncode, cpu, wall, proc.stdout, proc.stderr)


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, RAY_ADDRESS=NO_RAY, AWS_EC2_METADATA_DISABLED="true")
    env.update(extra)
    return env


def assert_refused_before_ray(run: Run, *needles: str, rc: int = 2, cpu_budget: float = CPU_BUDGET_S) -> str:
    print(f"rc={run.rc} cpu={run.cpu_s:.2f}s wall={run.wall_s:.1f}s stderr={run.stderr!r}")
    assert run.rc == rc, run.stderr
    assert len(run.error_lines) == 1, run.stderr  # one line, no traceback, nothing from Ray
    line = run.error_lines[0]
    assert line.startswith("ironsight: error: "), line
    for needle in needles:
        assert needle in line, line
    assert run.cpu_s < cpu_budget, f"{run.cpu_s:.2f} s of CPU"
    return line


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("fail-fast") / "in"
    synthetic.write_corpus(str(path), 40, seed=3, rows_per_file=20, row_group_size=10, size=32)
    return str(path)


COMMANDS = {
    "classify": ["classify"],
    "audit": ["audit", "--suite", "quick"],
}


def _argv(command: str, input: str, output: str, *extra: str) -> list[str]:
    head, *flags = COMMANDS[command]
    return [head, input, output, *MODEL, *flags, *extra]


# ---- inputs: a path that is not there, a bucket that is not there, a host, credentials -------

@pytest.mark.parametrize("command", COMMANDS)
def test_a_missing_input_is_refused_in_a_second(command, tmp_path):
    run = run_cli(*_argv(command, str(tmp_path / "nope"), str(tmp_path / "out")), env=cli_env())
    assert_refused_before_ray(run, f"'{tmp_path / 'nope'}' matches no files")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_a_mistyped_bucket_is_named(command, s3_server, tmp_path):
    bucket = f"typo-{uuid.uuid4().hex[:8]}"
    run = run_cli(*_argv(command, f"s3://{bucket}/in", str(tmp_path / "out")), env=cli_env())
    assert_refused_before_ray(run, f"no such bucket '{bucket}' at endpoint {s3_server}: check the bucket name")


@pytest.mark.parametrize("command", COMMANDS)
def test_a_mistyped_output_bucket_is_named(command, s3_server, corpus):
    bucket = f"typo-{uuid.uuid4().hex[:8]}"
    run = run_cli(*_argv(command, corpus, f"s3://{bucket}/out"), env=cli_env())
    assert_refused_before_ray(run, f"no such bucket '{bucket}' at endpoint {s3_server}: check the bucket name")


@pytest.mark.parametrize("command", COMMANDS)
def test_an_endpoint_host_that_does_not_resolve_is_named(command, s3_server, tmp_path):
    # As the user who waited 6 minutes had it: SDK retries inside ours, per request.
    env = cli_env(AWS_ENDPOINT_URL="http://no-such-host.invalid")
    env.pop("IRONSIGHT_S3_MAX_ATTEMPTS", None)
    run = run_cli(*_argv(command, "s3://archive/in", str(tmp_path / "out")), env=env)
    assert_refused_before_ray(run, "the endpoint host no-such-host.invalid does not resolve: check AWS_ENDPOINT_URL")
    assert run.wall_s < 60


@pytest.fixture(scope="module")
def iam_endpoint():
    """A moto S3 server checking signatures and IAM policies, with bucket ``guarded``."""
    import boto3

    with moto_process(no_auth_calls=1) as endpoint:
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="setup", aws_secret_access_key="setup",
                     region_name="us-east-1").create_bucket(Bucket="guarded")  # the one unchecked call
        yield endpoint


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("input", ["s3://guarded/in", "s3://guarded/in/*.parquet"])
def test_rejected_credentials_are_refused_at_once(command, input, iam_endpoint, tmp_path):
    env = cli_env(AWS_ENDPOINT_URL=iam_endpoint, AWS_ACCESS_KEY_ID="AKIAWRONGKEY00000000",
                  AWS_SECRET_ACCESS_KEY="wrong-secret")
    run = run_cli(*_argv(command, input, str(tmp_path / "out")), env=env)
    line = assert_refused_before_ray(run)
    assert "wrong-secret" not in run.stderr
    if "*" in input:  # a listing's 403 carries the reason
        assert f"the credentials were rejected by endpoint {iam_endpoint} (INVALID_ACCESS_KEY_ID" in line
        assert "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY" in line
    else:  # a HEAD's 403 has no body: both fixes are named
        assert "access denied to s3://guarded/in: check the credentials' permissions, and that the key" in line


# ---- the device ------------------------------------------------------------------------------

@pytest.mark.parametrize("command", COMMANDS)
def test_device_cuda_without_a_gpu_is_refused_before_ray(command, corpus, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    ray_tmp = tmp_path / "ray-tmp"
    ray_tmp.mkdir()
    env = dict(os.environ, RAY_TMPDIR=str(ray_tmp))  # a new Ray would be started (and seen) here
    env.pop("RAY_ADDRESS", None)
    run = run_cli(*_argv(command, corpus, str(tmp_path / "out"), "--device", "cuda"), env=env)
    # decided with torch alone, before the model zoo, the suite or Ray are imported
    assert_refused_before_ray(run, "--device cuda: torch sees no CUDA GPU on this machine",
                              "Drop --device", "submit to a cluster with GPUs")
    assert list(ray_tmp.iterdir()) == []  # no session folder: Ray never started


# ---- columns and weights files: before torch; another audit's OUTPUT: before Ray -------------
# A wrong column and a missing weights file are found with pyarrow alone (check_before_torch),
# within the same budget as a missing input. Another audit's OUTPUT needs the model's name, so
# the model code (torch, torchvision) is imported first: a wider budget.

@pytest.mark.parametrize("command", COMMANDS)
def test_a_missing_column_is_refused_before_ray(command, corpus, tmp_path):
    run = run_cli(*_argv(command, corpus, str(tmp_path / "out"), "--image-column", "pixels"), env=cli_env())
    assert_refused_before_ray(run, "pixels")


def test_a_wrong_label_column_is_refused_before_torch(corpus, tmp_path):
    run = run_cli(*_argv("audit", corpus, str(tmp_path / "out"), "--label-column", "lable"), env=cli_env())
    line = assert_refused_before_ray(run, "lable")
    assert "--skip-bad-files" not in line  # audit has no such flag


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_weights_are_refused_before_ray(command, corpus, tmp_path):
    head, *flags = COMMANDS[command]
    weights = tmp_path / "nope.safetensors"
    run = run_cli(head, corpus, str(tmp_path / "out"), "--model", "demo_cnn", "--weights", str(weights),
                  *flags, env=cli_env())
    assert_refused_before_ray(run, str(weights))


@pytest.mark.parametrize("command", COMMANDS)
def test_a_missing_model_card_is_refused_before_torch(command, corpus, tmp_path):
    head, *flags = COMMANDS[command]
    card = tmp_path / "card.yaml"
    run = run_cli(head, corpus, str(tmp_path / "out"), "--model-card", str(card), *flags, env=cli_env())
    assert_refused_before_ray(run, str(card), "model card")


def test_an_audit_output_holding_another_audit_is_refused_before_ray(corpus, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    report = {"model": {"name": "resnet50"}, "data": {"input": corpus}, "suite": "quick",
              "clean": {}, "conditions": {}}
    (out / "report.json").write_text(json.dumps(report))
    run = run_cli(*_argv("audit", corpus, str(out)), env=cli_env())
    assert_refused_before_ray(run, "already holds the audit of another model", cpu_budget=15)


# ---- a finished job: "already complete" without Ray ------------------------------------------

@pytest.mark.cluster  # the first run starts an embedded Ray (~20-40 s on 2 busy cores)
def test_a_finished_classify_rerun_says_already_complete_without_ray(corpus, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    first = run_cli(*_argv("classify", corpus, str(out), "--no-progress"), env=env, timeout=300)
    assert first.rc == 0, first.stderr
    assert (out / "_SUCCESS").is_file()
    parts = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    again = run_cli(*_argv("classify", corpus, str(out), "--no-progress"), env=cli_env())
    print(f"rerun: rc={again.rc} cpu={again.cpu_s:.2f}s wall={again.wall_s:.1f}s {again.stdout!r} {again.stderr!r}")
    assert again.rc == 0, again.stderr  # with RAY_ADDRESS at a dead port: Ray was never reached
    assert f"{out} is already complete (40 rows); nothing to do." in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")} == parts
    assert not (out / "_lock.json").exists()
    # another job (top-k changes the spec hash) into the same OUTPUT is refused, also before Ray
    other = run_cli(*_argv("classify", corpus, str(out), "--top-k", "2"), env=cli_env())
    assert_refused_before_ray(other, str(out), cpu_budget=15)
