"""Adaptive measurement: measure more only when the latency verdict is too close to call.

A check starts with the usual ``repeats`` passes over the probe. When the interval of the ratio that
decides ``max_latency_increase`` straddles the limit, another ``repeats`` passes are added, up to
``max_repeats``; when it lies wholly on one side, measuring stops (early stopping for clarity, both
ways). Most checks are clear at the first look, so the cost at defaults does not rise; near the
limit, more repeats narrow the interval and raise the power.

Error rate: with ``K = ceil(max_repeats / repeats)`` possible looks, every look is judged at the
Bonferroni confidence ``1 - (1 - confidence) / K`` (:func:`~ftcallback._stats.bonferroni_confidence`).
A false stop needs the interval to clear 1 at the look where measuring stopped, so whatever the
stopping rule, the probability of a false stop in one check is at most the sum over looks,
``(1 - confidence) / 2``: the same one-sided rate as a single look at ``confidence``.

:func:`~ftcallback._measure.measure` drives it::

    measure(model, tok, prompts, repeats=3, max_repeats=9,
            until=lambda m: not needs_more(budget, m, baseline, seed=seed))

The baseline is measured by a different rule, to a precision rather than to a verdict: it is the yardstick
every check shares, so its error is in every ratio and never averages out. It takes ``repeats`` passes at a
time, from ``BASELINE_MIN x repeats``, until the standard error of its latency level is at most
``BASELINE_PRECISION`` (:func:`baseline_needs_more`). A model whose calls are long and steady is there at
the minimum; short, jittery calls (a tiny model on a shared CPU) take more, up to the caller's cap. This
rule decides no verdict, so it has no error rate of its own; stopping when the spread looks small can leave
the baseline's spread slightly underestimated, which the floor of passes keeps small.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ._measurement import Measurement

__all__ = [
    "BASELINE_MIN",
    "BASELINE_MIN_PASSES",
    "BASELINE_PRECISION",
    "baseline_needs_more",
    "looks_of",
    "needs_more",
    "sequential_settings",
]

#: The baseline is measured until the standard error of its latency level is at most this (log units, 0.75%;
#: :func:`~ftcallback._decompose.level_uncertainty`) ...
BASELINE_PRECISION = 0.0075
#: ... and for at least this many times ``repeats``, and never fewer than ``BASELINE_MIN_PASSES`` passes: a
#: median of two or three timings can look precise by luck.
BASELINE_MIN = 2
BASELINE_MIN_PASSES = 6


def sequential_settings(repeats: int, max_repeats: int) -> dict[str, int]:
    """What :func:`measure` records under ``settings["sequential"]``: the step, the cap and the looks.

    Example:
        >>> sequential_settings(3, 9)
        {'step': 3, 'max_repeats': 9, 'looks': 3}
    """
    return {"step": repeats, "max_repeats": max_repeats, "looks": math.ceil(max_repeats / repeats)}


def looks_of(measurement: Measurement) -> int:
    """How many looks the measurement's sequential plan allowed (1 for a fixed-size measurement)."""
    plan = measurement.settings.get("sequential")
    if isinstance(plan, Mapping):
        looks = plan.get("looks")
        if isinstance(looks, int) and looks >= 1:
            return looks
    return 1


def needs_more(budget: Any, measurement: Measurement, baseline: Measurement | None, *, seed: int = 0) -> bool:
    """True when the relative-latency verdict is inconclusive: its interval contains the limit.

    Args:
        budget: the :class:`~ftcallback._budget.Budget`.
        measurement: the check so far.
        baseline: the reference; without one (or without ``max_latency_increase``) nothing needs more.
        seed: the bootstrap seed (the callback's seed), as :func:`~ftcallback._budget.evaluate` uses it.

    Example:
        >>> from ftcallback._budget import Budget
        >>> from ftcallback._measurement import RequestSample
        >>> m = Measurement(samples=(RequestSample(0, 0, 0.5, 0.1, 5, 9, True),))
        >>> needs_more(Budget(max_latency_increase=0.2), m, None)
        False
    """
    from ._budget import evaluate

    if baseline is None or budget.max_latency_increase is None:
        return False
    check = next(
        (c for c in evaluate(budget, measurement, baseline, seed=seed).checks if c.budget == "max_latency_increase"),
        None,
    )
    if check is None or check.passed is None or check.interval is None:
        return False
    low, high = check.interval
    return bool(low <= check.limit <= high)


def baseline_needs_more(measurement: Measurement, *, step: int, seed: int = 0) -> bool:
    """True while the baseline so far is too short or too imprecise to be every check's yardstick: fewer
    than ``BASELINE_MIN x step`` (and ``BASELINE_MIN_PASSES``) passes, or a latency level whose standard error
    (:func:`~ftcallback._decompose.level_uncertainty`) exceeds ``BASELINE_PRECISION``.

    Example:
        >>> from ftcallback._measurement import RequestSample
        >>> steady = Measurement(samples=tuple(RequestSample(p, r, 0.5, 0.1, 5, 9, True)
        ...                                    for p in range(2) for r in range(6)), settings={"repeats": 6})
        >>> baseline_needs_more(steady, step=3), baseline_needs_more(steady, step=4)
        (False, True)
    """
    from ._decompose import level_uncertainty

    if int(measurement.settings.get("repeats", 0)) < max(BASELINE_MIN * step, BASELINE_MIN_PASSES):
        return True
    return level_uncertainty(measurement, seed=seed) > BASELINE_PRECISION
