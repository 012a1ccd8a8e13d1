"""`ironsight deploy render` as a user runs it, checked with the deploy tests' own validators."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.deploy.security import security_findings

REPO = Path(__file__).resolve().parents[2]
IRONSIGHT = [sys.executable, "-m", "ironsight.jobs.cli"]
SPEC = (
    "kind: audit\nname: Nightly_Audit\ninput: s3://evals/shapes/\noutput: s3://reports/nightly/\n"
    "model: demo_cnn\nrandom_weights: true  # comments are kept\nsuite: quick\n"
)


def _deploy_helpers():
    """tests/deploy/conftest.py, loaded as a module (its fixtures are not visible from here)."""
    spec = importlib.util.spec_from_file_location("deploy_conftest", REPO / "tests/deploy/conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def schema_errors():
    """The same checks as tests/deploy's `schema_errors` fixture."""
    helpers = _deploy_helpers()
    if not helpers.CRD_DIR.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {helpers.CRD_DIR}; set IRONSIGHT_KUBERAY_CRDS")
    validators = {}
    for path in sorted(helpers.CRD_DIR.glob("ray.io_*.yaml")):
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = helpers._close_objects(version["schema"]["openAPIV3Schema"])
        validators[crd["spec"]["names"]["kind"]] = jsonschema.Draft7Validator(schema)

    def check(doc: dict) -> list[str]:
        if doc["kind"] in helpers.KUBERAY_KINDS:
            return helpers._kuberay_errors(doc, validators)
        return helpers._core_errors(doc)

    return check


def _render(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    spec = tmp_path / "nightly.yaml"
    spec.write_text(SPEC)
    return subprocess.run([*IRONSIGHT, "deploy", "render", str(spec), *args], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module", params=[None, "30 2 * * *"], ids=["rayjob", "cron"])
def rendered(request, tmp_path_factory) -> tuple[str | None, Path, list[dict]]:
    tmp = tmp_path_factory.mktemp("render")
    cron = request.param
    extra = ["--cron", cron, "--timezone", "Europe/Berlin"] if cron else []
    proc = _render(tmp, "--out", str(tmp / "k8s"), "--namespace", "ml",
                   "--image", "registry.example.com/ironsight:0.1.0", *extra)
    assert proc.returncode == 0, proc.stderr
    docs = [d for p in sorted((tmp / "k8s").glob("*.yaml"))
            for d in yaml.safe_load_all(p.read_text()) if d]
    return cron, tmp / "k8s", docs


def test_files_written_for_once_and_for_a_schedule(rendered) -> None:
    cron, out, _ = rendered
    expected = {"configmap-spec.yaml", "networkpolicy.yaml"} | (
        {"raycronjob.yaml"} if cron else {"rayjob.yaml"})
    assert {p.name for p in out.iterdir()} == expected


def test_rendered_manifests_pass_the_security_checks(rendered) -> None:
    _, _, docs = rendered
    assert {d["kind"]: security_findings(d) for d in docs} == {d["kind"]: [] for d in docs}


def test_rendered_manifests_pass_the_schema_checks(rendered, schema_errors) -> None:
    _, _, docs = rendered
    assert {d["kind"]: schema_errors(d) for d in docs} == {d["kind"]: [] for d in docs}


def test_spec_name_schedule_and_namespace_reach_the_manifests(rendered) -> None:
    cron, _, docs = rendered
    by_kind = {d["kind"]: d for d in docs}
    assert {d["metadata"]["namespace"] for d in docs} == {"ml"}
    (spec_cm,) = [d for d in docs if d["metadata"].get("name") == "nightly-audit-spec"]
    assert spec_cm["data"]["spec.yaml"] == SPEC
    job = by_kind["RayCronJob" if cron else "RayJob"]
    assert job["metadata"]["name"] == "nightly-audit"
    if cron:
        assert (job["spec"]["schedule"], job["spec"]["timeZone"]) == (cron, "Europe/Berlin")


@pytest.mark.parametrize(("spec", "args", "message"), [
    ("kind: audit\nmodel: demo_cnn\n", [], "input: Field required"),
    (SPEC.replace("suite: quick", "suite: quick\ngate: gaet.yaml"), [],
     "gate: gate file {dir}/gaet.yaml does not exist"),
    (SPEC, ["--variant", "cronjob"], "--variant chooses the scheduler of --cron"),
    (SPEC, ["--cron", "every night"], "not a 5-field cron expression"),
    (SPEC, ["--cron", "0 2 * * *", "--timezone", "Mars/Olympus"], "not an IANA time zone"),
])
def test_bad_spec_or_schedule_exits_2_and_writes_nothing(tmp_path, spec, args, message) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(spec)
    proc = subprocess.run([*IRONSIGHT, "deploy", "render", str(path), "--out", str(tmp_path / "o"),
                           *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert message.format(dir=tmp_path) in proc.stderr
    assert not (tmp_path / "o").exists()


def _ran(tmp_path: Path, spec: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*IRONSIGHT, "deploy", "render", str(spec), *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def test_variant_all_writes_one_folder_per_scheduler_each_with_its_hint(tmp_path) -> None:
    spec = tmp_path / "nightly.yaml"
    spec.write_text(SPEC)
    out = tmp_path / "k8s"
    proc = _ran(tmp_path, spec, "--out", str(out), "--cron", "0 2 * * *", "--variant", "all")
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in out.iterdir()} == {"raycronjob", "cronjob"}
    assert {p.name for p in (out / "raycronjob").iterdir()} == {
        "configmap-spec.yaml", "networkpolicy.yaml", "raycronjob.yaml"}
    assert {p.name for p in (out / "cronjob").iterdir()} == {
        "configmap-spec.yaml", "networkpolicy.yaml", "cronjob-submit-rayjob.yaml"}
    assert f"kubectl apply -f {out / 'raycronjob'}" in proc.stdout
    assert f"kubectl apply -f {out / 'cronjob'}" in proc.stdout
    assert f"kubectl apply -f {out}\n" not in proc.stdout
    assert "not both" in proc.stdout


def test_gate_next_to_the_spec_is_mounted_and_local_data_paths_are_named(tmp_path) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "gate.yaml").write_text("clean_accuracy_min: 0.5\n")
    (specs / "w.safetensors").write_bytes(b"not really weights")
    spec = specs / "nightly.yaml"
    spec.write_text(SPEC.replace("random_weights: true  # comments are kept\n",
                                 "weights: w.safetensors\n") + "gate: gate.yaml\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = _ran(tmp_path, Path("../specs/nightly.yaml"), "--out", "k8s", "--history-secret",
                "team-db", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    (cm,) = yaml.safe_load_all((elsewhere / "k8s" / "configmap-spec.yaml").read_text())
    assert cm["data"]["gate.yaml"] == "clean_accuracy_min: 0.5\n"
    assert "mounted gate.yaml at /etc/ironsight/gate.yaml" in proc.stdout
    assert "weights: w.safetensors is a local path" in proc.stderr
    assert "s3://" in proc.stderr and "w.safetensors" not in "".join(cm["data"])
    job = yaml.safe_load((elsewhere / "k8s" / "rayjob.yaml").read_text())
    env = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "IRONSIGHT_HISTORY_URL",
            "valueFrom": {"secretKeyRef": {"name": "team-db", "key": "url"}}} in env


def test_deploy_static_writes_the_reference_manifests(tmp_path) -> None:
    """`ironsight deploy static` is the one way to regenerate deploy/kuberay/: same files, same bytes."""
    proc = subprocess.run([*IRONSIGHT, "deploy", "static", "--out", str(tmp_path / "kuberay")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    kuberay = REPO / "deploy" / "kuberay"
    written = {p.name: p.read_text() for p in (tmp_path / "kuberay").iterdir()}
    assert written == {p.name: p.read_text() for p in kuberay.iterdir()}
    assert sorted(proc.stdout.splitlines()) == sorted(str(tmp_path / "kuberay" / name) for name in written)
    assert all(text.startswith("# Generated by `ironsight deploy static --out deploy/kuberay`")
               for text in written.values())
