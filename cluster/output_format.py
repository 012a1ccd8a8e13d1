"""What OUTPUT's files hold: the labels schema, the output format version, the footer
metadata keys, part-file names, and the one stable hash behind job identities. Written by
:class:`ironsight.cluster.sink.LabelSink`; read by anyone who checks or reads an OUTPUT.

Labels schema (:data:`LABELS_SCHEMA`, output format version :data:`FORMAT_VERSION` = 3):

| column             | type                  | meaning                                            |
|--------------------|-----------------------|----------------------------------------------------|
| ``id``             | string                | the input row's id (given or derived ``file#row``, or an image file's path relative to INPUT) |
| ``pred_label``     | int64, null on error  | top-1 class index                                  |
| ``pred_label_name``| string, null on error | top-1 class name                                   |
| ``pred_score``     | float32, null on error | top-1 softmax probability                         |
| ``pred_topk_labels`` | list<int64>         | top-k class indices, best first                    |
| ``pred_topk_scores`` | list<float32>       | their softmax probabilities                        |
| ``error``          | string                | null when fine, else ``reason: detail``            |
| ``pred_worker``    | string                | the predictor actor: ``<node>/<pid>/<gpu ids or ->``, ``<node>`` the first 8 hex digits of its Ray node id |
| ``decode_worker``  | string                | the decode task's ``<node>/<pid>`` (same node ids)  |
| (kept columns)     | as in the input       | ``--keep-columns`` copies input columns here, after ``decode_worker`` |

Version 1 named the prediction columns ``label``, ``label_name``, ``score``, ``topk_labels``
and ``topk_scores``, which collided with a corpus's own ground-truth ``label``; version 2
prefixes them with ``pred_`` (``id`` and ``error`` describe the row, not the prediction, and
keep their names). Version 3 adds ``pred_worker`` and ``decode_worker`` (which node, process
and GPU predicted and decoded each row; the same row may be processed twice after a
failure, and the row kept names the attempt that was written). Readers that select columns
by name read versions 2 and 3 alike. An input column kept under one of these names is refused before Ray
starts. An OUTPUT written by another format version is another job's output: its manifest
(``version``) and its part files (footer ``ironsight.format_version``, absent in version 1)
do not match, so it is refused, or replaced with ``--overwrite``; the two are never mixed.

Schema metadata of every part file:

| key                        | value                                                        |
|----------------------------|--------------------------------------------------------------|
| ``ironsight.spec_hash``    | the job's output identity (``ironsight.cluster.pipeline.output_rows_hash``, made with :func:`stable_hash`): who wrote this file |
| ``ironsight.header``       | JSON: input, model name and weights sha256, top-k, versions  |
| ``ironsight.preprocessing``| JSON: the model's resolved preprocessing (mode, resize, crop, interpolation, mean, std, weights_version), when the header has it |
| ``ironsight.shard_id``     | the input shard this file labels                             |
| ``ironsight.format_version`` | :data:`FORMAT_VERSION` (from version 2 on)                 |
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa

from ironsight.cluster.errors import InvalidInput

LABELS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("pred_label", pa.int64()),
        ("pred_label_name", pa.string()),
        ("pred_score", pa.float32()),
        ("pred_topk_labels", pa.list_(pa.int64())),
        ("pred_topk_scores", pa.list_(pa.float32())),
        ("error", pa.string()),
        ("pred_worker", pa.string()),
        ("decode_worker", pa.string()),
    ]
)
# Where each row was predicted and decoded (format version 3 on); null when unknown.
WORKER_COLUMNS = ("pred_worker", "decode_worker")

FORMAT = "ironsight-labels"
# 2: prediction columns prefixed pred_ (1: label, label_name, score, topk_labels, topk_scores),
# kept input columns after error. 3: pred_worker and decode_worker after error (kept columns
# after them). An OUTPUT of another version is another job's output.
FORMAT_VERSION = 3
# What an OUTPUT of an older version lacks, for the refusal's message.
OLDER_FORMATS = {
    1: "columns label, score, topk_labels, ... (now pred_label, pred_score, pred_topk_labels, ...)",
    2: "no pred_worker and decode_worker columns",
}
FORMAT_VERSION_KEY = b"ironsight.format_version"
SPEC_HASH_KEY = b"ironsight.spec_hash"
# JSON of the model's resolved preprocessing (ironsight.cluster.preprocess.Preprocess.to_dict)
PREPROCESSING_KEY = b"ironsight.preprocessing"


def output_schema(kept: pa.Schema | None = None) -> pa.Schema:
    """:data:`LABELS_SCHEMA` followed by the kept input columns' fields (types as in the input).

    Raises:
        InvalidInput: a kept column has the name of an output column.

    >>> output_schema(pa.schema([("path", pa.string())])).names[-2:]
    ['decode_worker', 'path']
    """
    fields = list(kept or ())
    clash = [f.name for f in fields if f.name in LABELS_SCHEMA.names]
    if clash:
        raise InvalidInput(
            f"cannot keep input column(s) {', '.join(map(repr, clash))}: the output already has "
            f"a column of that name (output columns: {', '.join(LABELS_SCHEMA.names)})"
        )
    return pa.schema(list(LABELS_SCHEMA) + fields)


def part_name(shard_id: str) -> str:
    return f"part-{shard_id}.parquet"


def stable_hash(fields: dict[str, Any]) -> str:
    """16 hex digits of sha256 over ``fields`` as canonical JSON (keys sorted): the same
    fields always give the same hash, in any order.

    The one hash behind both job identities, which hash different fields:
    ``ironsight.cluster.pipeline.output_rows_hash`` (what decides the output rows: the
    OUTPUT's owner, ``ironsight.spec_hash`` in footers and manifest) and
    ``ironsight.jobs.submit.validated_spec_hash`` (every field of a validated spec: submission
    ids and the history's ``spec_hash`` column).

    >>> stable_hash({"model": "resnet18", "top_k": 5}) == stable_hash({"top_k": 5, "model": "resnet18"})
    True
    """
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
