"""`ironsight compare`: several models on one eval set, each model's numbers those of its own
audit, resumable, checked before Ray, recorded in the run history."""

from __future__ import annotations

import json
import os

import pytest
import torch

from ironsight.cluster import synthetic
from ironsight.cluster.models.demo_cnn import demo_cnn
from ironsight.jobs.cli import main

N_IMAGES = 16
SUITE_YAML = """\
name: tiny-mix
conditions: [low_light, occlusion]
severities: [1, 5]
attacks:
  - {name: fgsm, eps: [0, 0.0078431], steps: 1}
mix: {low_light: 0.3, occlusion: 0.2}
"""


def write_card(folder, name: str, seed: int, input_size: int = 64) -> str:
    """A demo_cnn with random weights of its own (``seed``), carded like a user's model."""
    from safetensors.torch import save_file

    from ironsight.cluster.models.card import ModelCard

    torch.manual_seed(seed)
    net = demo_cnn()
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / f"{name}.safetensors"))
    card = ModelCard(name=name, format="safetensors", arch="demo_cnn", weights=f"{name}.safetensors",
                     input_size=input_size, class_names=list(synthetic.CLASS_NAMES))
    path = folder / f"{name}.card.yaml"
    path.write_text(card.to_yaml())
    return str(path)


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from ironsight.cluster.raycluster import connect

    if ray.is_initialized():
        ray.shutdown()
    with connect(None, num_cpus=2):
        yield


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    eval_set = root / "eval"
    synthetic.write_corpus(str(eval_set), 32, seed=2, rows_per_file=16, row_group_size=8)
    suite = root / "suite.yaml"
    suite.write_text(SUITE_YAML)
    cards = {"small": write_card(root / "cards", "small", 1), "wide": write_card(root / "cards", "wide", 2),
             "sharp": write_card(root / "cards", "sharp", 3, input_size=48)}
    return {"root": root, "eval": str(eval_set), "suite": str(suite), "cards": cards}


def common(setup) -> list[str]:
    return ["--suite", setup["suite"], "--max-images", str(N_IMAGES), "--seed", "3", "--no-progress",
            "--no-activation-maps"]


@pytest.fixture(scope="module")
def history_db(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('history')}/history.db"
    old = os.environ.get("IRONSIGHT_HISTORY_URL")
    os.environ["IRONSIGHT_HISTORY_URL"] = url
    yield url
    if old is None:
        os.environ.pop("IRONSIGHT_HISTORY_URL", None)
    else:
        os.environ["IRONSIGHT_HISTORY_URL"] = old


@pytest.fixture(scope="module")
def compared(ray_local, setup, history_db):
    """Three carded models (two preprocessings) compared through the CLI, without profiling."""
    out = setup["root"] / "cmp"
    code = main(["compare", setup["eval"], str(out), "--name", "cmp-test",
                 "--model-card", setup["cards"]["small"], "--model-card", setup["cards"]["wide"],
                 "--model-card", setup["cards"]["sharp"], "--no-profile", *common(setup)])
    assert code == 0
    return out


def accuracy_fields(report: dict) -> dict:
    return {
        "clean": report["clean"]["accuracy"],
        "conditions": {(c["name"], c["severity"]): c["accuracy"] for c in report["conditions"]},
        "attacks": {(a["name"], a["eps"]): a["accuracy"] for a in report["attacks"]},
        "mca": report["summary"]["mean_corruption_accuracy"],
    }


@pytest.mark.cluster
def test_compare_writes_every_model_and_the_comparison(compared):
    for name in ("compare.json", "compare.md", "compare.html"):
        assert (compared / name).is_file(), name
    for model in ("small", "wide", "sharp"):
        folder = compared / "models" / model
        for name in ("report.json", "report.md", "report.html", "predictions.parquet", "entry.json"):
            assert (folder / name).is_file(), (model, name)
        report = json.loads((folder / "report.json").read_text())
        assert report["model"]["name"] == model
        assert report["clean"]["n"] == N_IMAGES
    # the 48-px model saw its own preprocessing
    sharp = json.loads((compared / "models" / "sharp" / "report.json").read_text())
    assert sharp["preprocessing"]["crop"] == 48
    text = (compared / "compare.json").read_text()
    for model in ("small", "wide", "sharp"):
        assert model in text


@pytest.mark.cluster
@pytest.mark.parametrize("model", ["wide", "sharp"])
def test_each_model_equals_its_own_audit_to_the_last_digit(compared, setup, model, tmp_path):
    code = main(["audit", setup["eval"], str(tmp_path / "audit"), "--model-card", setup["cards"][model],
                 *common(setup)])
    assert code == 0
    alone = json.loads((tmp_path / "audit" / "report.json").read_text())
    within = json.loads((compared / "models" / model / "report.json").read_text())
    assert accuracy_fields(within) == accuracy_fields(alone)
    assert within["model"]["weights_sha256"] == alone["model"]["weights_sha256"]


@pytest.mark.cluster
def test_a_rerun_reuses_finished_models_and_reruns_only_the_lost_one(compared, setup, capfd):
    parquet = {m: compared / "models" / m / "predictions.parquet" for m in ("small", "wide", "sharp")}
    before = {m: p.stat().st_mtime_ns for m, p in parquet.items()}
    # "crash" after small and wide were written: sharp's entry (written last) is gone
    (compared / "models" / "sharp" / "entry.json").unlink()
    code = main(["compare", setup["eval"], str(compared), "--name", "cmp-test",
                 "--model-card", setup["cards"]["small"], "--model-card", setup["cards"]["wide"],
                 "--model-card", setup["cards"]["sharp"], "--no-profile", *common(setup)])
    assert code == 0
    after = {m: p.stat().st_mtime_ns for m, p in parquet.items()}
    assert after["small"] == before["small"] and after["wide"] == before["wide"]
    assert after["sharp"] != before["sharp"]
    said = capfd.readouterr().err  # the console's [ironsight] status lines
    assert "[ironsight] model small: already compared" in said
    assert "model sharp: already compared" not in said
    assert (compared / "models" / "sharp" / "entry.json").is_file()


@pytest.mark.cluster
def test_the_run_is_recorded_in_the_history(compared, history_db):
    from ironsight.jobs.history import HistoryStore

    runs = [r for r in HistoryStore(history_db).runs() if r.job == "cmp-test"]
    assert runs, "no compare run recorded"
    run = runs[-1] if runs[-1].id > runs[0].id else runs[0]
    assert run.kind == "compare" and run.status == "succeeded"
    models = run.metrics["models"]
    assert set(models) == {"small", "wide", "sharp"}
    report = json.loads((compared / "models" / "wide" / "report.json").read_text())
    assert models["wide"]["clean_accuracy"] == report["clean"]["accuracy"]
    assert models["wide"]["mean_corruption_accuracy"] == report["summary"]["mean_corruption_accuracy"]
    assert run.model == "small.card,wide.card,sharp.card"  # the cards, as an audit names its card
    assert run.headline() == "3 models"  # no objective: none recommended


@pytest.mark.cluster
def test_random_weights_are_profiled_and_marked(ray_local, setup, tmp_path):
    out = tmp_path / "rw"
    code = main(["compare", setup["eval"], str(out), "--model", "demo_cnn", "--model", "demo_cnn",
                 "--random-weights", "--suite", setup["suite"], "--max-images", "8", "--no-progress",
                 "--no-activation-maps"])
    assert code == 0
    assert (out / "models" / "demo_cnn" / "report.json").is_file()
    assert (out / "models" / "demo_cnn-2" / "report.json").is_file()  # a clash gets a suffix
    entry = json.loads((out / "models" / "demo_cnn" / "entry.json").read_text())
    assert entry["random_weights"] is True
    assert entry["profile"]["params"] == sum(p.numel() for p in demo_cnn().parameters())
    assert "random" in (out / "compare.md").read_text().lower()
    assert "random" in (out / "compare.html").read_text().lower()


def test_a_bad_objective_exits_2_before_ray(setup, tmp_path, monkeypatch, capsys):
    import ray

    def no_ray(*a, **k):
        raise AssertionError("Ray started")

    monkeypatch.setattr(ray, "init", no_ray)
    code = main(["compare", setup["eval"], str(tmp_path / "o"), "--model-card", setup["cards"]["small"],
                 "--objective", "maximize acuracy", "--suite", setup["suite"]])
    assert code == 2
    assert "objective" in capsys.readouterr().err.lower()
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "resnet18"], "--model resnet18=PATH_OR_URI"),
        (["--model", "demo_cnn=w.safetensors", "--random-weights"], "--random-weights cannot"),
        ([], "name the models to compare"),
        (["--model", "not_a_model", "--random-weights"], "model not_a_model"),
    ],
)
def test_bad_models_exit_2_naming_the_model(setup, tmp_path, monkeypatch, capsys, extra, message):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: (_ for _ in ()).throw(AssertionError("Ray started")))
    code = main(["compare", setup["eval"], str(tmp_path / "o"), "--suite", setup["suite"], *extra])
    assert code == 2
    assert message in capsys.readouterr().err


def test_another_comparison_in_output_is_refused(setup, tmp_path, monkeypatch, capsys):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: (_ for _ in ()).throw(AssertionError("Ray started")))
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "_compare.json").write_text(json.dumps(
        {"input": "/elsewhere", "suite": "tiny-mix", "label_column": "label"}))
    code = main(["compare", setup["eval"], str(tmp_path / "o"), "--model-card", setup["cards"]["small"],
                 "--suite", setup["suite"]])
    assert code == 2
    assert "already holds the comparison" in capsys.readouterr().err


def test_a_compare_spec_resolves_its_models_against_its_folder(setup, tmp_path, capsys):
    import shutil

    from ironsight.jobs.spec import CompareJob
    from ironsight.jobs.spec_file import load_spec

    specs = tmp_path / "specs"
    shutil.copytree(os.path.dirname(setup["cards"]["small"]), specs / "cards")
    (specs / "cmp.yaml").write_text(
        f"kind: compare\ninput: {setup['eval']}\noutput: out\nsuite: quick\n"
        "models:\n  - {model_card: cards/small.card.yaml, name: first}\n"
        "  - {model: demo_cnn, weights: cards/wide.safetensors}\n"
        "objective: max accuracy\n")
    spec = load_spec(str(specs / "cmp.yaml"), check_files=True)
    assert isinstance(spec, CompareJob)
    first, second = spec.model_choices()
    assert first.model_card == str(specs / "cards" / "small.card.yaml") and first.name == "first"
    assert second.weights == str(specs / "cards" / "wide.safetensors")
    assert main(["validate", str(specs / "cmp.yaml")]) == 0
    assert "valid compare job" in capsys.readouterr().out
    (specs / "bad.yaml").write_text(
        f"kind: compare\ninput: {setup['eval']}\noutput: out\n"
        "models:\n  - {model: demo_cnn, weights: cards/nope.safetensors}\n")
    assert main(["validate", str(specs / "bad.yaml")]) == 2
    assert "nope.safetensors does not exist" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.cluster
def test_three_registry_architectures_with_random_weights(ray_local, setup, tmp_path):
    out = tmp_path / "zoo"
    code = main(["compare", setup["eval"], str(out), "--model", "resnet18", "--model", "mobilenet_v3_small",
                 "--model", "squeezenet1_1", "--random-weights", "--suite", setup["suite"],
                 "--severities", "1", "--max-images", "4", "--no-progress", "--batch-size", "4"])
    assert code == 0
    for name in ("resnet18", "mobilenet_v3_small", "squeezenet1_1"):
        entry = json.loads((out / "models" / name / "entry.json").read_text())
        assert entry["random_weights"] and entry["profile"]["params"] > 0
    assert (out / "compare.html").is_file()
