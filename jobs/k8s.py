"""Kubernetes manifests for Ironsight on KubeRay, built from parameters (pure Python + PyYAML).

`render_manifests` turns one job spec into the objects that run it on a cluster with the
KubeRay operator (v1.7) installed; the static files under `deploy/kuberay/` are written by
`write_static_manifests` from the same builders, so both pass the same checks.

| file (rendered)              | objects                                         | when          |
|------------------------------|-------------------------------------------------|---------------|
| `configmap-spec.yaml`        | ConfigMap `<job>-spec` holding `spec.yaml` and  | always        |
|                              | every local file the spec names (gate, suite,   |               |
|                              | model card), mounted where the spec's paths     |               |
|                              | resolve in the pod                              |               |
| `networkpolicy.yaml`         | NetworkPolicy guarding every Ray pod            | always        |
| `rayjob.yaml`                | RayJob: one run on an ephemeral RayCluster      | `cron` is None |
| `raycronjob.yaml`            | RayCronJob: the same RayJob on a schedule       | `cron`, variant `raycronjob` |
| `cronjob-submit-rayjob.yaml` | ServiceAccount, Role, RoleBinding, ConfigMap,   | `cron`, variant `cronjob` |
|                              | CronJob: plain-Kubernetes alternative that      |               |
|                              | creates the RayJob with `kubectl create`        |               |

One call renders one workload: a scheduled job is either a RayCronJob or the plain CronJob,
never both (applying both would run every audit twice).

Files the spec names (`files=`): the spec sits at `/etc/ironsight/spec.yaml` in every Ray pod,
so `gate: gate.yaml` resolves to `/etc/ironsight/gate.yaml` there; each file becomes a key of
the spec's ConfigMap, projected at that path (`items`) when it lies under `/etc/ironsight`, or
mounted with `subPath` at its absolute path otherwise. Head and workers both mount them (the
predictor actors read the model card).

Run history: the head (where `ironsight run` records the run) gets `IRONSIGHT_HISTORY_URL` from
key `url` of Secret `history_secret` (default `ironsight-history`), so that every run of a
schedule compares with the previous night's instead of an empty SQLite file in a fresh pod.

Security properties every builder keeps (checked by `security_findings`):

- Ray token authentication on (`authOptions.mode: token`); the token lives in a Secret.
- Object-store credentials come from a Secret through `envFrom`; no credential is inline.
- The dashboard (8265) is reachable only from pods a NetworkPolicy admits: the scheduler,
  the KubeRay operator and Prometheus; no `0.0.0.0/0` ingress; the head Service is ClusterIP.
- Containers run as a non-root user without privilege escalation; `torch.load` is forced to
  `weights_only` through `TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.yamlfile import YamlRefused, parse_yaml

__all__ = [
    "DEFAULT_IMAGE",
    "DEFAULT_HISTORY_SECRET",
    "VARIANTS",
    "ClusterShape",
    "MountedFile",
    "mounted_files",
    "pod_path",
    "render_manifests",
    "security_findings",
    "static_manifests",
    "write_manifests",
    "write_static_manifests",
]

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


def _check_name(what: str, name: str) -> str:
    if len(name) > _MAX_NAME or not _NAME_RE.match(name):
        raise InvalidInput(
            f"{what} {name!r} is not a valid Kubernetes name; use lower-case letters, digits "
            f"and '-', starting with a letter, at most {_MAX_NAME} characters"
        )
    return name


def _check_cron(cron: str) -> str:
    from croniter import croniter

    if len(cron.split()) != 5 or not croniter.is_valid(cron):
        raise InvalidInput(
            f"cron {cron!r} is not a 5-field cron expression; expected e.g. '0 2 * * *' "
            "(minute hour day-of-month month day-of-week)"
        )
    return cron


def _check_timezone(timezone: str) -> str:
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(
            f"timezone {timezone!r} is not an IANA time zone; use e.g. 'UTC' or 'Europe/Paris'"
        ) from None
    return timezone


def _check_spec(spec_text: str) -> str:
    spec = parse_yaml(spec_text, source="job spec")  # bounded: no alias bombs, duplicate keys
    if not isinstance(spec, dict):
        raise InvalidInput(
            f"job spec is a YAML {type(spec).__name__}; expected a mapping of job settings"
        )
    return spec_text


# --------------------------------------------------------------------------- builders


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "runAsUser": RAY_UID,
    }


def _pod_security(uid: int) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "fsGroup": 100 if uid == RAY_UID else uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _ray_env() -> list[dict[str, Any]]:
    return [{"name": "TORCH_FORCE_WEIGHTS_ONLY_LOAD", "value": "1"}]


def _storage_env_from(storage_secret: str) -> list[dict[str, Any]]:
    # AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL / AWS_REGION for pyarrow.fs;
    # optional so that runs on local or IAM-role storage need no Secret.
    return [{"secretRef": {"name": storage_secret, "optional": True}}]


def _ray_container(
    name: str,
    image: str,
    *,
    cpu: str,
    memory: str,
    gpus: int,
    ports: list[dict[str, Any]],
    storage_secret: str,
    mount_spec: bool,
    files: tuple[MountedFile, ...] = (),
    history_secret: str | None = None,
) -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if gpus:
        limits["nvidia.com/gpu"] = gpus
    mounts = [{"name": "shm", "mountPath": "/dev/shm"}]
    if mount_spec:
        mounts.append({"name": "job-spec", "mountPath": SPEC_DIR, "readOnly": True})
        # A file outside /etc/ironsight is mounted alone at its path (a mount inside the
        # read-only ConfigMap volume could not be created, hence not for files under it).
        mounts += [
            {"name": "job-files", "mountPath": f.pod_path, "subPath": f.key, "readOnly": True}
            for f in files if not f.under_spec_dir
        ]
    env = _ray_env()
    if history_secret:
        env.append({
            "name": HISTORY_ENV,
            "valueFrom": {"secretKeyRef": {"name": history_secret, "key": HISTORY_SECRET_KEY}},
        })
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "env": env,
        "envFrom": _storage_env_from(storage_secret),
        "ports": ports,
        "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": limits},
        "securityContext": _container_security(),
        "volumeMounts": mounts,
    }


def _volumes(
    shape: ClusterShape, spec_configmap: str | None, files: tuple[MountedFile, ...] = ()
) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": shape.shm_size}}
    ]
    if spec_configmap:
        source: dict[str, Any] = {"name": spec_configmap}
        inside = [f for f in files if f.under_spec_dir]
        if inside:  # the spec, and each file at its path under /etc/ironsight
            source["items"] = [{"key": SPEC_KEY, "path": SPEC_KEY}] + [
                {"key": f.key, "path": posixpath.relpath(f.pod_path, SPEC_DIR)} for f in inside
            ]
        volumes.append({"name": "job-spec", "configMap": source})
        outside = [f for f in files if not f.under_spec_dir]
        if outside:
            volumes.append({"name": "job-files", "configMap": {
                "name": spec_configmap, "items": [{"key": f.key, "path": f.key} for f in outside],
            }})
    return volumes


def ray_cluster_spec(
    *,
    image: str,
    shape: ClusterShape,
    storage_secret: str,
    token_secret: str | None,
    spec_configmap: str | None = None,
    sidecar_submitter: bool = False,
    files: tuple[MountedFile, ...] = (),
    history_secret: str | None = None,
) -> dict[str, Any]:
    """Build a RayCluster `spec`: CPU head, autoscaling GPU worker group, token auth on.

    Args:
        image: the Ironsight image (deploy/Dockerfile) for head and workers.
        shape: resources and autoscaling bounds.
        storage_secret: Secret whose keys become the object-store environment.
        token_secret: Secret with key `auth_token`; None lets KubeRay generate one per cluster.
        spec_configmap: ConfigMap mounted read-only at /etc/ironsight on the head, where the
            job entrypoint runs, and on the workers.
        sidecar_submitter: the head pod hosts KubeRay's SidecarMode submitter, which needs the
            head pod's `restartPolicy: Never`.
        files: the files the spec names, mounted from `spec_configmap` at their pod paths.
        history_secret: Secret whose key `url` becomes `IRONSIGHT_HISTORY_URL` on the head.

    Returns:
        The `spec` mapping of a `ray.io/v1` RayCluster (also a RayJob's `rayClusterSpec`).

    >>> spec = ray_cluster_spec(image="ironsight:0.1.0", shape=ClusterShape(),
    ...                         storage_secret="s3", token_secret=None)
    >>> spec["authOptions"], spec["workerGroupSpecs"][0]["maxReplicas"]
    ({'mode': 'token'}, 4)
    """
    auth: dict[str, Any] = {"mode": "token"}
    if token_secret:
        auth["secretName"] = token_secret
    head_ports = [
        {"name": "gcs-server", "containerPort": GCS_PORT},
        {"name": "dashboard", "containerPort": DASHBOARD_PORT},
        *({"name": n, "containerPort": p} for n, p in METRICS_PORTS.items()),
    ]
    head_pod: dict[str, Any] = {
        "securityContext": _pod_security(RAY_UID),
        "containers": [
            _ray_container(
                "ray-head",
                image,
                cpu=shape.head_cpu,
                memory=shape.head_memory,
                gpus=0,
                ports=head_ports,
                storage_secret=storage_secret,
                mount_spec=spec_configmap is not None,
                files=files,
                history_secret=history_secret,
            )
        ],
        "volumes": _volumes(shape, spec_configmap, files),
    }
    if sidecar_submitter:
        head_pod["restartPolicy"] = "Never"
    worker_pod = {
        "securityContext": _pod_security(RAY_UID),
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "containers": [
            _ray_container(
                "ray-worker",
                image,
                cpu=shape.worker_cpu,
                memory=shape.worker_memory,
                gpus=shape.gpus_per_worker,
                ports=[{"name": "metrics", "containerPort": METRICS_PORT}],
                storage_secret=storage_secret,
                # The predictor actors read the model card the spec names.
                mount_spec=spec_configmap is not None,
                files=files,
            )
        ],
        "volumes": _volumes(shape, spec_configmap, files),
    }
    return {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {
            "upscalingMode": "Default",
            # Release an idle GPU after 5 minutes: long enough to reuse it between the
            # conditions of one audit, short enough not to pay for a night of idle GPUs.
            "idleTimeoutSeconds": 300,
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
                "runAsNonRoot": True,
            },
        },
        "authOptions": auth,
        "headGroupSpec": {
            "serviceType": "ClusterIP",
            # No CPUs on the head: tasks land on workers and the driver keeps its headroom.
            "rayStartParams": {"num-cpus": "0"},
            "template": {"metadata": {"labels": dict(RAY_POD_LABELS)}, "spec": head_pod},
        },
        "workerGroupSpecs": [
            {
                "groupName": "gpu",
                "replicas": shape.min_gpu_workers,
                "minReplicas": shape.min_gpu_workers,
                "maxReplicas": shape.max_gpu_workers,
                "rayStartParams": {},
                "template": {"metadata": {"labels": dict(RAY_POD_LABELS)}, "spec": worker_pod},
            }
        ],
    }


def _meta(name: str, namespace: str, **labels: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": {**PART_OF, **labels}}


def ray_cluster(
    name: str,
    *,
    image: str,
    namespace: str,
    shape: ClusterShape,
    storage_secret: str,
    token_secret: str,
) -> dict[str, Any]:
    """A long-running RayCluster for interactive submission through the Jobs API."""
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": _meta(_check_name("cluster name", name), namespace),
        "spec": ray_cluster_spec(
            image=image, shape=shape, storage_secret=storage_secret, token_secret=token_secret
        ),
    }


def spec_configmap(
    name: str, namespace: str, spec_text: str, files: tuple[MountedFile, ...] = ()
) -> dict[str, Any]:
    """The ConfigMap holding a job spec as `spec.yaml`, and the files it names."""
    data = {SPEC_KEY: _check_spec(spec_text), **{f.key: f.text for f in files}}
    size = sum(len(k) + len(v.encode()) for k, v in data.items())
    if size > MAX_CONFIGMAP_BYTES:
        raise InvalidInput(
            f"the spec and the files it names ({', '.join(f.pod_path for f in files)}) come to "
            f"{size:,} bytes; a ConfigMap holds at most {MAX_CONFIGMAP_BYTES:,}: put the large "
            "ones on s3:// and name them by URI"
        )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(name, namespace, **{"app.kubernetes.io/component": "job-spec"}),
        "data": data,
    }


def ray_job_spec(
    *,
    image: str,
    spec_configmap_name: str,
    shape: ClusterShape,
    storage_secret: str,
    active_deadline_seconds: int,
    backoff_limit: int,
    files: tuple[MountedFile, ...] = (),
    history_secret: str | None = DEFAULT_HISTORY_SECRET,
) -> dict[str, Any]:
    """A RayJob `spec`: run `ironsight run` on a fresh RayCluster, then delete the cluster."""
    return {
        "entrypoint": f"ironsight run {SPEC_DIR}/{SPEC_KEY}",
        # The submitter runs inside the head pod and reaches the dashboard on localhost, so
        # no extra pod needs a way through the NetworkPolicy.
        "submissionMode": "SidecarMode",
        "shutdownAfterJobFinishes": True,
        # Keep the finished cluster 5 minutes for `kubectl logs`, then free its GPUs.
        "ttlSecondsAfterFinished": 300,
        "activeDeadlineSeconds": active_deadline_seconds,
        # Retries are safe: committed shards are skipped on a rerun (exactly-once sink).
        "backoffLimit": backoff_limit,
        "rayClusterSpec": ray_cluster_spec(
            image=image,
            shape=shape,
            storage_secret=storage_secret,
            token_secret=None,
            spec_configmap=spec_configmap_name,
            sidecar_submitter=True,
            files=files,
            history_secret=history_secret,
        ),
    }


def ray_job(
    name: str, namespace: str, job_spec: dict[str, Any], *, generate_name: bool = False
) -> dict[str, Any]:
    """A RayJob object; `generate_name` gives each `kubectl create` a fresh name."""
    meta = _meta(name, namespace, **{"app.kubernetes.io/component": "rayjob"})
    if generate_name:
        meta["generateName"] = f"{meta.pop('name')}-"
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": meta, "spec": job_spec}


def ray_cron_job(
    name: str, namespace: str, job_spec: dict[str, Any], *, cron: str, timezone: str
) -> dict[str, Any]:
    """A RayCronJob that creates the RayJob of `job_spec` on `cron` in `timezone`."""
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCronJob",
        "metadata": _meta(name, namespace, **{"app.kubernetes.io/component": "raycronjob"}),
        "spec": {
            "schedule": _check_cron(cron),
            "timeZone": _check_timezone(timezone),
            "jobTemplate": job_spec,
        },
    }


def submit_cronjob(
    name: str,
    namespace: str,
    rayjob: dict[str, Any],
    *,
    cron: str,
    timezone: str,
    kubectl_image: str = DEFAULT_KUBECTL_IMAGE,
) -> list[dict[str, Any]]:
    """A plain Kubernetes CronJob that creates `rayjob` on a schedule, with least privilege.

    The ServiceAccount may only `create` RayJobs in its namespace: it cannot read Secrets,
    list pods or delete anything.
    """
    sa = f"{name}-submitter"
    template_cm = f"{name}-rayjob-template"
    labels = {"app.kubernetes.io/component": "ironsight-scheduler"}
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(sa, namespace, **labels),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(sa, namespace, **labels),
            "rules": [{"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(sa, namespace, **labels),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta(template_cm, namespace, **labels),
            "data": {"rayjob.yaml": yaml.safe_dump(rayjob, sort_keys=False)},
        },
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": _meta(f"{name}-submit", namespace, **labels),
            "spec": {
                "schedule": _check_cron(cron),
                "timeZone": _check_timezone(timezone),
                # Never two audits at once: the second would only compete for the same GPUs.
                "concurrencyPolicy": "Forbid",
                "startingDeadlineSeconds": 3600,
                "successfulJobsHistoryLimit": 3,
                "failedJobsHistoryLimit": 3,
                "jobTemplate": {
                    "spec": {
                        "backoffLimit": 2,
                        "activeDeadlineSeconds": 600,
                        "ttlSecondsAfterFinished": 86400,
                        "template": {
                            "metadata": {"labels": dict(SCHEDULER_LABELS)},
                            "spec": {
                                "serviceAccountName": sa,
                                "restartPolicy": "Never",
                                "securityContext": _pod_security(KUBECTL_UID),
                                "containers": [
                                    {
                                        "name": "create-rayjob",
                                        "image": kubectl_image,
                                        "command": ["kubectl"],
                                        "args": ["create", "-f", f"{SPEC_DIR}/rayjob.yaml"],
                                        # kubectl caches API discovery under $HOME.
                                        "env": [{"name": "HOME", "value": "/tmp"}],
                                        "resources": {
                                            "requests": {"cpu": "50m", "memory": "64Mi"},
                                            "limits": {"cpu": "200m", "memory": "128Mi"},
                                        },
                                        "securityContext": {
                                            "allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]},
                                            "readOnlyRootFilesystem": True,
                                            "runAsNonRoot": True,
                                            "runAsUser": KUBECTL_UID,
                                        },
                                        "volumeMounts": [
                                            {"name": "template", "mountPath": SPEC_DIR,
                                             "readOnly": True},
                                            {"name": "tmp", "mountPath": "/tmp"},
                                        ],
                                    }
                                ],
                                "volumes": [
                                    {"name": "template", "configMap": {"name": template_cm}},
                                    {"name": "tmp", "emptyDir": {}},
                                ],
                            },
                        },
                    }
                },
            },
        },
    ]


def network_policy(
    namespace: str,
    *,
    operator_namespace: str = "kuberay-system",
    prometheus_namespace: str = "monitoring",
) -> dict[str, Any]:
    """Ingress allow-list for every Ray pod of the namespace (all else is denied).

    - Ray pods talk to each other on any port (GCS, object manager, workers).
    - The dashboard / Jobs API (8265) admits the Ironsight scheduler pods of this namespace
      and the KubeRay operator, which polls job status.
    - The metrics ports (8080 on every node, 44217 and 44227 on the head) admit Prometheus.
    """
    tcp = "TCP"
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta("ironsight-ray", namespace),
        "spec": {
            "podSelector": {"matchLabels": dict(RAY_POD_LABELS)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": dict(RAY_POD_LABELS)}}]},
                {
                    "from": [
                        {"podSelector": {"matchLabels": dict(SCHEDULER_LABELS)}},
                        {
                            "namespaceSelector": {
                                "matchLabels": {
                                    "kubernetes.io/metadata.name": operator_namespace
                                }
                            },
                            "podSelector": {
                                "matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}
                            },
                        },
                    ],
                    "ports": [{"protocol": tcp, "port": DASHBOARD_PORT}],
                },
                {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {
                                    "kubernetes.io/metadata.name": prometheus_namespace
                                }
                            },
                            "podSelector": {
                                "matchLabels": {"app.kubernetes.io/name": "prometheus"}
                            },
                        }
                    ],
                    "ports": [{"protocol": tcp, "port": p} for p in METRICS_PORTS.values()],
                },
            ],
        },
    }


def pod_monitor(namespace: str) -> dict[str, Any]:
    """A prometheus-operator PodMonitor scraping the `metrics` port of every Ray pod."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": _meta("ironsight-ray", namespace),
        "spec": {
            "selector": {"matchLabels": dict(RAY_POD_LABELS)},
            "namespaceSelector": {"matchNames": [namespace]},
            # Worker pods only declare `metrics`; the head declares all three.
            "podMetricsEndpoints": [
                {"port": name, "path": "/metrics", "interval": "30s"} for name in METRICS_PORTS
            ],
        },
    }


# --------------------------------------------------------------------------- rendering


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings (a spec, an embedded RayJob) as readable `|` blocks."""


def _str_presenter(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_presenter)


def _dump(docs: Iterable[dict[str, Any]], header: str = "") -> str:
    body = "---\n".join(
        yaml.dump(d, Dumper=_Dumper, sort_keys=False, width=100) for d in docs
    )
    return header + body


def render_manifests(
    spec_text: str,
    *,
    job_name: str,
    cron: str | None = None,
    timezone: str = "UTC",
    image: str,
    namespace: str = "ironsight",
    shape: ClusterShape | None = None,
    storage_secret: str = "ironsight-object-store",
    active_deadline_seconds: int = 6 * 3600,
    backoff_limit: int = 1,
    kubectl_image: str = DEFAULT_KUBECTL_IMAGE,
    operator_namespace: str = "kuberay-system",
    prometheus_namespace: str = "monitoring",
    variant: str = "raycronjob",
    files: Mapping[str, str] | None = None,
    history_secret: str | None = DEFAULT_HISTORY_SECRET,
) -> dict[str, str]:
    """Render the manifests that run one job spec on KubeRay, once or on a schedule.

    Args:
        spec_text: the job spec YAML, stored verbatim in ConfigMap `<job_name>-spec` and read
            by `ironsight run /etc/ironsight/spec.yaml` on the Ray head.
        job_name: DNS-1123 name (at most 40 characters) of the RayJob / RayCronJob.
        cron: 5-field cron schedule; None renders a single RayJob.
        timezone: IANA time zone of `cron`.
        variant: with `cron`, `raycronjob` (KubeRay RayCronJob) or `cronjob` (a plain CronJob
            that creates the RayJob); exactly one is rendered.
        files: the files the spec names, as it names them (relative to its folder, or
            absolute) -> their text; each is mounted where that path resolves in the pod.
        history_secret: Secret whose key `url` the head reads as `IRONSIGHT_HISTORY_URL`;
            None leaves each run's history in the pod (an empty SQLite file every time).
        image: the Ironsight image built from deploy/Dockerfile.
        namespace: namespace of every object.
        shape: head/worker resources and GPU autoscaling bounds; default `ClusterShape()`.
        storage_secret: Secret with the object-store credentials (`envFrom`, optional).
        active_deadline_seconds: wall-clock limit of one run (default 6 h).
        backoff_limit: RayJob retries on a new cluster; reruns skip committed shards.
        kubectl_image: image of the plain CronJob alternative.
        operator_namespace: namespace of the KubeRay operator, admitted to the dashboard.
        prometheus_namespace: namespace of Prometheus, admitted to the metrics port.

    Returns:
        File name -> YAML text (documents separated by `---`), ready for `kubectl apply -f`.

    Raises:
        InvalidInput: a bad name, cron expression, time zone or spec, or `image` empty.

    >>> files = render_manifests("model: demo_cnn\\n", job_name="audit", image="ironsight:0.1.0")
    >>> sorted(files)
    ['configmap-spec.yaml', 'networkpolicy.yaml', 'rayjob.yaml']
    >>> yaml.safe_load(files["rayjob.yaml"])["spec"]["entrypoint"]
    'ironsight run /etc/ironsight/spec.yaml'
    >>> sorted(render_manifests("model: demo_cnn\\n", job_name="nightly", cron="0 2 * * *",
    ...                         image="ironsight:0.1.0"))
    ['configmap-spec.yaml', 'networkpolicy.yaml', 'raycronjob.yaml']
    >>> sorted(render_manifests("model: demo_cnn\\n", job_name="nightly", cron="0 2 * * *",
    ...                         image="ironsight:0.1.0", variant="cronjob"))
    ['configmap-spec.yaml', 'cronjob-submit-rayjob.yaml', 'networkpolicy.yaml']
    """
    _check_name("job_name", job_name)
    _check_name("namespace", namespace)
    if not image or any(c.isspace() for c in image):
        raise InvalidInput(f"image {image!r} is not an image reference; e.g. 'ironsight:0.1.0'")
    if active_deadline_seconds <= 0 or backoff_limit < 0:
        raise InvalidInput(
            f"active_deadline_seconds={active_deadline_seconds}, backoff_limit={backoff_limit}; "
            "expected a positive deadline and a non-negative retry count"
        )
    if variant not in VARIANTS:
        raise InvalidInput(f"variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    if history_secret is not None:
        _check_name("history secret", history_secret)
    shape = shape or ClusterShape()
    cm_name = f"{job_name}-spec"
    mounted = tuple(mounted_files(files or {}))
    job_spec = ray_job_spec(
        image=image,
        spec_configmap_name=cm_name,
        shape=shape,
        storage_secret=storage_secret,
        active_deadline_seconds=active_deadline_seconds,
        backoff_limit=backoff_limit,
        files=mounted,
        history_secret=history_secret,
    )
    out = {
        "configmap-spec.yaml": _dump([spec_configmap(cm_name, namespace, spec_text, mounted)]),
        "networkpolicy.yaml": _dump(
            [
                network_policy(
                    namespace,
                    operator_namespace=operator_namespace,
                    prometheus_namespace=prometheus_namespace,
                )
            ]
        ),
    }
    if cron is None:
        out["rayjob.yaml"] = _dump([ray_job(job_name, namespace, job_spec)])
    elif variant == "raycronjob":
        out["raycronjob.yaml"] = _dump(
            [ray_cron_job(job_name, namespace, job_spec, cron=cron, timezone=timezone)]
        )
    else:
        out["cronjob-submit-rayjob.yaml"] = _dump(
            submit_cronjob(
                job_name,
                namespace,
                ray_job(job_name, namespace, job_spec, generate_name=True),
                cron=cron,
                timezone=timezone,
                kubectl_image=kubectl_image,
            )
        )
    return out


_STATIC_HEADER = (
    "# Generated by `ironsight deploy static --out deploy/kuberay` from the builders of\n"
    "# ironsight.jobs.k8s: edit them, not this file (tests/deploy checks that both agree).\n"
)


def static_manifests(image: str = DEFAULT_IMAGE, namespace: str = "ironsight") -> dict[str, str]:
    """The reference manifests kept under deploy/kuberay/ (file name -> YAML text).

    The job manifests expect their spec in ConfigMaps `ironsight-audit-spec` and
    `ironsight-nightly-spec`, created with `kubectl create configmap --from-file`.
    """
    shape = ClusterShape()
    storage = "ironsight-object-store"

    def job(cm: str) -> dict[str, Any]:
        return ray_job_spec(
            image=image,
            spec_configmap_name=cm,
            shape=shape,
            storage_secret=storage,
            active_deadline_seconds=6 * 3600,
            backoff_limit=1,
        )

    nightly = job("ironsight-nightly-spec")
    files = {
        "raycluster.yaml": [
            ray_cluster(
                "ironsight",
                image=image,
                namespace=namespace,
                shape=shape,
                storage_secret=storage,
                token_secret="ironsight-ray-token",
            )
        ],
        "networkpolicy.yaml": [network_policy(namespace)],
        "podmonitor.yaml": [pod_monitor(namespace)],
        "rayjob-audit.yaml": [ray_job("ironsight-audit", namespace, job("ironsight-audit-spec"))],
        "raycronjob-nightly.yaml": [
            ray_cron_job("ironsight-nightly", namespace, nightly, cron="0 2 * * *",
                         timezone="UTC")
        ],
        "cronjob-submit-rayjob.yaml": submit_cronjob(
            "ironsight-nightly",
            namespace,
            ray_job("ironsight-nightly", namespace, nightly, generate_name=True),
            cron="0 2 * * *",
            timezone="UTC",
        ),
    }
    return {name: _dump(docs, _STATIC_HEADER) for name, docs in files.items()}


def write_manifests(files: dict[str, str], out_dir: str | Path) -> list[Path]:
    """Write rendered manifests (file name -> YAML text) into `out_dir`, creating it.

    Returns:
        The paths written, in the order of `files`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        if Path(name).name != name:
            raise InvalidInput(f"manifest file name {name!r} must not contain a directory")
        path = out / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def write_static_manifests(out_dir: str | Path) -> list[Path]:
    """Write `static_manifests()` into `out_dir`; returns the paths written."""
    return write_manifests(static_manifests(), out_dir)


# --------------------------------------------------------------------------- security checks

_SECRET_NAME_RE = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.IGNORECASE)
# Literal credentials: AWS access key ids, PEM private keys, bearer tokens.
_LITERAL_SECRET_RE = re.compile(
    r"\b(AKIA|ASIA)[0-9A-Z]{16}\b|-----BEGIN [A-Z ]*PRIVATE KEY-----|Bearer [A-Za-z0-9._-]{16,}"
)
_OPEN_CIDRS = {"0.0.0.0/0", "::/0"}
_CLUSTER_KINDS = {"RayCluster", "RayJob", "RayCronJob"}


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def _cluster_specs(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    spec = doc.get("spec") or {}
    kind = doc.get("kind")
    if kind == "RayCluster":
        return [("spec", spec)]
    if kind == "RayCronJob":
        spec, prefix = spec.get("jobTemplate") or {}, "spec.jobTemplate"
    elif kind == "RayJob":
        prefix = "spec"
    else:
        return []
    if spec.get("clusterSelector") and not spec.get("rayClusterSpec"):
        return []  # runs on an existing RayCluster, which is checked on its own
    return [(f"{prefix}.rayClusterSpec", spec.get("rayClusterSpec") or {})]


def security_findings(doc: dict[str, Any]) -> list[str]:
    """Security problems of one Kubernetes object; an empty list means none were found.

    Checks: Ray token auth on (RayCluster / RayJob / RayCronJob), no container running as root
    or without `runAsNonRoot`, `TORCH_FORCE_WEIGHTS_ONLY_LOAD=1` on Ray containers, no
    `0.0.0.0/0` or `::/0` anywhere, no env var named like a credential with an inline value,
    no literal credential anywhere (AWS key ids, private keys, bearer tokens), no Secret
    object with inline data, no exposed head Service (LoadBalancer / NodePort / Ingress).
    Embedded manifests (a ConfigMap holding a RayJob) are checked too.

    >>> security_findings({"kind": "RayCluster", "spec": {"authOptions": {"mode": "disabled"}}})
    ["spec.authOptions.mode is 'disabled'; Ray token authentication must be on (mode: token)"]
    """
    findings: list[str] = []
    kind = doc.get("kind")
    if kind == "Secret" and (doc.get("data") or doc.get("stringData")):
        findings.append(
            f"Secret {doc.get('metadata', {}).get('name')!r} carries inline data; create "
            "Secrets out of band (kubectl create secret) instead of committing them"
        )
    for where, spec in _cluster_specs(doc):
        mode = (spec.get("authOptions") or {}).get("mode")
        if mode != "token":
            findings.append(
                f"{where}.authOptions.mode is {mode!r}; Ray token authentication must be on "
                "(mode: token)"
            )
        head = spec.get("headGroupSpec") or {}
        if head.get("serviceType", "ClusterIP") != "ClusterIP" or head.get("enableIngress"):
            findings.append(
                f"{where}.headGroupSpec exposes the head (serviceType "
                f"{head.get('serviceType')!r}, enableIngress {head.get('enableIngress')!r}); "
                "keep it ClusterIP and reach the dashboard through kubectl port-forward"
            )
    if kind == "NetworkPolicy":
        for i, rule in enumerate((doc.get("spec") or {}).get("ingress") or []):
            if not rule.get("from"):
                findings.append(
                    f"spec.ingress[{i}] has no 'from': it admits every source; list the pods "
                    "or namespaces that need access"
                )
    for path, node in _walk(doc):
        if isinstance(node, str):
            if node.strip() in _OPEN_CIDRS:
                findings.append(f"{path} is {node!r}: nothing may be open to the whole internet")
            if _LITERAL_SECRET_RE.search(node):
                findings.append(f"{path} contains a literal credential; use a Secret")
            if path.endswith(".yaml"):  # a manifest kept in a ConfigMap key
                try:
                    inner = parse_yaml(node, source=path)
                except YamlRefused as exc:  # an alias bomb or deep nesting: cannot be checked
                    findings.append(f"{exc}; a manifest that cannot be checked is not safe")
                    inner = None
                except InvalidInput:
                    inner = None
                if isinstance(inner, dict) and "kind" in inner:
                    findings += [f"{path}: {f}" for f in security_findings(inner)]
        if not isinstance(node, dict):
            continue
        if "containers" in node and isinstance(node["containers"], list):
            findings += _pod_findings(path, node, ray=kind in _CLUSTER_KINDS)
        if isinstance(node.get("name"), str) and "value" in node and "valueFrom" not in node:
            if _SECRET_NAME_RE.search(node["name"]) and path.rsplit(".", 1)[-1].startswith("env"):
                findings.append(
                    f"{path} sets {node['name']} inline; take it from a Secret "
                    "(valueFrom.secretKeyRef or envFrom.secretRef)"
                )
    return findings


def _pod_findings(path: str, pod: dict[str, Any], *, ray: bool) -> list[str]:
    findings = []
    pod_ctx = pod.get("securityContext") or {}
    for i, c in enumerate(pod["containers"]):
        ctx = {**pod_ctx, **(c.get("securityContext") or {})}
        where = f"{path}.containers[{i}]"
        if not ctx.get("runAsNonRoot") or ctx.get("runAsUser") == 0:
            findings.append(f"{where} may run as root; set securityContext.runAsNonRoot: true")
        if c.get("securityContext", {}).get("privileged") or ctx.get(
            "allowPrivilegeEscalation", True
        ):
            findings.append(f"{where} allows privilege escalation; set it to false")
        if ray:
            env = {e.get("name"): e.get("value") for e in c.get("env") or []}
            if env.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") != "1":
                findings.append(f"{where} lacks TORCH_FORCE_WEIGHTS_ONLY_LOAD=1")
    return findings
