"""Kubernetes manifests for Ironsight on KubeRay, built from parameters (pure Python + PyYAML).

`render_manifests` turns one job spec into the objects that run it on a cluster with the
KubeRay operator (v1.7) installed; the static files under `deploy/kuberay/` are written by
`write_static_manifests` (`ironsight deploy static`) from the same builders, so both pass the
same checks (tests/deploy).

| module     | holds                                                                       |
|------------|-----------------------------------------------------------------------------|
| `params`   | names, ports, images, `ClusterShape`, the files a spec names (`mounted_files`, `pod_path`) and the checks of names, cron and time zone |
| `builders` | one function per Kubernetes object: RayCluster, RayJob, RayCronJob, the plain CronJob, the spec's ConfigMap |
| `network`  | the NetworkPolicy guarding every Ray pod and Prometheus's PodMonitor        |
| `render`   | `render_manifests` (one job spec -> YAML files), the static manifests, writing files |

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

Security properties every builder keeps (checked on every object, static and rendered, by
`security_findings` in tests/deploy/security.py):

- Ray token authentication on (`authOptions.mode: token`); the token lives in a Secret.
- Object-store credentials come from a Secret through `envFrom`; no credential is inline.
- The dashboard (8265) is reachable only from pods a NetworkPolicy admits: the scheduler,
  the KubeRay operator and Prometheus; no `0.0.0.0/0` ingress; the head Service is ClusterIP.
- Containers run as a non-root user without privilege escalation; `torch.load` is forced to
  `weights_only` through `TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`.
"""

from __future__ import annotations

from ironsight.jobs.k8s.params import (
    DEFAULT_HISTORY_SECRET,
    DEFAULT_IMAGE,
    HISTORY_ENV,
    VARIANTS,
    ClusterShape,
    MountedFile,
    mounted_files,
    pod_path,
)
from ironsight.jobs.k8s.render import (
    render_manifests,
    static_manifests,
    write_manifests,
    write_static_manifests,
)

__all__ = [
    "DEFAULT_HISTORY_SECRET",
    "DEFAULT_IMAGE",
    "HISTORY_ENV",
    "VARIANTS",
    "ClusterShape",
    "MountedFile",
    "mounted_files",
    "pod_path",
    "render_manifests",
    "static_manifests",
    "write_manifests",
    "write_static_manifests",
]
