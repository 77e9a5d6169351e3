"""Budget validation and serialisation, limits, checks, verdicts and the decision rules of evaluate()."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from ftcallback._budget import Budget, BudgetCheck, Verdict, evaluate
from ftcallback._errors import ConfigError
from ftcallback._measurement import Measurement, RequestSample


def make(
    latencies_s: Sequence[Sequence[float]],
    *,
    output_tokens: int | Sequence[int] = 37,
    input_tokens: int = 20,
    finished: bool = True,
    settings: Mapping[str, Any] | None = None,
) -> Measurement:
    """A synthetic measurement: ``latencies_s[prompt][repeat]``, the same token counts on every repeat."""
    tokens = [output_tokens] * len(latencies_s) if isinstance(output_tokens, int) else list(output_tokens)
    samples = tuple(
        RequestSample(p, r, lat, min(0.05, lat), input_tokens, tokens[p], finished)
        for p, repeats in enumerate(latencies_s)
        for r, lat in enumerate(repeats)
    )
    return Measurement(samples=samples, settings=dict(settings or {}))


def constant(latency_s: float, *, prompts: int = 4, repeats: int = 3, **kwargs: Any) -> Measurement:
    return make([[latency_s] * repeats for _ in range(prompts)], **kwargs)


def noisy_pair(seed: int, slowdown: float, *, prompts: int = 8, repeats: int = 3, noise: float = 0.05):
    """A baseline and a measurement ``slowdown`` times slower, each with multiplicative timing noise.

    Prompts have different lengths (0.2-1.0 s); every sample is multiplied by a log-normal
    factor with 5% standard deviation, drawn independently on both sides.
    """
    rng = np.random.default_rng(seed)
    true = rng.uniform(0.2, 1.0, prompts)

    def sample(scale: float) -> list[list[float]]:
        return [list(t * scale * np.exp(rng.normal(0.0, noise, repeats))) for t in true]

    return make(sample(1.0)), make(sample(slowdown))


# --------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"max_latency_increase": -0.1},
            r"^`max_latency_increase` must be > 0, got -0\.1 \(0\.25 means \+25% over the baseline\)$",
        ),
        ({"max_token_increase": 0}, r"`max_token_increase` must be > 0, got 0\.0 \(0\.25 means"),
        ({"latency_ms": 0}, r"`latency_ms` must be > 0, got 0\.0 \(an SLA .* milliseconds"),
        ({"latency_ms": -400}, r"`latency_ms` must be > 0, got -400\.0"),
        ({"latency_ms": math.inf}, r"`latency_ms` must be a finite number, got inf"),
        ({"latency_ms": math.nan}, r"`latency_ms` must be a finite number, got nan"),
        ({"latency_ms": True}, r"`latency_ms` must be a number, got True \(bool\)"),
        ({"latency_ms": "400"}, r"`latency_ms` must be a number, got '400' \(str\)"),
        ({"output_tokens": -1}, r"`output_tokens` must be > 0, got -1\.0 \(a cap on mean output tokens"),
        ({"max_latency_increase": False}, r"`max_latency_increase` must be a number, got False \(bool\)"),
        ({"input_price_per_1k": -0.5}, r"`input_price_per_1k` must be >= 0, got -0\.5 \(the price of 1000"),
        ({"output_price_per_1k": math.nan}, r"`output_price_per_1k` must be a finite number"),
        ({"requests_per_month": 0}, r"`requests_per_month` must be > 0, got 0\.0 \(expected requests"),
        ({"cost_per_request": -1, "input_price_per_1k": 1}, r"`cost_per_request` must be > 0, got -1\.0"),
        ({"max_cost_increase": -0.2, "input_price_per_1k": 1}, r"`max_cost_increase` must be > 0"),
        (
            {"monthly_cost": 0, "input_price_per_1k": 1, "requests_per_month": 10},
            r"`monthly_cost` must be > 0",
        ),
        (
            {"latency_stat": "p42"},
            r"`latency_stat` must be one of 'mean', 'p50', 'p90', 'p95', 'p99', got 'p42'",
        ),
        ({"latency_stat": 95}, r"`latency_stat` must be one of .* got 95"),
        ({"confidence": 0}, r"`confidence` must be in \(0, 1\), got 0\.0 \(0\.95 means a 95% interval\)"),
        ({"confidence": 1.0}, r"`confidence` must be in \(0, 1\), got 1\.0"),
        ({"confidence": 95}, r"`confidence` must be in \(0, 1\), got 95\.0"),
        ({"confidence": True}, r"`confidence` must be a number, got True \(bool\)"),
        (
            {"cost_per_request": 0.01, "input_price_per_1k": 0, "output_price_per_1k": 0},
            r"needs a non-zero price: at least one of `input_price_per_1k`, `output_price_per_1k` must be > 0"
            r", got 0\.0 and 0\.0",
        ),
        (
            {"cost_per_request": 0.01, "output_price_per_1k": 0.002, "gpu_price_per_hour": 2.0},
            r"`gpu_price_per_hour` \(self-hosted pricing\) and .* cannot both be set",
        ),
        ({"gpu_price_per_hour": 0}, r"`gpu_price_per_hour` must be > 0, got 0\.0"),
        ({"gpu_concurrency": 0}, r"`gpu_concurrency` must be > 0, got 0\.0 \(requests one accelerator"),
        ({"min_quality": -0.5}, r"`min_quality` must be > 0, got -0\.5"),
        ({"max_quality_drop": -0.01}, r"`max_quality_drop` must be >= 0, got -0\.01 \(score points"),
        ({"max_quality_drop": math.inf}, r"`max_quality_drop` must be a finite number"),
    ],
)
def test_invalid_budget_raises_config_error_naming_field_rule_and_value(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Budget(**kwargs)


def test_config_error_is_a_value_error_and_budget_is_frozen_and_keyword_only():
    with pytest.raises(ValueError):
        Budget(latency_ms=-1)
    with pytest.raises(TypeError):
        Budget(400.0)  # type: ignore[call-arg]
    budget = Budget(latency_ms=400)
    with pytest.raises(dataclasses.FrozenInstanceError):
        budget.latency_ms = 500  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "empty"),
    [
        ({}, True),
        ({"input_price_per_1k": 0.001, "requests_per_month": 1000}, True),  # priced, monitored, no cap
        ({"latency_stat": "p50", "confidence": 0.9}, True),
        ({"latency_ms": 400}, False),
        ({"max_latency_increase": 0.2}, False),
        ({"output_tokens": 64}, False),
        ({"max_token_increase": 0.2}, False),
        ({"cost_per_request": 0.01, "output_price_per_1k": 0.002}, False),
        ({"max_cost_increase": 0.1, "input_price_per_1k": 0.0, "output_price_per_1k": 0.002}, False),
        ({"monthly_cost": 10.0, "output_price_per_1k": 0.002, "requests_per_month": 1000}, False),
    ],
)
def test_valid_budgets_and_is_empty(kwargs, empty):
    assert Budget(**kwargs).is_empty is empty


def test_integers_are_stored_as_floats():
    budget = Budget(latency_ms=400, requests_per_month=1_000_000, input_price_per_1k=0, output_price_per_1k=1)
    assert budget.latency_ms == 400.0 and isinstance(budget.latency_ms, float)
    assert isinstance(budget.requests_per_month, float)
    assert isinstance(budget.input_price_per_1k, float)


# --------------------------------------------------------------------- serialisation
def test_to_dict_holds_only_set_fields_and_latency_stat():
    assert Budget().to_dict() == {"latency_stat": "p95"}
    assert Budget(latency_ms=400, max_token_increase=0.2).to_dict() == {
        "latency_ms": 400.0,
        "latency_stat": "p95",
        "max_token_increase": 0.2,
    }
    assert Budget(confidence=0.9).to_dict() == {"latency_stat": "p95", "confidence": 0.9}


@pytest.mark.parametrize(
    "budget",
    [
        Budget(),
        Budget(latency_ms=400, latency_stat="p99", max_latency_increase=0.25, confidence=0.9),
        Budget(output_tokens=64, max_token_increase=0.2),
        Budget(
            input_price_per_1k=0.0005,
            output_price_per_1k=0.0015,
            requests_per_month=1_000_000,
            monthly_cost=500,
            cost_per_request=0.001,
            max_cost_increase=0.3,
        ),
    ],
)
def test_budget_round_trips_through_json(budget):
    assert Budget.from_dict(json.loads(json.dumps(budget.to_dict()))) == budget


def test_from_dict_lists_unknown_keys_and_treats_none_as_unset():
    with pytest.raises(
        ConfigError, match=r"unknown budget field\(s\) bogus, latncy_ms; known fields: latency_ms"
    ):
        Budget.from_dict({"latncy_ms": 400, "bogus": 1})
    assert Budget.from_dict({"latency_ms": None, "output_tokens": 64}) == Budget(output_tokens=64)
    with pytest.raises(ConfigError, match="must be a mapping"):
        Budget.from_dict([("latency_ms", 400)])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"`latency_ms` must be > 0"):
        Budget.from_dict({"latency_ms": -1})


def test_repr_shows_only_what_is_set():
    assert repr(Budget(latency_ms=400, max_token_increase=0.2)) == (
        "Budget(latency_ms=400.0, latency_stat='p95', max_token_increase=0.2)"
    )


# --------------------------------------------------------------------- cost and limits
def test_cost_per_request_and_monthly_cost():
    m = constant(0.3, input_tokens=200, output_tokens=50)
    assert Budget().cost_per_request_of(m) is None
    budget = Budget(input_price_per_1k=0.5, output_price_per_1k=1.5, requests_per_month=1000)
    assert budget.cost_per_request_of(m) == pytest.approx(200 * 0.5 / 1000 + 50 * 1.5 / 1000)
    assert budget.monthly_cost_of(m) == pytest.approx(1000 * (0.1 + 0.075))
    assert Budget(output_price_per_1k=2.0).cost_per_request_of(m) == pytest.approx(0.1)
    assert Budget(output_price_per_1k=2.0).monthly_cost_of(m) is None


def test_limits_absolute_relative_and_the_tighter_of_both():
    base = constant(0.3, output_tokens=37, input_tokens=100)  # p95 = 300 ms
    assert Budget().limits(base) == {}
    assert Budget(latency_ms=400, output_tokens=64).limits() == {
        "latency_ms_p95": 400.0,
        "output_tokens_mean": 64.0,
    }
    # Relative budgets need a baseline: left out without one.
    assert Budget(max_latency_increase=0.25, max_token_increase=0.2).limits(None) == {}
    limits = Budget(max_latency_increase=0.25, max_token_increase=0.2).limits(base)
    # The relative latency budget limits the ratio that decides it, not a p95 it never compares.
    assert limits == {"latency_judged_ratio": 1.25, "output_tokens_mean": pytest.approx(44.4)}
    assert Budget(latency_ms=400, max_latency_increase=0.25).limits(base) == {
        "latency_ms_p95": 400.0,
        "latency_judged_ratio": 1.25,
    }
    # Relative tighter than absolute, then absolute tighter than relative.
    assert Budget(output_tokens=64, max_token_increase=0.2).limits(base) == {
        "output_tokens_mean": pytest.approx(44.4)
    }
    assert Budget(output_tokens=40, max_token_increase=0.2).limits(base) == {"output_tokens_mean": 40.0}
    assert Budget(latency_ms=400, latency_stat="p50").limits(base) == {"latency_ms_p50": 400.0}
    priced = Budget(
        input_price_per_1k=1.0,
        output_price_per_1k=2.0,
        requests_per_month=1000,
        monthly_cost=500,
        cost_per_request=1.0,
        max_cost_increase=0.5,
    )
    base_cost = 100 * 1.0 / 1000 + 37 * 2.0 / 1000  # 0.174
    assert priced.limits(base) == {"cost_per_request": pytest.approx(base_cost * 1.5), "monthly_cost": 500.0}
    assert priced.limits(None) == {"cost_per_request": 1.0, "monthly_cost": 500.0}


def test_limit_names_are_summary_keys_or_cost_metrics():
    base = constant(0.3)
    for stat in ("mean", "p50", "p90", "p95", "p99"):
        budget = Budget(
            latency_ms=400,
            latency_stat=stat,
            max_token_increase=0.2,
            output_price_per_1k=1.0,
            cost_per_request=1.0,
            requests_per_month=10,
            monthly_cost=10,
        )
        budget = dataclasses.replace(budget, ttft_ms=100, tpot_ms=10, max_truncated_fraction=0.1)
        assert set(budget.limits(base)) <= set(base.summary()) | {"cost_per_request", "monthly_cost"}


def test_limits_skip_an_unusable_baseline():
    empty = Measurement(samples=())
    assert Budget(max_latency_increase=0.2, max_token_increase=0.2).limits(empty) == {}
    zero_tokens = constant(0.3, output_tokens=0)
    assert Budget(output_tokens=64, max_token_increase=0.2).limits(zero_tokens) == {
        "output_tokens_mean": 64.0
    }


# --------------------------------------------------------------------- BudgetCheck
def test_describe_breach_text_matches_the_documented_shape():
    base, new = constant(0.3, output_tokens=37), constant(0.3, output_tokens=57)
    check = evaluate(Budget(max_token_increase=0.2), new, base).checks[0]
    assert check.describe() == "output_tokens_mean 57.0 exceeds budget 44.4 (baseline 37.0, +54%)"
    assert (check.budget, check.metric, check.passed, check.breached) == (
        "max_token_increase",
        "output_tokens_mean",
        False,
        True,
    )
    assert check.ratio == pytest.approx(57 / 37)
    assert check.margin == pytest.approx((44.4 - 57) / 44.4)

    sla = evaluate(Budget(latency_ms=400), constant(0.5123)).checks[0]
    assert sla.describe() == "latency_ms_p95 512.3 exceeds budget 400.0"
    assert sla.baseline is None and sla.ratio is None


def test_describe_within_budget_and_not_evaluable():
    base = constant(0.3, output_tokens=37)
    within = evaluate(Budget(max_token_increase=0.2), constant(0.3, output_tokens=40), base).checks[0]
    assert within.describe() == "output_tokens_mean 40.0 within budget 44.4 (baseline 37.0, +8%)"
    assert within.margin > 0 and not within.breached
    missing = evaluate(Budget(max_token_increase=0.2), base).checks[0]
    assert missing.describe() == "output_tokens_mean not evaluable: no baseline"
    assert missing.passed is None and not missing.breached and math.isnan(missing.margin)


def test_describe_formats_cost_with_four_significant_digits():
    check = BudgetCheck("cost_per_request", "cost_per_request", 0.00010251, 0.0001, 0.0000725, False)
    assert (
        check.describe() == "cost_per_request 0.0001025 exceeds budget 0.0001000 (baseline 0.00007250, +41%)"
    )
    monthly = BudgetCheck("monthly_cost", "monthly_cost", 102513.0, 50000.0, None, False)
    assert monthly.describe() == "monthly_cost 102500 exceeds budget 50000"


def test_check_round_trips_with_nan_as_null():
    check = BudgetCheck(
        "max_latency_increase",
        "latency_ms_p95",
        math.nan,
        456.0,
        380.0,
        None,
        "no prompt has finite latencies",
        ratio=None,
        interval=(0.98, 1.3),
    )
    data = check.to_dict()
    assert data["value"] is None and data["interval"] == [0.98, 1.3]
    back = BudgetCheck.from_dict(json.loads(json.dumps(data, allow_nan=False)))
    assert math.isnan(back.value)
    assert dataclasses.replace(back, value=0.0) == dataclasses.replace(check, value=0.0)
    full = BudgetCheck("output_tokens", "output_tokens_mean", 57.0, 44.4, 37.0, False, "d", 1.54, None)
    assert BudgetCheck.from_dict(json.loads(json.dumps(full.to_dict()))) == full
    with pytest.raises(ConfigError, match="not a budget check"):
        BudgetCheck.from_dict({"metric": "x"})


# --------------------------------------------------------------------- Verdict
def test_verdict_properties_and_round_trip():
    ok = BudgetCheck("latency_ms", "latency_ms_p95", 300.0, 400.0, None, True)
    unknown = BudgetCheck(
        "max_latency_increase", "latency_ms_p95", 300.0, math.nan, None, None, "no baseline"
    )
    bad = BudgetCheck("output_tokens", "output_tokens_mean", 70.0, 64.0, None, False)
    assert Verdict(checks=()).passed and Verdict(checks=()).first_breach is None
    assert Verdict(checks=(ok, unknown)).passed  # not evaluable is not a breach
    verdict = Verdict(checks=(ok, unknown, bad))
    assert not verdict.passed
    assert verdict.breaches == (bad,) and verdict.first_breach is bad and verdict.not_evaluable == (unknown,)
    data = json.loads(json.dumps(verdict.to_dict(), allow_nan=False))
    assert data["passed"] is False and len(data["checks"]) == 3
    again = Verdict.from_dict(data)
    assert again.breaches == (bad,) and again.checks[0] == ok
    assert Verdict.from_dict(data["checks"]).breaches == (bad,)  # report.json stores the bare list
    assert repr(verdict) == (
        "Verdict(passed=False, checks=3, breaches=['output_tokens'], not_evaluable=['max_latency_increase'])"
    )
    with pytest.raises(ConfigError, match="not a verdict"):
        Verdict.from_dict({"passed": True})


# --------------------------------------------------------------------- evaluate
def test_empty_budget_gives_an_empty_passing_verdict():
    verdict = evaluate(Budget(), constant(0.3), constant(0.1))
    assert verdict.checks == () and verdict.passed


def test_one_check_per_budget_in_a_fixed_order():
    budget = Budget(
        monthly_cost=1000,
        max_cost_increase=0.5,
        cost_per_request=1.0,
        max_token_increase=0.2,
        output_tokens=64,
        max_latency_increase=0.2,
        latency_ms=400,
        output_price_per_1k=0.002,
        requests_per_month=1e6,
    )
    verdict = evaluate(budget, constant(0.3), constant(0.3))
    assert [c.budget for c in verdict.checks] == [
        "latency_ms",
        "max_latency_increase",
        "output_tokens",
        "max_token_increase",
        "cost_per_request",
        "max_cost_increase",
        "monthly_cost",
    ]
    assert [c.metric for c in verdict.checks] == [
        "latency_ms_p95",
        "latency_judged_ratio",
        "output_tokens_mean",
        "output_tokens_mean",
        "cost_per_request",
        "cost_per_request",
        "monthly_cost",
    ]
    assert verdict.passed and all(c.passed is True for c in verdict.checks)


@pytest.mark.parametrize(
    ("stat", "limit_ms", "passed"),
    [
        ("p50", 250.0, True),  # per-prompt latencies 0.1..0.4 s: p50 = 250 ms, exactly at the limit
        ("p50", 249.0, False),
        ("p95", 400.0, True),  # the top prompt's three repeats hold the p95
        ("p95", 399.0, False),
        ("mean", 260.0, True),
    ],
)
def test_absolute_latency_uses_the_budget_statistic(stat, limit_ms, passed):
    m = make([[0.1] * 3, [0.2] * 3, [0.3] * 3, [0.4] * 3])
    check = evaluate(Budget(latency_ms=limit_ms, latency_stat=stat), m).checks[0]
    assert check.metric == f"latency_ms_{stat}"
    assert check.value == pytest.approx(m.latency_ms.get(stat))
    assert check.passed is passed


@pytest.mark.parametrize(
    ("tokens", "passed"),
    [(37, True), (44, True), (45, False), (57, False), (30, True)],
)
def test_token_increase_compares_means(tokens, passed):
    check = evaluate(
        Budget(max_token_increase=0.2), constant(0.3, output_tokens=tokens), constant(0.3)
    ).checks[0]
    assert check.limit == pytest.approx(44.4) and check.baseline == 37.0 and check.passed is passed


def test_relative_budgets_are_not_evaluable_without_a_usable_baseline():
    budget = Budget(
        max_latency_increase=0.2, max_token_increase=0.2, output_price_per_1k=1.0, max_cost_increase=0.2
    )
    no_base = evaluate(budget, constant(0.3))
    assert [c.passed for c in no_base.checks] == [None, None, None]
    assert {c.detail for c in no_base.checks} == {"no baseline"}
    assert no_base.passed

    zero = evaluate(budget, constant(0.3), constant(0.3, output_tokens=0))
    token_check = zero.checks[1]
    assert token_check.passed is None and token_check.detail == "baseline is zero"
    assert zero.checks[2].passed is None  # cost of zero output tokens at an output-only price is zero


def test_non_finite_values_are_never_a_breach():
    empty = Measurement(samples=())
    budget = Budget(latency_ms=400, output_tokens=10, max_token_increase=0.2, max_latency_increase=0.2)
    verdict = evaluate(budget, empty, constant(5.0, output_tokens=100))
    assert [c.passed for c in verdict.checks] == [None, None, None, None]
    assert verdict.passed
    assert all("not evaluable" in c.describe() for c in verdict.checks)
    json.dumps(verdict.to_dict(), allow_nan=False)

    nan_latency = make([[math.nan] * 3 for _ in range(4)])
    latency = evaluate(Budget(max_latency_increase=0.2), nan_latency, constant(0.3)).checks[0]
    assert latency.passed is None and "no prompt has finite latencies" in latency.detail

    # A non-finite baseline makes a relative check not evaluable, while absolute checks still decide.
    both = evaluate(Budget(latency_ms=100, max_latency_increase=0.2), constant(0.3), empty)
    assert [c.passed for c in both.checks] == [False, None]
    assert both.checks[0].describe() == "latency_ms_p95 300.0 exceeds budget 100.0"


def test_relative_latency_reports_the_ratio_that_decided():
    base = make([[0.2, 0.21, 0.19], [0.4, 0.41, 0.39], [0.6, 0.61, 0.59], [0.8, 0.81, 0.79]])
    slow = make(
        [
            [v * 1.5 for v in prompt]
            for prompt in ([0.2, 0.21, 0.19], [0.4, 0.41, 0.39], [0.6, 0.61, 0.59], [0.8, 0.81, 0.79])
        ]
    )
    check = evaluate(Budget(max_latency_increase=0.2), slow, base, seed=7).checks[0]
    # The value is a ratio under its own name, and the check carries the estimate that decided it.
    assert check.breached and check.metric == "latency_judged_ratio" and check.baseline is None
    assert check.estimate is not None and check.value == check.ratio == check.estimate.ratio
    assert check.ratio == pytest.approx(1.5) and check.limit == pytest.approx(1.2)
    assert check.interval == (check.estimate.low, check.estimate.high) and check.interval[0] > 1.0
    assert check.detail.startswith("judged length x per-token speed x1.500, 95% interval")
    assert f"observed p95 {slow.latency_ms.p95:.1f} ms vs baseline {base.latency_ms.p95:.1f} ms" in check.detail
    low, high = check.interval
    assert check.describe().startswith(f"latency_judged_ratio x1.500 [{low:.3f}, {high:.3f}]")
    assert "exceeds budget x1.200 (latency +50%: +0% from longer answers (exact), +50% from per-token" in (
        check.describe()
    )
    # The seed reaches the decision: the same seed gives the same interval, another seed another one.
    again = evaluate(Budget(max_latency_increase=0.2), slow, base, seed=7).checks[0]
    other = evaluate(Budget(max_latency_increase=0.2), slow, base, seed=8).checks[0]
    assert again.estimate == check.estimate and other.interval != check.interval
    # The JSON round trip keeps the estimate and the decomposition.
    assert BudgetCheck.from_dict(json.loads(json.dumps(check.to_dict()))) == check


def test_relative_latency_within_noise_passes_and_says_why():
    # Per-prompt ratios 0.8, 0.9, 1.3, 1.7, 1.8: their geometric mean (1.23) is over +20% but the
    # prompts disagree, so the interval reaches below 1 and the slowdown is not called real.
    base_rows = [[0.3, 0.31, 0.29] for _ in range(5)]
    factors = [0.8, 0.9, 1.3, 1.7, 1.8]
    new = make([[v * f for v in row] for row, f in zip(base_rows, factors, strict=True)])
    check = evaluate(Budget(max_latency_increase=0.2), new, make(base_rows)).checks[0]
    assert check.ratio == pytest.approx(math.prod(factors) ** (1 / len(factors)))
    assert check.interval is not None and check.interval[0] <= 1.0
    assert check.passed is True and check.value > check.limit
    assert "within budget" in check.describe() and "not significant" in check.describe()


def test_confidence_sets_the_interval_width():
    base, new = noisy_pair(3, 1.3)
    wide = evaluate(Budget(max_latency_increase=0.2, confidence=0.99), new, base).checks[0]
    narrow = evaluate(Budget(max_latency_increase=0.2, confidence=0.5), new, base).checks[0]
    assert wide.interval is not None and narrow.interval is not None
    assert wide.interval[0] < narrow.interval[0] < narrow.interval[1] < wide.interval[1]
    assert "99% interval" in wide.detail and "50% interval" in narrow.detail


# Decision table of the relative latency budget at +20%, 8 prompts x 3 repeats, 5% multiplicative noise.
SEEDS = range(25)


@pytest.mark.parametrize(
    ("slowdown", "expect_breach"),
    [(1.0, False), (1.10, False), (1.25, True), (1.5, True)],
)
def test_latency_increase_decision_table_under_noise(slowdown, expect_breach):
    decisions = []
    for seed in SEEDS:
        base, new = noisy_pair(seed, slowdown)
        decisions.append(evaluate(Budget(max_latency_increase=0.2), new, base).checks[0].breached)
    assert decisions == [expect_breach] * len(SEEDS)


def test_cost_checks():
    base = constant(0.3, input_tokens=100, output_tokens=40)
    new = constant(0.3, input_tokens=100, output_tokens=80)
    budget = Budget(
        input_price_per_1k=1.0,
        output_price_per_1k=2.0,
        requests_per_month=1000,
        cost_per_request=0.25,
        max_cost_increase=0.2,
        monthly_cost=300,
    )
    per_request, increase, monthly = evaluate(budget, new, base).checks
    new_cost, base_cost = 0.1 + 0.16, 0.1 + 0.08
    assert (per_request.value, per_request.limit, per_request.passed) == (
        pytest.approx(new_cost),
        0.25,
        False,
    )
    assert per_request.baseline == pytest.approx(base_cost)
    assert increase.limit == pytest.approx(base_cost * 1.2) and increase.passed is False
    assert increase.ratio == pytest.approx(new_cost / base_cost)
    assert (monthly.value, monthly.limit, monthly.passed) == (pytest.approx(260.0), 300.0, True)
    assert monthly.describe() == "monthly_cost 260.0 within budget 300.0 (baseline 180.0, +44%)"
    assert evaluate(budget, new).checks[1].passed is None


# ----------------------------------------------------------------------------- budget files
@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("budget.toml", 'max_token_increase = 0.2\nlatency_ms = 400\nlatency_stat = "p50"\n'),
        ("budget.toml", '[budget]\nmax_token_increase = 0.2\nlatency_ms = 400\nlatency_stat = "p50"\n'),
        ("budget.json", '{"max_token_increase": 0.2, "latency_ms": 400, "latency_stat": "p50"}'),
    ],
)
def test_from_file_reads_toml_and_json_with_the_field_names(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    expected = Budget(max_token_increase=0.2, latency_ms=400, latency_stat="p50")
    assert Budget.from_file(path) == expected
    assert Budget.from_file(str(path)) == expected


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        (
            "b.toml",
            "max_tokens_increase = 0.2\n",
            r"budget file '.*b\.toml': unknown budget field\(s\) max_tokens_increase",
        ),
        ("b.toml", "max_token_increase = -1\n", r"budget file '.*b\.toml': `max_token_increase` must be > 0, got -1"),
        ("b.json", '{"latency_ms": "fast"}', r"budget file '.*b\.json': `latency_ms` must be a number, got 'fast'"),
        ("b.toml", "max_token_increase = \n", r"budget file '.*b\.toml' is not valid TOML"),
        ("b.json", "[0.2]", r"budget file '.*b\.json': a budget must be a mapping"),
        ("b.yaml", "max_token_increase: 0.2\n", r"budget file '.*b\.yaml' must end with \.toml or \.json"),
    ],
)
def test_from_file_errors_name_the_file_and_the_field(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=match):
        Budget.from_file(path)


def test_from_file_names_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read budget file '.*nope\.toml'"):
        Budget.from_file(tmp_path / "nope.toml")
