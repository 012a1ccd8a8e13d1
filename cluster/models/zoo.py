"""torchvision ImageNet classifiers, registered with their official preprocessing.

Networks are built with ``torchvision.models.get_model(name, weights=None, ...)``: nothing
downloads. Preprocessing and the 1000 ImageNet class names are read from the metadata of
the ``IMAGENET1K_V1`` weight enum, which torchvision ships in its source (no network):

| enum attribute                      | becomes                      |
|-------------------------------------|------------------------------|
| ``.meta["categories"]``             | ``ModelInfo.class_names``    |
| ``.transforms().crop_size[0]``      | ``Preprocess.crop``          |
| ``.transforms().resize_size[0]``    | ``Preprocess.resize``        |
| ``.transforms().interpolation``     | ``Preprocess.interpolation`` |
| ``.transforms().mean`` / ``.std``   | the normalization layer      |

so an official state dict (``resnet50-0676ba61.pth`` or its safetensors conversion) loads
into the registered architecture as is.
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


def _imagenet_metadata(name: str) -> tuple[Preprocess, tuple[str, ...]]:
    weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1
    t = weights.transforms()  # ImageClassification; constructing it reads no files
    preprocess = Preprocess(
        resize=int(t.resize_size[0]),
        crop=int(t.crop_size[0]),
        mean=tuple(float(v) for v in t.mean),
        std=tuple(float(v) for v in t.std),
        interpolation=t.interpolation.value,  # InterpolationMode.BILINEAR.value == "bilinear"
    )
    return preprocess, tuple(weights.meta["categories"])


def _build(name: str, kwargs: dict, num_classes: int) -> nn.Module:
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)


def _register_all() -> None:
    for name, (kwargs, description) in _ZOO.items():
        preprocess, categories = _imagenet_metadata(name)
        register_model(
            name, preprocess=preprocess, class_names=categories, description=description
        )(functools.partial(_build, name, kwargs))


_register_all()
