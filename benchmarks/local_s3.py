"""A local S3 for the benchmarks and the tests: moto's server on loopback, and the environment
that points every AWS client of a process at it.

| helper                  | what it gives                                                        |
|-------------------------|----------------------------------------------------------------------|
| :func:`moto_server`     | moto in a process of its own on 127.0.0.1 (a free port), polled until it answers, stopped after; yields its endpoint URL |
| :func:`patched_environ` | ``os.environ`` with variables set and others removed for a block, as it was after |
| :func:`moto_env`        | moto's fake credentials and region, and the endpoint                 |
| ``AWS_OVERRIDES``       | variables that would win over that endpoint, region or credentials   |

Its users: ``benchmarks/noop.py`` (``moto_s3``), ``benchmarks/plan_scale.py`` (``--s3``) and
``tests/conftest.py`` (``s3_server``, ``moto_process``). Why here: the benchmarks are scripts
with ``benchmarks/`` and the repository root on ``sys.path``, and ``tests/`` is no package they
should import (its ``conftest.py`` imports pytest and torch); ``tests/conftest.py`` adds
``benchmarks/`` to its path instead. Not in ``cluster/``: nothing in the product starts an S3
server. Standard library only, so importing it costs nothing.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping

__all__ = ["AWS_OVERRIDES", "moto_env", "moto_server", "patched_environ"]

# Set in the caller's shell, these would win over the local endpoint, region or credentials.
AWS_OVERRIDES = ("AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_SESSION_TOKEN", "AWS_PROFILE")
# Seconds moto gets to answer on its port (it imports its whole catalogue of services first).
START_TIMEOUT_S = 60.0


def moto_env(endpoint: str) -> dict[str, str]:
    """moto's fake keys, a region, and ``AWS_ENDPOINT_URL`` (what pyarrow and boto3 read).

    >>> moto_env("http://127.0.0.1:5000")["AWS_ENDPOINT_URL"]
    'http://127.0.0.1:5000'
    """
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}


@contextlib.contextmanager
def patched_environ(values: Mapping[str, str], unset: Iterable[str] = ()) -> Iterator[None]:
    """``os.environ`` with ``values`` set and ``unset`` removed inside the block; each variable
    is put back as it was (or removed again) afterwards, also when the block raises.

    >>> os.environ["IRONSIGHT_DOC_A"] = "a"
    >>> with patched_environ({"IRONSIGHT_DOC_B": "b"}, unset=["IRONSIGHT_DOC_A"]):
    ...     os.environ.get("IRONSIGHT_DOC_A"), os.environ["IRONSIGHT_DOC_B"]
    (None, 'b')
    >>> os.environ.pop("IRONSIGHT_DOC_A"), "IRONSIGHT_DOC_B" in os.environ
    ('a', False)
    """
    unset = tuple(unset)
    saved = {name: os.environ.get(name) for name in (*values, *unset)}
    try:
        for name in unset:
            os.environ.pop(name, None)
        os.environ.update(values)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def moto_server(env: Mapping[str, str] | None = None) -> Iterator[str]:
    """moto's server in a process of its own on 127.0.0.1; yields ``http://127.0.0.1:PORT``.

    A process of its own, so serving requests takes no CPU from the process being measured,
    and server-wide settings (``env``, added to this process's environment, e.g.
    ``INITIAL_NO_AUTH_ACTION_COUNT``) stay with it. Terminated when the block ends.

    Raises:
        RuntimeError: it exited, or did not answer on its port within ``START_TIMEOUT_S``.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env={**os.environ, **env} if env else None,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"the moto server did not start on port {port} "
                                       f"(exit {proc.poll()})") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
