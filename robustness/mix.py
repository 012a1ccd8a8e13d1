"""Expected accuracy under an operating-condition mix: how often each condition occurs in
production, the rest being clean.

A suite may declare ``mix: {low_light: 0.30, partial_view: 0.25, ...}``
(:mod:`ironsight.robustness.suites`; :func:`check_mix` is the one validation). With weights
``w_c`` for the mix's conditions and ``w_clean = 1 - sum_c w_c``, the expected accuracy of a
model on images drawn from that mix is

    A = w_clean * acc_clean + sum_c w_c * acc_c

where ``acc_clean`` is the clean accuracy and ``acc_c`` the accuracy under condition ``c``
pooled over the suite's severities (each image's mean correctness over the severities it ran
at, averaged over the images: the pooled row accuracy when every image ran at every severity,
i.e. the severities are taken as equally likely). Only labeled rows (label >= 0) count.

Interval (:func:`ironsight.robustness.stats.weighted_sum_interval`, MOVER over Wilson
intervals): each part is ``(w, k, n)`` with ``n`` the number of distinct labeled images and
``k`` the sum of their mean correctness, so repeated severities of one image are not counted
as independent observations (conservative: an image's mean over severities varies at most as
much as one Bernoulli outcome). The parts are measured on the SAME images, so their errors are
correlated; the correlation ``r_ij`` of the per-image values of parts ``i`` and ``j`` is
estimated from the images they share, clipped to [0, 1], and taken as 1 (the half-widths add
up) where it is undefined (a part constant over the images, fewer than 3 shared images).

>>> import pyarrow as pa
>>> t = pa.table({"id": ["a", "b", "a", "b", "a", "b"],
...               "kind": ["clean", "clean", "corruption", "corruption", "corruption", "corruption"],
...               "condition": ["clean", "clean", "fog", "fog", "fog", "fog"],
...               "severity": [0, 0, 1, 1, 3, 3], "label": [1, 0, 1, 0, 1, 0],
...               "correct": [True, True, True, False, False, False]})
>>> m = expected_accuracy(t, (("fog", 0.4),))
>>> m["mix"], m["per_condition"], m["accuracy"]
({'clean': 0.6, 'fog': 0.4}, {'clean': 1.0, 'fog': 0.25}, 0.7)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ironsight.cluster.errors import InvalidInput, did_you_mean
from ironsight.robustness.stats import weighted_sum_interval

SUM_TOLERANCE = 1e-9  # weights may sum to 1 up to float rounding (0.3 + 0.25 + ... != 1.0)

METHOD = ("MOVER over Wilson intervals; per part n = distinct labeled images, severities "
          "pooled per image; correlations between parts estimated on the shared images")


def check_mix(mix: Mapping[str, float] | Iterable[tuple[str, float]],
              conditions: Sequence[str], *, source: str = "mix") -> tuple[tuple[str, float], ...]:
    """Validate an operating-condition mix against the suite's conditions.

    Args:
        mix: ``{condition: weight}`` or ``(condition, weight)`` pairs.
        conditions: the suite's conditions (the only names a mix may use).
        source: what to name in messages (``"suite file field.yaml: mix"``).

    Returns:
        The mix as ``(condition, weight)`` pairs, weights as floats, the most frequent first
        (ties by name): one order however the file lists them.

    Raises:
        InvalidInput: an unknown or repeated condition (with a did-you-mean), ``clean`` named
            (its share is the rest), a weight that is not a number > 0, or weights summing to
            more than 1.

    >>> check_mix({"fog": 0.2, "low_light": 0.3}, ["fog", "low_light"])
    (('low_light', 0.3), ('fog', 0.2))
    >>> check_mix({"low_lite": 0.3}, ["fog", "low_light"])
    Traceback (most recent call last):
    ...
    ironsight.cluster.errors.InvalidInput: mix: condition 'low_lite' is not one of the suite's conditions; did you mean 'low_light'? expected any of fog, low_light
    """
    pairs = list(mix.items()) if isinstance(mix, Mapping) else [tuple(p) for p in mix]
    if not pairs:
        raise InvalidInput(f"{source} is empty; leave it out, or give each condition's share")
    seen: set[str] = set()
    for name, weight in pairs:
        if name == "clean":
            raise InvalidInput(f"{source}: 'clean' is not a condition; its share is the rest, "
                               "1 minus the sum of the weights")
        if name not in conditions:
            raise InvalidInput(f"{source}: condition {name!r} is not one of the suite's "
                               f"conditions; {did_you_mean(name, conditions)}expected any of "
                               f"{', '.join(conditions)}")
        if name in seen:
            raise InvalidInput(f"{source}: condition {name!r} appears twice")
        seen.add(name)
        if (isinstance(weight, bool) or not isinstance(weight, int | float)
                or not math.isfinite(weight) or weight <= 0):
            raise InvalidInput(f"{source}: weight of {name!r} is {weight!r}; expected a number > 0 "
                               "(leave a condition out for 0)")
    total = math.fsum(float(w) for _, w in pairs)
    if total > 1 + SUM_TOLERANCE:
        raise InvalidInput(f"{source}: weights sum to {total:g} > 1; they are shares of the "
                           "images seen in production, the rest being clean")
    return tuple(sorted(((str(n), float(w)) for n, w in pairs), key=lambda p: (-p[1], p[0])))


def _per_image(table: pa.Table, kind: str, condition: str) -> dict[str, float]:
    """Each labeled image's mean correctness over the rows of one part (severities pooled)."""
    rows = table.filter(pc.and_(pc.equal(table.column("kind"), kind),
                                pc.equal(table.column("condition"), condition)))
    rows = rows.filter(pc.greater_equal(rows.column("label"), 0))
    if rows.num_rows == 0:
        return {}
    ids = np.asarray(rows.column("id").to_pylist(), dtype=object)
    correct = rows.column("correct").to_numpy(zero_copy_only=False).astype(np.float64)
    uniq, inverse = np.unique(ids, return_inverse=True)
    means = np.bincount(inverse, weights=correct) / np.bincount(inverse)
    return dict(zip(uniq.tolist(), means.tolist(), strict=True))


def _correlations(values: list[dict[str, float]]) -> list[list[float]]:
    """Pairwise correlation of the parts' per-image values on the images both share, clipped
    to [0, 1]; 1 where undefined (conservative)."""
    k = len(values)
    corr = [[1.0] * k for _ in range(k)]
    for i in range(k):
        for j in range(i + 1, k):
            shared = sorted(values[i].keys() & values[j].keys())
            r = 1.0
            if len(shared) >= 3:
                a = np.array([values[i][s] for s in shared])
                b = np.array([values[j][s] for s in shared])
                if a.std() > 0 and b.std() > 0:
                    r = float(np.clip(np.corrcoef(a, b)[0, 1], 0.0, 1.0))
            corr[i][j] = corr[j][i] = r
    return corr


def expected_accuracy(table: pa.Table, mix: tuple[tuple[str, float], ...]) -> dict | None:
    """Expected accuracy under ``mix`` from a predictions table, with its 95% interval.

    Args:
        table: rows of :data:`~ironsight.robustness.schema.PREDICTIONS_SCHEMA` (``clean`` and
            ``corruption`` rows are used; columns ``id``, ``kind``, ``condition``, ``label``,
            ``correct`` suffice).
        mix: ``(condition, weight)`` pairs (``Suite.mix``); empty -> None.

    Returns:
        None when ``mix`` is empty, else ``{"accuracy", "low", "high", "mix": {"clean": w,
        condition: w, ...}, "per_condition": {"clean": acc, condition: acc, ...}, "n":
        {part: labeled images}, "method"}``. ``accuracy``/``low``/``high`` are None when a
        part with a weight > 0 has no labeled image; a part's accuracy is None then.
    """
    if not mix:
        return None
    w_clean = max(0.0, 1.0 - math.fsum(w for _, w in mix))
    parts = [("clean", "clean", w_clean)] + [("corruption", c, float(w)) for c, w in mix]
    values = [_per_image(table, kind, name) for kind, name, _ in parts]
    names = [name for _, name, _ in parts]
    per_condition = {n: (sum(v.values()) / len(v) if v else None) for n, v in zip(names, values, strict=True)}
    out = {
        "accuracy": None, "low": None, "high": None,
        "mix": {n: w for (_, n, w) in parts},
        "per_condition": per_condition,
        "n": {n: len(v) for n, v in zip(names, values, strict=True)},
        "method": METHOD,
    }
    used = [i for i, (_, _, w) in enumerate(parts) if w > 0]
    if any(not values[i] for i in used):
        return out
    corr = _correlations([values[i] for i in used])
    est, low, high = weighted_sum_interval(
        [(parts[i][2], sum(values[i].values()), len(values[i])) for i in used], corr=corr)
    out.update(accuracy=est, low=low, high=high)
    return out
