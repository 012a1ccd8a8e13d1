"""Fixtures shared by the whole test tree: a real S3 endpoint, synthetic corpora, RNG hygiene."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

# The one moto launcher and environment patch, shared with the benchmarks (see its docstring).
sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))
from local_s3 import AWS_OVERRIDES, moto_env, moto_server, patched_environ  # noqa: E402


@pytest.fixture(scope="session")
def s3_server():
    """A real moto S3 server on 127.0.0.1 (free port); yields its endpoint URL.

    Sets ``AWS_ENDPOINT_URL`` and fake credentials for the session and restores the previous
    environment afterwards (``monkeypatch`` is function-scoped, hence ``patched_environ``). In
    this process, unlike :func:`moto_process`: the tests' requests are few and small.
    """
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        with patched_environ(moto_env(endpoint), unset=AWS_OVERRIDES):
            yield endpoint
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket on the moto server; yields ``"s3://<bucket>"``."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:16]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture
def synthetic_corpus(tmp_path):
    """Factory: ``make(n, rows_per_file=..., row_group_size=..., layout=..., fmt=...)``.

    Writes a small labeled corpus with :func:`ironsight.cluster.synthetic.write_corpus` under a new
    directory of ``tmp_path`` and returns its path (str). Extra keywords (``seed``, ``size``,
    ``prefix``) pass through.
    """
    from ironsight.cluster.synthetic import write_corpus

    made = []

    def make(n: int, *, rows_per_file: int = 50, row_group_size: int = 25,
             layout: str = "bytes", fmt: str = "jpeg", **kwargs) -> str:
        path = tmp_path / f"corpus-{len(made)}"
        write_corpus(str(path), n, rows_per_file=rows_per_file, row_group_size=row_group_size,
                     layout=layout, fmt=fmt, **kwargs)
        made.append(path)
        return str(path)

    return make


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def text(self) -> str:
        return "\n".join(r.getMessage() for r in self.records)


@pytest.fixture
def ironsight_log():
    """Records of the ``ironsight`` logger, caught by a handler on that logger itself (unlike
    ``caplog``, blind to what earlier tests did to the root logger's handlers or propagation)."""
    logger = logging.getLogger("ironsight")
    handler = _Records()
    saved = (logger.level, logger.disabled)
    logger.setLevel(logging.DEBUG)
    logger.disabled = False
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.disabled = saved[1]


def parent_pids() -> dict[int, int]:
    """``{pid: parent pid}`` of every process, from ``/proc/PID/stat`` (Linux)."""
    from pathlib import Path

    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            out[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


@contextlib.contextmanager
def moto_process(no_auth_calls: int):
    """A moto server in its own process that checks signatures and IAM policies after its first
    ``no_auth_calls`` requests (``INITIAL_NO_AUTH_ACTION_COUNT``); yields its endpoint URL.

    A process of its own, unlike :func:`s3_server`: IAM checking is a server-wide setting."""
    with moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": str(no_auth_calls)}) as endpoint:
        yield endpoint


@pytest.fixture(autouse=True)
def prevent_leaking_rng():
    """Restore Python, numpy and torch RNG state after each test (torchvision's fixture)."""
    torch_state = torch.get_rng_state()
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    yield
    torch.set_rng_state(torch_state)
    random.setstate(python_state)
    np.random.set_state(numpy_state)
    if cuda_state is not None:
        torch.cuda.set_rng_state_all(cuda_state)


def pytest_configure(config):
    """Keep every run's history and state out of the user's home (subprocesses inherit it)."""
    import os
    import tempfile

    home = tempfile.mkdtemp(prefix="ironsight-test-home-")
    os.environ["IRONSIGHT_HOME"] = home
    os.environ.pop("IRONSIGHT_HISTORY_URL", None)
