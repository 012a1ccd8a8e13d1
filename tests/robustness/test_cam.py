"""Activation maps: Grad-CAM on the last spatial feature map, gradient saliency otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ironsight.cluster.models import ModelSource
from ironsight.robustness.cam import SALIENCY, activation_maps, find_target_layer, overlay


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))  # (N, 3, H, W) in [0, 1]


class _TinyViT(nn.Module):
    """A patch embedding (a Conv2d) followed by tokens and a transformer layer: no spatial maps
    reach the head, so Grad-CAM has nothing to work on."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, kernel_size=4, stride=4)
        self.encoder = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True, dropout=0.0)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)  # (N, L, 16)
        return self.head(self.encoder(tokens).mean(dim=1))


def test_gradcam_on_a_registry_cnn_is_deterministic_and_normalized():
    model = ModelSource("demo_cnn", random_weights=True).load("cpu")
    x = _images(3, 64)
    maps, method = activation_maps(model, x, [0, 1, 2])
    again, _ = activation_maps(model, x, [0, 1, 2])
    assert method.startswith("Grad-CAM (") and method != SALIENCY
    assert maps.shape == (3, 64, 64) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    np.testing.assert_array_equal(maps, again)  # deterministic on CPU
    other, _ = activation_maps(model, x, [5, 6, 7])
    assert not np.array_equal(maps, other)  # the map depends on the class explained


def test_target_layer_is_the_last_spatial_map_after_the_last_conv():
    resnet = ModelSource("resnet18", random_weights=True).load("cpu")
    assert find_target_layer(resnet, _images(1, 64)) == "1.layer4"
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    assert find_target_layer(net, _images(1, 16)) == "3"  # the ReLU after the last conv, before pooling


@pytest.mark.parametrize("model", [
    nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4)),  # an MLP: no conv layer
    _TinyViT(),  # a conv patch embedding, then tokens
], ids=["mlp", "vit"])
def test_models_without_conv_feature_maps_fall_back_to_saliency(model):
    model.eval()
    maps, method = activation_maps(model, _images(2, 16), [0, 2])
    assert method == SALIENCY == "saliency (fallback)"
    assert maps.shape == (2, 16, 16) and maps.min() >= 0.0 and maps.max() <= 1.0
    again, _ = activation_maps(model, _images(2, 16), [0, 2])
    np.testing.assert_array_equal(maps, again)


def test_saliency_marks_only_the_pixels_the_class_depends_on():
    """A linear model that reads the top-left 4x4 pixels only: the map is zero elsewhere."""
    lin = nn.Linear(3 * 8 * 8, 2, bias=False)
    with torch.no_grad():
        w = torch.zeros(2, 3, 8, 8)
        w[0, :, :4, :4] = torch.linspace(0.1, 1.0, 48).view(3, 4, 4)
        lin.weight.copy_(w.flatten(1))
    model = nn.Sequential(nn.Flatten(), lin)
    for p in model.parameters():
        p.requires_grad_(False)  # as a LoadedModel: no parameter gradients
    maps, _ = activation_maps(model, _images(1, 8), [0])
    assert maps[0, :4, :4].min() > 0 and maps[0, :4, :4].max() == pytest.approx(1.0)
    assert maps[0, 4:, :].max() == 0 and maps[0, :, 4:].max() == 0


def test_maps_work_inside_no_grad_and_with_frozen_parameters():
    model = ModelSource("demo_cnn", random_weights=True).load("cpu")
    assert not any(p.requires_grad for p in model.module.parameters())
    with torch.no_grad():
        maps, method = activation_maps(model, _images(1, 64), [3])
    assert method.startswith("Grad-CAM") and maps.max() > 0


def test_empty_batch_and_mismatched_targets():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    maps, _ = activation_maps(model, torch.zeros(0, 3, 4, 4), [])
    assert maps.shape == (0, 4, 4)
    with pytest.raises(ValueError, match="2 images but 1 targets"):
        activation_maps(model, torch.zeros(2, 3, 4, 4), [0])


def test_overlay_colours_the_image_where_the_map_is_hot():
    image = np.full((16, 16, 3), 128, np.uint8)
    cam = np.zeros((4, 4), np.float32)
    cam[:2, :2] = 1.0  # hot in the top-left quarter, resized to the image
    out = overlay(image, cam)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert not np.array_equal(out[1, 1], out[14, 14])  # hot and cold pixels differ in colour
    assert out[1, 1, 0] > out[14, 14, 0]  # jet: hot is red, cold is blue
