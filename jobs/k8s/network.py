"""Who may reach the Ray pods: the NetworkPolicy (ingress allow-list of every Ray pod) and the
PodMonitor through which Prometheus scrapes their metrics ports.
"""

from __future__ import annotations

from typing import Any

from ironsight.jobs.k8s.params import (
    DASHBOARD_PORT,
    METRICS_PORTS,
    RAY_POD_LABELS,
    SCHEDULER_LABELS,
    object_meta,
)


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
        "metadata": object_meta("ironsight-ray", namespace),
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
        "metadata": object_meta("ironsight-ray", namespace),
        "spec": {
            "selector": {"matchLabels": dict(RAY_POD_LABELS)},
            "namespaceSelector": {"matchNames": [namespace]},
            # Worker pods only declare `metrics`; the head declares all three.
            "podMetricsEndpoints": [
                {"port": name, "path": "/metrics", "interval": "30s"} for name in METRICS_PORTS
            ],
        },
    }
