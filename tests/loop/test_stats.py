"""Bootstrap estimates against hand-computed cases."""

from __future__ import annotations

import pytest

from loop.core.stats import bootstrap, clustered_difference, paired_difference, pearson


def test_constant_values_have_a_zero_width_interval():
    est = bootstrap([2.0] * 7)
    assert (est.mean, est.low, est.high, est.n) == (2.0, 2.0, 2.0, 7)


def test_interval_brackets_the_mean_and_is_seeded():
    values = [0.0, 1.0] * 50  # mean 0.5, standard error 0.05: the 95% interval is about +-0.1
    est = bootstrap(values, seed=3)
    assert est.mean == 0.5
    assert 0.38 < est.low < 0.45 and 0.55 < est.high < 0.62
    assert bootstrap(values, seed=3) == est


def test_paired_difference_uses_per_context_differences():
    base = [0.0, 10.0, 20.0, 30.0]
    after = [1.0, 11.0, 21.0, 31.0]  # every context gains exactly 1: no pairing noise
    est = paired_difference(after, base)
    assert (est.mean, est.low, est.high) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0], [1.0, 2.0])


def test_clustered_difference_resamples_whole_clusters():
    """With one unit per cluster it is the unit-resampled interval, draw for draw; with the gain
    all in one of two clusters every resample holds a, b or both, so by hand its means are 1
    (a, a), 0 (b, b) and 2/6 (a, b) and the interval is [0, 1], wider than resampling units."""
    after, base = [3.0, 0.0, 1.0, 5.0], [1.0, 0.0, 0.0, 2.0]
    one_each = clustered_difference(after, base, ["a", "b", "c", "d"], seed=4)
    assert one_each == paired_difference(after, base, seed=4)
    diffs = [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    est = clustered_difference(diffs, [0.0] * 6, ["a", "a", "b", "b", "b", "b"], resamples=4000)
    assert (est.mean, est.low, est.high, est.n) == (pytest.approx(1 / 3), 0.0, 1.0, 2)
    units = paired_difference(diffs, [0.0] * 6, resamples=4000)
    assert units.high - units.low < est.high - est.low
    with pytest.raises(ValueError, match="equal lengths"):
        clustered_difference([1.0], [1.0], ["a", "b"])


def test_pearson_by_hand():
    # x = 1,2,3; y = 2,4,5: means 2 and 11/3; sxy = 3, sxx = 2, syy = 14/3 -> 3 / sqrt(28/3)
    assert pearson([1, 2, 3], [2, 4, 5]) == pytest.approx(3 / (28 / 3) ** 0.5)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) is None


def test_spearman_by_hand():
    from loop.core.stats import ranks, spearman

    assert ranks([10.0, 30.0, 20.0, 20.0]) == [1.0, 4.0, 2.5, 2.5]  # ties share their mean rank
    assert spearman([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 1000.0]) == pytest.approx(1.0)
    assert spearman([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    # ranks x 1,2,3,4 and y 2,1,4,3: Pearson of the ranks = (1 - 6 * 4 / (4 * 15)) = 0.6
    assert spearman([1.0, 2.0, 3.0, 4.0], [5.0, 1.0, 9.0, 7.0]) == pytest.approx(0.6)
    assert spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None  # constant: undefined
