"""Intervals for the report: over seeds, the mean and a 95% Student-t interval; for one seed's accuracy on n
examples, the 95% Wilson score interval of a binomial proportion."""

from __future__ import annotations

import math

from scipy import stats


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% t-interval); the half-width is NaN for a single value."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci95 needs at least one value")
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


Z95 = 1.959963984540054
"""The 0.975 quantile of the standard normal: two-sided 95%."""


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval (Wilson 1927) of a proportion with `successes` out of `n` trials: unlike the normal
    approximation it stays inside [0, 1] and is sensible at 0 and n successes."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval needs 0 <= successes <= n and n >= 1, got {successes} of {n}")
    p = successes / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at 0 or n successes the bound is exactly 0 or 1; rounding would leave it a hair inside
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar test (a binomial test of b against b + c at 1/2) of paired 0/1 outcomes on the same
    examples, where b and c count the discordant pairs (only the first right; only the second right). 1.0 when
    there are none."""
    if b < 0 or c < 0:
        raise ValueError(f"mcnemar_exact needs counts >= 0, got {b} and {c}")
    n = b + c
    if n == 0:
        return 1.0
    return float(min(1.0, 2.0 * stats.binom.cdf(min(b, c), n, 0.5)))


def newcombe_interval(successes_a: int, n_a: int, successes_b: int, n_b: int, z: float = Z95) -> tuple[float, float]:
    """The 95% interval of p_b - p_a for two independent proportions: Newcombe's hybrid score interval (Newcombe 1998,
    "Interval estimation for the difference between independent proportions", method 10), from each proportion's
    Wilson interval. Inside [-1, 1], sensible at 0 and n successes."""
    pa, pb = successes_a / n_a, successes_b / n_b
    la, ua = wilson_interval(successes_a, n_a, z)
    lb, ub = wilson_interval(successes_b, n_b, z)
    d = pb - pa
    return max(-1.0, d - math.hypot(pb - lb, ua - pa)), min(1.0, d + math.hypot(ub - pb, pa - la))


def newcombe_paired_interval(both: int, only_a: int, only_b: int, neither: int, z: float = Z95) -> tuple[float, float]:
    """The 95% interval of p_b - p_a for paired 0/1 outcomes on the same n examples (both right, only a right, only b
    right, neither): Newcombe's square-and-add interval for paired data (Newcombe 1998, "Improved confidence intervals
    for the difference between binomial proportions based on paired data", method 10), from the Wilson intervals of
    p_a and p_b and their estimated correlation phi (corrected towards 0 by n/2 when positive, as Newcombe does)."""
    n = both + only_a + only_b + neither
    if n < 1 or min(both, only_a, only_b, neither) < 0:
        raise ValueError(f"newcombe_paired_interval needs counts >= 0 of at least one pair, got {both, only_a, only_b, neither}")
    sa, sb = both + only_a, both + only_b
    pa, pb = sa / n, sb / n
    la, ua = wilson_interval(sa, n, z)
    lb, ub = wilson_interval(sb, n, z)
    margins = sa * (n - sa) * sb * (n - sb)
    cross = both * neither - only_a * only_b
    if margins == 0 or 0 <= cross <= n / 2:
        phi = 0.0
    else:
        phi = (cross - n / 2 if cross > n / 2 else cross) / math.sqrt(margins)
    d = pb - pa
    low = d - math.sqrt(max(0.0, (pb - lb) ** 2 - 2 * phi * (pb - lb) * (ua - pa) + (ua - pa) ** 2))
    high = d + math.sqrt(max(0.0, (ub - pb) ** 2 - 2 * phi * (ub - pb) * (pa - la) + (pa - la) ** 2))
    return max(-1.0, low), min(1.0, high)


def auroc_se(auroc: float, n_in: int, n_out: int) -> float:
    """The standard error of an AUROC over n_in positives and n_out negatives (Hanley & McNeil 1982, eq. 2, with
    their Q1 = A / (2 - A) and Q2 = 2 A^2 / (1 + A))."""
    a = auroc
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    return math.sqrt(max(0.0, a * (1 - a) + (n_in - 1) * (q1 - a * a) + (n_out - 1) * (q2 - a * a)) / (n_in * n_out))


def welch_interval(a: list[float], b: list[float]) -> tuple[float, float]:
    """The 95% Welch t-interval of mean(b) - mean(a) (unequal variances), at least two values each."""
    res = stats.ttest_ind(b, a, equal_var=False)
    ci = res.confidence_interval(0.95)
    return float(ci.low), float(ci.high)


def proportion_interval(values: list[float], n: int | None) -> tuple[float, float, float]:
    """(mean, low, high) of a proportion measured once per seed: with one value the 95% Wilson interval of its
    round(value * n) successes in n (NaN bounds without n), with several the 95% t-interval over seeds."""
    mean, half = mean_ci95(values)
    if len(values) > 1:
        return mean, mean - half, mean + half
    if not n:
        return mean, math.nan, math.nan
    low, high = wilson_interval(min(n, max(0, round(mean * n))), n)
    return mean, low, high

