"""The example specs, suite and gate under deploy/examples/ stay valid, and render into
manifests that run as rendered: one workload per folder, every file the spec names mounted
where its path resolves in the pod, the history Secret wired, CRD-valid, no security finding."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ironsight.jobs.cli import main
from ironsight.jobs.k8s import pod_path
from ironsight.jobs.k8s.params import SPEC_DIR
from ironsight.jobs.spec_file import load_spec, relative_paths_as_written
from ironsight.robustness.gate import load_gate
from ironsight.robustness.suites import get_suite
from tests.deploy.security import security_findings

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
SPECS = sorted(p for p in EXAMPLES.glob("*.yaml") if p.stem not in ("gate", "suite-nightly"))


def test_there_are_examples_of_each_kind():
    kinds = {load_spec(str(p)).kind for p in SPECS}
    assert kinds == {"classify", "audit"}


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_example_spec_is_valid(path):
    spec = load_spec(str(path))
    assert spec.name and spec.input and spec.output


def test_example_gate_is_valid():
    gate = load_gate(EXAMPLES / "gate.yaml")
    assert gate.clean_accuracy_min == 0.85


def test_example_suite_is_valid():
    suite = get_suite(str(EXAMPLES / "suite-nightly.yaml"))
    assert len(suite.conditions) == 7 and suite.severities == (1, 3, 5)


WORKLOADS = ("RayJob", "RayCronJob", "CronJob")


def _folder_docs(folder: Path) -> list[dict]:
    return [d for p in sorted(folder.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]


def _job_spec(docs: list[dict]) -> dict:
    """The RayJob spec a folder runs: RayJob, RayCronJob template, or the CronJob's template."""
    for d in docs:
        if d["kind"] == "RayJob":
            return d["spec"]
        if d["kind"] == "RayCronJob":
            return d["spec"]["jobTemplate"]
        if d["kind"] == "ConfigMap" and "rayjob.yaml" in d.get("data", {}):
            return yaml.safe_load(d["data"]["rayjob.yaml"])["spec"]
    raise AssertionError("no workload")


@pytest.fixture(scope="module")
def rendered_examples(tmp_path_factory) -> dict[tuple[str, str], Path]:
    """Every example spec rendered through the CLI: once, and with --cron --variant all."""
    out = {}
    for spec in SPECS:
        for mode, extra in (("once", []), ("cron", ["--cron", "0 2 * * *", "--variant", "all"])):
            folder = tmp_path_factory.mktemp(f"{spec.stem}-{mode}")
            assert main(["deploy", "render", str(spec), "--out", str(folder), *extra]) == 0
            if mode == "once":
                out[(spec.name, "rayjob")] = folder
            else:
                assert {p.name for p in folder.iterdir()} == {"raycronjob", "cronjob"}
                out[(spec.name, "raycronjob")] = folder / "raycronjob"
                out[(spec.name, "cronjob")] = folder / "cronjob"
    return out


CASES = [(s.name, v) for s in SPECS for v in ("rayjob", "raycronjob", "cronjob")]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_each_folder_holds_exactly_one_workload(case, rendered_examples):
    docs = _folder_docs(rendered_examples[case])
    workloads = [d["kind"] for d in docs if d["kind"] in WORKLOADS]
    expected = {"rayjob": ["RayJob"], "raycronjob": ["RayCronJob"], "cronjob": ["CronJob"]}
    assert workloads == expected[case[1]]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_every_file_the_spec_names_is_mounted_at_its_path(case, rendered_examples, seen_in_pod):
    spec_path = EXAMPLES / case[0]
    spec = load_spec(str(spec_path))
    written = relative_paths_as_written(spec)
    docs = _folder_docs(rendered_examples[case])
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and "spec.yaml" in d["data"]]
    job = _job_spec(docs)
    cluster = job["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    expected = {f"{SPEC_DIR}/spec.yaml": spec_path.read_text()}
    for field in ("model_card", "suite", "gate"):
        value = getattr(spec, field, None)
        if value and "://" not in value and value not in ("quick", "standard"):
            expected[pod_path(written.get(field, value))] = Path(value).read_text()
    if case[0] == "nightly-audit.yaml":  # the shipped nightly audit names its gate
        assert f"{SPEC_DIR}/gate.yaml" in expected
    for pod in pods:
        assert {p: seen_in_pod(pod, cm, p) for p in expected} == expected
    assert job["entrypoint"] == f"ironsight run {SPEC_DIR}/spec.yaml"


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_history_secret_is_wired_to_the_head(case, rendered_examples):
    head = _job_spec(_folder_docs(rendered_examples[case]))["rayClusterSpec"]["headGroupSpec"]
    env = {e["name"]: e for e in head["template"]["spec"]["containers"][0]["env"]}
    assert env["IRONSIGHT_HISTORY_URL"]["valueFrom"] == {
        "secretKeyRef": {"name": "ironsight-history", "key": "url"}}


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_rendered_examples_pass_the_schema_and_security_checks(case, rendered_examples,
                                                               schema_errors):
    docs = _folder_docs(rendered_examples[case])
    for d in docs:
        inner = [yaml.safe_load(d["data"]["rayjob.yaml"])] if d["kind"] == "ConfigMap" and \
            "rayjob.yaml" in d.get("data", {}) else []
        for doc in [d, *inner]:
            assert schema_errors(doc) == [], doc["kind"]
            assert security_findings(doc) == [], doc["kind"]


def test_a_render_into_one_folder_never_leaves_two_workloads(tmp_path, capsys):
    spec = str(EXAMPLES / "nightly-audit.yaml")
    out = tmp_path / "k8s"
    assert main(["deploy", "render", spec, "--cron", "0 2 * * *", "--out", str(out)]) == 0
    assert main(["deploy", "render", spec, "--cron", "0 2 * * *", "--variant", "cronjob",
                 "--out", str(out)]) == 0
    kinds = [d["kind"] for d in _folder_docs(out) if d["kind"] in WORKLOADS]
    assert kinds == ["CronJob"]
    assert f"removed {out / 'raycronjob.yaml'}" in capsys.readouterr().out
