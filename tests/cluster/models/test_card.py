"""Model cards: validation errors name the field and the file; valid cards load models."""

from __future__ import annotations

import textwrap

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.models import ModelCard, ModelSource, Normalize, load_card
from ironsight.cluster.models.demo_cnn import demo_cnn

GOOD = {
    "name": "shapes-v2",
    "format": "safetensors",
    "arch": "demo_cnn",
    "weights": "w.safetensors",
}


def _yaml(fields: dict) -> str:
    import yaml

    return yaml.safe_dump(fields, sort_keys=False)


def _net(num_classes: int = 8) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(7)
        return demo_cnn(num_classes).eval()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"colour": "red"}, r"colour: unknown key; .*valid keys: name, format"),
        ({"format": "onnx"}, r"format: Input should be 'safetensors', 'state_dict'"),
        ({"arch": "resnet5"}, r"arch: 'resnet5' is not a registered model \(did you mean "
                              r"'resnet50'"),
        ({"arch": None}, r"format 'safetensors' holds only tensors: set `arch`"),
        ({"mean": [0.5, 0.5]}, r"mean: expected 3 numbers, one per R, G, B channel; got \[0\.5, 0\.5\]"),
        ({"std": [0.2, 0.0, 0.2]}, r"std: .*std must be positive"),
        ({"input_size": -3}, r"input_size: Input should be greater than 0"),
        ({"class_names": ["a", "b"], "num_classes": 3},
         r"num_classes is 3 but class_names lists 2 names"),
        ({"class_names": []}, r"class_names: List should have at least 1 item"),
        ({"input_size": 64, "resize": 32}, r"input_size/resize: need 0 < crop <= resize"),
        ({"interpolation": "nearest"}, r"interpolation: Input should be 'bilinear' or 'bicubic'"),
        ({"weights": None}, r"weights: Input should be a valid string"),
    ],
)
def test_bad_card_fields_name_the_field_and_file(change, expected, tmp_path):
    fields = {**GOOD, **change}
    path = tmp_path / "card.yaml"
    path.write_text(_yaml({k: v for k, v in fields.items() if v is not None or k == "weights"}))
    with pytest.raises(InvalidInput, match=expected) as err:
        load_card(str(path))
    assert str(err.value).startswith(f"model card {path}: ")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"name": "x", "format": "torchscript", "weights": "x.ts", "num_classes": 2},
         "set `input_size`"),
        ({"name": "x", "format": "torch_export", "weights": "x.pt2", "input_size": 32,
          "num_classes": 2}, "set `mean` and `std`"),
        ({"name": "x", "format": "torch_export", "weights": "x.pt2", "input_size": 32,
          "normalization_inside": True}, "set `class_names`"),
    ],
)
def test_cards_without_arch_need_their_own_metadata(fields, expected, tmp_path):
    path = tmp_path / "card.yaml"
    path.write_text(_yaml(fields))
    with pytest.raises(InvalidInput, match=expected):
        load_card(str(path))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("name: [unclosed", " is not valid YAML"), ("- a\n- b\n", ": expected a YAML mapping")],
)
def test_card_that_is_not_a_mapping(text, expected, tmp_path):
    path = tmp_path / "card.yaml"
    path.write_text(text)
    with pytest.raises(InvalidInput, match=rf"model card {path}{expected}"):
        load_card(str(path))


def test_missing_card(tmp_path):
    with pytest.raises(InvalidInput, match="does not exist"):
        ModelSource(card=str(tmp_path / "absent.yaml")).validate()


def test_to_yaml_round_trips(tmp_path):
    card = ModelCard(**GOOD, input_size=64, mean=(0.4, 0.5, 0.6), class_names=["a"] * 8)
    path = tmp_path / "c.yaml"
    path.write_text(card.to_yaml())
    loaded = load_card(str(path))
    assert loaded.model_dump() == card.model_dump()
    assert loaded.uri == str(path)


@pytest.mark.parametrize(
    ("fields", "crop", "resize", "interpolation"),
    [
        ({"arch": "demo_cnn"}, 64, 64, "bilinear"),  # all from the arch
        # resnet50's DEFAULT (IMAGENET1K_V2) ratio: 160 * 232 / 224
        ({"arch": "resnet50", "input_size": 160}, 160, 166, "bilinear"),
        ({"arch": "resnet50", "input_size": 160, "weights_version": "IMAGENET1K_V1"}, 160, 183,
         "bilinear"),  # 160 * 256 / 224
        ({"arch": "efficientnet_b0", "resize": 300}, 224, 300, "bicubic"),
        # no arch, no resize: the whole frame, never a crop the card did not ask for
        ({"format": "torchscript", "arch": None, "input_size": 96, "num_classes": 3,
          "mean": [0.5] * 3, "std": [0.5] * 3}, 96, None, "bilinear"),
        ({"format": "torchscript", "arch": None, "input_size": 96, "resize": 110, "num_classes": 3,
          "mean": [0.5] * 3, "std": [0.5] * 3}, 96, 110, "bilinear"),
    ],
)
def test_preprocess_defaults(fields, crop, resize, interpolation):
    merged = {**GOOD, **fields}
    card = ModelCard(**{k: v for k, v in merged.items() if v is not None})
    p = card.preprocess()
    assert (p.crop, p.resize, p.interpolation) == (crop, resize, interpolation)


@pytest.mark.parametrize(
    ("weights", "expected"),
    [("w.safetensors", "{dir}/w.safetensors"), ("sub/w.pt", "{dir}/sub/w.pt"),
     ("/abs/w.pt", "/abs/w.pt"), ("s3://bucket/w.pt", "s3://bucket/w.pt")],
)
def test_weights_resolve_against_the_card_directory(weights, expected, tmp_path):
    path = tmp_path / "card.yaml"
    path.write_text(_yaml({**GOOD, "weights": weights}))
    assert load_card(str(path)).weights_uri() == expected.format(dir=tmp_path)


def test_fine_tuned_card_with_own_classes_loads(tmp_path):
    net = _net(num_classes=3)
    save_file(net.state_dict(), tmp_path / "w.safetensors")
    card = tmp_path / "card.yaml"
    card.write_text(_yaml({**GOOD, "class_names": ["cat", "dog", "cow"], "mean": [0.4] * 3,
                           "std": [0.3] * 3, "description": "three animals"}))
    loaded = ModelSource(card=str(card)).validate()
    assert loaded.info.name == "shapes-v2"
    assert loaded.info.class_names == ("cat", "dog", "cow")
    assert loaded.info.description == "three animals"
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), net(Normalize((0.4,) * 3, (0.3,) * 3)(x)),
                              atol=1e-5)


def test_card_head_mismatch_is_reported(tmp_path):
    save_file(_net(num_classes=8).state_dict(), tmp_path / "w.safetensors")
    card = tmp_path / "card.yaml"
    card.write_text(_yaml({**GOOD, "num_classes": 10}))
    with pytest.raises(InvalidInput, match=r"has 8 outputs .* has 10 class names"):
        ModelSource(card=str(card)).validate()


def test_card_format_must_match_file(tmp_path):
    torch.save(_net().state_dict(), tmp_path / "w.safetensors")  # misnamed state dict
    card = tmp_path / "card.yaml"
    card.write_text(_yaml(GOOD))
    with pytest.raises(InvalidInput, match=r"says format 'safetensors' but weights file .* is "
                                           r"'state_dict'; fix `format`"):
        ModelSource(card=str(card)).validate()


def test_name_disagreeing_with_card(tmp_path):
    card = tmp_path / "card.yaml"
    card.write_text(_yaml(GOOD))
    with pytest.raises(InvalidInput, match="disagrees with model card"):
        ModelSource(name="resnet50", card=str(card)).validate()


def test_exported_program_with_normalization_inside(tmp_path):
    """A .pt2 that normalizes itself, described by a card without arch: same outputs."""
    full = nn.Sequential(Normalize((0.5,) * 3, (0.25,) * 3), _net()).eval()
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(full, (torch.rand(2, 3, 64, 64),), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "shapes.pt2")
    card = tmp_path / "shapes.card.yaml"
    card.write_text(textwrap.dedent("""\
        name: shapes-export
        format: torch_export
        weights: shapes.pt2
        input_size: 64
        resize: 72
        class_names: [circle, square, triangle, diamond, star, cross, ring, hexagon]
        normalization_inside: true
    """))
    loaded = ModelSource(card=str(card)).validate()
    assert loaded.info.preprocess.resize == 72
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), full(x), atol=1e-5)
    first = loaded.module[0]
    assert isinstance(first, Normalize) and torch.equal(first(x), x)  # identity: file normalizes


def test_torchscript_card_without_arch_cannot_use_random_weights(tmp_path):
    card = tmp_path / "card.yaml"
    card.write_text(_yaml({"name": "ts", "format": "torchscript", "weights": "ts.pt",
                           "input_size": 64, "num_classes": 8, "normalization_inside": True}))
    with pytest.raises(InvalidInput, match="no `arch`: there is no architecture"):
        ModelSource(card=str(card), random_weights=True).load()


def test_torchscript_head_mismatch_fails_validation(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(_net(num_classes=8)), tmp_path / "m.ts")
    card = tmp_path / "card.yaml"
    card.write_text(_yaml({"name": "ts", "format": "torchscript", "weights": "m.ts",
                           "input_size": 64, "num_classes": 5, "mean": [0.5] * 3,
                           "std": [0.25] * 3}))
    with pytest.raises(InvalidInput, match=r"gives \(1, 8\) for a batch of 1, but it has 5 class"):
        ModelSource(card=str(card)).validate()
