"""Statistics behind every accuracy Ironsight reports: intervals, paired tests, drops.

One home for the arithmetic that reports, the release gate and run history share, so that
"significant", "within noise" and "regressed" mean the same thing everywhere.

| function                    | what it answers                                                   |
|-----------------------------|-------------------------------------------------------------------|
| :func:`wilson_interval`     | 95% interval of an accuracy ``k / n`` (Wilson score, no continuity correction) |
| :func:`mcnemar_exact`       | two-sided exact McNemar p-value from the discordant pair counts   |
| :func:`paired_change`       | change of accuracy between two runs on the SAME ids, with its p-value |
| :func:`unpaired_change`     | change between runs on different ids: significant when the intervals do not overlap |
| :func:`min_detectable_drop` | smallest drop from accuracy ``p`` that ``n`` paired images can call significant |
| :func:`is_regression`       | the one rule: drop larger than ``max_drop`` AND significant        |
| :func:`weighted_sum_interval` | 95% interval of ``sum_i w_i * k_i / n_i`` (an expected accuracy under a mix of conditions) |

Why Wilson: it stays inside [0, 1] and keeps its coverage at small ``n`` and at accuracies near
0 or 1, where the normal ("Wald") interval collapses to a point (10/10 correct is not
"100% +- 0"). Why McNemar: two runs of one model version against another on the same images
are paired; only images whose correctness changed carry information, and the exact binomial
test on those discordant pairs needs no large-sample assumption.

>>> lo, hi = wilson_interval(95, 100)
>>> round(lo, 3), round(hi, 3)
(0.888, 0.978)
>>> round(mcnemar_exact(10, 2), 4)
0.0386
>>> mcnemar_exact(0, 0)
1.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054  # two-sided 95% normal quantile
ALPHA = 0.05


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of the proportion ``k / n``; ``(0.0, 1.0)`` when ``n`` is 0.

    >>> wilson_interval(0, 0)
    (0.0, 1.0)
    >>> lo, hi = wilson_interval(10, 10)
    >>> round(lo, 3), hi
    (0.722, 1.0)
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def _binom_cdf_half(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), exactly (log-space sums stay finite for large n)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    log_half_n = -n * math.log(2)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half_n for i in range(k + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value.

    Args:
        b: images right in the first run and wrong in the second.
        c: images wrong in the first run and right in the second.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b}, {c}")
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, 2 * _binom_cdf_half(min(b, c), n))


@dataclass(frozen=True)
class Change:
    """How accuracy moved from a reference run to a new one.

    ``delta`` is new minus reference (negative: a drop). ``p_value`` is None for unpaired
    comparisons, which are judged by interval overlap instead. ``test`` names the method.
    """

    reference: float
    new: float
    delta: float
    n: int
    significant: bool
    test: str
    p_value: float | None = None
    worse: int | None = None  # paired: right before, wrong now
    better: int | None = None  # paired: wrong before, right now

    @property
    def verdict(self) -> str:
        return "significant" if self.significant else "within noise"

    def to_json(self) -> dict:
        return {
            "reference": self.reference,
            "new": self.new,
            "delta": self.delta,
            "n": self.n,
            "significant": self.significant,
            "verdict": self.verdict,
            "test": self.test,
            "p_value": self.p_value,
            "worse": self.worse,
            "better": self.better,
        }


def paired_change(reference: list[bool] | tuple[bool, ...], new: list[bool] | tuple[bool, ...], alpha: float = ALPHA) -> Change:
    """Accuracy change on the same images, judged by the exact McNemar test.

    ``reference[i]`` and ``new[i]`` say whether image ``i`` was classified correctly in each run
    (align them by id before calling).

    >>> ch = paired_change([True] * 90 + [False] * 10, [True] * 80 + [False] * 20)
    >>> round(ch.delta, 2), ch.worse, ch.better, ch.verdict
    (-0.1, 10, 0, 'significant')
    """
    if len(reference) != len(new):
        raise ValueError(f"paired runs must cover the same images: {len(reference)} vs {len(new)}")
    n = len(reference)
    worse = sum(1 for a, b in zip(reference, new, strict=True) if a and not b)
    better = sum(1 for a, b in zip(reference, new, strict=True) if b and not a)
    ref_acc = sum(map(bool, reference)) / n if n else 0.0
    new_acc = sum(map(bool, new)) / n if n else 0.0
    p = mcnemar_exact(worse, better)
    return Change(ref_acc, new_acc, new_acc - ref_acc, n, p < alpha, "mcnemar_exact", p, worse, better)


def unpaired_change(k_ref: int, n_ref: int, k_new: int, n_new: int) -> Change:
    """Accuracy change between runs on different images: significant when the two 95% Wilson
    intervals do not overlap (a conservative rule; overlapping intervals can still differ).

    >>> unpaired_change(95, 100, 60, 100).verdict
    'significant'
    >>> unpaired_change(95, 100, 92, 100).verdict
    'within noise'
    """
    lo_r, hi_r = wilson_interval(k_ref, n_ref)
    lo_n, hi_n = wilson_interval(k_new, n_new)
    ref = k_ref / n_ref if n_ref else 0.0
    new = k_new / n_new if n_new else 0.0
    separate = hi_n < lo_r or lo_n > hi_r
    return Change(ref, new, new - ref, min(n_ref, n_new), separate, "wilson_overlap")


def min_detectable_drop(n: int, accuracy: float = 0.9, alpha: float = ALPHA) -> float | None:
    """Smallest drop from ``accuracy`` that McNemar can call significant on ``n`` paired images,
    in the best case (every discordant pair one way). None when ``n`` is 0.

    >>> min_detectable_drop(100)
    0.06
    >>> min_detectable_drop(10_000) <= 0.001
    True
    """
    if n <= 0:
        return None
    wrong_now_max = int(round(accuracy * n))  # images that can still turn wrong
    for k in range(1, wrong_now_max + 1):
        if mcnemar_exact(k, 0) < alpha:
            return k / n
    return None


def is_regression(change: Change, max_drop: float) -> bool:
    """The one rule shared by the gate, ``--baseline`` and run history: the accuracy fell by
    MORE than ``max_drop`` (absolute) AND the fall is statistically significant.

    >>> is_regression(paired_change([True] * 100, [True] * 90 + [False] * 10), 0.02)
    True
    >>> is_regression(paired_change([True] * 100, [True] * 99 + [False]), 0.0)
    False
    """
    return -change.delta > max_drop and change.significant


def weighted_sum_interval(
    parts: list[tuple[float, float, float]] | tuple[tuple[float, float, float], ...],
    corr: list[list[float]] | None = None,
    z: float = Z95,
) -> tuple[float, float, float]:
    """95% interval of a weighted sum of proportions ``S = sum_i w_i * p_i``, ``p_i = k_i / n_i``.

    Method: MOVER ("method of variance estimates recovery", Zou & Donner 2008; Newcombe 1998
    for a difference of two proportions) over each part's Wilson interval ``[l_i, u_i]``:

        low  = S - sqrt(sum_ij r_ij * w_i (p_i - l_i) * w_j (p_j - l_j))
        high = S + sqrt(sum_ij r_ij * w_i (u_i - p_i) * w_j (u_j - p_j))

    with ``r_ii = 1``; ``r_ij`` is the correlation of the estimates ``p_i`` and ``p_j``: 0 for
    independent proportions (``corr=None``), 1 for perfectly correlated ones (the half-widths
    then add up). It inherits Wilson's behaviour: inside [0, 1], not a point at 0 or 1.

    Args:
        parts: ``(weight, k, n)`` per proportion; weights >= 0, ``n > 0`` where the weight is
            > 0; ``k`` may be fractional (a count pooled over repeated measurements, e.g. an
            image's mean correctness over severities, with ``n`` the images).
        corr: optional matrix ``r_ij`` (one row per part), values in [-1, 1].
        z: normal quantile (95% two-sided by default).

    Returns:
        ``(S, low, high)``.

    >>> s, lo, hi = weighted_sum_interval([(0.7, 90, 100), (0.3, 60, 100)])
    >>> round(s, 3), round(lo, 3), round(hi, 3)
    (0.81, 0.75, 0.851)
    >>> weighted_sum_interval([(1.0, 45, 50)]) == (0.9, *wilson_interval(45, 50))
    True
    >>> _, lo, hi = weighted_sum_interval([(0.5, 9, 10), (0.5, 9, 10)], corr=[[1, 1], [1, 1]])
    >>> (round(lo, 3), round(hi, 3)) == tuple(round(x, 3) for x in wilson_interval(9, 10))
    True
    """
    if corr is not None and (len(corr) != len(parts) or any(len(r) != len(parts) for r in corr)):
        raise ValueError(f"corr must be {len(parts)} x {len(parts)}")
    est, down, up = 0.0, [], []
    for w, k, n in parts:
        if w < 0 or not math.isfinite(w):
            raise ValueError(f"weights must be finite and >= 0, got {w}")
        if w == 0:
            down.append(0.0)
            up.append(0.0)
            continue
        if n <= 0:
            raise ValueError(f"a part with weight {w} has no observations (n={n})")
        p = k / n
        lo, hi = wilson_interval(k, n, z)
        est += w * p
        down.append(w * max(0.0, p - lo))
        up.append(w * max(0.0, hi - p))

    def spread(d: list[float]) -> float:
        total = 0.0
        for i, di in enumerate(d):
            for j, dj in enumerate(d):
                r = 1.0 if i == j else (0.0 if corr is None else float(corr[i][j]))
                total += r * di * dj
        return math.sqrt(max(0.0, total))

    return est, max(0.0, est - spread(down)), min(1.0, est + spread(up))
