"""The Python API (`ironsight.classify`, `ironsight.audit`, `ModuleSource`): same rows as the CLI,
in-memory modules audited to a direct computation's accuracy, runs in the history."""

from __future__ import annotations

import io
import subprocess
import sys
import threading

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch import nn

import ironsight
from ironsight.cluster import synthetic
from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.output_format import WORKER_COLUMNS
from ironsight.cluster.preprocess import Preprocess
from ironsight.jobs.api import ModuleSource, module_sha256
from ironsight.jobs.history import HistoryStore

IRONSIGHT = [sys.executable, "-m", "ironsight.jobs.cli"]
GRID, CELL = 4, 8  # 32x32 images: 4x4 cells of 8x8 pixels, class k = cell k


@pytest.fixture
def history(tmp_path, monkeypatch) -> str:
    """A fresh SQLite history for this test (and the CLI processes it starts)."""
    monkeypatch.delenv("IRONSIGHT_HISTORY_URL", raising=False)
    monkeypatch.setenv("IRONSIGHT_HOME", str(tmp_path / "home"))
    return f"sqlite:///{tmp_path / 'home' / 'history.db'}"


@pytest.fixture
def no_ray():
    """The API starts its own embedded Ray for the call and shuts it down, as for a user."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    yield
    assert not ray.is_initialized()


def cells_net() -> nn.Module:
    """Logit k = mean of cell k of a normalized 32x32 image: built from torch's own layers only,
    so Ray pickles it by reference (this test module is not importable in the workers)."""
    head = nn.Linear(3 * GRID * GRID, GRID * GRID, bias=False)
    with torch.no_grad():
        w = torch.zeros(GRID * GRID, 3, GRID * GRID)
        for k in range(GRID * GRID):
            w[k, :, k] = 1.0
        head.weight.copy_(w.reshape(GRID * GRID, -1))
    return nn.Sequential(nn.AvgPool2d(CELL), nn.Flatten(), head)


def cells_eval_set(folder, n: int = 96, seed: int = 5) -> tuple[list[bytes], list[int]]:
    """PNG 32x32 frames: a bright patch in the label's cell, a random-brightness distractor
    elsewhere (so some images are misclassified), written as one Parquet file."""
    rng = np.random.default_rng(seed)
    blobs, labels = [], []
    for _ in range(n):
        img = rng.integers(0, 40, (32, 32, 3), dtype=np.uint8)
        label, other = rng.choice(GRID * GRID, 2, replace=False)
        for k, value in ((label, 200), (other, int(rng.integers(120, 256)))):
            r, c = divmod(int(k), GRID)
            img[r * CELL + 2:r * CELL + 6, c * CELL + 2:c * CELL + 6] = value
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        blobs.append(buf.getvalue())
        labels.append(int(label))
    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"img-{i:04d}" for i in range(n)]
    pq.write_table(pa.table({"id": ids, "image": pa.array(blobs, pa.binary()), "label": labels}),
                   folder / "part-0.parquet")
    return blobs, labels


CELLS_PREPROCESS = Preprocess(resize=None, crop=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
CELLS_CLASSES = [f"r{k // GRID}c{k % GRID}" for k in range(GRID * GRID)]


# --- no Ray ---------------------------------------------------------------------------------


def test_a_misspelled_keyword_is_refused_naming_it_and_nothing_runs(tmp_path, history):
    with pytest.raises(InvalidInput, match=r"ironsight.classify\(\): top_kk: unknown key; did you mean 'top_k'"):
        ironsight.classify(input=str(tmp_path / "in"), output=str(tmp_path / "out"), model="demo_cnn",
                           random_weights=True, top_kk=3)
    assert not (tmp_path / "out").exists() and not (tmp_path / "home").exists()


def test_a_module_with_other_weights_is_refused(tmp_path):
    with pytest.raises(InvalidInput, match="module= is the model: leave out weights"):
        ironsight.audit(input=str(tmp_path / "in"), output=str(tmp_path / "out"), module=cells_net(),
                        weights=str(tmp_path / "w.safetensors"), preprocess=CELLS_PREPROCESS,
                        class_names=CELLS_CLASSES)


def test_module_source_needs_preprocessing_and_distinct_class_names():
    with pytest.raises(InvalidInput, match="preprocess: an in-memory module needs its preprocessing"):
        ModuleSource(name="cells", module=cells_net(), class_names=tuple(CELLS_CLASSES))
    with pytest.raises(InvalidInput, match="class_names: the names repeat"):
        ModuleSource(name="cells", module=cells_net(), preprocess=CELLS_PREPROCESS, class_names=("a", "a"))
    with pytest.raises(InvalidInput, match="expected a torch.nn.Module, got dict"):
        ModuleSource(name="cells", module={}, preprocess=CELLS_PREPROCESS, class_names=("a",))


def test_module_source_loads_a_copy_and_leaves_the_callers_module_alone():
    net = cells_net().train()
    source = ModuleSource(name="cells", module=net, preprocess=CELLS_PREPROCESS, class_names=tuple(CELLS_CLASSES))
    loaded = source.validate()
    assert net.training and all(p.requires_grad for p in net.parameters())
    assert loaded.weights_sha256 == module_sha256(net) == source.weights_sha256
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), net((x - 0.5) / 0.25))
    assert loaded.info.class_names == tuple(CELLS_CLASSES)


def test_a_module_that_gives_the_wrong_number_of_logits_is_refused():
    source = ModuleSource(name="cells", module=cells_net(), preprocess=CELLS_PREPROCESS, class_names=("a", "b"))
    with pytest.raises(InvalidInput, match=r"gives \(1, 16\) for a batch of 1, but it has 2 class names"):
        source.validate()


def test_a_module_that_cannot_be_pickled_for_the_actors_is_refused():
    net = cells_net()
    net.lock = threading.Lock()  # an attribute no pickler can send to another process
    source = ModuleSource(name="cells", module=net, preprocess=CELLS_PREPROCESS, class_names=tuple(CELLS_CLASSES))
    with pytest.raises(InvalidInput, match="module Sequential cannot be pickled for the Ray actors"):
        source.validate()


# --- whole jobs on an embedded Ray ----------------------------------------------------------


@pytest.mark.cluster
def test_classify_through_the_api_writes_the_rows_the_cli_writes(no_ray, tmp_path, history):
    corpus = tmp_path / "corpus"
    synthetic.write_corpus(str(corpus), 60, seed=4, rows_per_file=30, row_group_size=15)
    spec = ironsight.ClassifyJob(input=str(corpus), output=str(tmp_path / "unused"), model="demo_cnn",
                                 random_weights=True, top_k=3, batch_size=16)
    result = ironsight.classify(spec, output=str(tmp_path / "api"))  # a spec, one key replaced
    cli = subprocess.run([*IRONSIGHT, "classify", str(corpus), str(tmp_path / "cli"), "--model", "demo_cnn",
                          "--random-weights", "--top-k", "3", "--batch-size", "16", "--no-progress"],
                         capture_output=True, text=True, timeout=240)
    assert cli.returncode == 0, cli.stderr[-3000:]

    def rows(folder) -> list[dict]:
        table = pads.dataset(sorted(str(p) for p in folder.glob("part-*.parquet")), format="parquet").to_table()
        return sorted(table.to_pylist(), key=lambda r: r["id"])

    api_rows, cli_rows = rows(tmp_path / "api"), rows(tmp_path / "cli")
    assert len(api_rows) == 60 and [r["id"] for r in api_rows] == [r["id"] for r in cli_rows]
    assert set(api_rows[0]) == set(cli_rows[0])
    for a, c in zip(api_rows, cli_rows, strict=True):
        for column, value in a.items():  # labels, names and errors equal; scores to float noise
            if column in WORKER_COLUMNS:  # where a row ran differs between two runs by design
                assert value and c[column], (column, a["id"])
                continue
            floats = isinstance(value, float) or (isinstance(value, list) and value and isinstance(value[0], float))
            assert value == (pytest.approx(c[column], abs=1e-5) if floats else c[column]), (column, a["id"])
    assert result.to_dict()["rows"] == 60 and result.output == str(tmp_path / "api")
    assert sorted(result.table(["id"]).column("id").to_pylist()) == [r["id"] for r in api_rows]

    runs = HistoryStore(history).runs()
    ours = [r for r in runs if r.id == result.run_id]
    assert len(ours) == 1 and ours[0].status == "succeeded" and ours[0].kind == "classify"
    assert ours[0].output == str(tmp_path / "api") and ours[0].weights_hash == "random-init"
    assert ours[0].metrics.get("rows") == 60, ours[0].metrics
    assert any(r.output == str(tmp_path / "cli") and r.status == "succeeded" for r in runs)  # the CLI's


@pytest.mark.cluster
def test_auditing_an_in_memory_module_reports_the_accuracy_of_a_direct_computation(no_ray, tmp_path, history):
    blobs, labels = cells_eval_set(tmp_path / "eval")
    net = cells_net()
    x = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])  # already 32x32
    with torch.no_grad():
        direct = net((torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.25).argmax(1).numpy()
    accuracy = float((direct == np.asarray(labels)).mean())
    assert 0.4 < accuracy < 1.0  # the distractors make it a real measurement
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: one\nconditions: [occlusion]\nseverities: [1]\n")

    out = ironsight.audit(input=str(tmp_path / "eval"), output=str(tmp_path / "audit"), module=net,
                          model="cells32", name="cells-nightly", preprocess=CELLS_PREPROCESS,
                          class_names=CELLS_CLASSES, suite=str(suite), actors=1)
    assert out.clean_accuracy == pytest.approx(accuracy, abs=1e-12)
    assert out.report["clean"]["n"] == len(blobs) and not out.regressed
    assert out.report["model"]["name"] == "cells32"
    assert out.report["model"]["weights_sha256"] == module_sha256(net)
    assert out.report["preprocessing"]["crop"] == 32 and out.report["preprocessing"]["std"] == [0.25] * 3
    predictions = pq.read_table(out.paths["predictions"]).to_pylist()
    audited = {r["id"]: r["prediction"] for r in predictions if r["kind"] == "clean"}
    assert audited == {f"img-{i:04d}": int(p) for i, p in enumerate(direct)}  # image by image

    run = HistoryStore(history).get(out.run_id)
    assert (run.job, run.kind, run.status, run.model) == ("cells-nightly", "audit", "succeeded", "cells32")
    assert run.weights_hash == module_sha256(net)
    assert run.metrics["clean_accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert out.report["history"]["run_id"] == out.run_id


@pytest.mark.cluster
def test_the_example_script_runs_end_to_end(tmp_path, history):
    """examples/label_and_audit.py as a user runs it: its TinyNet, defined in the script, reaches
    the actors by value; both runs land in the history."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "examples" / "label_and_audit.py"
    proc = subprocess.run([sys.executable, str(script), "--workdir", str(tmp_path / "work"), "--images", "60",
                           "--audit-images", "8"], capture_output=True, text=True, timeout=480, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "labeled 60 rows" in proc.stdout and "clean accuracy of tinynet (untrained)" in proc.stdout
    assert (tmp_path / "work" / "audit" / "report.html").is_file()
    runs = {r.job: r for r in HistoryStore(history).runs()}
    assert runs["example-labels"].status == "succeeded" and runs["example-audit"].status == "succeeded"
    assert runs["example-audit"].model == "tinynet"
