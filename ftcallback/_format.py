"""How numbers look in text: the one place for a value, a percentage change and a money amount.

Log lines (:meth:`~ftcallback._budget.BudgetCheck.describe`), the comparison table
(:mod:`ftcallback._compare`), the run report table (:mod:`ftcallback._report`) and the CLI all
format through these functions, so a figure reads the same wherever it is printed.

Example:
    >>> number(41.234, ".1f"), number(float("nan"), ".1f"), number(None, ".1f", missing="-")
    ('41.2', 'n/a', '-')
    >>> percent_change(0.25), percent_change(float("nan"))
    ('+25%', 'n/a')
    >>> significant(0.000123456, 4)
    '0.0001235'
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["confidence_level", "finite_float", "metric_value", "number", "percent_change", "significant"]

# "latency_ratio" too: the judged ratio's name in reports written before it had a name of its own.
#: Metrics that are ratios to the baseline (written ``x1.234``) and fractions of requests (``0.333``).
RATIO_METRICS = ("latency_judged_ratio", "latency_ratio", "token_cost_ratio")
FRACTION_METRICS = ("slo_attainment", "truncated_fraction", "quality")


def finite_float(value: Any) -> float | None:
    """``float(value)`` for a finite real number (bools excluded), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    result = float(value)
    return result if math.isfinite(result) else None


def number(value: Any, spec: str, *, missing: str = "n/a") -> str:
    """``format(value, spec)`` for a finite number; ``missing`` for None, NaN, infinities and non-numbers."""
    result = finite_float(value)
    return missing if result is None else format(result, spec)


def significant(value: float, digits: int) -> str:
    """``value`` with ``digits`` significant digits as a plain number (no exponent: costs are tiny)."""
    if value == 0:
        return "0"
    decimals = digits - 1 - math.floor(math.log10(abs(value)))
    if decimals > 0:
        return f"{value:.{decimals}f}"
    return f"{round(value, decimals):.0f}"


def percent_change(change: float | None) -> str:
    """A relative change as a signed whole percentage: ``0.25`` -> ``"+25%"``; ``"n/a"`` when unknown."""
    if change is None or not math.isfinite(change):
        return "n/a"
    return f"{change * 100:+.0f}%"


def metric_value(metric: str, value: float | None) -> str:
    """A metric's value for log text: money (``cost`` metrics) with 4 significant digits, ratios as ``x1.500``,
    fractions and quality scores with 3 decimals, else 1 decimal.

    Non-finite values are spelled out (``nan``, ``inf``) since a log line must say what was seen.
    """
    if value is None or not math.isfinite(value):
        return "nan" if value is None or math.isnan(value) else str(value)
    if "cost" in metric and metric not in RATIO_METRICS:
        return significant(value, 4)
    if metric in RATIO_METRICS:
        return f"x{value:.3f}"
    if metric in FRACTION_METRICS:
        return f"{value:.3f}"
    return f"{value:.1f}"


def confidence_level(confidence: float) -> str:
    """A confidence level as text: ``0.95`` -> ``"95%"``, ``0.98333`` -> ``"98.3%"``."""
    return f"{confidence * 100:.1f}".removesuffix(".0") + "%"
