"""Summaries of benchmark samples that skip non-finite values (a failed or missing sample is NaN)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def median(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def cv(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < 2:
        return math.nan
    mean = statistics.fmean(finite)
    return statistics.stdev(finite) / mean if mean else math.nan


def spread(values: Sequence[float]) -> float:
    """max / min of the finite values."""
    finite = [v for v in values if math.isfinite(v) and v > 0]
    return max(finite) / min(finite) if finite else math.nan


def ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    return [x / y for x, y in zip(a, b, strict=True) if y > 0]
