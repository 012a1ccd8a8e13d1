"""The audit's predictions table and report format, defined once.

The audit job writes ONE predictions table; every metric, report and gate reads it.
One row per (image, condition, severity/eps):

| column       | type    | meaning                                                           |
|--------------|---------|-------------------------------------------------------------------|
| ``id``       | string  | image id; the same id appears once per condition/severity/eps     |
| ``kind``     | string  | ``"clean"``, ``"corruption"`` or ``"attack"``                     |
| ``condition``| string  | ``"clean"``, a condition name (``gaussian_noise``) or attack name |
| ``severity`` | int32   | 1..5 for corruptions; 0 for clean rows and attacks                |
| ``eps``      | float64 | attack budget in pixel units ([0, 1] scale); 0.0 otherwise        |
| ``label``    | int64   | true class index; -1 when unknown (unlabeled eval set)            |
| ``prediction``| int64  | predicted class index (argmax of the logits)                      |
| ``confidence``| float32| softmax probability of ``prediction``, in [0, 1]                  |
| ``correct``  | bool    | ``prediction == label`` (False when the label is unknown)         |

``predictions.parquet`` has two more columns after these, which no metric reads (and
:func:`validate_predictions` drops, so files written before them read the same):
``pred_worker`` (the predictor actor, ``<node>/<pid>/<gpus>``) and ``decode_worker`` (the
task that decoded and corrupted the image, ``<node>/<pid>``), ``<node>`` the first 8 hex
digits of the Ray node id (``ironsight.cluster.output_format.WORKER_COLUMNS``).

``report.json`` carries ``"schema_version": REPORT_SCHEMA_VERSION``; bump the minor version
when keys are added and the major version when keys change meaning or disappear.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ironsight.cluster.errors import InvalidInput

PREDICTIONS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("kind", pa.string()),  # "clean" | "corruption" | "attack"
        ("condition", pa.string()),  # "clean", a condition name, or an attack name
        ("severity", pa.int32()),  # 0 for clean and attacks
        ("eps", pa.float64()),  # attack epsilon in pixel units; 0.0 otherwise
        ("label", pa.int64()),  # true label, -1 when unknown
        ("prediction", pa.int64()),
        ("confidence", pa.float32()),
        ("correct", pa.bool_()),
    ]
)

# 1.1: accuracy cells carry ci95 / n_labeled / correct; summary.mce_reason, images,
# labeled_images, min_detectable_drop; per-cell baseline changes; optional preprocessing.
# 1.2: optional examples (the misclassified example ids per condition, the activation-map method).
REPORT_SCHEMA_VERSION = "1.2"

KINDS = ("clean", "corruption", "attack")


@dataclass
class Example:
    """One image shown in the HTML report next to its prediction.

    Attributes:
        condition: ``"clean"``, a condition name or an attack name.
        severity: Severity (0 for clean images and attacks).
        image: (H, W, 3) uint8 pixels as the model saw them (after the condition).
        label: True class index, -1 when unknown.
        prediction: Predicted class index.
        cam: (H, W) float32 activation map in [0, 1] of the predicted class
            (:func:`ironsight.robustness.cam.activation_maps`); None when not computed.
        method: How ``cam`` was computed (``"Grad-CAM (layer4)"``, ``"saliency (fallback)"``).
        id: The image's id in the eval set, when known.
    """

    condition: str
    severity: int
    image: np.ndarray  # (H, W, 3) uint8
    label: int
    prediction: int
    cam: np.ndarray | None = None  # (H, W) float32 in [0, 1]
    method: str | None = None
    id: str | None = None


def validate_predictions(
    table: pa.Table, *, num_classes: int, source: str = "predictions"
) -> pa.Table:
    """Check a predictions table against :data:`PREDICTIONS_SCHEMA` and return it cast.

    Columns may come in any order and with wider/narrower integer or float types
    (``int32`` labels, ``float64`` confidences); they are cast to the schema's types.

    Args:
        table: The table the audit produced.
        num_classes: Number of classes; predictions and labels must be below it.
        source: Name of the table shown in error messages (a file name, for instance).

    Returns:
        The table with exactly the schema's columns, in the schema's order and types.

    Raises:
        InvalidInput: A column is missing or has an incompatible type, ``kind`` has an
            unknown value, or a label/prediction is out of range.

    >>> t = pa.table({"id": ["a"], "kind": ["clean"], "condition": ["clean"],
    ...               "severity": [0], "eps": [0.0], "label": [1], "prediction": [1],
    ...               "confidence": [0.9], "correct": [True]})
    >>> validate_predictions(t, num_classes=3).schema.field("severity").type
    DataType(int32)
    """
    columns = {}
    for field in PREDICTIONS_SCHEMA:
        if field.name not in table.column_names:
            raise InvalidInput(
                f"column '{field.name}' is missing in {source}; expected columns "
                f"{', '.join(PREDICTIONS_SCHEMA.names)} (see ironsight.robustness.schema.PREDICTIONS_SCHEMA)"
            )
        col = table.column(field.name)
        if col.type != field.type:
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise InvalidInput(
                    f"column '{field.name}' is {col.type} in {source}; expected {field.type}"
                ) from exc
        if col.null_count:
            raise InvalidInput(
                f"column '{field.name}' has {col.null_count} null value(s) in {source}; "
                f"every row needs a value (use label -1 for an unknown label)"
            )
        columns[field.name] = col
    out = pa.table(columns, schema=PREDICTIONS_SCHEMA)

    kinds = set(out.column("kind").to_pylist())
    unknown = kinds - set(KINDS)
    if unknown:
        raise InvalidInput(
            f"column 'kind' has unknown value(s) {sorted(unknown)} in {source}; "
            f"expected one of {', '.join(KINDS)}"
        )
    pred = out.column("prediction").to_numpy()
    label = out.column("label").to_numpy()
    if len(pred) and (pred.min() < 0 or pred.max() >= num_classes):
        raise InvalidInput(
            f"column 'prediction' has values outside [0, {num_classes - 1}] in {source}; "
            f"check that class_names ({num_classes} names) matches the model's outputs"
        )
    if len(label) and (label.min() < -1 or label.max() >= num_classes):
        raise InvalidInput(
            f"column 'label' has values outside [-1, {num_classes - 1}] in {source}; "
            f"labels are class indices into class_names, or -1 when unknown"
        )
    return out


def _obj(required: dict, optional: dict | None = None, **extra) -> dict:
    return {
        "type": "object",
        "required": sorted(required),
        "properties": {**required, **(optional or {})},
        **extra,
    }


_NUM = {"type": ["number", "null"]}
_INT = {"type": "integer"}
_STR = {"type": "string"}
# 95% Wilson score interval [low, high] of an accuracy; null when no row is labeled
_CI = {
    "oneOf": [
        {"type": "null"},
        {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1},
         "minItems": 2, "maxItems": 2},
    ]
}
# an accuracy cell: accuracy, its interval and the counts behind it
_CELL = {"accuracy": _NUM, "ci95": _CI, "n_labeled": _INT, "correct": _INT}
_WORST = {
    "oneOf": [
        {"type": "null"},
        _obj({"index": _INT, "name": _STR, "n": _INT, **_CELL}),
    ]
}
_PER_CLASS = {"type": "array", "items": _obj({"index": _INT, "name": _STR, "n": _INT, **_CELL})}
_CHECK = _obj({"name": _STR, "passed": {"type": "boolean"}, "message": _STR})
# one cell of ironsight.robustness.compare.compare_runs (CellChange.to_json)
_CHANGE = {
    "key": _STR,
    "label": _STR,
    "kind": {"enum": ["clean", "condition", "condition_mean", "attack"]},
    "reference": {"type": "number"},
    "new": {"type": "number"},
    "delta": {"type": "number"},
    "n": _INT,
    "significant": {"type": "boolean"},
    "verdict": {"enum": ["significant", "within noise"]},
    "test": _STR,
    "p_value": _NUM,
    "paired": {"type": "boolean"},
    "regression": {"type": "boolean"},
}

# JSON Schema (draft 2020-12) of report.json: the keys consumers may rely on. Extra keys are
# allowed (minor versions add keys); a key listed here never disappears within a major version.
REPORT_JSON_SCHEMA: dict = _obj(
    {
        "schema_version": {"const": REPORT_SCHEMA_VERSION},
        "created_at": _STR,
        "model": {"type": "object"},
        "data": {"type": ["object", "null"]},
        "seed": _INT,
        "suite": _STR,
        "versions": _obj(
            {
                k: {"type": ["string", "null"]}
                for k in ("python", "torch", "torchvision", "numpy", "ironsight")
            }
        ),
        "class_names": {"type": "array", "items": _STR},
        "clean": _obj(
            {
                "n": _INT,
                **_CELL,
                "ece": _NUM,
                "macro_precision": _NUM,
                "macro_recall": _NUM,
                "macro_f1": _NUM,
                "worst_class": _WORST,
                "precision": {"type": "array"},
                "recall": {"type": "array"},
                "f1": {"type": "array"},
                "per_class_accuracy": {"type": "array"},
                "per_class": _PER_CLASS,
                "confusion_matrix": {"type": "array", "items": {"type": "array"}},
            }
        ),
        "conditions": {
            "type": "array",
            "items": _obj(
                {
                    "name": _STR,
                    "severity": _INT,
                    "n": _INT,
                    **_CELL,
                    "per_class": _PER_CLASS,
                    "ece": _NUM,
                    "flip_rate": _NUM,
                    "worst_class": _WORST,
                }
            ),
        },
        "attacks": {
            "type": "array",
            "items": _obj(
                {
                    "name": _STR,
                    "eps": {"type": "number"},
                    "n": _INT,
                    **_CELL,
                    "success_rate": _NUM,
                }
            ),
        },
        "summary": _obj(
            {
                "clean_accuracy": _NUM,
                "mean_corruption_accuracy": _NUM,
                "mce": _NUM,
                "relative_mce": _NUM,
                "per_condition": {"type": "array"},
                "baseline": {
                    "oneOf": [
                        {"type": "null"},
                        _obj(
                            {
                                "paired": {"type": "boolean"},
                                "test": _STR,
                                "cells": {"type": "array", "items": _obj(_CHANGE)},
                            }
                        ),
                    ]
                },
                "alexnet": {"type": ["object", "null"]},
                "mce_reason": {"type": ["string", "null"]},
                "images": _INT,
                "labeled_images": _INT,
                "interval": _STR,
                "min_detectable_drop": _NUM,
                "warnings": {"type": "array", "items": _STR},
            }
        ),
        "gate": {
            "oneOf": [
                {"type": "null"},
                _obj(
                    {
                        "passed": {"type": "boolean"},
                        "failed": {"type": "array", "items": _CHECK},
                        "checks": {"type": "array", "items": _CHECK},
                    }
                ),
            ]
        },
    },
    {
        # written by the audit job (ironsight.cluster.preprocess.Preprocess.to_dict): the
        # pixels the numbers come from; absent in reports built without it
        "preprocessing": _obj(
            {},
            {
                "mode": _STR,
                "resize": {"type": ["integer", "null"]},
                "crop": _INT,
                "interpolation": _STR,
                "mean": {"type": "array", "items": {"type": "number"}},
                "std": {"type": "array", "items": {"type": "number"}},
                "weights_version": {"type": ["string", "null"]},
            },
        ),
        # written by the audit job (ironsight.jobs.audit._examples): which images report.html
        # shows per condition and how their activation maps were made (null: turned off)
        "examples": _obj(
            {
                "misclassified_only": {"type": "boolean"},
                "activation_maps": {"type": ["string", "null"]},
                "cells": {"type": "array", "items": _obj({
                    "condition": _STR, "severity": _INT,
                    "misclassified": {"type": ["integer", "null"]},
                    "ids": {"type": "array", "items": _STR},
                })},
            },
            {"per_condition": _INT, "activation_maps_error": {"type": ["string", "null"]}},
        ),
    },
    **{"$schema": "https://json-schema.org/draft/2020-12/schema"},
)
