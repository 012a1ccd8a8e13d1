"""torchvision ImageNet classifiers, registered with their official preprocessing.

Networks are built with ``torchvision.models.get_model(name, weights=None, ...)``: nothing
downloads. Preprocessing and the 1000 ImageNet class names are read from the metadata of
the weight enum (``torchvision.models.get_model_weights(name)``), which torchvision ships in
its source (no network):

| enum attribute                      | becomes                      |
|-------------------------------------|------------------------------|
| ``.DEFAULT.meta["categories"]``     | ``ModelInfo.class_names``    |
| ``.transforms().crop_size[0]``      | ``Preprocess.crop``          |
| ``.transforms().resize_size[0]``    | ``Preprocess.resize``        |
| ``.transforms().interpolation``     | ``Preprocess.interpolation`` |
| ``.transforms().mean`` / ``.std``   | the normalization layer      |
| the member's name                   | ``Preprocess.weights_version`` |

An entry uses torchvision's ``DEFAULT`` member, which is what
``get_model(name, weights="DEFAULT")`` fetches today (``IMAGENET1K_V2`` where it exists:
ResNet-50 and MobileNetV3-Large resize to 232, not V1's 256). Every other member with the
1000 ImageNet classes and the same crop (the same network) is kept in
``ModelInfo.weights_versions`` and chosen with ``--weights-version`` or a card's
``weights_version``; members that need another network (ViT's 384-px ``SWAG_E2E``) or have
no classifier (VGG's ``FEATURES``) are not offered.

An official state dict (``resnet50-0676ba61.pth``, ``resnet50-11ad3fa6.pth`` or their
safetensors conversions) loads into the registered architecture as is; which version it is
decides only the preprocessing, so name it when it is not the DEFAULT.
"""

from __future__ import annotations

import functools

import torchvision
from torch import nn

from ironsight.cluster.models.registry import register_model
from ironsight.cluster.preprocess import Preprocess

# name -> (extra get_model kwargs, description)
_ZOO: dict[str, tuple[dict, str]] = {
    "alexnet": ({}, "AlexNet (2012), 61M params"),
    "convnext_tiny": ({}, "ConvNeXt-T, modernized ResNet"),
    "efficientnet_b0": ({}, "EfficientNet-B0, compound-scaled mobile CNN"),
    # aux_logits=True so the official state dict (which has AuxLogits.*) fits; in eval mode
    # the network returns plain logits. init_weights=False: default init, not scipy's
    # truncated normal (slow). transform_input=True is what torchvision sets for the
    # official weights: they expect inputs normalized to [-1, 1], and it re-normalizes
    # from the ImageNet mean/std our Normalize layer applies.
    "inception_v3": (
        {"aux_logits": True, "init_weights": False, "transform_input": True},
        "Inception v3, 299x299 input",
    ),
    "mobilenet_v3_large": ({}, "MobileNetV3-Large, mobile CNN"),
    "mobilenet_v3_small": ({}, "MobileNetV3-Small, smallest ImageNet model here"),
    "resnet18": ({}, "ResNet-18, residual CNN"),
    "resnet50": ({}, "ResNet-50, the standard ImageNet baseline"),
    "squeezenet1_1": ({}, "SqueezeNet 1.1, 1.2M params"),
    "vgg16": ({}, "VGG-16, 138M params"),
    "vit_b_16": ({}, "Vision Transformer B/16, 224x224 input"),
}


def _preprocess(weights) -> Preprocess:
    t = weights.transforms()  # ImageClassification; constructing it reads no files
    return Preprocess(
        resize=int(t.resize_size[0]),
        crop=int(t.crop_size[0]),
        mean=tuple(float(v) for v in t.mean),
        std=tuple(float(v) for v in t.std),
        interpolation=t.interpolation.value,  # InterpolationMode.BILINEAR.value == "bilinear"
        weights_version=weights.name,
    )


def _imagenet_metadata(name: str) -> tuple[Preprocess, dict[str, Preprocess], tuple[str, ...]]:
    """(DEFAULT's preprocessing, every usable version's, the class names) of ``name``."""
    enum = torchvision.models.get_model_weights(name)
    default = enum.DEFAULT
    categories = tuple(default.meta["categories"])
    preprocess = _preprocess(default)
    versions = {}
    for member in enum:
        p = _preprocess(member)
        if tuple(member.meta.get("categories") or ()) == categories and p.crop == preprocess.crop:
            versions[member.name] = p
    return preprocess, versions, categories


def _build(name: str, kwargs: dict, num_classes: int) -> nn.Module:
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)


def _register_all() -> None:
    for name, (kwargs, description) in _ZOO.items():
        preprocess, versions, categories = _imagenet_metadata(name)
        register_model(
            name, preprocess=preprocess, class_names=categories, description=description,
            weights_versions=versions,
        )(functools.partial(_build, name, kwargs))


_register_all()
