"""One builder per Kubernetes object Ironsight runs on KubeRay: RayCluster (and the
`rayClusterSpec` of a RayJob), RayJob, RayCronJob, the plain CronJob alternative with its
least-privilege ServiceAccount, and the spec's ConfigMap (the NetworkPolicy and the PodMonitor
are `ironsight.jobs.k8s.network`).

Each keeps the security properties listed in `ironsight.jobs.k8s` (token auth, credentials
from Secrets, the dashboard behind a NetworkPolicy, non-root containers, weights-only loads).
"""

from __future__ import annotations

import posixpath
from typing import Any

import yaml

from ironsight.cluster.errors import InvalidInput
from ironsight.jobs.k8s.params import (
    DASHBOARD_PORT,
    DEFAULT_HISTORY_SECRET,
    DEFAULT_KUBECTL_IMAGE,
    GCS_PORT,
    HISTORY_ENV,
    HISTORY_SECRET_KEY,
    KUBECTL_UID,
    MAX_CONFIGMAP_BYTES,
    METRICS_PORT,
    METRICS_PORTS,
    RAY_POD_LABELS,
    RAY_UID,
    RAY_VERSION,
    SCHEDULER_LABELS,
    SPEC_DIR,
    SPEC_KEY,
    ClusterShape,
    MountedFile,
    check_cron,
    check_name,
    check_spec,
    check_timezone,
    object_meta,
)


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
        "metadata": object_meta(check_name("cluster name", name), namespace),
        "spec": ray_cluster_spec(
            image=image, shape=shape, storage_secret=storage_secret, token_secret=token_secret
        ),
    }


def spec_configmap(
    name: str, namespace: str, spec_text: str, files: tuple[MountedFile, ...] = ()
) -> dict[str, Any]:
    """The ConfigMap holding a job spec as `spec.yaml`, and the files it names."""
    data = {SPEC_KEY: check_spec(spec_text), **{f.key: f.text for f in files}}
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
        "metadata": object_meta(name, namespace, **{"app.kubernetes.io/component": "job-spec"}),
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
    meta = object_meta(name, namespace, **{"app.kubernetes.io/component": "rayjob"})
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
        "metadata": object_meta(name, namespace, **{"app.kubernetes.io/component": "raycronjob"}),
        "spec": {
            "schedule": check_cron(cron),
            "timeZone": check_timezone(timezone),
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
            "metadata": object_meta(sa, namespace, **labels),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": object_meta(sa, namespace, **labels),
            "rules": [{"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": object_meta(sa, namespace, **labels),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": object_meta(template_cm, namespace, **labels),
            "data": {"rayjob.yaml": yaml.safe_dump(rayjob, sort_keys=False)},
        },
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": object_meta(f"{name}-submit", namespace, **labels),
            "spec": {
                "schedule": check_cron(cron),
                "timeZone": check_timezone(timezone),
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
