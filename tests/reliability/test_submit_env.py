"""`ironsight submit` / `schedule --address` with the object-store settings of an S3 user's shell.

Hole: with ``AWS_REGION`` or ``AWS_ENDPOINT_URL`` set, every submitted job failed on the
cluster. `submit` puts those variables in the job's runtime env; the job's driver
(`ironsight run` on the cluster) then called ``ray.init(address="auto", runtime_env=...)`` with
the same variables again, and Ray refuses to merge a job's runtime env with a driver's that sets
the same variable ("Failed to merge the Job's runtime env"). The cluster tests run real jobs on a
real token-authenticated `ray start --head` on loopback (the fixtures of tests/jobs/test_submit.py).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import time
from pathlib import Path

import pytest
import yaml

from ironsight.cluster import synthetic
from ironsight.cluster.raycluster import FORWARDED_ENV, forwarded_env

# A user's S3 shell: the non-secret settings that must reach the job, and secrets that never may.
S3_SHELL = {
    "AWS_REGION": "eu-central-1",
    "AWS_DEFAULT_REGION": "eu-central-1",
    # Nothing listens here; the jobs below read local files only, so it is never contacted.
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
}
S3_SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "FAKEsecretKEY-submit-env-do-not-forward",
    "AWS_SESSION_TOKEN": "FAKEsessionTOKEN-submit-env-do-not-forward",
    "AWS_ACCESS_KEY_ID": "FAKEaccessKEYID-submit-env",
}


def _submit_fixtures():
    """The real token-authenticated `ray start --head` fixtures of tests/jobs/test_submit.py."""
    path = Path(__file__).resolve().parents[1] / "jobs" / "test_submit.py"
    spec = importlib.util.spec_from_file_location("_submit_env_submit_tests", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_submit = _submit_fixtures()
ray_head = _submit.ray_head
authed = _submit.authed


@pytest.fixture
def s3_shell(authed, monkeypatch):
    """This process's environment is an S3 user's: region, endpoint and credentials set."""
    for name, value in {**S3_SHELL, **S3_SECRETS}.items():
        monkeypatch.setenv(name, value)
    return authed


def _spec(root: Path, name: str) -> Path:
    synthetic.write_corpus(str(root / "eval"), 16, seed=5, rows_per_file=16, row_group_size=16)
    suite = root / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "tiny", "conditions": ["gaussian_noise"],
                                     "severities": [1], "attacks": []}))
    spec = root / f"{name}.yaml"
    spec.write_text(yaml.safe_dump({
        "kind": "audit", "name": name, "input": str(root / "eval"), "output": str(root / "out"),
        "model": "demo_cnn", "random_weights": True, "suite": str(suite), "max_images": 16,
        "batch_size": 16, "actors": 1, "device": "cpu",
    }))
    return spec


# --- no cluster needed ------------------------------------------------------------------------


def test_forwarded_env_carries_the_settings_and_never_a_secret(monkeypatch):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    for name, value in {**S3_SHELL, **S3_SECRETS}.items():
        monkeypatch.setenv(name, value)
    env = forwarded_env()
    assert env == {k: v for k, v in S3_SHELL.items()}
    assert not set(S3_SECRETS) & set(FORWARDED_ENV)


def test_inside_a_job_the_driver_forwards_nothing_the_job_already_sets(monkeypatch):
    """What the job's driver sees on the cluster: Ray's injected job config, whose runtime env
    already holds the variables `submit` forwarded. Ray's own merge must accept the result."""
    from ray.runtime_env.runtime_env import _merge_runtime_env

    job_runtime_env = {"working_dir": "gcs://_ray_pkg_0123.zip",
                       "env_vars": {"AWS_REGION": "eu-central-1",
                                    "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": job_runtime_env}))
    for name, value in {**S3_SHELL, **S3_SECRETS}.items():
        monkeypatch.setenv(name, value)
    env = forwarded_env()
    # Only what the job's runtime env does not set (here: AWS_DEFAULT_REGION, from the
    # cluster's own environment) is added; never a secret.
    assert env == {"AWS_DEFAULT_REGION": "eu-central-1"}
    # Before the fix the driver passed every forwarded variable again: Ray refused (None).
    assert _merge_runtime_env(job_runtime_env, {"env_vars": dict(S3_SHELL)}) is None
    assert _merge_runtime_env(job_runtime_env, {"env_vars": env}) is not None


# --- a real token-authenticated head ----------------------------------------------------------


def _job_env(address: str, submission_id: str) -> dict:
    from ironsight.jobs.rayjobs import job_client

    info = job_client(address).get_job_info(submission_id)
    return (info.runtime_env or {}).get("env_vars", {})


@pytest.mark.cluster
def test_submit_succeeds_with_aws_settings_in_the_shell(s3_shell, tmp_path, capsys):
    from ironsight.jobs.cli import main

    spec = _spec(tmp_path, "submit-env")
    sid = "ironsight-submit-env-aws-1"
    rc = main(["submit", str(spec), "--address", s3_shell, "--submission-id", sid, "--wait"])
    err = capsys.readouterr().err
    assert rc == 0, err[-4000:]
    assert f"{sid}: SUCCEEDED" in err
    assert (tmp_path / "out" / "report.json").is_file()  # written by the job on the cluster
    env_vars = _job_env(s3_shell, sid)
    assert {k: env_vars.get(k) for k in S3_SHELL} == S3_SHELL  # the settings travelled
    shown = json.dumps(env_vars)
    for name, secret in S3_SECRETS.items():
        assert name not in env_vars and secret not in shown


@pytest.mark.cluster
def test_schedule_address_tick_succeeds_with_aws_settings_in_the_shell(s3_shell, tmp_path):
    from ironsight.jobs.rayjobs import job_client
    from ironsight.jobs.schedule import remote_launcher

    spec = _spec(tmp_path, "schedule-env")
    run = remote_launcher(str(spec), s3_shell)(dt.datetime(2026, 11, 23, 2, 0, tzinfo=dt.timezone.utc))
    deadline = time.monotonic() + 300
    while (rc := run.poll()) is None and time.monotonic() < deadline:
        time.sleep(1)
    assert rc == 0, job_client(s3_shell).get_job_logs(run.submission_id)[-3000:]
    assert (tmp_path / "out" / "report.json").is_file()
    env_vars = _job_env(s3_shell, run.submission_id)
    assert env_vars.get("AWS_ENDPOINT_URL") == S3_SHELL["AWS_ENDPOINT_URL"]
    assert not set(S3_SECRETS) & set(env_vars)
