"""Weights files: every format round-trips, and every bad file fails validate() clearly."""

from __future__ import annotations

import hashlib
import warnings

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.models import FORMATS, ModelSource, Normalize
from ironsight.cluster.models.demo_cnn import demo_cnn
from ironsight.cluster.models.formats import sniff_format


class _NotATensor:
    """A custom class: torch.load(weights_only=True) must refuse to unpickle it."""

    def __init__(self) -> None:
        self.payload = "anything"


def _trained_like_net(num_classes: int = 8, width: int = 16) -> nn.Module:
    """demo_cnn with weights unlike the seed-0 random init (so a no-op load would be caught)."""
    torch.manual_seed(123)
    net = demo_cnn(num_classes, width=width)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _script(net: nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.script(net)


def _save(net: nn.Module, fmt: str, path) -> None:
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
    elif fmt == "state_dict":
        torch.save(net.state_dict(), path)
    elif fmt == "checkpoint":  # a training checkpoint from DataParallel
        sd = {f"module.{k}": v for k, v in net.state_dict().items()}
        torch.save({"state_dict": sd, "epoch": 7, "best_acc": 0.9}, path)
    elif fmt == "torch_export":
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(net, (torch.rand(2, 3, 64, 64),),
                                      dynamic_shapes=({0: batch},))
        torch.export.save(program, path)
    elif fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(_script(net), path)
    else:
        raise AssertionError(fmt)


SUFFIX = {"safetensors": ".safetensors", "state_dict": ".pt", "checkpoint": ".pth",
          "torch_export": ".pt2", "torchscript": ".ts"}


@pytest.fixture(scope="module")
def net() -> nn.Module:
    with torch.random.fork_rng():
        return _trained_like_net()


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def saved(net, tmp_path_factory):
    """Path of ``net`` saved in each format, written once per module."""
    root = tmp_path_factory.mktemp("weights")
    paths = {}
    for fmt, suffix in SUFFIX.items():
        paths[fmt] = root / f"net{suffix}"
        _save(net, fmt, paths[fmt])
    return paths


@pytest.mark.parametrize("fmt", list(SUFFIX))
def test_round_trip_gives_the_same_outputs(fmt, net, saved, pixels):
    loaded = ModelSource("demo_cnn", weights=str(saved[fmt])).validate()
    with torch.no_grad():
        expected = net(Normalize((0.5,) * 3, (0.25,) * 3)(pixels))
        got = loaded.module(pixels)
    assert torch.allclose(got, expected, atol=1e-5)
    assert isinstance(loaded.module[0], Normalize)
    assert loaded.weights_sha256 == hashlib.sha256(saved[fmt].read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [("safetensors", "safetensors"), ("state_dict", "state_dict"),
     ("checkpoint", "state_dict"), ("torch_export", "torch_export"),
     ("torchscript", "torchscript")],
)
def test_format_is_recognized_by_content(fmt, expected, saved):
    assert sniff_format(saved[fmt].read_bytes(), "renamed.bin") == expected
    assert expected in FORMATS


def test_file_read_through_file_uri(saved, pixels):
    a = ModelSource("demo_cnn", weights=f"file://{saved['safetensors']}").load()
    b = ModelSource("demo_cnn", weights=str(saved["safetensors"])).load()
    assert torch.equal(a.module(pixels), b.module(pixels))


def test_loaded_differs_from_random_init(saved, pixels):
    """Guards the round-trip tests: loading really replaced the random weights."""
    loaded = ModelSource("demo_cnn", weights=str(saved["safetensors"])).load()
    random = ModelSource("demo_cnn", random_weights=True).load()
    assert not torch.allclose(loaded.module(pixels), random.module(pixels))


def test_no_weights_needs_the_flag():
    with pytest.raises(InvalidInput) as err:
        ModelSource("resnet50").validate()
    assert str(err.value) == (
        "model 'resnet50' needs weights: pass --weights PATH_OR_URI (safetensors, state dict, "
        ".pt2 or TorchScript) or a --model-card; --random-weights exists only for tests and "
        "benchmarks"
    )


def test_weights_and_random_weights_conflict(saved):
    with pytest.raises(InvalidInput, match="either --weights or --random-weights"):
        ModelSource("demo_cnn", weights=str(saved["safetensors"]), random_weights=True).load()


def test_no_name_and_no_card():
    with pytest.raises(InvalidInput, match="no model given"):
        ModelSource(weights="x.safetensors").validate()


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(InvalidInput, match=rf"weights file {missing} does not exist"):
        ModelSource("demo_cnn", weights=str(missing)).validate()


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(InvalidInput, match=rf"weights path {tmp_path} is a directory"):
        ModelSource("demo_cnn", weights=str(tmp_path)).validate()


@pytest.mark.parametrize(
    ("arch", "width", "expected"),
    [
        ("squeezenet1_1", 16, r"does not fit architecture 'squeezenet1_1': \d+ missing keys: "
                              r"features\.0\.weight.*; \d+ unexpected keys: \d+\.\w+"),
        ("demo_cnn", 8, r"does not fit architecture 'demo_cnn': \d+ shape mismatches: "
                        r"0\.weight file \(8, 3, 3, 3\) vs model \(16, 3, 3, 3\)"),
    ],
)
def test_wrong_architecture(arch, width, expected, tmp_path):
    path = tmp_path / "other.safetensors"
    with torch.random.fork_rng():
        _save(_trained_like_net(width=width), "safetensors", path)
    with pytest.raises(InvalidInput, match=expected) as err:
        ModelSource(arch, weights=str(path)).validate()
    assert str(path) in str(err.value)


def test_classifier_head_disagrees_with_class_names(tmp_path):
    path = tmp_path / "five.safetensors"
    with torch.random.fork_rng():
        _save(_trained_like_net(num_classes=5), "safetensors", path)
    with pytest.raises(InvalidInput, match=r"classifier head .* has 5 outputs \(\d+\.weight "
                                           r"\(5, 256\), \d+\.bias \(5\)\) but model 'demo_cnn' "
                                           r"has 8 class names"):
        ModelSource("demo_cnn", weights=str(path)).validate()


def test_refused_pickle(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(2), "meta": _NotATensor()}, path)
    with pytest.raises(InvalidInput, match=r"contains pickled Python objects; Ironsight loads "
                                           r"only tensors: re-save as safetensors") as err:
        ModelSource("demo_cnn", weights=str(path)).validate()
    assert "_NotATensor" in str(err.value)


def test_whole_pickled_module_is_refused(tmp_path, net):
    path = tmp_path / "whole.pt"
    torch.save(net, path)
    with pytest.raises(InvalidInput, match="contains pickled Python objects"):
        ModelSource("demo_cnn", weights=str(path)).validate()


@pytest.mark.parametrize("fmt", ["safetensors", "state_dict", "torchscript"])
def test_truncated_file(fmt, saved, tmp_path):
    data = saved[fmt].read_bytes()
    path = tmp_path / f"cut{SUFFIX[fmt]}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidInput, match="truncated|cut short") as err:
        ModelSource("demo_cnn", weights=str(path)).validate()
    assert str(path) in str(err.value)


def test_unknown_bytes(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"GIF89a not weights at all")
    with pytest.raises(InvalidInput, match="cannot tell the format of weights file"):
        ModelSource("demo_cnn", weights=str(path)).validate()


def test_export_with_fixed_batch_fails_validation(net, tmp_path):
    path = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(net, (torch.rand(2, 3, 64, 64),)), path)
    with pytest.raises(InvalidInput, match=r"fails on a \(1, 3, 64, 64\) batch.*dynamic batch"):
        ModelSource("demo_cnn", weights=str(path)).validate()


def test_state_dict_of_floats_half_precision_loads(net, tmp_path, pixels):
    path = tmp_path / "half.safetensors"
    save_file({k: (v.half() if v.is_floating_point() else v) for k, v in net.state_dict().items()},
              path)
    loaded = ModelSource("demo_cnn", weights=str(path)).validate()
    assert next(loaded.module.parameters()).dtype == torch.float32
    with torch.no_grad():
        expected = net(Normalize((0.5,) * 3, (0.25,) * 3)(pixels))
    assert torch.allclose(loaded.module(pixels), expected, atol=0.05)


def test_source_is_small_and_picklable():
    import pickle

    source = ModelSource("demo_cnn", weights="s3://bucket/demo.safetensors")
    assert pickle.loads(pickle.dumps(source)) == source


def test_inception_official_layout_loads(tmp_path):
    """torchvision's inception_v3 state dict (with AuxLogits) fits the registered network."""
    import torchvision

    with torch.random.fork_rng():
        torch.manual_seed(3)
        reference = torchvision.models.inception_v3(
            weights=None, aux_logits=True, init_weights=False, transform_input=True
        ).eval()
    path = tmp_path / "inception.pt"
    torch.save(reference.state_dict(), path)
    loaded = ModelSource("inception_v3", weights=str(path)).load()
    assert any(k.startswith("AuxLogits.") for k in reference.state_dict())
    x = torch.rand(1, 3, 299, 299)
    with torch.no_grad():
        normalized = Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(x)
        assert torch.allclose(loaded.module(x), reference(normalized), atol=1e-4)
