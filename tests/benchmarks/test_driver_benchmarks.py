"""The driver benchmarks (issue 15: the driver's ceiling, a million rows) at tiny sizes.

Timings are never asserted; what is: every row lands once with the no-op model's fixed top-5,
the driver's time split adds up, the GPU count follows from the rate, the kill lands mid-run
and the resume re-does none of the committed rows, and the results files are written.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import driver_ceiling  # noqa: E402
import million_rows  # noqa: E402
import noop  # noqa: E402
import resume_cost  # noqa: E402


def _labels(out: str):
    return pads.dataset(out, format="parquet", ignore_prefixes=["_", "."]).to_table()


def test_noop_model_gives_fixed_top5_through_the_card_and_the_module(tmp_path):
    images = torch.rand(3, 3, noop.SIZE, noop.SIZE)
    assert noop.noop_module()(images).argsort(1, descending=True)[:, :5].tolist() == [[0, 1, 2, 3, 4]] * 3
    from ironsight.cluster.models import ModelSource

    loaded = ModelSource(card=noop.write_noop_card(str(tmp_path))).load("cpu")
    assert loaded.info.num_classes == noop.NUM_CLASSES and loaded.info.preprocess.crop == noop.SIZE
    assert loaded.module(images).argmax(1).tolist() == [0, 0, 0]
    assert noop.noop_source().validate().info.class_names == noop.class_names()


def test_tiny_corpus_repeats_few_images_and_is_kept_when_unchanged(tmp_path):
    corpus = str(tmp_path / "c")
    assert noop.write_tiny_corpus(corpus, 1000, distinct=7, rows_per_file=400, row_group_size=150) > 0
    table = pads.dataset(corpus, format="parquet").to_table()
    assert table.num_rows == 1000 and len(set(table.column("id").to_pylist())) == 1000
    assert len(set(table.column("image").to_pylist())) == 7
    assert table.column("image")[8].as_py()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pq.ParquetFile(os.path.join(corpus, "part-00000.parquet")).metadata.num_row_groups == 3  # 150+150+100
    assert noop.write_tiny_corpus(corpus, 1000, distinct=7, rows_per_file=400, row_group_size=150) == 0.0
    assert noop.write_tiny_corpus(corpus, 500, distinct=7, rows_per_file=400, row_group_size=150) > 0
    assert pads.dataset(corpus, format="parquet").count_rows() == 500  # the old files are gone


def test_rss_sampler_samples_a_live_process_and_stops_at_its_exit():
    with noop.RssSampler(os.getpid(), interval=0.05) as rss:
        blob = np.ones(50 * 2**20 // 8)  # 50 MB, touched
        import time

        time.sleep(0.3)
    assert len(rss.samples) >= 3 and all(mb > 10 for _, mb in rss.samples)
    assert max(mb for _, mb in rss.samples) >= noop.rss_mb(os.getpid()) - blob.nbytes / 2**20 - 5
    assert noop.rss_mb(2**22 + 12345) is None  # no such pid
    # start-up (t < 10) climbs to 100 MB; growth counts from the first commit on: +50 at the end
    samples = [(t, min(100.0, 10.0 * t) + (t >= 18) * 50) for t in range(20)]
    assert million_rows.rss_summary(samples, since=10) == {
        "samples": 20, "peak_mb": 150.0, "last_mb": 150.0, "steady_samples": 10, "growth_mb": 50.0}
    flat = [(t, min(100.0, 10.0 * t)) for t in range(20)]
    assert million_rows.rss_summary(flat, since=10)["growth_mb"] == 0.0


def _writes_parts(out, *, child_pid_file=None) -> str:
    """A command that writes a part file into ``out`` every 0.1 s (50 in all), exiting 143 on
    SIGTERM; with ``child_pid_file``, it first starts a sleeping child in its process group."""
    child = ("import subprocess\n"
             "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
             f"open({str(child_pid_file)!r}, 'w').write(str(c.pid))\n") if child_pid_file else ""
    return ("import os, signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))\n" + child +
            f"os.makedirs({str(out)!r})\n"
            "for i in range(50):\n"
            f"    open(os.path.join({str(out)!r}, f'part-{{i}}.parquet'), 'w').close(); time.sleep(0.1)\n")


def _gone(pid: int, within_s: float = 10.0) -> bool:
    """Whether ``pid`` has exited (a zombie waiting for init counts as exited)."""
    import time

    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except (OSError, IndexError):
            return True
        time.sleep(0.05)
    return False


def test_run_watched_sends_sigterm_once_enough_parts_exist(tmp_path):
    """million_rows' runs: SIGTERM lands after the 3rd part file, while the command still runs."""
    out = tmp_path / "out"
    r = resume_cost.run_watched([sys.executable, "-c", _writes_parts(out)], dict(os.environ), str(tmp_path / "log"),
                                60, out=str(out), kill_after_parts=3, sig="term", rss_interval=0.1)
    assert r["exit"] == 143 and r["killed_at_s"] is not None and r["first_commit_s"] <= r["killed_at_s"]
    assert 3 <= resume_cost.part_files(str(out)) < 50 and r["rss"]
    with pytest.raises(RuntimeError, match="exited 3"):
        resume_cost.run_watched([sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ),
                                str(tmp_path / "log2"), 60)


def test_run_watched_sigkills_the_whole_process_group_once_enough_parts_exist(tmp_path):
    """resume_cost's kill (and million_rows --signal kill): the command and its children, as a
    crash takes the driver, the raylet and the workers."""
    out, pid_file = tmp_path / "out", tmp_path / "child.pid"
    r = resume_cost.run_watched([sys.executable, "-c", _writes_parts(out, child_pid_file=pid_file)],
                                dict(os.environ), str(tmp_path / "log"), 60, out=str(out), kill_after_parts=2)
    assert r["exit"] == -9 and r["killed_at_s"] is not None and r["rss"] == []
    assert 2 <= resume_cost.part_files(str(out)) < 50
    assert _gone(int(pid_file.read_text()))


def test_run_watched_kills_a_command_that_runs_past_its_timeout(tmp_path):
    pid_file = tmp_path / "pid"
    script = f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(120)\n"
    with pytest.raises(RuntimeError, match="ran past"):
        resume_cost.run_watched([sys.executable, "-c", script], dict(os.environ), str(tmp_path / "log"), 5)
    assert _gone(int(pid_file.read_text()), within_s=1)


def test_driver_ceiling_replays_into_a_local_folder_and_s3(tmp_path):
    result = driver_ceiling.main(["--rows", "700", "--max-rows-per-shard", "200", "--batch-size", "64",
                                  "--ray-rows", "0", "--no-feed", "--s3", "--profile",
                                  "--workdir", str(tmp_path), "--results", str(tmp_path / "results")])
    assert set(result["replay"]) == {"local", "s3"}
    for r in result["replay"].values():
        # rows 700 in row groups of 200: shards 200, 200, 200, 100; batches of <= 64 per block
        assert (r["rows"], r["shards"], r["batches"]) == (700, 4, 4 * 3 + 2)
        assert r["commit_s"] > 0 and 0 <= r["commit_wait_s"] <= r["busy_s"] and r["wait_s"] >= 0 and r["cpu_s"] > 0
        assert r["loop_gpus"] == int(r["loop_rows_per_s"] // 2000)
        assert "assemble_shards" in r["profile"]
        assert 0 <= r["commit_cpu_s"] and r["io_s"] == pytest.approx(r["commit_s"] - r["commit_cpu_s"])
    c = result["ceiling"]
    assert not c["ray_data_fitted"] and c["fixed_core_share"] == 0.0
    local = result["replay"]["local"]
    assert c["cpu_per_row_us"] == pytest.approx(1e6 * local["cpu_s"] / 700)
    for target, t in c["targets"].items():
        io = max(0.0, result["replay"][target]["io_s"]) / 700
        wait = result["replay"][target]["commit_wait_s"] / 700
        assert t["serial_rows_per_s"] == pytest.approx(1 / (c["cpu_per_row_us"] / 1e6 + io))
        assert t["threads_rows_per_s"] == pytest.approx(1 / (c["cpu_per_row_us"] / 1e6 + wait))
        assert max(t["serial_rows_per_s"], t["threads_rows_per_s"]) <= c["overlapped_rows_per_s"]
    assert result["ceiling_rows_per_s"] == min(t["threads_rows_per_s"] for t in c["targets"].values())
    assert result["ceiling_gpus"] == int(result["ceiling_rows_per_s"] // 2000)
    table = _labels(str(tmp_path / "out-replay"))
    assert table.num_rows == 700 and len(set(table.column("id").to_pylist())) == 700
    assert set(map(tuple, table.column("pred_topk_labels").to_pylist())) == {(0, 1, 2, 3, 4)}
    (md,) = (tmp_path / "results").glob("driver-ceiling-*.md")
    assert "| replay | s3 | 700 |" in md.read_text()
    saved = json.loads(md.with_suffix(".json").read_text())
    assert saved["replay"]["local"]["rows"] == 700 and saved["machine"]["cpus"]


@pytest.mark.cluster
def test_driver_ceiling_in_ray_feed_and_classify(tmp_path):
    result = driver_ceiling.main(["--rows", "400", "--ray-rows", "300", "--max-rows-per-shard", "100",
                                  "--workdir", str(tmp_path), "--no-write"])
    for part in ("feed", "ray"):
        r = result[part]["local"]
        assert r["rows"] == (400 if part == "feed" else 300) and r["wait_s"] > 0 and r["cpu_s"] > 0
    assert result["ray"]["local"]["shards"] == 3
    assert result["ceiling"]["targets"]["local"]["serial_rows_per_s"] > 0
    assert _labels(str(tmp_path / "out-ray")).num_rows == 300


@pytest.mark.cluster
def test_million_rows_tiny_kill_and_resume(tmp_path):
    res = million_rows.main(["--rows", "1200", "--max-rows-per-shard", "100", "--interval", "1",
                             "--workdir", str(tmp_path), "--results", str(tmp_path / "results")])
    k = res["kill"]
    assert res["shards"] == 12 and k["exit"] == 143 and 6 <= k["parts"] < 12
    assert k["committed_rows"] == 100 * k["parts"] and k["remainder_rows"] == 1200 - k["committed_rows"]
    assert k["resumed_rows"] == k["remainder_rows"] and k["reprocessed_extra"] == 0.0
    assert k["resumed_shards_skipped"] == k["parts"]
    assert res["exactly_once"] and res["read_back"] == {"rows": 1200, "distinct_ids": 1200}
    assert all(r["rss_summary"]["samples"] >= 1 for r in res["runs"].values())
    assert os.path.getsize(res["plot"]) > 0
    assert (tmp_path / "results" / Path(res["plot"]).name.replace(".png", ".md")).exists()
