"""Job metrics scraped from a real Ray's Prometheus endpoint, and JSON logs from the real CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from ironsight.cluster import metrics, synthetic
from ironsight.cluster.errors import GateFailed
from ironsight.cluster.models import ModelSource
from ironsight.cluster.pipeline import ClassifyConfig, run_classify
from ironsight.jobs.audit import AuditConfig, resolve_suite, run_audit

IRONSIGHT = [sys.executable, "-m", "ironsight.jobs.cli"]
SCRAPE_TIMEOUT_S = 60  # Ray's agent exports every second here (metrics_report_interval_ms)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def metrics_url():
    """A small Ray whose metrics agent serves Prometheus text on a known port, exporting every
    second (Ray's default is every 10 s)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             _metrics_export_port=port, _system_config={"metrics_report_interval_ms": 1000},
             logging_level="WARNING", log_to_driver=False)
    assert ray._private.worker.global_worker.node.metrics_export_port == port
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        ray.shutdown()


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, its ironsight tags): value} for the ray_ironsight_* samples."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("ray_ironsight_"):
                tags = {k: v for k, v in sample.labels.items()
                        if k in ("job", "kind", "model", "status", "family", "condition",
                                 "severity", "eps", "verdict")}
                out[(sample.name, frozenset(tags.items()))] = sample.value
    return out


def wait_for(url: str, expected: dict[tuple[str, frozenset], float]) -> dict:
    """Scrape until every expected sample has its value; fail with what was seen."""
    deadline = time.monotonic() + SCRAPE_TIMEOUT_S
    while True:
        seen = scrape(url)
        if all(key in seen and seen[key] == pytest.approx(v, abs=1e-6) for key, v in expected.items()):
            return seen
        if time.monotonic() > deadline:
            missing = {k: (v, seen.get(k)) for k, v in expected.items()
                       if k not in seen or seen[k] != pytest.approx(v, abs=1e-6)}
            names = {k[0] for k in missing}
            same_name = {k: v for k, v in seen.items() if k[0] in names}
            raise AssertionError(f"not exported within {SCRAPE_TIMEOUT_S}s (expected, seen): "
                                 f"{missing}; series of those names: {same_name}")
        time.sleep(0.5)


def key(name: str, **tags: str) -> tuple[str, frozenset]:
    return name, frozenset(tags.items())


@pytest.fixture(scope="module")
def mixed_corpus(tmp_path_factory) -> str:
    """30 rows in one file: 10 good images and 20 bad ones (empty, random bytes, null, ...)."""
    path = tmp_path_factory.mktemp("mixed")
    img, _ = synthetic.render_image(1, 1, 48)
    good = synthetic.encode(img)
    blobs = [good, b"", np.random.default_rng(0).bytes(300), good[: len(good) // 2], None, good] * 5
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(len(blobs))],
                             "image": pa.array(blobs, pa.binary())}), path / "part-0.parquet",
                   row_group_size=10)
    return str(path)


def test_classify_exports_images_errors_shards_and_rate(metrics_url, mixed_corpus, tmp_path):
    out = tmp_path / "labels"
    cfg = ClassifyConfig(input=mixed_corpus, output=str(out), batch_size=16, max_rows_per_shard=10,
                         actors=1, progress=False,
                         source=ModelSource(name="demo_cnn", random_weights=True))
    with metrics.job_context(job="obs-classify", kind="classify", model="demo_cnn"):
        summary = run_classify(cfg)
    labeled = pads.dataset(str(out), format="parquet").to_table().column("error").null_count
    assert (summary.rows, labeled, summary.error_rows, summary.shards_processed) == (30, 10, 20, 3)
    job = {"job": "obs-classify", "kind": "classify", "model": "demo_cnn"}
    seen = wait_for(metrics_url, {
        key("ray_ironsight_images_processed_total", **job, status="ok"): 10,
        key("ray_ironsight_images_processed_total", **job, status="error"): 20,
        key("ray_ironsight_error_rows_total", **job): 20,
        key("ray_ironsight_shards_committed_total", **job): 3,
    })
    assert seen[key("ray_ironsight_images_per_second", **job)] > 0


AUDIT_SUITE = """\
name: obs
conditions: [gaussian_noise]
severities: [1, 5]
attacks:
  - {name: fgsm, eps: [0.03125], steps: 1}  # 8/256: a label that prints exactly
"""


@pytest.mark.slow  # an audit with an attack: 20-60 s on 2 busy cores
@pytest.mark.parametrize(("gate", "verdict"), [("clean_accuracy_min: 0.0\n", "pass"),
                                               ("clean_accuracy_min: 0.99\n", "fail")])
def test_audit_exports_accuracy_per_cell_and_the_gate_verdict(metrics_url, tmp_path, gate, verdict):
    synthetic.write_corpus(str(tmp_path / "eval"), 16, seed=2, rows_per_file=16, row_group_size=8)
    (tmp_path / "suite.yaml").write_text(AUDIT_SUITE)
    (tmp_path / "gate.yaml").write_text(gate)
    cfg = AuditConfig(
        input=str(tmp_path / "eval"), output=str(tmp_path / "out"), actors=1, batch_size=16,
        source=ModelSource(name="demo_cnn", random_weights=True), progress=False,
        suite=resolve_suite(str(tmp_path / "suite.yaml"), None), gate=str(tmp_path / "gate.yaml"),
    )
    name = f"obs-audit-{verdict}"
    with metrics.job_context(job=name, kind="audit", model="demo_cnn"):
        if verdict == "fail":
            with pytest.raises(GateFailed):
                run_audit(cfg)
        else:
            run_audit(cfg)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    job = {"job": name, "kind": "audit", "model": "demo_cnn"}
    acc = "ray_ironsight_audit_accuracy"
    expected = {
        key(acc, **job, family="clean", condition="clean", severity="0", eps="0"):
            report["clean"]["accuracy"],
        key("ray_ironsight_gate_verdict", **job): 1.0 if verdict == "pass" else 0.0,
        key("ray_ironsight_gate_verdicts_total", **job, verdict=verdict): 1,
        key("ray_ironsight_images_processed_total", **job, status="ok"): 16,
    }
    for cell in report["conditions"]:
        expected[key(acc, **job, family="corruption", condition=cell["name"],
                     severity=str(cell["severity"]), eps="0")] = cell["accuracy"]
    for cell in report["attacks"]:
        expected[key(acc, **job, family="attack", condition=cell["name"], severity="0",
                     eps="0.03125")] = cell["accuracy"]
    assert len(expected) == 4 + 2 + 1
    seen = wait_for(metrics_url, expected)
    assert seen[key("ray_ironsight_audit_duration_seconds", **job)] > 0


# ---- JSON logs from the CLI -----------------------------------------------------------------

def _cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*IRONSIGHT, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _records(stderr: str) -> list[dict]:
    """Every stderr line that starts with '{' parsed as JSON (Ray's own lines stay text)."""
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("how", ["flag", "env"])
def test_an_error_is_one_json_record_on_stderr(tmp_path, how):
    spec = tmp_path / "bad.yaml"
    spec.write_text("kind: classify\ninput: in/\noutput: out/\ntop_k: 0\nmodel: demo_cnn\n"
                    "random_weights: true\n")
    args = ["--log-format", "json", "run", str(spec)] if how == "flag" else ["run", str(spec)]
    proc = _cli(*args, env={"IRONSIGHT_LOG_FORMAT": "json"} if how == "env" else None)
    assert proc.returncode == 2
    (record,) = _records(proc.stderr)
    assert len(proc.stderr.splitlines()) == 1  # nothing else printed
    assert record["level"] == "ERROR" and record["logger"] == "ironsight"
    assert "top_k" in record["message"] and str(spec) in record["message"]
    assert record["ts"].endswith("Z") and "T" in record["ts"]


def test_an_unknown_log_format_in_the_env_is_refused():
    proc = _cli("models", "list", env={"IRONSIGHT_LOG_FORMAT": "xml"})
    assert proc.returncode == 2
    assert "log format 'xml'" in proc.stderr and "text, json" in proc.stderr


@pytest.mark.slow  # a real classify on an embedded Ray: 30-120 s on 2 busy cores
def test_classify_with_json_logs_gives_structured_progress(tmp_path):
    synthetic.write_corpus(str(tmp_path / "in"), 60, seed=1, rows_per_file=30, row_group_size=15,
                           size=32)
    secret = "FAKEsecretKEY-obs-do-not-leak"
    proc = _cli("--log-format", "json", "classify", str(tmp_path / "in"), str(tmp_path / "labels"),
                "--model", "demo_cnn", "--random-weights", "--max-rows-per-shard", "15",
                "--actors", "1", "--no-progress", env={"AWS_SECRET_ACCESS_KEY": secret})
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = _records(proc.stderr)
    assert not [line for line in proc.stderr.splitlines() if line.startswith("[ironsight]")]
    progress = [r for r in records if r["logger"] == "ironsight.progress"]
    assert progress, proc.stderr[-3000:]
    last = progress[-1]
    assert (last["rows_done"], last["rows_total"], last["error_rows"], last["eta_s"]) == (60, 60, 0, 0.0)
    assert last["images_per_s"] > 0
    assert (last["job"], last["kind"], last["model"]) == ("classify:labels", "classify", "demo_cnn")
    assert isinstance(last["run_id"], int)
    assert secret not in proc.stderr and secret not in proc.stdout
