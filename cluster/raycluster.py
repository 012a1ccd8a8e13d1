"""Connecting to Ray: an embedded single-machine Ray by default, or an existing cluster.

| ``address``            | what happens                                                    |
|------------------------|-----------------------------------------------------------------|
| ``None``               | reuse a Ray already initialised in this process, else start an embedded one (but, as ``ray.init()`` does, join the cluster in ``RAY_ADDRESS`` or the one ``ray start`` ran here when there is one) |
| ``"auto"``             | join the cluster this machine belongs to (``ray start`` ran here) |
| ``"HOST:PORT"``        | join that cluster's GCS                                         |
| ``"ray://HOST:10001"`` | Ray Client                                                      |

Token authentication (``RAY_AUTH_MODE=token``) needs nothing from us: Ray reads
``RAY_AUTH_TOKEN`` (or its token file) from the environment and sends it. The embedded Ray
never opens a dashboard, and every socket its processes listen on (GCS, raylet, workers, the
dashboard and runtime-env agents, metrics servers) is bound to 127.0.0.1: see
:func:`_loopback_node_ip` for the Ray 2.60 detail that needs (tests/reliability/test_loopback.py).

Joining a cluster, the non-secret object-store settings of this process (:data:`FORWARDED_ENV`)
go to the workers as the runtime env's ``env_vars``, except those a job's runtime env already
sets when this process is the driver of a Ray job (:func:`forwarded_env`). Credentials never do.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

FORWARDED_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "IRONSIGHT_S3_MAX_ATTEMPTS",
)
# Set by Ray in a job's driver: the job's config as JSON, its runtime env included
# (ray._private.runtime_env.constants.RAY_JOB_CONFIG_JSON_ENV_VAR).
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
LOOPBACK = "127.0.0.1"


def object_store_env() -> dict[str, str]:
    """Every set name of :data:`FORWARDED_ENV` with its value: a new job's ``env_vars``."""
    return {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}


def forwarded_env() -> dict[str, str]:
    """The settings a driver joining a cluster adds to ``ray.init``'s runtime env.

    Only names from :data:`FORWARDED_ENV` are ever returned: credentials
    (``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``RAY_AUTH_TOKEN``, ...) stay with the
    cluster (IAM role, a k8s Secret), because the dashboard shows every runtime env.

    Inside a Ray job's driver (Ray sets ``RAY_JOB_CONFIG_JSON_ENV_VAR`` to the job's config,
    runtime env included) the variables the job's runtime env already sets are left out:

    | this process is                         | returned                                        |
    |-----------------------------------------|-------------------------------------------------|
    | a shell, or a driver outside any job    | every set name of :data:`FORWARDED_ENV`         |
    | the driver of a job (`ironsight submit`)| those the job's ``env_vars`` do not set already |

    ``ray.init`` inside a job merges its ``runtime_env`` into the job's and refuses (ValueError
    "Failed to merge the Job's runtime env") when both set one variable, even to the same value:
    `submit` forwards ``AWS_REGION`` in the job's runtime env, so passing it again made every
    submitted job fail for users with S3 settings in their shell.
    """
    env = object_store_env()
    injected = os.environ.get(JOB_CONFIG_ENV)
    if injected and env:
        try:
            job_env = (json.loads(injected).get("runtime_env") or {}).get("env_vars") or {}
        except (ValueError, AttributeError):
            return {}  # an unreadable job config: add nothing that could conflict with it
        env = {k: v for k, v in env.items() if k not in job_env}
    return env


def _starts_a_new_ray() -> bool:
    """Whether ``ray.init()`` without an address will start a Ray (True) or join one: it joins
    the cluster in ``RAY_ADDRESS`` (set in every Ray job's driver) or the one ``ray start`` ran
    on this machine. Only a Ray that is started here is pinned to loopback: a driver joining a
    cluster must keep the routable node IP Ray resolves for it, or the cluster cannot reach it.
    """
    from ray._private import services

    try:
        return services.canonicalize_bootstrap_address(None) is None
    except Exception:  # a malformed RAY_ADDRESS: ray.init reports it in its own words
        return False


@contextmanager
def _loopback_node_ip() -> Iterator[None]:
    """Let ``ray.init(_node_ip_address="127.0.0.1")`` keep 127.0.0.1 as the node's IP.

    Ray 2.60's ``ray.init`` passes ``_node_ip_address`` through
    ``services.resolve_ip_for_localhost``, which on Linux replaces a loopback address with the
    host's routable IP (``get_node_ip_address`` -> ``node_ip_address_from_perspective``) unless
    ``ray_constants.ENABLE_RAY_CLUSTER`` is false (its setting on Windows and macOS). Every
    server of a node picks its bind address from that IP: the GCS, the raylet and each core
    worker bind 127.0.0.1 only when it is exactly "127.0.0.1", else all interfaces; the
    dashboard agent, the runtime-env agent, the dashboard's and the autoscaler's metrics
    servers bind loopback when ``is_localhost(ip)``, else the host IP. So for the duration of
    ``ray.init`` the flag is off in this process; the processes it starts get the node IP on
    their command line. The flag only decides that fallback (``services.get_node_ip_address``
    with no node yet, and `ray start`'s messages).
    """
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


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
            dashboard_host=LOOPBACK,
            # Everything in the embedded Ray listens on loopback only (see _loopback_node_ip).
            _node_ip_address=LOOPBACK,
        )
        if num_gpus is not None:
            kwargs["num_gpus"] = num_gpus
    else:
        kwargs["address"] = address
        # Workers on a cluster do not share this shell's environment: pass on the object-store
        # settings that are not secret and that a job's runtime env does not already set.
        env = forwarded_env()
        if env:
            kwargs["runtime_env"] = {"env_vars": env}
    with _loopback_node_ip() if address is None and _starts_a_new_ray() else nullcontext():
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
