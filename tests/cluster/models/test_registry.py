"""Registry behaviour, and every registered model built with random weights.

Parametrized from the registry: registering a model adds its tests.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.models import (
    LoadedModel,
    ModelSource,
    Normalize,
    describe,
    get_model_info,
    list_models,
    register_model,
    summary_rows,
)
from ironsight.cluster.models import registry as registry_module
from ironsight.cluster.preprocess import Preprocess
from ironsight.cluster.synthetic import CLASS_NAMES

ZOO = (
    "alexnet", "convnext_tiny", "efficientnet_b0", "inception_v3", "mobilenet_v3_large",
    "mobilenet_v3_small", "resnet18", "resnet50", "squeezenet1_1", "vgg16", "vit_b_16",
)


@functools.cache
def _loaded(name: str) -> LoadedModel:
    """Each model is built once per session (vgg16/vit_b_16 take a second or two on CPU)."""
    return ModelSource(name, random_weights=True).load()


def test_list_models_has_zoo_and_demo():
    assert set(ZOO) | {"demo_cnn", "demo_tiny_cnn", "demo_separable_cnn"} == set(list_models())


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("resnet*", ["resnet18", "resnet50"]),
        ("*_v3_*", ["mobilenet_v3_large", "mobilenet_v3_small"]),
        ("nothing*", []),
    ],
)
def test_list_models_filter(pattern, expected):
    assert list_models(pattern) == expected


def test_list_models_sorted():
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize(("typo", "suggestion"), [("resnet5", "resnet50"), ("vit_b16", "vit_b_16")])
def test_unknown_model_suggests_close_names(typo, suggestion):
    with pytest.raises(InvalidInput, match=rf"model '{typo}' is not registered.*'{suggestion}'"):
        get_model_info(typo)


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="'resnet18' is already registered"):
        register_model(
            "resnet18", preprocess=Preprocess(8, 8), class_names=("a",), description="dup"
        )(lambda n: nn.Linear(1, n))
    assert get_model_info("resnet18").num_classes == 1000


def test_register_model_adds_a_loadable_model():
    name = "test_tiny_linear"

    @register_model(name, preprocess=Preprocess(10, 8), class_names=("a", "b", "c"),
                    description="test only")
    def tiny(num_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, num_classes))

    try:
        assert name in list_models("test_*")
        loaded = ModelSource(name, random_weights=True).validate()
        assert loaded.module(torch.rand(4, 3, 8, 8)).shape == (4, 3)
    finally:
        registry_module._REGISTRY.pop(name)


@pytest.mark.parametrize(
    ("name", "crop", "resize", "interpolation"),
    [
        ("resnet50", 224, 232, "bilinear"),  # torchvision's DEFAULT, IMAGENET1K_V2
        ("inception_v3", 299, 342, "bilinear"),
        ("efficientnet_b0", 224, 256, "bicubic"),
        ("convnext_tiny", 224, 236, "bilinear"),
        ("demo_cnn", 64, 64, "bilinear"),
    ],
)
def test_preprocessing_comes_from_torchvision_metadata(name, crop, resize, interpolation):
    p = get_model_info(name).preprocess
    assert (p.crop, p.resize, p.interpolation) == (crop, resize, interpolation)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_has_imagenet_classes(name):
    info = get_model_info(name)
    assert info.num_classes == 1000
    assert info.class_names[:2] == ("tench", "goldfish")
    assert info.preprocess.mean == pytest.approx((0.485, 0.456, 0.406))


def test_demo_cnn_classes_are_the_synthetic_shapes():
    assert get_model_info("demo_cnn").class_names == CLASS_NAMES


@pytest.mark.parametrize("name", list_models())
def test_every_model_maps_pixels_to_finite_logits(name):
    loaded = _loaded(name)
    info = loaded.info
    crop = info.preprocess.crop
    x = torch.rand(2, 3, crop, crop, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = loaded.module(x)
    assert logits.shape == (2, info.num_classes)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert not loaded.module.training
    assert loaded.weights_sha256 == "random-init"


@pytest.mark.parametrize("name", list_models())
def test_normalization_is_the_first_layer(name):
    module = _loaded(name).module
    p = get_model_info(name).preprocess
    first = module[0]
    assert isinstance(first, Normalize)
    mean_image = torch.tensor(p.mean).view(1, 3, 1, 1).expand(1, 3, 5, 5)
    assert torch.allclose(first(mean_image), torch.zeros(1, 3, 5, 5), atol=1e-6)
    std_step = mean_image + torch.tensor(p.std).view(1, 3, 1, 1)
    assert torch.allclose(first(std_step), torch.ones(1, 3, 5, 5), atol=1e-5)


@pytest.mark.parametrize("name", ["demo_cnn", "squeezenet1_1"])
def test_random_weights_are_identical_across_loads(name):
    a = ModelSource(name, random_weights=True).load()
    b = ModelSource(name, random_weights=True).load()
    x = torch.rand(2, 3, *get_model_info(name).preprocess.input_shape[1:])
    with torch.no_grad():
        assert torch.equal(a.module(x), b.module(x))


def test_random_weights_leave_the_global_rng_alone():
    with torch.random.fork_rng():  # and this test leaves it alone for the others
        torch.manual_seed(5)
        expected = torch.rand(3)
        torch.manual_seed(5)
        ModelSource("demo_cnn", random_weights=True).load()
        assert torch.equal(torch.rand(3), expected)


def test_loaded_parameters_need_no_gradients_but_inputs_can_have_them():
    module = _loaded("demo_cnn").module
    assert not any(p.requires_grad for p in module.parameters())
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    module(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["demo_cnn", "vgg16", "inception_v3"])
def test_describe_names_preprocessing_and_size(name):
    info = get_model_info(name)
    text = describe(info)
    p = info.preprocess
    assert text.startswith(f"{name}: ")
    assert f"{p.crop}x{p.crop}" in text
    assert f"shorter side to {p.resize}" in text
    assert f"classes:       {info.num_classes}: {info.class_names[0]}" in text
    n_params = sum(q.numel() for q in _loaded(name).module.parameters())
    assert f"parameters:    {n_params:,}" in text


def test_summary_rows_cover_the_registry():
    rows = summary_rows()
    assert [r[0] for r in rows] == list_models()
    assert ("vit_b_16", "3x224x224", "1000") == next(r[:3] for r in rows if r[0] == "vit_b_16")
    assert all(r[3] for r in rows)
