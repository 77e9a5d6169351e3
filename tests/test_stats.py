"""Summaries and the paired ratio behind relative latency budgets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ftcallback._stats import paired_ratio, percentile, summarize


def test_summarize_matches_numpy_and_skips_nonfinite():
    values = [3.0, 1.0, 2.0, 10.0, float("nan")]
    s = summarize(values)
    finite = np.array([3.0, 1.0, 2.0, 10.0])
    assert s.count == 4 and s.nonfinite == 1
    assert s.mean == pytest.approx(finite.mean()) and s.std == pytest.approx(finite.std(ddof=1))
    for q, name in ((50, "p50"), (90, "p90"), (95, "p95"), (99, "p99")):
        assert getattr(s, name) == pytest.approx(np.percentile(finite, q))
    assert math.isnan(summarize([]).mean) and math.isnan(percentile([float("nan")], 50))


def test_unchanged_samples_give_ratio_one_with_interval_around_it():
    rng = np.random.default_rng(1)
    base = {p: list(rng.normal(100 + 10 * p, 2, 3)) for p in range(8)}
    est = paired_ratio(base, base)
    assert est.ratio == pytest.approx(1.0) and est.low <= 1.0 <= est.high and not est.significant_increase


def test_uniform_slowdown_is_estimated_and_significant():
    rng = np.random.default_rng(2)
    base = {p: list(rng.normal(100 + 10 * p, 1, 3)) for p in range(8)}
    new = {p: [v * 1.3 for v in vals] for p, vals in base.items()}
    est = paired_ratio(base, new)
    assert est.ratio == pytest.approx(1.3, rel=1e-6) and est.significant_increase and est.pairs == 8


def test_a_slowdown_of_some_prompts_is_not_hidden():
    """Three prompts out of eight taking 2.5x as long is a real change; a median across prompts reads 1.0."""
    base = {p: [100.0, 101.0, 99.0] for p in range(8)}
    new = {p: [v * (2.5 if p < 3 else 1.0) for v in vals] for p, vals in base.items()}
    est = paired_ratio(base, new)
    assert est.ratio == pytest.approx(2.5 ** (3 / 8), rel=1e-6)
    assert est.ratio > 1.3


def test_bootstrap_is_seeded_and_leaves_global_rng_alone():
    base = {p: [100.0 + p, 102.0 + p, 98.0 + p] for p in range(5)}
    new = {p: [v * 1.1 for v in vals] for p, vals in base.items()}
    state = np.random.get_state()[1].copy()
    assert paired_ratio(base, new, seed=3) == paired_ratio(base, new, seed=3)
    assert (np.random.get_state()[1] == state).all()


def test_no_usable_pairs_is_nan_not_an_error():
    est = paired_ratio({0: [float("nan")]}, {0: [1.0]})
    assert est.pairs == 0 and math.isnan(est.ratio) and not est.significant_increase
