"""Smoke tests of the benchmarks (`make bench`): each script runs end to end at tiny sizes and
returns the fields the table is built from, with numbers where ratios go. Timings are never
asserted; only that they exist and the bookkeeping (rows, shards, ratios) is right."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import classify_throughput  # noqa: E402
import gpu_throughput  # noqa: E402
import matrix  # noqa: E402
import plan_scale  # noqa: E402
import profile_classify  # noqa: E402
import resume_cost  # noqa: E402
import run_all  # noqa: E402
import sizing  # noqa: E402
import torch_compile  # noqa: E402

NO_CUDA = not torch.cuda.is_available()


def test_plan_scale_plans_local_and_s3_from_footers(tmp_path):
    argv = ["--files", "4", "--rows-per-file", "50", "--row-group-size", "20", "--max-rows-per-shard", "40",
            "--s3", "--workdir", str(tmp_path)]
    first = plan_scale.main(argv)
    assert first["rows"] == 200 and first["generate_s"] > 0
    assert set(first["runs"]) == {"local", "s3"}
    for run in first["runs"].values():
        # row groups of 20, 20, 10 per file; shards of <= 40 rows: (20+20) and (10)
        assert (run["files"], run["rows"], run["shards"], run["layout"]) == (4, 200, 8, "bytes")
        assert run["plan_s"] > 0 and math.isfinite(run["peak_mb"]) and run["traced_mb"] >= 0
    again = plan_scale.main(argv[:-3] + ["--workdir", str(tmp_path)])  # cached corpus, local only
    assert again["generate_s"] == 0.0 and set(again["runs"]) == {"local"}


def test_sizing_measures_decode_and_derives_cores_per_gpu():
    result = sizing.main(["--images", "3", "--repeat", "1", "--sizes", "500x375,1100x800", "--gpu-rate", "2000"])
    # draft mode is only tried where it applies: twice the 256 px target or more
    assert [(d["size"], d["draft"]) for d in result["decode"]] == [
        ("500x375", True), ("1100x800", True), ("1100x800", False)]
    assert all(d["per_core"] > 0 and d["kb"] > 0 for d in result["decode"])
    typical = result["decode"][0]["per_core"]
    (row,) = [r for r in result["sizing"] if r["source"] == "assumed"]
    assert row["gpu_rate"] == 2000 and row["cores_per_gpu"] == math.ceil(2000 / typical)
    assert row["gpu_hours"][10_000_000] == pytest.approx(10_000_000 / 2000 / 3600)
    assert row["gpus_100m_24h"] == math.ceil(100_000_000 / 2000 / 3600 / 24)


@pytest.mark.skipif(not NO_CUDA, reason="checks the no-GPU branch")
def test_gpu_row_says_not_measured_without_cuda():
    assert gpu_throughput.main(["--images", "10"]) == {"measured": False, "why": "no GPU"}


@pytest.mark.gpu
@pytest.mark.skipif(NO_CUDA, reason="needs CUDA")
def test_gpu_row_measures_classify_against_the_model_alone(tmp_path):
    result = gpu_throughput.main(["--images", "1024", "--image-size", "64", "--model", "demo_cnn",
                                  "--seconds", "2", "--workdir", str(tmp_path)])
    assert result["measured"] and result["images"] == 1024
    assert result["ratio"] > 0 and result["model_alone_images_per_s"] > 0


RAW = """\
process 10:"python -m ironsight.jobs.cli classify";<module> (jobs/cli.py:303);run_classify (cluster/pipeline.py:240);plan_corpus (cluster/corpus.py:190) 3
process 10:"python -m ironsight.jobs.cli classify";<module> (jobs/cli.py:303);_stream (cluster/pipeline.py:360);_shard_table (cluster/pipeline.py:410) 2
process 10:"python -m ironsight.jobs.cli classify";process 11:"raylet";process 12:"ray::MapWorker";<module> (ray/_private/workers/default_worker.py:323);Predictor.__call__ (cluster/predictor.py:125);Conv2d.forward (torch/nn/modules/conv.py:565) 7
process 10:"python -m ironsight.jobs.cli classify";process 11:"raylet";process 12:"ray::MapWorker";Thread.run (threading.py:982);Condition.wait (threading.py:327) 50
process 10:"python -m ironsight.jobs.cli classify";process 11:"raylet";process 13:"ray::ReadAndDecode";<module> (ray/_private/workers/default_worker.py:323);read_and_decode (cluster/pipeline.py:150);decode_batch (cluster/decode.py:140);ImageFile.load (PIL/ImageFile.py:425) 5
process 10:"python -m ironsight.jobs.cli classify";process 11:"raylet";process 13:"ray::ReadAndDecode";<module> (ray/_private/workers/default_worker.py:323);read_and_decode (cluster/pipeline.py:150);iter_shard (cluster/reader.py:211) 1
process 10:"python -m ironsight.jobs.cli classify";process 14:"dashboard.py";<module> (ray/dashboard/dashboard.py:1);_find_and_load (<frozen importlib._bootstrap>:1) 4
"""


def test_profile_folds_stacks_into_activities_by_process_role(tmp_path):
    raw = tmp_path / "raw.txt"
    raw.write_text(RAW)
    table, leaves = profile_classify.fold(str(raw))
    assert table == {
        ("driver: plan", "driver"): 3, ("driver: assembly", "driver"): 2, ("inference", "worker"): 7,
        ("waiting", "worker"): 50, ("decode", "worker"): 5, ("read parquet", "worker"): 1,
        ("start-up: imports", "Ray system"): 4,
    }
    text = profile_classify.render(table, leaves, 25, "HEADER")
    assert text.startswith("HEADER") and "busy (not waiting, with a Python frame): 22" in text
    assert "heaviest innermost frames: inference" in text
    lines = profile_classify.per_process(str(raw), rate=1)  # rate 1: one sample is a thread-second
    assert [ln.split() for ln in lines[1:]] == [  # pid, role, imports s, busy s, then
        ["10", "driver", "0.0", "5.0", "driver:", "plan,", "driver:", "assembly"],
        ["12", "worker", "0.0", "7.0", "inference"],
        ["13", "worker", "0.0", "6.0", "read", "parquet,", "decode"],
        ["14", "Ray", "system", "4.0", "4.0", "-"]]


@pytest.mark.slow
def test_profile_of_a_real_classify_run_shows_decode_and_inference(tmp_path):
    out = tmp_path / "profile.txt"
    result = profile_classify.main(["--images", "300", "--rate", "20", "--batch-size", "64",
                                    "--workdir", str(tmp_path), "--output", str(out), "--timeout", "420"])
    text = out.read_text()
    assert "the CLI said: labeled 300 rows" in text
    assert result["busy_share"]["inference"] > 0 and result["busy_share"]["decode"] > 0


@pytest.mark.slow
def test_resume_cost_kills_mid_run_and_counts_what_the_resume_relabels(tmp_path):
    # batches of 8 rows: the shards commit one by one, not three to a batch, so the kill lands
    # mid-run (the benchmark also runs again when it did not)
    result = resume_cost.main(["--images", "200", "--max-rows-per-shard", "20", "--batch-size", "8",
                               "--workdir", str(tmp_path)])
    assert result["shards"] == 10
    assert 5 <= result["parts_at_kill"] < 10
    assert result["remainder_rows"] == 200 - result["committed_rows_at_kill"]
    # committed shards are skipped, nothing else is: exactly the remainder is labeled again
    assert result["resumed_rows"] == result["remainder_rows"] and result["reprocessed_extra"] == 0.0
    assert result["resumed_shards_skipped"] == result["parts_at_kill"]
    assert result["time_ratio"] > 0


def test_run_all_writes_one_table_with_every_row(tmp_path, monkeypatch):
    monkeypatch.setitem(run_all.BENCHMARKS, "plan", (plan_scale.main, [], [
        "--files", "3", "--rows-per-file", "40", "--workdir", str(tmp_path / "plan")]))
    monkeypatch.setitem(run_all.BENCHMARKS, "sizing", (sizing.main, [], [
        "--images", "2", "--repeat", "1", "--sizes", "500x375,1100x800"]))
    rc = run_all.main(["--quick", "--only", "plan,sizing,gpu", "--results", str(tmp_path / "res")])
    assert rc == 0
    (md,) = (tmp_path / "res").glob("bench-*.md")
    (js,) = (tmp_path / "res").glob("bench-*.json")
    text = md.read_text()
    assert "| measure | baseline | ironsight | ratio | target | met? |" in text
    assert "Planning 3 files / 120 rows" in text and "CPU decode, one core" in text
    doc = json.loads(js.read_text())
    assert len(doc["rows"]) == 7  # issue 7's six rows and the matrix's, run or not
    assert all({"measure", "baseline", "ironsight", "ratio", "target", "met"} <= set(r) for r in doc["rows"])
    assert doc["machine"]["cpus"] >= 1 and set(doc["runs"]) == {"plan", "sizing", "gpu"}


def test_run_all_reports_a_crashed_benchmark_and_exits_1(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    # a plan of 0 files: plan_corpus refuses an input that matches no files
    monkeypatch.setitem(run_all.BENCHMARKS, "plan", (plan_scale.main, [], [
        "--files", "0", "--workdir", str(tmp_path / "plan")]))
    assert run_all.main(["--quick", "--only", "plan", "--results", str(tmp_path / "res")]) == 1
    (js,) = (tmp_path / "res").glob("bench-*.json")
    error = json.loads(js.read_text())["results"]["plan"]["error"]
    assert "InvalidInput" in error and "matches no files" in error


def test_table_rows_compute_ratios_and_targets_from_benchmark_results():
    results = {
        "classify": {"images_per_s": {"recipe": 100.0, "ceiling": 400.0, "ironsight": 160.0},
                     "ironsight_vs_recipe": 1.6, "ironsight_vs_ceiling": 0.4,
                     "peak_rss_mb": {1000: 900.0, 4000: 990.0}, "rss_ratio_4x": 1.1},
        "resume": {"remainder_rows": 500, "resumed_rows": 500, "reprocessed_extra": 0.0, "parts_at_kill": 5,
                   "shards": 10, "time_ratio": 1.3},
        "audit": {"times": {"clean": 10.0, "suite": 50.0}, "variants": 81, "per_variant": 50 / 810,
                  "parts": {"decode": 1.0}},
        "gpu": {"measured": False, "why": "no GPU"},
    }
    rows = {r["measure"].split(",")[0]: r for r in run_all.rows_from(results)}
    assert len(rows) == 7 and rows["classify matrix (models x sources x loads)"]["baseline"] == "not run"
    assert rows["`classify` images/s"]["ratio"] == 1.6 and rows["`classify` images/s"]["met"] is True
    assert rows["`classify` images/s vs the ceiling"]["met"] is False
    assert rows["peak driver RSS"]["met"] is True
    assert rows["resume after a kill at ~50%"]["ratio"] == 1.0
    assert rows["`audit` standard suite"]["ratio"] == pytest.approx(50 / 810)
    gpu = rows["GPU: `classify` vs the model alone on the GPU"]
    assert gpu["ratio"] is None and gpu["met"] is None and "no GPU" in gpu["baseline"]


def test_the_ceiling_row_comes_from_the_model_bound_run_when_there_is_one():
    results = {
        "classify": {"images_per_s": {"recipe": 180.0, "ceiling": 1800.0, "ironsight": 850.0},
                     "image_size": 64, "ironsight_vs_recipe": 4.7, "ironsight_vs_ceiling": 0.47,
                     "decode_ms_per_image": 0.27, "ceiling_bound_with_decode": 0.8},
        "classify-model": {"images_per_s": {"recipe": 8.7, "ceiling": 22.9, "ironsight": 18.9},
                           "model": "resnet18", "image_size": 224, "ironsight_vs_recipe": 2.18,
                           "ironsight_vs_ceiling": 0.83},
    }
    (row,) = [r for r in run_all.rows_from(results) if "vs the ceiling" in r["measure"]]
    assert "resnet18, 224 px" in row["measure"] and row["ratio"] == 0.83 and row["met"] is True
    assert "model alone 22.9/s" in row["baseline"]
    # the decode-heavy run's own ratio and its bound stay in the notes
    assert "0.47x its ceiling" in row["note"] and "0.80x" in row["note"]
    broken = {**results, "classify-model": {"error": "RuntimeError: boom"}}
    (row,) = [r for r in run_all.rows_from(broken) if "vs the ceiling" in r["measure"]]
    assert row["ratio"] == 0.47 and "boom" in row["note"]


@pytest.mark.slow
def test_classify_throughput_runs_all_four_side_by_side_and_bounds_the_ceiling(tmp_path):
    result = classify_throughput.main(["--images", "300", "--batch-size", "64", "--workdir", str(tmp_path)])
    rates = result["images_per_s"]
    assert set(rates) == {"recipe", "loop", "ceiling", "ironsight"} and all(v > 0 for v in rates.values())
    assert result["ironsight_vs_recipe"] == pytest.approx(rates["ironsight"] / rates["recipe"])
    assert 0 < result["decode_ms_per_image"] < 50
    assert 0 < result["ceiling_bound_with_decode"] < 1
    # every run labeled the whole corpus
    import pyarrow.dataset as pads

    for k in ("recipe", "loop"):
        assert pads.dataset(str(tmp_path / f"out-{k}"), format="parquet").count_rows() == 300
    assert pads.dataset(str(tmp_path / "out-ironsight"), format="parquet").count_rows() == 300


@pytest.mark.slow
def test_torch_compile_benchmark_compares_compiled_with_eager_on_the_same_batches():
    (r,) = torch_compile.main(["--models", "demo_cnn", "--batch-size", "8", "--seconds", "0.5"])
    assert r["model"] == "demo_cnn" and r["eager"] > 0 and r["compiled"] > 0
    assert r["ratio"] == pytest.approx(r["compiled"] / r["eager"])
    assert r["compile_s"] > 0 and r["max_abs_diff"] < 1e-3  # the compiled model computes the same


def _cell(model, source, load, recipe, ironsight, alone):
    return {"model": model, "source_px": source, "load": load, "images_per_s":
            {"recipe": recipe, "ironsight": ironsight, "model": alone},
            "vs_recipe": ironsight / recipe, "vs_model": ironsight / alone,
            "met_recipe": ironsight / recipe >= 1.5, "met_model": ironsight / alone >= 0.8,
            "plan": {"size": 1, "threads": 2, "num_cpus": 1.0, "decode_tasks": 1},
            "cost": {"two_thread_efficiency": 0.8}}


def test_matrix_rows_say_met_only_when_both_targets_are_met():
    result = {"cells": [_cell("resnet50", 512, "busy", 4.0, 7.0, 8.0),  # both met
                        _cell("demo_cnn", 64, "idle", 400.0, 900.0, 2000.0),  # recipe only
                        {"model": "mobilenet_v3_small", "source_px": 64, "load": "idle", "error": "RuntimeError: x"}]}
    rows = run_all.rows_from({"matrix": result})
    cells = {r["measure"]: r for r in rows if r["measure"].startswith("matrix:")}
    big = cells["matrix: resnet50 from 512 px JPEGs, busy"]
    assert big["met"] is True and big["ratio"] == pytest.approx(1.75) and "0.88x" in big["note"]
    assert cells["matrix: demo_cnn from 64 px JPEGs, idle"]["met"] is False
    assert cells["matrix: mobilenet_v3_small from 64 px JPEGs, idle"]["baseline"] == "failed"
    table = matrix.render(result["cells"])
    assert "| resnet50 | 512 px | busy | 4.0 | 7.0 | 8.0 | 1.75x met | 0.88x met | 1 x 2, 1 | 0.80 |" in table
    assert "0.45x **not met**" in table and "failed: RuntimeError: x" in table


def test_background_load_runs_its_processes_and_stops_them_by_pid():
    import os
    import time

    from background_load import BackgroundLoad

    with BackgroundLoad(processes=2, duty=1.0) as load:
        pids = load.pids
        time.sleep(1.0)
        ticks = [int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[11]) for p in pids]
        assert len(pids) == 2 and all(t > 0 for t in ticks)  # they burnt user CPU time
    for p in pids:
        assert not os.path.exists(f"/proc/{p}") or open(f"/proc/{p}/stat").read().split()[2] == "Z"
    with pytest.raises(ValueError):
        BackgroundLoad(processes=1, duty=0.0)


@pytest.mark.slow
def test_matrix_quick_runs_one_cell_side_by_side_and_writes_json_and_markdown(tmp_path):
    result = matrix.main(["--quick", "--cells", "demo_cnn:64:idle", "--images", "40",
                          "--results", str(tmp_path / "res"), "--workdir", str(tmp_path / "work")])
    (cell,) = result["cells"]
    assert "error" not in cell and all(v > 0 for v in cell["images_per_s"].values())
    assert cell["vs_recipe"] == pytest.approx(cell["images_per_s"]["ironsight"] / cell["images_per_s"]["recipe"])
    assert cell["cost"]["model_ms_1_thread"] > 0 and cell["plan"]["size"] >= 1
    (md,) = (tmp_path / "res").glob("matrix-*-quick.md")
    (js,) = (tmp_path / "res").glob("matrix-*-quick.json")
    assert "| demo_cnn | 64 px | idle |" in md.read_text() and json.loads(js.read_text())["cells"][0]["images"] == 40
