"""The `ironsight demo compare` models: two shapes besides the demo CNN, trained with its recipe,
saved as safetensors + card like it, cached; a tiny budget here (the real one is measured by hand)."""

from __future__ import annotations

import pytest
import torch

from ironsight.cluster import synthetic
from ironsight.cluster.models import ModelSource, load_card
from ironsight.cluster.models import demo_cnn as demo
from ironsight.robustness.profiling import count_flops

TINY = {"n_train": 128, "epochs": 1, "n_eval": 48, "threads": 1, "progress": False}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    return out, demo.train_compare_models(str(out), **TINY)


def test_cards_load_like_the_demo_models_and_reproduce_their_accuracy(trained):
    out, results = trained
    assert [card.split("/")[-1] for card, _ in results] == ["tiny_cnn.card.yaml", "separable.card.yaml"]
    images, labels = demo._render(demo.EVAL_SEED, 48, False, "held-out", jpeg=(90, 90))
    for (card_uri, accuracy), (name, (arch, _)) in zip(results, demo.COMPARE_MODELS.items(), strict=True):
        card = load_card(card_uri)
        assert (card.name, card.arch, card.format) == (name, arch, "safetensors")
        assert card.weights == f"{name}.safetensors" and (out / name / card.weights).is_file()
        assert tuple(card.class_names) == synthetic.CLASS_NAMES
        loaded = ModelSource(card=card_uri).load()
        crop = loaded.info.preprocess.crop
        assert crop == (32 if name == "tiny_cnn" else 64)
        assert demo.evaluate(loaded.module, demo._downscale(images, crop), labels) == pytest.approx(accuracy)


def test_the_shapes_differ_clearly_from_each_other_and_the_demo_cnn():
    sizes = {}
    for name, build, side in (("demo_cnn", demo.demo_cnn, 64), ("tiny", demo.demo_tiny_cnn, 32),
                              ("separable", demo.demo_separable_cnn, 64)):
        net = build(8)
        flops, _ = count_flops(net.eval(), torch.zeros(1, 3, side, side))
        sizes[name] = (sum(p.numel() for p in net.parameters()), flops)
    assert sizes["tiny"][0] < sizes["separable"][0] < sizes["demo_cnn"][0] / 5
    assert sizes["tiny"][1] < sizes["separable"][1] < sizes["demo_cnn"][1] / 3
    # the separable net is mostly depthwise + pointwise convolutions
    convs = [m for m in demo.demo_separable_cnn(8).modules() if isinstance(m, torch.nn.Conv2d)]
    assert sum(m.groups > 1 for m in convs) == 4


def test_downscale_is_the_decoders_whole_frame_resize():
    from ironsight.cluster.decode import decode_image

    images, _ = demo._render(demo.EVAL_SEED, 2, False, "x")
    encoded = [synthetic.encode(__import__("PIL.Image").Image.fromarray(im.permute(1, 2, 0).numpy()), "png")
               for im in images]
    decoded = [decode_image(b, demo.TINY_PREPROCESS) for b in encoded]
    small = demo._downscale(images, 32)
    for ours, theirs in zip(small, decoded, strict=True):
        assert torch.equal(ours.permute(1, 2, 0), torch.from_numpy(theirs))


def test_ensure_compare_models_trains_once_then_uses_the_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IRONSIGHT_CACHE", str(tmp_path))
    calls = []
    real = demo.train_compare_models

    def small(out_dir, *, progress, names):
        calls.append(names)
        return real(out_dir, names=names, **{**TINY, "n_train": 64, "progress": progress})

    monkeypatch.setattr(demo, "train_compare_models", small)
    cards = demo.ensure_compare_models(retrain=False, progress=False)
    assert cards == [tmp_path / "demo_compare" / n / f"{n}.card.yaml" for n in demo.COMPARE_MODELS]
    assert all(c.is_file() for c in cards) and calls == [("tiny_cnn", "separable")]
    assert demo.ensure_compare_models(retrain=False, progress=False) == cards
    assert len(calls) == 1 and "using the cached comparison models" in capsys.readouterr().out
    (cards[1]).unlink()  # a lost card: only that model is trained again
    demo.ensure_compare_models(retrain=False, progress=False)
    assert calls[-1] == ("separable",)
    demo.ensure_compare_models(retrain=True, progress=False)
    assert calls[-1] == ("tiny_cnn", "separable")
