"""The model registry and weight loading.

Importing this package registers the torchvision classifiers (:mod:`ironsight.cluster.models.zoo`)
and the demo CNN; it builds no network and reads no file.

>>> from ironsight.cluster.models import ModelSource
>>> loaded = ModelSource("demo_cnn", random_weights=True).validate()
>>> loaded.info.class_names[:3]
('circle', 'square', 'triangle')
"""

from ironsight.cluster.models import demo_cnn as _demo_cnn  # noqa: F401  (registers demo_cnn)
from ironsight.cluster.models import zoo as _zoo  # noqa: F401  (registers the torchvision models)
from ironsight.cluster.models.card import ModelCard, load_card
from ironsight.cluster.models.demo_cnn import train_demo_model
from ironsight.cluster.models.formats import FORMATS
from ironsight.cluster.models.registry import (
    ModelInfo,
    Normalize,
    describe,
    get_model_info,
    list_models,
    register_model,
    summary_rows,
)
from ironsight.cluster.models.weights import LoadedModel, ModelSource

__all__ = [
    "FORMATS",
    "LoadedModel",
    "ModelCard",
    "ModelInfo",
    "ModelSource",
    "Normalize",
    "describe",
    "get_model_info",
    "list_models",
    "load_card",
    "register_model",
    "summary_rows",
    "train_demo_model",
]
