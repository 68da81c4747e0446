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
