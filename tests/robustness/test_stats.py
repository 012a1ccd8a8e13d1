"""robustness.stats against independent references (scipy) and its own doctests."""

import doctest
import random

import pytest

from ironsight.robustness import stats

scipy_stats = pytest.importorskip("scipy.stats")


def test_doctests_pass():
    result = doctest.testmod(stats)
    assert result.attempted > 10 and result.failed == 0


@pytest.mark.parametrize("b,c", [(0, 1), (1, 0), (2, 10), (10, 2), (5, 5), (30, 12), (0, 40), (200, 180)])
def test_mcnemar_exact_equals_the_binomial_test_on_discordant_pairs(b, c):
    expected = scipy_stats.binomtest(min(b, c), b + c, 0.5).pvalue
    assert stats.mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9)


def test_wilson_interval_matches_statsmodels_formula_and_covers():
    # Reference: the same interval from scipy's binomtest (method="wilson").
    for k, n in [(0, 10), (3, 10), (10, 10), (95, 100), (512, 1000), (1, 3)]:
        ci = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        lo, hi = stats.wilson_interval(k, n)
        assert lo == pytest.approx(ci.low, abs=1e-9) and hi == pytest.approx(ci.high, abs=1e-9)


def test_wilson_coverage_is_near_95_percent_at_small_n():
    rng = random.Random(0)
    p, n, hits = 0.9, 40, 0
    for _ in range(2000):
        k = sum(rng.random() < p for _ in range(n))
        lo, hi = stats.wilson_interval(k, n)
        hits += lo <= p <= hi
    assert 0.92 <= hits / 2000 <= 0.98


def test_paired_change_counts_only_discordant_pairs():
    ref = [True] * 50 + [False] * 50
    new = [False] * 5 + [True] * 45 + [True] * 5 + [False] * 45  # 5 each way
    ch = stats.paired_change(ref, new)
    assert (ch.worse, ch.better, ch.delta) == (5, 5, 0.0)
    assert not ch.significant and ch.p_value == pytest.approx(1.0)


def test_a_one_point_wobble_is_not_a_regression_and_a_ten_point_drop_is():
    n = 1000
    ref = [True] * 900 + [False] * 100
    wobble = [True] * 890 + [False] * 110
    drop = [True] * 800 + [False] * 200
    assert not stats.is_regression(stats.paired_change(ref, wobble), 0.02)
    assert stats.is_regression(stats.paired_change(ref, drop), 0.02)
    # significant but smaller than the allowed drop: not a regression either
    tiny = [True] * 885 + [False] * 115
    ch = stats.paired_change(ref, tiny)
    assert ch.significant and not stats.is_regression(ch, 0.02)
    assert len(ref) == n


def test_min_detectable_drop_shrinks_with_n():
    assert stats.min_detectable_drop(100) > stats.min_detectable_drop(1000) > stats.min_detectable_drop(10000)
    assert stats.min_detectable_drop(0) is None


def test_bad_counts_are_refused():
    with pytest.raises(ValueError):
        stats.wilson_interval(5, 3)
    with pytest.raises(ValueError):
        stats.paired_change([True], [True, False])


def test_weighted_sum_interval_of_one_part_is_its_wilson_interval():
    for k, n in [(0, 10), (7, 10), (10, 10), (512, 1000)]:
        s, lo, hi = stats.weighted_sum_interval([(1.0, k, n), (0.0, 0, 0)])
        assert (s, lo, hi) == (k / n, *stats.wilson_interval(k, n))


def test_weighted_sum_interval_estimate_is_the_weighted_sum_and_stays_in_0_1():
    s, lo, hi = stats.weighted_sum_interval([(0.3, 10, 10), (0.7, 20, 20)])
    assert s == pytest.approx(1.0) and hi == 1.0 and 0.8 < lo < 1.0  # not a point at 100%
    s, lo, hi = stats.weighted_sum_interval([(0.5, 0, 20), (0.5, 0, 30)])
    assert s == 0.0 == lo and 0.0 < hi < 0.2


def test_weighted_sum_interval_widens_with_correlation():
    parts = [(0.5, 30, 40), (0.5, 25, 40)]
    _, lo0, hi0 = stats.weighted_sum_interval(parts)
    _, lo1, hi1 = stats.weighted_sum_interval(parts, corr=[[1, 1], [1, 1]])
    assert lo1 < lo0 and hi1 > hi0


def test_weighted_sum_interval_refuses_bad_input():
    with pytest.raises(ValueError, match="no observations"):
        stats.weighted_sum_interval([(0.5, 0, 0)])
    with pytest.raises(ValueError, match=">= 0"):
        stats.weighted_sum_interval([(-0.1, 1, 2)])
    with pytest.raises(ValueError, match="2 x 2"):
        stats.weighted_sum_interval([(0.5, 1, 2), (0.5, 1, 2)], corr=[[1]])


@pytest.mark.parametrize("truth", [(0.9, 0.6, 0.75), (0.97, 0.85, 0.5)])
def test_weighted_sum_interval_covers_near_95_percent(truth):
    # independent binomial parts of unequal size, as the interval assumes
    rng = random.Random(1)
    weights, sizes = (0.5, 0.3, 0.2), (60, 40, 30)
    target = sum(w * p for w, p in zip(weights, truth, strict=True))
    hits, runs = 0, 1500
    for _ in range(runs):
        parts = [(w, sum(rng.random() < p for _ in range(n)), n)
                 for w, p, n in zip(weights, truth, sizes, strict=True)]
        _, lo, hi = stats.weighted_sum_interval(parts)
        hits += lo <= target <= hi
    assert 0.925 <= hits / runs <= 0.985
