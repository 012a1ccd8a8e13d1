"""The demo CNN trainer: a tiny budget must learn, reproducibly, and write a loadable card.

The full recipe (about a minute) is measured by hand, not here; this budget takes seconds.
"""

from __future__ import annotations

import pytest

from ironsight.cluster import synthetic
from ironsight.cluster.models import ModelSource, load_card, train_demo_model
from ironsight.cluster.models.demo_cnn import EVAL_SEED, _render, evaluate

CHANCE = 1 / len(synthetic.CLASS_NAMES)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """160 optimizer steps on 1024 JPEG round-tripped images: above chance, far from the recipe."""
    out = tmp_path_factory.mktemp("demo")
    weights, card, accuracy = train_demo_model(
        str(out), n_train=1024, epochs=5, batch_size=32, n_eval=256, threads=1, progress=False
    )
    return weights, card, accuracy


def test_tiny_training_beats_chance_clearly(tiny_run):
    _, _, accuracy = tiny_run
    assert accuracy > 2.4 * CHANCE  # 0.3; this budget reaches ~0.41, the full recipe ~0.89 (JPEG q90)


def test_written_card_loads_and_reproduces_the_accuracy(tiny_run):
    weights, card_uri, accuracy = tiny_run
    card = load_card(card_uri)
    assert card.arch == "demo_cnn" and card.format == "safetensors"
    assert card.weights_uri() == weights
    assert tuple(card.class_names) == synthetic.CLASS_NAMES
    loaded = ModelSource(card=card_uri).validate()
    # the held-out split the trainer scored, at the corpus's JPEG q90
    images, labels = _render(EVAL_SEED, 256, False, "held-out", jpeg=(90, 90))
    assert evaluate(loaded.module, images, labels) == pytest.approx(accuracy)


def test_training_is_deterministic(tmp_path):
    runs = []
    for name in ("a", "b"):
        weights, _, accuracy = train_demo_model(
            str(tmp_path / name), n_train=64, epochs=2, batch_size=32, n_eval=32, threads=1,
            progress=False,
        )
        runs.append(((tmp_path / name / "demo_cnn.safetensors").read_bytes(), accuracy))
    assert runs[0] == runs[1]


def test_different_seeds_train_different_weights(tmp_path):
    for seed in (0, 1):
        train_demo_model(str(tmp_path / str(seed)), n_train=32, epochs=1, batch_size=32,
                         n_eval=8, seed=seed, threads=1, progress=False)
    a = (tmp_path / "0" / "demo_cnn.safetensors").read_bytes()
    b = (tmp_path / "1" / "demo_cnn.safetensors").read_bytes()
    assert a != b


def test_n_train_below_batch_size_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="n_train=8 must be at least batch_size=64"):
        train_demo_model(str(tmp_path), n_train=8, progress=False)
