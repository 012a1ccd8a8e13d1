"""Validators shared by the deploy checks: KubeRay CRD schemas, Kubernetes core schemas.

The KubeRay v1.7.0 CRDs are read from `../shared/kuberay-crds` (relative to the repository
root) or from `$IRONSIGHT_KUBERAY_CRDS`; they are not kept in this repository.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = Path(os.environ.get("IRONSIGHT_KUBERAY_CRDS", REPO.parent / "shared" / "kuberay-crds"))
# Kubernetes version the core objects are validated for (CronJob.spec.timeZone is GA since 1.27).
K8S_VERSION = "1.33.0"
KUBERAY_KINDS = ("RayCluster", "RayJob", "RayCronJob")


def _close_objects(schema: Any) -> Any:
    """Reject unknown fields, as the API server's structural pruning would drop them.

    An openAPIV3Schema lists `properties` without `additionalProperties: false`, so plain
    jsonschema accepts a misspelt field (`authOption:`) that Kubernetes would silently prune.
    """
    if isinstance(schema, dict):
        out = {k: _close_objects(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_close_objects(v) for v in schema]
    return schema


@pytest.fixture(scope="session")
def crd_validators() -> dict[str, jsonschema.protocols.Validator] | None:
    """One validator per KubeRay kind; None when the CRD directory is missing."""
    if not CRD_DIR.is_dir():
        return None
    validators = {}
    for path in sorted(CRD_DIR.glob("ray.io_*.yaml")):
        # libyaml when present: the three CRDs are 3 MB of YAML (20 s in pure Python).
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = _close_objects(version["schema"]["openAPIV3Schema"])
        validators[crd["spec"]["names"]["kind"]] = jsonschema.Draft7Validator(schema)
    assert set(validators) >= set(KUBERAY_KINDS), f"missing CRDs in {CRD_DIR}: {validators}"
    return validators


def _kuberay_errors(doc: dict, validators: dict) -> list[str]:
    assert doc["apiVersion"] == "ray.io/v1", doc["apiVersion"]
    validator = validators[doc["kind"]]
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(doc)
    ]


def _core_errors(doc: dict) -> list[str]:
    try:
        kubernetes_validate.validate(copy.deepcopy(doc), K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(map(str, e.path))}: {e.message}"]
    return []


def _pod_monitor_errors(doc: dict) -> list[str]:
    """Basic shape of a prometheus-operator PodMonitor (its CRD is not vendored here)."""
    errors = []
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        errors.append(f"apiVersion {doc.get('apiVersion')!r}; expected monitoring.coreos.com/v1")
    spec = doc.get("spec") or {}
    if not (spec.get("selector") or {}).get("matchLabels"):
        errors.append("spec.selector.matchLabels is empty: it would scrape every pod")
    endpoints = spec.get("podMetricsEndpoints") or []
    if not endpoints:
        errors.append("spec.podMetricsEndpoints is empty")
    for i, ep in enumerate(endpoints):
        if not isinstance(ep.get("port"), str) or not ep.get("path", "/metrics").startswith("/"):
            errors.append(f"spec.podMetricsEndpoints[{i}] needs a named port and a path")
    return errors


@pytest.fixture(scope="session")
def schema_errors(crd_validators) -> Callable[[dict], list[str]]:
    """Schema errors of one manifest: CRD schema for KubeRay kinds, Kubernetes schema else."""

    def check(doc: dict) -> list[str]:
        if doc["kind"] in KUBERAY_KINDS:
            if crd_validators is None:
                pytest.skip(
                    f"KubeRay CRDs not found at {CRD_DIR}; set IRONSIGHT_KUBERAY_CRDS to the "
                    "directory holding ray.io_rayclusters.yaml, ray.io_rayjobs.yaml and "
                    "ray.io_raycronjobs.yaml"
                )
            return _kuberay_errors(doc, crd_validators)
        if doc["kind"] == "PodMonitor":
            return _pod_monitor_errors(doc)
        return _core_errors(doc)

    return check


def _seen_in_pod(pod: dict, configmap: dict, path: str) -> str | None:
    """The text a container of `pod` reads at `path`, following its volumeMounts and the
    ConfigMap volumes' `items` the way the kubelet projects them; None when nothing is there."""
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        cm = volumes[mount["name"]].get("configMap")
        if cm is None or cm["name"] != configmap["metadata"]["name"]:
            continue
        # Without `items` every key is a file of its own name; with them, only those listed.
        items = {i["path"]: i["key"] for i in cm.get("items", [])} or {
            k: k for k in configmap["data"]}
        if "subPath" in mount:
            if mount["mountPath"] == path and mount["subPath"] in items:
                return configmap["data"][items[mount["subPath"]]]
        elif path.startswith(mount["mountPath"] + "/"):
            rel = path[len(mount["mountPath"]) + 1:]
            if rel in items:
                return configmap["data"][items[rel]]
    return None


@pytest.fixture(scope="session")
def seen_in_pod() -> Callable[[dict, dict, str], str | None]:
    """`seen_in_pod(pod_spec, configmap, path)`: what a Ray container reads at `path`."""
    return _seen_in_pod
