"""Rendering: one job spec into the YAML files that run it (`render_manifests`), the reference
manifests of deploy/kuberay/ (`static_manifests`), and writing them into a folder.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from ironsight.cluster.errors import InvalidInput
from ironsight.jobs.k8s.builders import (
    ray_cluster,
    ray_cron_job,
    ray_job,
    ray_job_spec,
    spec_configmap,
    submit_cronjob,
)
from ironsight.jobs.k8s.network import network_policy, pod_monitor
from ironsight.jobs.k8s.params import (
    DEFAULT_HISTORY_SECRET,
    DEFAULT_IMAGE,
    DEFAULT_KUBECTL_IMAGE,
    VARIANTS,
    ClusterShape,
    check_name,
    mounted_files,
)


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
    check_name("job_name", job_name)
    check_name("namespace", namespace)
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
        check_name("history secret", history_secret)
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
