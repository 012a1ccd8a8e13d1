"""What the manifests are built from: names, ports, images, the cluster's shape, where the files
a spec names land in the pod, and the checks of names, cron expressions and time zones.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.yamlfile import parse_yaml

# What `docker build -f deploy/Dockerfile -t ironsight:0.1.0 .` produces (deploy/README.md).
DEFAULT_IMAGE = "ironsight:0.1.0"
# kubectl for the plain CronJob alternative; its minor version should match the API server's.
DEFAULT_KUBECTL_IMAGE = "registry.k8s.io/kubectl:v1.33.0"
RAY_VERSION = "2.60.0"

SPEC_DIR = "/etc/ironsight"
SPEC_KEY = "spec.yaml"
# Secret holding the run-history database URL (key `url`), e.g.
# postgresql+psycopg://user:password@host:5432/ironsight (deploy/README.md).
DEFAULT_HISTORY_SECRET = "ironsight-history"
HISTORY_SECRET_KEY = "url"
HISTORY_ENV = "IRONSIGHT_HISTORY_URL"
# Scheduled workloads: the KubeRay RayCronJob, or the plain CronJob that creates a RayJob.
VARIANTS = ("raycronjob", "cronjob")
# A ConfigMap holds at most 1 MiB (etcd's object limit); leave room for its metadata.
MAX_CONFIGMAP_BYTES = 1_000_000
# Where a mounted file may not go: the pod's own mounts and kernel filesystems.
_RESERVED_POD_DIRS = ("/dev", "/proc", "/sys", "/tmp")
RAY_UID = 1000  # the `ray` user of the rayproject/ray images (gid 100)
KUBECTL_UID = 65532  # the "nonroot" uid of distroless images

# Ports: GCS, dashboard + Jobs API, Prometheus metrics exported by every Ray node, and on the
# head the autoscaler's and the dashboard's own metrics (Ray's defaults).
GCS_PORT = 6379
DASHBOARD_PORT = 8265
METRICS_PORT = 8080
AUTOSCALER_METRICS_PORT = 44217
DASHBOARD_METRICS_PORT = 44227
# Named container port -> number, as the PodMonitor and NetworkPolicy refer to them.
METRICS_PORTS = {
    "metrics": METRICS_PORT,
    "as-metrics": AUTOSCALER_METRICS_PORT,
    "dash-metrics": DASHBOARD_METRICS_PORT,
}

PART_OF = {"app.kubernetes.io/part-of": "ironsight"}
RAY_POD_LABELS = {**PART_OF, "app.kubernetes.io/component": "ray"}
SCHEDULER_LABELS = {**PART_OF, "app.kubernetes.io/component": "ironsight-scheduler"}

_NAME_RE = re.compile(r"^[a-z]([a-z0-9-]*[a-z0-9])?$")
# RayCronJob and KubeRay append suffixes to derive RayJob, RayCluster and pod names; 40 leaves
# room under the 63-character label limit.
_MAX_NAME = 40


@dataclass(frozen=True)
class ClusterShape:
    """Resources of the Ray cluster a job runs on: a CPU head and an autoscaling GPU group.

    Attributes:
        head_cpu: CPU request and limit of the head pod (Kubernetes quantity).
        head_memory: memory request and limit of the head pod.
        worker_cpu: CPU per GPU worker pod; decoding and corruptions run here.
        worker_memory: memory per GPU worker pod; the object store takes 30% of it.
        gpus_per_worker: `nvidia.com/gpu` limit per worker pod (one predictor actor per GPU).
        min_gpu_workers: workers kept when idle; 0 lets the autoscaler release every GPU.
        max_gpu_workers: upper bound the autoscaler may scale to.
        shm_size: size of the in-memory `/dev/shm` volume backing Ray's object store.
    """

    head_cpu: str = "4"
    head_memory: str = "16Gi"
    worker_cpu: str = "8"
    worker_memory: str = "48Gi"
    gpus_per_worker: int = 1
    min_gpu_workers: int = 0
    max_gpu_workers: int = 4
    shm_size: str = "16Gi"

    def __post_init__(self) -> None:
        if self.gpus_per_worker < 1:
            raise InvalidInput(
                f"gpus_per_worker is {self.gpus_per_worker}; a GPU worker group needs at least 1"
            )
        if not 0 <= self.min_gpu_workers <= self.max_gpu_workers or self.max_gpu_workers < 1:
            raise InvalidInput(
                f"GPU workers min={self.min_gpu_workers} max={self.max_gpu_workers}; "
                "expected 0 <= min <= max and max >= 1"
            )


@dataclass(frozen=True)
class MountedFile:
    """A file the spec names, as it will be seen inside the Ray pods.

    Attributes:
        key: its key in the spec's ConfigMap.
        pod_path: the absolute path it is mounted at.
        text: its content.
    """

    key: str
    pod_path: str
    text: str

    @property
    def under_spec_dir(self) -> bool:
        return self.pod_path.startswith(SPEC_DIR + "/")


def pod_path(spec_path: str) -> str:
    """Where a path the spec names points inside the pod, where the spec is
    `/etc/ironsight/spec.yaml` and relative paths start at its folder.

    >>> pod_path("gate.yaml"), pod_path("../suites/n.yaml"), pod_path("/opt/cards/m.yaml")
    ('/etc/ironsight/gate.yaml', '/etc/suites/n.yaml', '/opt/cards/m.yaml')
    """
    return posixpath.normpath(posixpath.join(SPEC_DIR, spec_path))


def _config_key(path: str, taken: set[str]) -> str:
    base = re.sub(r"[^-._a-zA-Z0-9]", "_", path.lstrip("/"))[-200:].lstrip(".") or "file"
    key, n = base, 2
    while key in taken:
        key, n = f"{n}-{base}", n + 1
    taken.add(key)
    return key


def mounted_files(files: Mapping[str, str]) -> list[MountedFile]:
    """The ConfigMap keys and pod paths of `files` (path as the spec names it -> text).

    Raises:
        InvalidInput: a path that would land on the spec itself, on `/etc/ironsight`, under
            `/dev`, `/proc`, `/sys` or `/tmp`, two names for one pod path, or more than
            `MAX_CONFIGMAP_BYTES` in all.

    >>> [(m.key, m.pod_path) for m in mounted_files({"gates/g.yaml": "a: 1\\n"})]
    [('gates_g.yaml', '/etc/ironsight/gates/g.yaml')]
    """
    taken = {SPEC_KEY}
    seen: dict[str, str] = {}
    out = []
    for name, text in files.items():
        where = pod_path(name)
        if where in (SPEC_DIR, f"{SPEC_DIR}/{SPEC_KEY}") or any(
            where == d or where.startswith(d + "/") for d in _RESERVED_POD_DIRS
        ):
            raise InvalidInput(
                f"{name!r} would be mounted at {where} in the pod, which is taken (the spec is "
                f"{SPEC_DIR}/{SPEC_KEY}; {', '.join(_RESERVED_POD_DIRS)} belong to the pod); "
                "name the file differently, relative to the spec's folder"
            )
        if where in seen:
            if seen[where] != name:
                raise InvalidInput(f"{name!r} and {seen[where]!r} are the same file in the pod ({where})")
            continue
        seen[where] = name
        rel = posixpath.relpath(where, SPEC_DIR) if where.startswith(SPEC_DIR + "/") else where
        out.append(MountedFile(_config_key(rel, taken), where, text))
    return out


# --------------------------------------------------------------------------- validation


def check_name(what: str, name: str) -> str:
    if len(name) > _MAX_NAME or not _NAME_RE.match(name):
        raise InvalidInput(
            f"{what} {name!r} is not a valid Kubernetes name; use lower-case letters, digits "
            f"and '-', starting with a letter, at most {_MAX_NAME} characters"
        )
    return name


def check_cron(cron: str) -> str:
    from croniter import croniter

    if len(cron.split()) != 5 or not croniter.is_valid(cron):
        raise InvalidInput(
            f"cron {cron!r} is not a 5-field cron expression; expected e.g. '0 2 * * *' "
            "(minute hour day-of-month month day-of-week)"
        )
    return cron


def check_timezone(timezone: str) -> str:
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(
            f"timezone {timezone!r} is not an IANA time zone; use e.g. 'UTC' or 'Europe/Paris'"
        ) from None
    return timezone


def check_spec(spec_text: str) -> str:
    spec = parse_yaml(spec_text, source="job spec")  # bounded: no alias bombs, duplicate keys
    if not isinstance(spec, dict):
        raise InvalidInput(
            f"job spec is a YAML {type(spec).__name__}; expected a mapping of job settings"
        )
    return spec_text


def object_meta(name: str, namespace: str, **labels: str) -> dict[str, Any]:
    """`metadata` of an Ironsight object: its name, namespace and the part-of label."""
    return {"name": name, "namespace": namespace, "labels": {**PART_OF, **labels}}
