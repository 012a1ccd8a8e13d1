"""Per-image outcomes of an audit (`Outcomes`): what pairs two runs image by image.

The run history keeps them for the latest succeeded judged run of each identity
(`HistoryStore.save_outcomes`), so the next run of that identity is compared with exact
McNemar on the images both share (`ironsight.jobs.history.compare.compare_metrics`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np


def _id_keys(ids: list) -> np.ndarray:
    """64-bit keys of image ids (the first 8 bytes of blake2b): pairs images without their ids."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little") for i in ids],
        dtype=np.uint64,
    )


def _group(cell: str) -> str:
    """The metric a cell counts towards: `clean`, or the condition of `CONDITION@SEVERITY`."""
    return cell.split("@", 1)[0]


@dataclasses.dataclass(frozen=True)
class Outcomes:
    """Per-image correctness of one audit, cell by cell: what pairs two runs image by image.

    | field    | meaning                                                                 |
    |----------|-------------------------------------------------------------------------|
    | `keys`   | uint64 per image: first 8 bytes of blake2b(id), sorted                  |
    | `cells`  | `clean`, or `CONDITION@SEVERITY` (attacks are not kept)                 |
    | `values` | int8, cells x images: 1 right, 0 wrong, -1 not in that cell (error row) |

    Stored compressed (`numpy.savez_compressed`, read back without pickle): about a byte per
    image and cell before compression. A repeated id keeps its last row.

    >>> import pyarrow as pa
    >>> t = pa.table({"id": ["a", "b", "a", "b"], "kind": ["clean", "clean", "corruption", "corruption"],
    ...               "condition": ["clean", "clean", "fog", "fog"], "severity": [0, 0, 3, 3],
    ...               "correct": [True, False, False, False]})
    >>> o = Outcomes.from_predictions(t)
    >>> o.cells, o.counts()
    (('clean', 'fog@3'), {'clean': [1, 2], 'fog': [0, 2]})
    >>> Outcomes.from_bytes(o.to_bytes()).counts() == o.counts()
    True
    """

    keys: np.ndarray
    cells: tuple[str, ...]
    values: np.ndarray

    @classmethod
    def from_predictions(cls, table: Any) -> Outcomes:
        """From the audit's predictions table (`ironsight.robustness.schema.PREDICTIONS_SCHEMA`)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        t = table.select(["id", "kind", "condition", "severity", "correct"])
        t = t.filter(pc.is_in(t["kind"], value_set=pa.array(["clean", "corruption"])))
        ids = pc.unique(t["id"])  # an Array
        keys = _id_keys(ids.to_pylist())
        order = np.argsort(keys, kind="stable")
        position = np.empty(len(order), np.int64)
        position[order] = np.arange(len(order))
        row_pos = position[pc.index_in(t["id"], value_set=ids).to_numpy(zero_copy_only=False)]
        kinds = t["kind"].to_numpy(zero_copy_only=False)
        conditions = t["condition"].to_numpy(zero_copy_only=False)
        severities = t["severity"].to_numpy(zero_copy_only=False)
        names = np.where(kinds == "clean", "clean",
                         np.char.add(np.char.add(conditions.astype(str), "@"), severities.astype(str)))
        cells, row_cell = np.unique(names, return_inverse=True)
        values = np.full((len(cells), len(keys)), -1, np.int8)
        values[row_cell, row_pos] = t["correct"].to_numpy(zero_copy_only=False).astype(np.int8)
        return cls(keys[order], tuple(str(c) for c in cells), values)

    def counts(self) -> dict[str, list[int]]:
        """`{metric: [right, total]}` for `clean` and each condition (all its severities)."""
        out: dict[str, list[int]] = {}
        for i, cell in enumerate(self.cells):
            k, n = out.setdefault(_group(cell), [0, 0])
            row = self.values[i]
            out[_group(cell)] = [k + int((row == 1).sum()), n + int((row >= 0).sum())]
        return out

    def to_bytes(self) -> bytes:
        import io

        buf = io.BytesIO()
        np.savez_compressed(buf, keys=self.keys, cells=np.array(self.cells, dtype=str), values=self.values)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Outcomes:
        import io

        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            keys, cells, values = z["keys"], z["cells"], z["values"]
        if values.shape != (len(cells), len(keys)) or keys.dtype != np.uint64 or values.dtype != np.int8:
            raise ValueError("shapes or types do not match")
        return cls(keys, tuple(str(c) for c in cells), values)

    def to_table(self) -> Any:
        """As a predictions table with the columns `ironsight.robustness.compare.compare_runs`
        reads (ids are the keys in hex; label 1, prediction 1 when right, else 0)."""
        import pyarrow as pa

        hex_ids = np.array([format(int(k), "016x") for k in self.keys], dtype=object)
        parts = []
        for i, cell in enumerate(self.cells):
            present = np.flatnonzero(self.values[i] >= 0)
            right = self.values[i][present] == 1
            condition, _, severity = cell.partition("@")
            n = len(present)
            parts.append(pa.table({
                "id": pa.array(hex_ids[present].tolist(), pa.string()),
                "kind": pa.array(["clean" if cell == "clean" else "corruption"] * n, pa.string()),
                "condition": pa.array([condition] * n, pa.string()),
                "severity": pa.array(np.full(n, int(severity or 0), np.int32)),
                "eps": pa.array(np.zeros(n)),
                "label": pa.array(np.ones(n, np.int64)),
                "prediction": pa.array(right.astype(np.int64)),
                "correct": pa.array(right),
            }))
        return pa.concat_tables(parts) if parts else None
