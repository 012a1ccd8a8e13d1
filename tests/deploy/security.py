"""The security linter of the deploy checks: `security_findings` of one Kubernetes object.

Every manifest Ironsight writes (deploy/kuberay/, `ironsight deploy render`, deploy/vm/) must
come back with no finding; tests/deploy/test_manifests.py shows each check failing on a
manifest with the property removed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.yamlfile import YamlRefused, parse_yaml

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
