"""Summaries of repeated measurements: medians with their spread, and a least-squares slope."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


def summary(samples: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and quartiles of ``samples``: the spread is shown, never hidden."""
    ordered = sorted(samples)
    if not ordered:
        return {"n": 0, "median": None, "min": None, "max": None, "q1": None, "q3": None}
    q1, q3 = (ordered[0], ordered[-1]) if len(ordered) < 4 else _quartiles(ordered)
    return {
        "n": len(ordered),
        "median": statistics.median(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "q1": q1,
        "q3": q3,
    }


def median_interval(samples: Sequence[float]) -> tuple[float, float] | None:
    """A distribution-free 95% confidence interval of the median: the order statistics that
    the number of samples below the median (binomial, n and 1/2) stays between 95% of the time
    (normal approximation). None for fewer than 6 samples. On a noisy machine it says how far
    the median of a few dozen rounds can be from the one a longer run would give."""
    ordered = sorted(samples)
    n = len(ordered)
    if n < 6:
        return None
    half_width = 1.96 * n**0.5 / 2
    low = max(0, math.floor(n / 2 - half_width))
    high = min(n - 1, math.ceil(n / 2 + half_width))
    return ordered[low], ordered[high]


def _quartiles(ordered: Sequence[float]) -> tuple[float, float]:
    quartiles = statistics.quantiles(ordered, n=4, method="inclusive")
    return quartiles[0], quartiles[2]


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Round-by-round ratios: each pair was measured back to back, so drift cancels out."""
    return [a / b for a, b in zip(numerators, denominators) if b]


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line through the points."""
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if not spread:
        return 0.0, mean_y
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread
    return slope, mean_y - slope * mean_x
