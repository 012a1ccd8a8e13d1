"""Checks of every manifest under deploy/ and of `render_manifests` output (once and cron)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from ironsight.jobs.k8s import render_manifests, static_manifests
from ironsight.jobs.k8s.params import DASHBOARD_PORT, METRICS_PORT, METRICS_PORTS, SPEC_DIR
from tests.deploy.security import security_findings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUBERAY = DEPLOY / "kuberay"
SPEC = "kind: audit\nmodel: demo_cnn\nsuite: smoke\n"
IMAGE = "registry.example.com/ironsight:0.1.0"

FILES = {"gate.yaml": "clean_accuracy_min: 0.8\n", "../suites/s.yaml": "name: s\n"}
RENDERED = {
    "once": render_manifests(SPEC, job_name="audit-smoke", image=IMAGE),
    **{
        variant: render_manifests(
            SPEC, job_name="nightly", cron="30 1 * * 1-5", timezone="Europe/Paris", image=IMAGE,
            variant=variant, files=FILES,
        )
        for variant in ("raycronjob", "cronjob")
    },
}


def _docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def _embedded(doc: dict) -> list[dict]:
    """Manifests kept as text inside a ConfigMap (the CronJob's RayJob template)."""
    if doc.get("kind") != "ConfigMap":
        return []
    inner = [yaml.safe_load(v) for k, v in doc.get("data", {}).items() if k.endswith(".yaml")]
    return [d for d in inner if isinstance(d, dict) and "apiVersion" in d and "kind" in d]


def _collect() -> list[tuple[str, dict]]:
    sources = {f"deploy/kuberay/{p.name}": p.read_text() for p in sorted(KUBERAY.glob("*.yaml"))}
    for mode, files in RENDERED.items():
        sources.update({f"render[{mode}]/{name}": text for name, text in files.items()})
    out = []
    for source, text in sources.items():
        for doc in _docs(text):
            meta = doc["metadata"]
            name = meta.get("name") or meta.get("generateName")
            out.append((f"{source}:{doc['kind']}/{name}", doc))
            out += [(f"{source}:{d['kind']}/embedded", d) for d in _embedded(doc)]
    return out


MANIFESTS = _collect()
IDS = [i for i, _ in MANIFESTS]
DOCS = dict(MANIFESTS)


def _of_kind(kind: str) -> list[tuple[str, dict]]:
    return [(i, d) for i, d in MANIFESTS if d["kind"] == kind]


def _ray_cluster_spec(doc: dict) -> dict:
    if doc["kind"] == "RayCluster":
        return doc["spec"]
    if doc["kind"] == "RayJob":
        return doc["spec"]["rayClusterSpec"]
    return doc["spec"]["jobTemplate"]["rayClusterSpec"]


CLUSTER_DOCS = [(i, d) for i, d in MANIFESTS if d["kind"] in ("RayCluster", "RayJob", "RayCronJob")]
JOB_DOCS = [(i, d) for i, d in MANIFESTS if d["kind"] in ("RayJob", "RayCronJob")]


# ------------------------------------------------------------------ files


@pytest.mark.parametrize(
    "path",
    sorted(p for p in DEPLOY.rglob("*.y*ml") if "generated" not in p.parts),
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_every_yaml_under_deploy_parses(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs)


@pytest.mark.parametrize("name", sorted(static_manifests()))
def test_static_manifests_match_their_builders(name: str) -> None:
    assert (KUBERAY / name).read_text() == static_manifests()[name], (
        f"deploy/kuberay/{name} drifted from the builders in jobs/k8s/; run `ironsight deploy static --out deploy/kuberay`"
    )


def test_no_unknown_files_in_kuberay_dir() -> None:
    assert {p.name for p in KUBERAY.iterdir()} == set(static_manifests())


def test_required_static_files_exist() -> None:
    kinds = {d["kind"] for i, d in MANIFESTS if i.startswith("deploy/kuberay/")}
    assert kinds >= {
        "RayCluster", "RayJob", "RayCronJob", "CronJob", "ServiceAccount", "Role",
        "RoleBinding", "ConfigMap", "NetworkPolicy", "PodMonitor",
    }


# ------------------------------------------------------------------ schemas


@pytest.mark.parametrize("doc_id", IDS)
def test_manifest_is_valid_against_its_schema(doc_id: str, schema_errors) -> None:
    assert schema_errors(DOCS[doc_id]) == []


@pytest.mark.parametrize("doc_id", IDS)
def test_manifest_has_no_security_findings(doc_id: str) -> None:
    assert security_findings(DOCS[doc_id]) == []


# ------------------------------------------------------------------ what the objects promise


@pytest.mark.parametrize("doc_id", [i for i, _ in CLUSTER_DOCS])
def test_cluster_has_cpu_head_and_autoscaling_gpu_workers(doc_id: str) -> None:
    spec = _ray_cluster_spec(DOCS[doc_id])
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    (group,) = spec["workerGroupSpecs"]
    worker_pod = group["template"]["spec"]
    assert worker_pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in worker_pod[
        "tolerations"
    ]
    assert 0 <= group["minReplicas"] <= group["maxReplicas"] and group["maxReplicas"] >= 1


@pytest.mark.parametrize("doc_id", [i for i, _ in CLUSTER_DOCS])
def test_object_store_credentials_come_from_a_secret(doc_id: str) -> None:
    spec = _ray_cluster_spec(DOCS[doc_id])
    pods = [spec["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in spec["workerGroupSpecs"]
    ]
    for pod in pods:
        (container,) = pod["containers"]
        assert container["envFrom"] == [
            {"secretRef": {"name": "ironsight-object-store", "optional": True}}
        ]


@pytest.mark.parametrize("doc_id", [i for i, _ in JOB_DOCS])
def test_job_runs_the_mounted_spec_and_cleans_up(doc_id: str) -> None:
    doc = DOCS[doc_id]
    job = doc["spec"] if doc["kind"] == "RayJob" else doc["spec"]["jobTemplate"]
    assert job["entrypoint"] == f"ironsight run {SPEC_DIR}/spec.yaml"
    assert job["shutdownAfterJobFinishes"] is True
    assert job["activeDeadlineSeconds"] > 0 and job["backoffLimit"] >= 0
    head = job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mount = next(m for m in head["containers"][0]["volumeMounts"] if m["mountPath"] == SPEC_DIR)
    volume = next(v for v in head["volumes"] if v["name"] == mount["name"])
    assert mount["readOnly"] is True and volume["configMap"]["name"].endswith("-spec")
    # SidecarMode needs a head pod that is never restarted in place.
    assert job["submissionMode"] == "SidecarMode" and head["restartPolicy"] == "Never"


@pytest.mark.parametrize("doc_id", [i for i, _ in _of_kind("NetworkPolicy")])
def test_dashboard_admits_only_scheduler_operator_and_prometheus(doc_id: str) -> None:
    spec = DOCS[doc_id]["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "ray"
    by_port = {}
    for rule in spec["ingress"]:
        assert rule["from"], "a rule without 'from' admits everyone"
        assert all("ipBlock" not in peer for peer in rule["from"])
        for port in rule.get("ports", [{"port": "any"}]):
            by_port.setdefault(port["port"], []).extend(rule["from"])
    # Only Ray pods themselves reach every port.
    assert by_port["any"] == [{"podSelector": {"matchLabels": spec["podSelector"]["matchLabels"]}}]
    dashboard = by_port[DASHBOARD_PORT]
    assert {"app.kubernetes.io/component": "ironsight-scheduler", **_part_of()} in [
        p["podSelector"]["matchLabels"] for p in dashboard
    ]
    assert any(p["podSelector"]["matchLabels"].get("app.kubernetes.io/name") == "kuberay-operator"
               for p in dashboard)
    for port in METRICS_PORTS.values():
        (prometheus,) = by_port[port]
        assert prometheus["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    assert set(by_port) == {"any", DASHBOARD_PORT, *METRICS_PORTS.values()}


def _part_of() -> dict:
    return {"app.kubernetes.io/part-of": "ironsight"}


@pytest.mark.parametrize("doc_id", [i for i, _ in _of_kind("Role")])
def test_submitter_role_can_only_create_rayjobs(doc_id: str) -> None:
    assert DOCS[doc_id]["rules"] == [
        {"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create"]}
    ]


@pytest.mark.parametrize("doc_id", [i for i, _ in _of_kind("CronJob")])
def test_cronjob_creates_a_fresh_rayjob_with_its_own_service_account(doc_id: str) -> None:
    doc = DOCS[doc_id]
    source = doc_id.split(":")[0]
    pod = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert doc["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = pod["containers"]
    assert container["command"] + container["args"] == [
        "kubectl", "create", "-f", f"{SPEC_DIR}/rayjob.yaml"
    ]
    same_file = [d for i, d in MANIFESTS if i.startswith(source + ":")]
    binding = next(d for d in same_file if d["kind"] == "RoleBinding")
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]
    template_cm = next(
        d for d in same_file if d["kind"] == "ConfigMap" and "rayjob.yaml" in d["data"]
    )
    assert pod["volumes"][0]["configMap"]["name"] == template_cm["metadata"]["name"]
    (rayjob,) = _embedded(template_cm)
    assert rayjob["metadata"]["generateName"].endswith("-") and "name" not in rayjob["metadata"]


def test_podmonitor_scrapes_the_port_ray_pods_declare() -> None:
    (pm,) = [d for _, d in _of_kind("PodMonitor")]
    (cluster,) = [d for i, d in _of_kind("RayCluster")]
    scraped = {ep["port"] for ep in pm["spec"]["podMetricsEndpoints"]}
    assert scraped == set(METRICS_PORTS)
    pods = [cluster["spec"]["headGroupSpec"]] + cluster["spec"]["workerGroupSpecs"]
    for group in pods:
        labels = group["template"]["metadata"]["labels"]
        assert pm["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ports = group["template"]["spec"]["containers"][0]["ports"]
        assert {"name": "metrics", "containerPort": METRICS_PORT} in ports
    head = pods[0]["template"]["spec"]["containers"][0]
    head_ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert METRICS_PORTS.items() <= head_ports.items()


# ------------------------------------------------------------------ the checks can fail


def _raycluster() -> dict:
    return copy.deepcopy(next(d for i, d in MANIFESTS if d["kind"] == "RayCluster"))


def _head(doc: dict) -> dict:
    return doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]


def _auth_disabled(d):
    d["spec"]["authOptions"]["mode"] = "disabled"


def _auth_removed(d):
    del d["spec"]["authOptions"]


def _inline_secret_env(d):
    _head(d)["env"].append({"name": "AWS_SECRET_ACCESS_KEY", "value": "wJalrXUtnFEMI/K7MDENG"})


def _literal_key(d):
    d["metadata"]["annotations"] = {"note": "AKIAIOSFODNN7EXAMPLE"}


def _weights_only_off(d):
    _head(d)["env"] = []


def _root(d):
    _head(d)["securityContext"]["runAsUser"] = 0


def _non_root_dropped(d):
    del d["spec"]["headGroupSpec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]
    del _head(d)["securityContext"]["runAsNonRoot"]


def _escalation(d):
    _head(d)["securityContext"]["allowPrivilegeEscalation"] = True


def _exposed(d):
    d["spec"]["headGroupSpec"]["serviceType"] = "LoadBalancer"


def _token_inline(d):
    _head(d)["env"].append({"name": "RAY_AUTH_TOKEN", "value": "abc"})


MUTATIONS = {
    "auth-disabled": (_auth_disabled, "authOptions.mode is 'disabled'"),
    "auth-removed": (_auth_removed, "authOptions.mode is None"),
    "inline-secret-env": (_inline_secret_env, "sets AWS_SECRET_ACCESS_KEY inline"),
    "inline-token-env": (_token_inline, "sets RAY_AUTH_TOKEN inline"),
    "literal-aws-key": (_literal_key, "literal credential"),
    "weights-only-off": (_weights_only_off, "TORCH_FORCE_WEIGHTS_ONLY_LOAD"),
    "run-as-root": (_root, "may run as root"),
    "non-root-dropped": (_non_root_dropped, "may run as root"),
    "privilege-escalation": (_escalation, "privilege escalation"),
    "head-exposed": (_exposed, "exposes the head"),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_security_check_fails_on_a_weakened_raycluster(mutation: str) -> None:
    mutate, expected = MUTATIONS[mutation]
    doc = _raycluster()
    mutate(doc)
    findings = security_findings(doc)
    assert any(expected in f for f in findings), findings


def test_security_check_fails_on_open_ingress() -> None:
    (policy,) = [copy.deepcopy(d) for i, d in _of_kind("NetworkPolicy")][:1]
    policy["spec"]["ingress"].append({"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]})
    policy["spec"]["ingress"].append({"ports": [{"port": DASHBOARD_PORT}]})
    findings = security_findings(policy)
    assert any("0.0.0.0/0" in f for f in findings)
    assert any("admits every source" in f for f in findings)


def test_security_check_fails_on_a_secret_with_inline_data() -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3"},
              "stringData": {"AWS_ACCESS_KEY_ID": "x"}}
    assert any("inline data" in f for f in security_findings(secret))


def test_security_check_looks_inside_the_embedded_rayjob_template() -> None:
    cm = copy.deepcopy(next(d for i, d in MANIFESTS if d["kind"] == "ConfigMap" and _embedded(d)))
    rayjob = _embedded(cm)[0]
    rayjob["spec"]["rayClusterSpec"]["authOptions"]["mode"] = "disabled"
    cm["data"]["rayjob.yaml"] = yaml.safe_dump(rayjob)
    assert any("data.rayjob.yaml" in f and "disabled" in f for f in security_findings(cm))


def test_crd_check_fails_on_a_misspelt_field(schema_errors) -> None:
    doc = _raycluster()
    doc["spec"]["authOption"] = doc["spec"].pop("authOptions")
    assert any("authOption" in e for e in schema_errors(doc))


def test_crd_check_fails_on_a_bad_auth_mode(schema_errors) -> None:
    doc = _raycluster()
    doc["spec"]["authOptions"]["mode"] = "password"
    assert any("password" in e for e in schema_errors(doc))


def test_core_check_fails_on_a_bad_cronjob(schema_errors) -> None:
    cron = copy.deepcopy(next(d for i, d in _of_kind("CronJob")))
    cron["spec"]["concurencyPolicy"] = cron["spec"].pop("concurrencyPolicy")
    cron["spec"]["successfulJobsHistoryLimit"] = "three"
    errors = schema_errors(cron)
    assert errors and any("three" in e or "concurencyPolicy" in e for e in errors)


def test_podmonitor_check_fails_without_endpoints(schema_errors) -> None:
    pm = copy.deepcopy(next(d for i, d in _of_kind("PodMonitor")))
    pm["spec"]["podMetricsEndpoints"] = []
    assert schema_errors(pm) == ["spec.podMetricsEndpoints is empty"]


@pytest.mark.parametrize("kind", ["RayJob", "RayCronJob"])
def test_security_check_requires_token_auth_on_job_clusters(kind: str) -> None:
    doc = copy.deepcopy(next(d for i, d in _of_kind(kind)))
    job = doc["spec"] if kind == "RayJob" else doc["spec"]["jobTemplate"]
    del job["rayClusterSpec"]["authOptions"]
    assert any("rayClusterSpec.authOptions.mode is None" in f for f in security_findings(doc))
