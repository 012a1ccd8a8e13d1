"""Shared helpers for the reliability suite: one small embedded Ray per module, output readers.

Every fault in this directory is real: actors are killed through Ray, the job process gets a
SIGKILL, the S3 endpoint goes away behind a TCP proxy. Nothing is mocked.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from ironsight.cluster.models import ModelSource
from ironsight.cluster.pipeline import ClassifyConfig

IRONSIGHT = [sys.executable, "-m", "ironsight.jobs.cli"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_cpu(s3_server):
    """One embedded Ray per module with 2 CPUs (Ray's ``ray_start_regular_shared``).

    Started after the S3 endpoint so its workers inherit ``AWS_ENDPOINT_URL``.
    """
    import ray

    from ironsight.cluster.raycluster import connect

    if ray.is_initialized():
        ray.shutdown()
    with connect(None, num_cpus=2):
        yield


def config(input: str, output, **kw) -> ClassifyConfig:
    """A small, quiet classify config with the random-weights demo CNN."""
    kw.setdefault("source", ModelSource(name="demo_cnn", random_weights=True))
    kw.setdefault("batch_size", 32)
    kw.setdefault("max_rows_per_shard", 50)
    kw.setdefault("progress", False)
    return ClassifyConfig(input=input, output=str(output), **kw)


def read_output(out) -> pa.Table:
    """Every committed part file of a local OUTPUT as one table."""
    return pads.dataset(sorted(str(p) for p in Path(out).glob("part-*.parquet")), format="parquet").to_table()


def part_files(out) -> list[Path]:
    return sorted(Path(out).glob("part-*.parquet"))


def cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``ironsight ARGS`` as a user would; captures stdout and stderr."""
    return subprocess.run(
        [*IRONSIGHT, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env
    )


def predictor_actors(state: str | None = None) -> list[dict]:
    """Actor-table entries (``ActorClassName``, ``State``, ``Pid``) of the pool's predictors.

    Read from the GCS: ``ray.util.state.list_actors`` needs the dashboard, which the embedded
    Ray never starts.
    """
    import ray

    return [
        a for a in ray._private.state.actors().values()
        if "Predictor" in a.get("ActorClassName", "") and (state is None or a.get("State") == state)
    ]
