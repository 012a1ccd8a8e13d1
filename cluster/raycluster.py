"""Connecting to Ray: an embedded single-machine Ray by default, or an existing cluster.

| ``address``            | what happens                                                    |
|------------------------|-----------------------------------------------------------------|
| ``None``               | reuse a Ray already initialised in this process, else start an embedded one |
| ``"auto"``             | join the cluster this machine belongs to (``ray start`` ran here) |
| ``"HOST:PORT"``        | join that cluster's GCS                                         |
| ``"ray://HOST:10001"`` | Ray Client                                                      |

Token authentication (``RAY_AUTH_MODE=token``) needs nothing from us: Ray reads
``RAY_AUTH_TOKEN`` (or its token file) from the environment and sends it. The embedded Ray
never opens a dashboard, and Ironsight never binds Ray to anything but loopback.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

FORWARDED_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "IRONSIGHT_S3_MAX_ATTEMPTS",
)


@contextmanager
def connect(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    quiet: bool = True,
) -> Iterator[None]:
    """Make sure Ray is initialised for the duration of the block.

    Args:
        address: see the module table; ``None`` is the embedded default.
        num_cpus: CPUs for an embedded Ray (default: all cores).
        num_gpus: GPUs for an embedded Ray; a number here declares *logical* GPUs, which is how
            tests exercise GPU pinning on a CPU-only machine.
        quiet: silence Ray's own progress output and driver log forwarding.

    A Ray that this call started is shut down on exit; one that was already running is left
    alone.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    kwargs: dict = {
        "logging_level": logging.WARNING if quiet else logging.INFO,
        "log_to_driver": not quiet,
        "configure_logging": True,
    }
    if address is None:
        kwargs.update(
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            # Everything in the embedded Ray listens on loopback only.
            _node_ip_address="127.0.0.1",
        )
        if num_gpus is not None:
            kwargs["num_gpus"] = num_gpus
    else:
        kwargs["address"] = address
        # Workers on a cluster do not share this shell's environment: pass on the object-store
        # settings that are not secret. Credentials stay with the cluster (IAM role, a k8s
        # Secret) and are never put in a runtime env, which the dashboard shows.
        env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
        if env:
            kwargs["runtime_env"] = {"env_vars": env}
    ray.init(**kwargs)
    if quiet:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
    try:
        yield
    finally:
        ray.shutdown()
