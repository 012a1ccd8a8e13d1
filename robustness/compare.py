"""The ONE per-cell comparison of two runs (``--baseline``, the release gate, run history).

:func:`compare_runs` judges each cell (clean, condition x severity, each condition pooled
over its severities, attack x eps) of a new run against a reference: exact McNemar on the
same images when both runs have per-image rows, else the unpaired Wilson-overlap rule; a
cell regressed by :func:`~ironsight.robustness.stats.is_regression`. Cells are named by
:func:`cell_key`, stable across runs; each result is a :class:`CellChange`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ironsight.robustness import stats
from ironsight.robustness.metrics import as_arrow, cells_by, numpy_column


def cell_key(kind: str, name: str = "clean", severity: int | None = None, eps: float | None = None) -> str:
    """Stable key of a cell across runs: ``clean``, ``condition/fog/3`` (one severity),
    ``condition/fog`` (mean over severities), ``attack/pgd/0.00784313725490196``.

    >>> cell_key("condition", "fog", 3), cell_key("attack", "pgd", eps=0.5)
    ('condition/fog/3', 'attack/pgd/0.5')
    """
    if kind == "clean":
        return "clean"
    if kind == "condition":
        return f"condition/{name}/{int(severity)}"
    if kind == "condition_mean":
        return f"condition/{name}"
    if kind == "attack":
        return f"attack/{name}/{float(eps)!r}"
    raise ValueError(f"unknown cell kind {kind!r}")


@dataclass(frozen=True)
class CellChange:
    """How one cell moved between two runs (:func:`compare_runs`).

    Attributes:
        key: :func:`cell_key`.
        label: The cell in words (``"fog severity 3"``).
        kind: ``clean``, ``condition`` (one severity), ``condition_mean`` (pooled over the
            severities both runs have) or ``attack`` (one eps).
        name: ``"clean"``, the condition or the attack.
        severity: Condition severity, else None.
        eps: Attack budget, else None.
        change: :class:`~ironsight.robustness.stats.Change` (new minus reference).
        regression: :func:`~ironsight.robustness.stats.is_regression` with ``max_drop``.
        paired: True when judged by exact McNemar on the same image ids.
    """

    key: str
    label: str
    kind: str
    name: str
    severity: int | None
    eps: float | None
    change: stats.Change
    regression: bool
    paired: bool

    def to_json(self) -> dict:
        return {
            "key": self.key,
            "label": self.label,
            "kind": self.kind,
            "name": self.name,
            "severity": self.severity,
            "eps": self.eps,
            **self.change.to_json(),
            "paired": self.paired,
            "regression": self.regression,
        }

    @classmethod
    def from_json(cls, data: dict) -> CellChange:
        """Inverse of :meth:`to_json` (a cell stored in ``report.json``)."""
        fields = {f.name for f in dataclasses.fields(stats.Change)}
        change = stats.Change(**{k: v for k, v in data.items() if k in fields})
        return cls(
            data["key"], data["label"], data["kind"], data["name"], data.get("severity"),
            data.get("eps"), change, bool(data.get("regression")), bool(data.get("paired")),
        )


def _eps_words(eps: float) -> str:
    return f"{eps * 255:.1f}/255"


def _cell_label(kind: str, name: str, severity, eps, severities=()) -> str:
    if kind == "clean":
        return "clean"
    if kind == "condition":
        return f"{name} severity {severity}"
    if kind == "condition_mean":
        return f"{name} (severities {', '.join(map(str, severities))} pooled)"
    return f"{name} at eps {_eps_words(eps)}"


def _report_counts(report: dict) -> dict[tuple, tuple[int, int]]:
    """``{(kind, name, severity, eps): (correct, n labeled)}`` from a report.json; cells of
    reports older than the intervals (no ``correct``) get ``round(accuracy * n)``; a cell
    without an accuracy or an n is left out."""

    def counts(entry: dict | None) -> tuple[int, int] | None:
        if not entry or entry.get("accuracy") is None:
            return None
        n = entry.get("n_labeled", entry.get("n"))
        if not isinstance(n, int) or n <= 0:
            return None
        k = entry.get("correct")
        if not isinstance(k, int):
            k = int(round(entry["accuracy"] * n))
        return k, n

    out: dict[tuple, tuple[int, int]] = {}
    c = counts(report.get("clean"))
    if c:
        out[("clean", "clean", None, None)] = c
    for entry in report.get("conditions") or []:
        c = counts(entry)
        if c:
            out[("condition", entry["name"], int(entry["severity"]), None)] = c
    for entry in report.get("attacks") or []:
        c = counts(entry)
        if c:
            out[("attack", entry["name"], None, float(entry["eps"]))] = c
    return out


def _table_cells(table: pa.Table) -> dict[tuple, pa.Table]:
    """``{(kind, name, severity, eps): labeled rows}`` of a predictions table."""
    table = table.filter(pc.greater_equal(table.column("label"), 0))
    out: dict[tuple, pa.Table] = {}
    clean = table.filter(pc.equal(table.column("kind"), "clean"))
    if clean.num_rows:
        out[("clean", "clean", None, None)] = clean
    for kind, level in (("corruption", "severity"), ("attack", "eps")):
        rows = table.filter(pc.equal(table.column("kind"), kind))
        for name, value, cell in cells_by(rows, level):
            if kind == "corruption":
                out[("condition", name, int(value), None)] = cell
            else:
                out[("attack", name, None, float(value))] = cell
    return out


def _occurrence(ids: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """For each row, how many earlier rows have the same id (0 for the first): a repeated id
    pairs its k-th row in one run with its k-th row in the other."""
    codes = pc.dictionary_encode(as_arrow(ids)).indices.to_numpy(zero_copy_only=False)
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    first = np.r_[True, sorted_codes[1:] != sorted_codes[:-1]] if len(codes) else np.array([], bool)
    starts = np.maximum.accumulate(np.where(first, np.arange(len(codes)), 0)) if len(codes) else first
    occ = np.empty(len(codes), dtype=np.int64)
    occ[order] = np.arange(len(codes)) - starts
    return occ


def _aligned(ref: pa.Table, new: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Per-image correctness of the images present in both cells, aligned by id."""

    def keyed(t: pa.Table) -> pa.Table:
        return pa.table({"id": t.column("id"), "occ": _occurrence(t.column("id")), "correct": t.column("correct")})

    joined = keyed(ref).join(keyed(new), keys=["id", "occ"], join_type="inner",
                             left_suffix="_ref", right_suffix="_new")
    return numpy_column(joined, "correct_ref").astype(bool), numpy_column(joined, "correct_new").astype(bool)


def compare_runs(
    reference: dict | pa.Table,
    new: dict | pa.Table,
    max_drop: float = 0.0,
    *,
    alpha: float = stats.ALPHA,
) -> list[CellChange]:
    """Compare two runs cell by cell: the ONE comparison behind ``--baseline``, the release
    gate's ``max_drop_vs_baseline`` and run history.

    Args:
        reference: The earlier run: a predictions table
            (:data:`~ironsight.robustness.schema.PREDICTIONS_SCHEMA`, one row per image and
            cell) or a ``report.json`` dict.
        new: The run under review, the same way.
        max_drop: Absolute accuracy drop allowed before a significant drop is a regression.
        alpha: Significance level of the paired test.

    Returns:
        One :class:`CellChange` per cell both runs have (clean; each condition x severity and
        each condition pooled over the severities both have; each attack x eps), in that
        order. When both are tables, a cell is *paired*: its images are matched by id and
        judged by exact McNemar (:func:`~ironsight.robustness.stats.paired_change`). A report
        carries counts, not per-image correctness, so a cell with a report on either side (or
        with no id in common) is *unpaired*
        (:func:`~ironsight.robustness.stats.unpaired_change`, Wilson-interval overlap). Only
        labeled rows count.

    >>> import pyarrow as pa
    >>> def run(correct):
    ...     return pa.table({"id": [str(i) for i in range(len(correct))], "kind": ["clean"] * len(correct),
    ...         "condition": ["clean"] * len(correct), "severity": [0] * len(correct),
    ...         "eps": [0.0] * len(correct), "label": [1] * len(correct),
    ...         "prediction": [1 if c else 0 for c in correct], "confidence": [0.9] * len(correct),
    ...         "correct": correct})
    >>> (cell,) = compare_runs(run([True] * 100), run([True] * 88 + [False] * 12), 0.05)
    >>> cell.label, round(cell.change.delta, 2), cell.change.verdict, cell.paired, cell.regression
    ('clean', -0.12, 'significant', True, True)
    """
    paired_sides = isinstance(reference, pa.Table) and isinstance(new, pa.Table)
    ref_cells = _table_cells(reference) if isinstance(reference, pa.Table) else None
    new_cells = _table_cells(new) if isinstance(new, pa.Table) else None

    def counts_of(cells, report) -> dict[tuple, tuple[int, int]]:
        if cells is None:
            return _report_counts(report)
        return {k: (int(np.sum(numpy_column(t, "correct"))), t.num_rows) for k, t in cells.items()}

    ref_counts, new_counts = counts_of(ref_cells, reference), counts_of(new_cells, new)
    common = sorted(
        set(ref_counts) & set(new_counts),
        key=lambda k: (("clean", "condition", "attack").index(k[0]), k[1], k[2] or 0, k[3] or 0.0),
    )
    out: list[CellChange] = []
    vectors: dict[tuple, tuple[np.ndarray, np.ndarray] | None] = {}

    def judge(kind, name, severity, eps, k_ref, n_ref, k_new, n_new, vec, severities=()):
        if vec is not None and len(vec[0]):
            change = stats.paired_change(vec[0].tolist(), vec[1].tolist(), alpha=alpha)
            paired = True
        else:
            change = stats.unpaired_change(k_ref, n_ref, k_new, n_new)
            paired = False
        out.append(
            CellChange(
                cell_key(kind, name, severity, eps),
                _cell_label(kind, name, severity, eps, severities),
                kind, name, severity, eps, change, stats.is_regression(change, max_drop), paired,
            )
        )

    for key in common:
        kind, name, severity, eps = key
        vec = _aligned(ref_cells[key], new_cells[key]) if paired_sides else None
        vectors[key] = vec
        (k_r, n_r), (k_n, n_n) = ref_counts[key], new_counts[key]
        judge(kind, name, severity, eps, k_r, n_r, k_n, n_n, vec)
        last_of_condition = kind == "condition" and not any(
            c[0] == "condition" and c[1] == name and c[2] > severity for c in common
        )
        if last_of_condition:
            keys = [c for c in common if c[0] == "condition" and c[1] == name]
            sevs = [c[2] for c in keys]
            k_r = sum(ref_counts[c][0] for c in keys)
            n_r = sum(ref_counts[c][1] for c in keys)
            k_n = sum(new_counts[c][0] for c in keys)
            n_n = sum(new_counts[c][1] for c in keys)
            pooled = None
            if paired_sides and all(vectors[c] is not None and len(vectors[c][0]) for c in keys):
                pooled = (
                    np.concatenate([vectors[c][0] for c in keys]),
                    np.concatenate([vectors[c][1] for c in keys]),
                )
            judge("condition_mean", name, None, None, k_r, n_r, k_n, n_n, pooled, sevs)
    return out
