"""The 95% Student-t interval over seeds."""

import math

import pytest
from scipy import stats

from vibbench.reporting.stats import mean_ci95


@pytest.mark.parametrize("values", [[0.1, 0.3], [1.0, 2.0, 4.0], [0.5, 0.5, 0.5, 0.52, 0.49]])
def test_the_half_width_is_scipys_t_interval(values):
    mean, half = mean_ci95(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=sum(values) / len(values), scale=stats.sem(values))
    assert mean == pytest.approx((low + high) / 2) and half == pytest.approx((high - low) / 2)


def test_one_value_has_no_interval_and_none_is_an_error():
    mean, half = mean_ci95([0.25])
    assert mean == 0.25 and math.isnan(half)
    with pytest.raises(ValueError, match="at least one value"):
        mean_ci95([])


@pytest.mark.parametrize(("k", "n"), [(0, 10), (10, 10), (28, 200), (38, 200), (985, 1000), (1, 3), (500, 1000)])
def test_the_wilson_interval_is_scipys(k, n):
    from vibbench.reporting.stats import wilson_interval

    reference = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = wilson_interval(k, n)
    assert low == pytest.approx(reference.low, abs=1e-12) and high == pytest.approx(reference.high, abs=1e-12)
    assert 0.0 <= low <= k / n <= high <= 1.0


def test_the_wilson_interval_refuses_impossible_counts():
    from vibbench.reporting.stats import wilson_interval

    for k, n in [(1, 0), (-1, 5), (6, 5)]:
        with pytest.raises(ValueError, match="successes"):
            wilson_interval(k, n)


def test_mcnemar_exact_against_scipys_binomial_test():
    from scipy.stats import binomtest

    from vibbench.reporting.stats import mcnemar_exact

    for b, c in ((0, 0), (0, 5), (3, 9), (10, 10), (1, 30), (25, 12)):
        expected = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5).pvalue
        assert abs(mcnemar_exact(b, c) - expected) < 1e-12, (b, c)
    assert mcnemar_exact(0, 10) < 0.01 and mcnemar_exact(5, 6) > 0.5
