"""Behaviour of `ironsight.jobs.k8s.render_manifests` that `ironsight deploy render` relies on."""

from __future__ import annotations

import pytest
import yaml

from ironsight.cluster.errors import InvalidInput
from ironsight.jobs.k8s import ClusterShape, render_manifests, write_manifests

SPEC = "kind: audit\nmodel: demo_cnn  # keep comments\nsuite: smoke\n"
IMAGE = "registry.example.com/ironsight:0.1.0"


def _docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def _images(node) -> list[str]:
    if isinstance(node, dict):
        found = [node["image"]] if isinstance(node.get("image"), str) and "containers" not in node \
            and "name" in node else []
        return found + [i for v in node.values() for i in _images(v)]
    if isinstance(node, list):
        return [i for v in node for i in _images(v)]
    return []


@pytest.mark.parametrize(
    ("cron", "variant", "files"),
    [
        (None, "raycronjob", {"configmap-spec.yaml", "networkpolicy.yaml", "rayjob.yaml"}),
        ("0 2 * * *", "raycronjob",
         {"configmap-spec.yaml", "networkpolicy.yaml", "raycronjob.yaml"}),
        ("0 2 * * *", "cronjob",
         {"configmap-spec.yaml", "networkpolicy.yaml", "cronjob-submit-rayjob.yaml"}),
    ],
)
def test_one_workload_per_render(cron, variant, files) -> None:
    rendered = render_manifests(SPEC, job_name="audit", cron=cron, image=IMAGE, variant=variant)
    assert set(rendered) == files
    workloads = [d for text in rendered.values() for d in _docs(text)
                 if d["kind"] in ("RayJob", "RayCronJob", "CronJob")]
    assert len(workloads) == 1


@pytest.mark.parametrize("cron", [None, "0 2 * * *"])
def test_spec_is_kept_verbatim_in_its_configmap(cron) -> None:
    files = render_manifests(SPEC, job_name="audit", cron=cron, image=IMAGE, namespace="ml")
    (cm,) = _docs(files["configmap-spec.yaml"])
    assert cm["metadata"] == {
        "name": "audit-spec",
        "namespace": "ml",
        "labels": {"app.kubernetes.io/part-of": "ironsight",
                   "app.kubernetes.io/component": "job-spec"},
    }
    assert cm["data"]["spec.yaml"] == SPEC


@pytest.mark.parametrize("cron", [None, "0 2 * * *"])
def test_every_object_lands_in_the_namespace_and_every_ray_pod_uses_the_image(cron) -> None:
    files = render_manifests(SPEC, job_name="audit", cron=cron, image=IMAGE, namespace="ml")
    docs = [d for text in files.values() for d in _docs(text)]
    assert {d["metadata"]["namespace"] for d in docs} == {"ml"}
    ray_docs = [d for d in docs if d["kind"] in ("RayJob", "RayCronJob")]
    images = {i for d in ray_docs for i in _images(d)}
    assert images == {IMAGE}


def test_cron_schedule_and_timezone_reach_both_schedulers() -> None:
    files = {v: render_manifests(SPEC, job_name="nightly", cron="15 3 * * 1-5",
                                 timezone="Europe/Paris", image=IMAGE, variant=v)
             for v in ("raycronjob", "cronjob")}
    (raycron,) = _docs(files["raycronjob"]["raycronjob.yaml"])
    cronjob = next(d for d in _docs(files["cronjob"]["cronjob-submit-rayjob.yaml"])
                   if d["kind"] == "CronJob")
    for spec in (raycron["spec"], cronjob["spec"]):
        assert (spec["schedule"], spec["timeZone"]) == ("15 3 * * 1-5", "Europe/Paris")
    assert raycron["spec"]["jobTemplate"]["entrypoint"] == "ironsight run /etc/ironsight/spec.yaml"


def test_both_schedulers_run_the_same_rayjob() -> None:
    (raycron,) = _docs(render_manifests(SPEC, job_name="nightly", cron="0 2 * * *",
                                        image=IMAGE)["raycronjob.yaml"])
    files = render_manifests(SPEC, job_name="nightly", cron="0 2 * * *", image=IMAGE,
                             variant="cronjob")
    template_cm = next(
        d for d in _docs(files["cronjob-submit-rayjob.yaml"])
        if d["kind"] == "ConfigMap"
    )
    rayjob = yaml.safe_load(template_cm["data"]["rayjob.yaml"])
    assert rayjob["spec"] == raycron["spec"]["jobTemplate"]
    assert rayjob["metadata"]["generateName"] == "nightly-"


def test_shape_and_limits_are_applied() -> None:
    shape = ClusterShape(gpus_per_worker=2, min_gpu_workers=1, max_gpu_workers=8)
    files = render_manifests(
        SPEC, job_name="big", image=IMAGE, shape=shape, active_deadline_seconds=600,
        backoff_limit=0,
    )
    (job,) = _docs(files["rayjob.yaml"])
    assert (job["spec"]["activeDeadlineSeconds"], job["spec"]["backoffLimit"]) == (600, 0)
    (group,) = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert (group["minReplicas"], group["replicas"], group["maxReplicas"]) == (1, 1, 8)
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"job_name": "Nightly_Audit"}, "job_name 'Nightly_Audit' is not a valid Kubernetes name"),
        ({"job_name": "a" * 41}, "at most 40 characters"),
        ({"namespace": "ML"}, "namespace 'ML'"),
        ({"cron": "every night"}, "cron 'every night' is not a 5-field cron expression"),
        ({"cron": "0 2 * * * *"}, "not a 5-field cron expression"),
        ({"cron": "0 25 * * *"}, "not a 5-field cron expression"),
        ({"cron": "0 2 * * *", "timezone": "Mars/Olympus"}, "not an IANA time zone"),
        ({"image": ""}, "is not an image reference"),
        ({"active_deadline_seconds": 0}, "expected a positive deadline"),
        ({"spec_text": "- a\n- b\n"}, "job spec is a YAML list; expected a mapping"),
        ({"spec_text": "model: [unclosed\n"}, "job spec is not valid YAML"),
        ({"cron": "0 2 * * *", "variant": "both"}, "variant 'both'; expected one of"),
        ({"history_secret": "Bad_Name"}, "history secret 'Bad_Name' is not a valid"),
        ({"files": {"spec.yaml": "a: 1\n"}}, "/etc/ironsight/spec.yaml in the pod, which is taken"),
        ({"files": {"../../dev/x.yaml": "a: 1\n"}}, "/dev/x.yaml in the pod, which is taken"),
        ({"files": {"big.yaml": "x" * 1_000_001}}, "a ConfigMap holds at most 1,000,000"),
    ],
)
def test_bad_input_is_rejected_with_a_fix(kwargs, message) -> None:
    args = {"spec_text": SPEC, "job_name": "audit", "image": IMAGE, **kwargs}
    spec_text = args.pop("spec_text")
    with pytest.raises(InvalidInput, match=message.replace("[", r"\[")) as info:
        render_manifests(spec_text, **args)
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gpus_per_worker": 0}, "gpus_per_worker is 0"),
        ({"min_gpu_workers": 3, "max_gpu_workers": 2}, "expected 0 <= min <= max"),
        ({"max_gpu_workers": 0}, "max >= 1"),
    ],
)
def test_bad_cluster_shape_is_rejected(kwargs, message) -> None:
    with pytest.raises(InvalidInput, match=message):
        ClusterShape(**kwargs)


def test_write_manifests_writes_every_file(tmp_path) -> None:
    files = render_manifests(SPEC, job_name="nightly", cron="0 2 * * *", image=IMAGE)
    written = write_manifests(files, tmp_path / "out")
    assert [p.name for p in written] == list(files)
    assert all(p.read_text() == files[p.name] for p in written)


def test_write_manifests_refuses_paths_outside_the_directory(tmp_path) -> None:
    with pytest.raises(InvalidInput, match="must not contain a directory"):
        write_manifests({"../escape.yaml": "a: 1\n"}, tmp_path)
    assert not (tmp_path.parent / "escape.yaml").exists()


def _head_and_worker_pods(job: dict) -> list[dict]:
    cluster = job["spec"]["rayClusterSpec"]
    return [cluster["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in cluster["workerGroupSpecs"]
    ]


@pytest.mark.parametrize("cron", [None, "0 2 * * *"])
def test_files_the_spec_names_are_mounted_where_its_paths_resolve(cron, seen_in_pod) -> None:
    files = {"gate.yaml": "clean_accuracy_min: 0.8\n", "suites/nightly.yaml": "name: n\n",
             "../cards/m.yaml": "name: m\n", "/opt/ironsight/card.yaml": "name: c\n"}
    rendered = render_manifests(SPEC, job_name="audit", cron=cron, image=IMAGE, files=files)
    (cm,) = _docs(rendered["configmap-spec.yaml"])
    (job,) = _docs(rendered["rayjob.yaml" if cron is None else "raycronjob.yaml"])
    if cron:
        job = {"spec": job["spec"]["jobTemplate"]}
    expected = {"/etc/ironsight/spec.yaml": SPEC,
                "/etc/ironsight/gate.yaml": files["gate.yaml"],
                "/etc/ironsight/suites/nightly.yaml": files["suites/nightly.yaml"],
                "/etc/cards/m.yaml": files["../cards/m.yaml"],
                "/opt/ironsight/card.yaml": files["/opt/ironsight/card.yaml"]}
    for pod in _head_and_worker_pods(job):  # actors on the workers read the model card
        assert {p: seen_in_pod(pod, cm, p) for p in expected} == expected
    assert seen_in_pod(_head_and_worker_pods(job)[0], cm, "/etc/ironsight/other.yaml") is None


def test_the_pod_path_check_fails_on_an_unmounted_file(seen_in_pod) -> None:
    files = {"gates/g.yaml": "a: 1\n"}  # key gates_g.yaml: only `items` puts it at gates/g.yaml
    rendered = render_manifests(SPEC, job_name="audit", image=IMAGE, files=files)
    (cm,) = _docs(rendered["configmap-spec.yaml"])
    (job,) = _docs(rendered["rayjob.yaml"])
    head = _head_and_worker_pods(job)[0]
    head["volumes"] = [v for v in head["volumes"] if v["name"] != "job-spec"] + [
        {"name": "job-spec", "configMap": {"name": cm["metadata"]["name"]}}]  # items dropped
    assert seen_in_pod(head, cm, "/etc/ironsight/gates_g.yaml") == "a: 1\n"
    assert seen_in_pod(head, cm, "/etc/ironsight/gates/g.yaml") is None


@pytest.mark.parametrize("cron", [None, "0 2 * * *"])
def test_history_url_comes_from_a_secret_on_the_head(cron) -> None:
    rendered = render_manifests(SPEC, job_name="audit", cron=cron, image=IMAGE,
                                history_secret="team-history")
    (job,) = _docs(rendered["rayjob.yaml" if cron is None else "raycronjob.yaml"])
    job = {"spec": job["spec"]["jobTemplate"]} if cron else job
    head, worker = _head_and_worker_pods(job)
    env = {e["name"]: e for e in head["containers"][0]["env"]}
    assert env["IRONSIGHT_HISTORY_URL"] == {
        "name": "IRONSIGHT_HISTORY_URL",
        "valueFrom": {"secretKeyRef": {"name": "team-history", "key": "url"}},
    }
    assert "IRONSIGHT_HISTORY_URL" not in {e["name"] for e in worker["containers"][0]["env"]}
    without = render_manifests(SPEC, job_name="audit", image=IMAGE, history_secret=None)
    assert "IRONSIGHT_HISTORY_URL" not in without["rayjob.yaml"]
