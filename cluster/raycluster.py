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

Ray's own output stays off the console unless ``quiet=False`` (``ironsight -v``); it still
reaches the Ray session's log files (``/tmp/ray/session_*/logs``):

| what users saw on stderr                                   | where it comes from                    | quiet                                  |
|------------------------------------------------------------|----------------------------------------|----------------------------------------|
| ``WARNING authentication_token_setup.py -- Token authentication is enabled ...`` | the ``ray`` logger, set up by ``ray.init(logging_level=...)`` | ``logging_level=ERROR`` (``-v``: INFO) |
| ``(raylet) ...``, ``(MapWorker pid=...) ...`` lines        | workers' output forwarded to the driver | ``log_to_driver=False``               |
| ``[... E ...] core_worker.cc: ... constructor arguments in the object store ...`` | the driver's C++ core worker, about every Ray Data actor pool | dropped from descriptor 2 (:func:`_quiet_native_stderr`) |
| ``Starting execution of Dataset``, ``Progress bars disabled``, ``execution finished in ...`` | the ``ray.data`` logger's own console handler, DataContext printing | :func:`quiet_ray_data` |
| ``RayDeprecationWarning: ray_remote_args_fn ...``           | was ours: no longer used (``ironsight.cluster.engine.decode_task_args``) | gone                     |

Joining a cluster, the non-secret object-store settings of this process (:data:`FORWARDED_ENV`)
go to the workers as the runtime env's ``env_vars``, except those a job's runtime env already
sets when this process is the driver of a Ray job (:func:`forwarded_env`). Credentials never do.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
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


class _HideFromConsole(logging.Filter):
    """Drops every record: put on Ray Data's console handler while Ironsight is quiet."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False


_HIDE = _HideFromConsole()


def quiet_ray_data(quiet: bool) -> None:
    """Keep Ray Data's log records off the console (``quiet``), or let them back on.

    ``import ray.data`` gives the ``ray.data`` logger its own handlers (``propagate=False``):
    a session file (``ray-data.log`` in the Ray session's ``logs`` folder, every record from
    DEBUG up) and a console handler (INFO up: "Starting execution of Dataset ...", the
    execution plan, "Progress bars disabled", "execution finished in 11.10 seconds"). Quiet
    filters the console handler only, so the session file keeps everything. The DataContext
    settings that print instead of log (``enable_progress_bars``, ``print_on_execution_start``,
    ``verbose_stats_logs``) are turned off with it.
    """
    import ray.data  # noqa: F401  (importing configures the "ray.data" logger's handlers)
    from ray.data._internal.logging import SessionFileHandler

    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, SessionFileHandler):
            continue
        if quiet:
            handler.addFilter(_HIDE)
        else:
            handler.removeFilter(_HIDE)
    if quiet:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        ctx.verbose_stats_logs = False


# A line of Ray's C++ logger (spdlog): "[2026-11-25 16:37:53,911 E 4467 4467] core_worker.cc:2465: ..."
_NATIVE_LOG_LINE = re.compile(rb"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [TDIWEF] \d+ \d+\] ")


@contextmanager
def _quiet_native_stderr(quiet: bool) -> Iterator[None]:
    """While Ray runs, keep the C++ core worker's log lines off this process's stderr.

    The driver's core worker writes its log to a file in the Ray session's ``logs`` folder
    (``python-core-driver-*.log``) and echoes every ERROR line on file descriptor 2, a sink
    Ray adds unconditionally (``RayLog::StartRayLog``). Ray Data's actor pools always produce
    one: every ``ActorPoolMapOperator`` passes its actors the map transformer and the
    DataContext as object refs (``_map_transformer_ref``, ``_data_context_ref`` in
    ``ray/data/_internal/execution/operators/``) and starts them with ``max_restarts=-1``, and
    core_worker.cc logs "has constructor arguments in the object store and max_restarts > 0"
    for each such actor, whatever the UDF's own constructor arguments (a class with none gets
    it too; ours are a few hundred bytes). The refs live as long as the operator, so the
    restart it warns about works (tests/reliability/test_faults.py kills a predictor
    mid-job); turning restarts off to avoid the line would lose that, and
    ``RAY_BACKEND_LOG_LEVEL=fatal`` prints an INFO line of its own.

    So, when ``quiet``, descriptor 2 becomes a pipe read by a thread that drops lines in
    Ray's C++ log format (they are in the session's log file) and passes every other byte on
    to the real stderr; Python's ``sys.stderr`` keeps writing to the real one directly, so a
    terminal is still seen as one (progress bars). Restored on exit.
    """
    if not quiet:
        yield
        return
    try:
        sys.stderr.flush()
        real = os.dup(2)
        read_end, write_end = os.pipe()
    except (OSError, ValueError, AttributeError):  # no usable descriptor 2: nothing to filter
        yield
        return

    def pump() -> None:
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            pending = b""
            while chunk := pipe.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                _write(b"".join(line + b"\n" for line in lines if not _NATIVE_LOG_LINE.match(line)))
            if not _NATIVE_LOG_LINE.match(pending):
                _write(pending)

    def _write(data: bytes) -> None:
        # Never stop draining the pipe: a writer to a full pipe would block (Ray's C++ threads).
        try:
            while data:
                data = data[os.write(real, data):]
        except OSError:
            pass

    thread = threading.Thread(target=pump, name="ironsight-stderr-filter", daemon=True)
    thread.start()
    saved_stderr = sys.stderr
    ours = None
    try:
        ours = os.fdopen(os.dup(real), "w", buffering=1, encoding=getattr(saved_stderr, "encoding", None),
                         errors="backslashreplace")
        sys.stderr = ours
    except (OSError, ValueError):
        pass
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        if ours is not None:
            if sys.stderr is ours:  # else someone (pytest's capture) replaced it since: theirs stays
                sys.stderr = saved_stderr
            ours.close()
        os.dup2(real, 2)  # the pipe's last writer in this process is gone: the thread drains it
        thread.join(timeout=5)
        os.close(real)


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
        quiet: keep Ray's own output off the console (the module's table); False (``-v``)
            shows it.

    A Ray that this call started is shut down on exit; one that was already running is left
    alone.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    kwargs: dict = {
        # Ray's own loggers ("ray", ...): the token-authentication notice is a WARNING.
        "logging_level": logging.ERROR if quiet else logging.INFO,
        "log_to_driver": not quiet,  # workers' stdout/stderr and "(raylet)" lines
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
    with _quiet_native_stderr(quiet):
        with _loopback_node_ip() if address is None and _starts_a_new_ray() else nullcontext():
            ray.init(**kwargs)
        quiet_ray_data(quiet)
        try:
            yield
        finally:
            ray.shutdown()
