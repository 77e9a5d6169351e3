"""The ship / do-not-ship comparison: rows, verdict, trade-off sentence, remedies, table and JSON."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from ftcallback._budget import Budget
from ftcallback._compare import LENGTH_REMEDIES, SPEED_REMEDIES, Comparison, Row, compare, latency_cause
from ftcallback._errors import BaselineError, ConfigError
from ftcallback._measurement import Measurement, RequestSample

SETTINGS = {"prompts_sha256": "abc", "num_prompts": 4, "max_new_tokens": 64}


def make(
    latency_s: float | Sequence[float],
    *,
    output_tokens: int = 37,
    input_tokens: int = 20,
    finished: bool = True,
    repeats: int = 3,
    settings: Mapping[str, Any] | None = None,
) -> Measurement:
    """A synthetic measurement: one latency per prompt (the same on every repeat), fixed token counts."""
    per_prompt = [latency_s] * 4 if isinstance(latency_s, (int, float)) else list(latency_s)
    samples = tuple(
        RequestSample(p, r, lat, min(0.05, lat), input_tokens, output_tokens, finished)
        for p, lat in enumerate(per_prompt)
        for r in range(repeats)
    )
    return Measurement(samples=samples, settings=dict(SETTINGS if settings is None else settings))


BASE_LABELS = [
    "latency p50",
    "latency p95",
    "latency p99",
    "TTFT p50",
    "TPOT p50",
    "output tokens mean",
    "output tokens p95",
    "throughput",
    "EOS fraction",
]


# --------------------------------------------------------------------- rows
def test_rows_cover_the_main_figures_with_changes():
    base, new = make(0.4), make(0.6, output_tokens=74)
    comparison = compare(base, new, Budget())
    assert [r.metric for r in comparison.rows] == BASE_LABELS
    rows = {r.metric: r for r in comparison.rows}
    assert rows["latency p95"][:2] == ("latency p95", "ms")
    assert rows["latency p95"][2:] == pytest.approx((400.0, 600.0, 0.5))
    assert isinstance(rows["latency p95"], Row)
    assert rows["output tokens mean"].change == pytest.approx(1.0)
    assert rows["output tokens mean"].unit == "tokens" and rows["throughput"].unit == "tok/s"
    assert rows["throughput"].new == pytest.approx(74 / 0.6)
    assert rows["EOS fraction"].base == 1.0


def test_rows_add_cost_monthly_cost_accuracy_and_the_budget_statistic():
    base, new = make(0.4), make(0.4, output_tokens=74)
    priced = compare(base, new, Budget(output_price_per_1k=2.0))
    assert [r.metric for r in priced.rows] == [*BASE_LABELS, "cost per request", "cost per 1M out tokens"]
    monthly = compare(base, new, Budget(output_price_per_1k=2.0, requests_per_month=1000), accuracy=(80, 84))
    assert [r.metric for r in monthly.rows] == [
        *BASE_LABELS,
        "cost per request",
        "cost per 1M out tokens",
        "monthly cost",
        "accuracy",
    ]
    rows = {r.metric: r for r in monthly.rows}
    assert rows["cost per request"].base == pytest.approx(37 * 2.0 / 1000)
    assert rows["cost per 1M out tokens"].new == pytest.approx(2.0 * 1000)
    assert rows["monthly cost"].new == pytest.approx(74 * 2.0)
    assert (rows["accuracy"].base, rows["accuracy"].new, rows["accuracy"].unit) == (80.0, 84.0, "%")
    p90 = compare(base, new, Budget(latency_ms=500, latency_stat="p90"))
    assert [r.metric for r in p90.rows][:4] == ["latency p50", "latency p90", "latency p95", "latency p99"]


# --------------------------------------------------------------------- verdict and remedies
def test_within_budget_ships_without_remedies():
    comparison = compare(make(0.4), make(0.41), Budget(latency_ms=500, max_token_increase=0.2))
    assert comparison.ship and comparison.verdict.passed
    assert comparison.violations == [] and comparison.remedies == [] and comparison.incompatible == []


def test_token_breach_does_not_ship_and_suggests_length_control():
    comparison = compare(make(0.4), make(0.4, output_tokens=57), Budget(max_token_increase=0.2))
    assert not comparison.ship
    assert comparison.violations == ["output_tokens_mean 57.0 exceeds budget 44.4 (baseline 37.0, +54%)"]
    assert comparison.remedies == list(LENGTH_REMEDIES)
    text = " ".join(comparison.remedies)
    for expected in ("EOS supervision", "shorter targets", "fewer epochs", "earlier checkpoint"):
        assert expected in text
    # Every answer ends with EOS: a lower max_new_tokens would cut real answers, so it is never suggested.
    assert "max_new_tokens" not in text
    assert "Quantize" not in text and "merge_and_unload" not in text
    assert comparison.causes == ["mean output tokens: answers are longer (output tokens +54%, 37.0 -> 57.0)"]


def test_latency_breach_from_slower_tokens_suggests_serving_changes_only():
    comparison = compare(make(0.4), make(1.6), Budget(latency_ms=400))
    assert not comparison.ship
    assert comparison.violations == ["latency_ms_p95 1600.0 exceeds budget 400.0 (baseline 400.0, +300%)"]
    assert comparison.remedies == list(SPEED_REMEDIES)
    text = " ".join(comparison.remedies)
    for expected in ("int8", "4-bit", "Prune layers", "distil", "merge_and_unload", "bfloat16"):
        assert expected in text
    assert "EOS" not in text and "max_new_tokens" not in text  # the length did not change
    assert comparison.cause is not None and comparison.cause.kind == "speed"
    assert comparison.causes == [
        "latency p95: answers are as long as before (output tokens +0%, 37.0 -> 37.0) but each token is "
        "slower (time per output token +300%): a speed problem, not a length problem"
    ]


def test_smaller_dtype_remedy_names_a_float32_measurement():
    new = dataclasses.replace(make(1.6), model={"dtype": "float32"})
    comparison = compare(make(0.4), new, Budget(latency_ms=400))
    assert comparison.remedies[-1].endswith("float32): it was measured in float32.")


def test_latency_breach_from_longer_responses_suggests_length_control_only():
    # Twice the tokens, each as fast as before (same TTFT, same time per output token).
    same_speed = 0.05 + 73 * (0.4 - 0.05) / 36
    comparison = compare(make(0.4), make(same_speed, output_tokens=74), Budget(max_latency_increase=0.25))
    assert not comparison.ship
    assert comparison.cause is not None and comparison.cause.kind == "length"
    assert comparison.remedies == list(LENGTH_REMEDIES)
    assert "answers are longer (output tokens +100%, 37.0 -> 74.0)" in comparison.causes[0]
    assert "The problem is longer answers." in comparison.answer


def test_latency_breach_from_both_lists_length_then_speed_remedies():
    comparison = compare(make(0.4), make(1.6, output_tokens=74), Budget(latency_ms=400))
    assert comparison.cause is not None and comparison.cause.kind == "both"
    assert comparison.remedies == [*LENGTH_REMEDIES, *SPEED_REMEDIES]
    assert "length explains about" in comparison.causes[0]


@pytest.mark.parametrize(
    ("base_latency", "new_latency", "new_tokens", "kind"),
    [(0.2, 0.8, 37, "speed"), (0.2, 0.4, 74, "length"), (0.2, 1.6, 74, "both"), (0.2, 0.202, 37, "none")],
)
def test_latency_cause_splits_length_and_speed(base_latency, new_latency, new_tokens, kind):
    cause = latency_cause(make(base_latency), make(new_latency, output_tokens=new_tokens))
    assert cause.kind == kind
    assert (1 + cause.latency_change) == pytest.approx((1 + cause.token_change) * (1 + cause.per_token_change))


def test_truncated_responses_point_at_eos_in_the_labels():
    comparison = compare(make(0.4), make(0.4, output_tokens=64, finished=False), Budget(output_tokens=50))
    assert comparison.remedies[-1] == (
        "100% of responses now stop at `max_new_tokens` without EOS (0% before): check that the EOS token "
        "is in the training labels; until then a lower `max_new_tokens` caps the runaway answers."
    )


def test_not_evaluable_checks_do_not_block_shipping():
    nan_new = make(math.nan)
    comparison = compare(make(0.4), nan_new, Budget(max_latency_increase=0.2))
    assert comparison.ship and comparison.verdict.not_evaluable
    assert "latency judged ratio not evaluated: " in comparison.format_table()


# --------------------------------------------------------------------- trade-off
def test_tradeoff_sentence_with_accuracy_and_sla():
    comparison = compare(make(0.4), make(1.6), Budget(latency_ms=400), accuracy=(0.80, 0.84))
    assert comparison.tradeoff == (
        "+4.0 points of accuracy for +300% latency (p95 1600 ms, was 400 ms): breaks the 400 ms SLA"
    )


@pytest.mark.parametrize(
    ("accuracy", "points"),
    [
        ((0.80, 0.84), "+4.0"),
        ((80, 84), "+4.0"),
        ((0.9, 0.85), "-5.0"),
        ((1, 1), "+0.0"),
        ((0.5, 62.5), "+62.0"),
    ],
)
def test_accuracy_points_read_fractions_and_percentages(accuracy, points):
    tradeoff = compare(make(0.4), make(0.4), Budget(), accuracy=accuracy).tradeoff
    assert tradeoff == f"{points} points of accuracy for +0% latency (p95 400 ms, was 400 ms)"


def test_tradeoff_names_length_and_says_when_there_is_no_accuracy():
    base, new = make(0.4), make(0.6, output_tokens=57)
    assert compare(base, new, Budget(), accuracy=(0.8, 0.84)).tradeoff == (
        "+4.0 points of accuracy for +50% latency (p95 600 ms, was 400 ms) "
        "and +54% output tokens (mean 57.0, was 37.0)"
    )
    assert compare(base, new, Budget()).tradeoff == (
        "+50% latency (p95 600 ms, was 400 ms) and +54% output tokens (mean 57.0, was 37.0); "
        "no accuracy given to weigh them against"
    )
    assert compare(base, new, Budget(latency_ms=700), accuracy=(0.8, 0.84)).tradeoff.endswith(
        ": within every budget that could be evaluated"
    )
    assert compare(base, new, Budget(latency_ms=500, output_tokens=40)).tradeoff == (
        "+50% latency (p95 600 ms, was 400 ms) and +54% output tokens (mean 57.0, was 37.0): breaks the 500 ms "
        "SLA and the mean output tokens budget of 40.0; no accuracy given to weigh them against"
    )


@pytest.mark.parametrize(
    ("accuracy", "match"),
    [
        ((0.8,), r"`accuracy` must be a pair \(before, after\)"),
        ("ab", r"`accuracy` values must be finite numbers"),
        ((math.nan, 0.8), r"`accuracy` values must be finite numbers"),
        ((True, 0.8), r"`accuracy` values must be finite numbers"),
        ((-0.1, 0.8), r"`accuracy` values must be in \[0, 1\] \(fractions\) or \[0, 100\]"),
        ((50, 150), r"`accuracy` values must be in \[0, 1\]"),
        (5, r"`accuracy` must be a pair"),
    ],
)
def test_invalid_accuracy(accuracy, match):
    with pytest.raises(ConfigError, match=match):
        compare(make(0.4), make(0.4), Budget(), accuracy=accuracy)


# --------------------------------------------------------------------- incompatibility, table, JSON
def test_mismatched_measurements_are_refused_naming_each_difference():
    new = make(0.4, settings={**SETTINGS, "max_new_tokens": 128, "prompts_sha256": "def"})
    with pytest.raises(BaselineError, match=r"cannot be compared") as info:
        compare(make(0.4), new, Budget(latency_ms=500))
    message = str(info.value)
    assert "prompts_sha256 is 'abc' in the baseline but 'def' here" in message
    assert "max_new_tokens is 64 in the baseline but 128 here" in message
    assert "allow_mismatch=True" in message


def test_allow_mismatch_compares_with_a_warning():
    new = make(0.4, settings={**SETTINGS, "max_new_tokens": 128})
    comparison = compare(make(0.4), new, Budget(latency_ms=500), allow_mismatch=True)
    message = "max_new_tokens is 64 in the baseline but 128 here; latency and output tokens are not comparable"
    assert comparison.incompatible == [message]
    assert comparison.ship
    table = comparison.format_table()
    assert table.startswith("WARNING: the measurements were taken with different settings")
    assert "max_new_tokens is 64 in the baseline but 128 here;" in table
    assert comparison.to_dict()["incompatible"] == [message]


def test_format_table_fits_80_columns_and_ends_with_the_verdict():
    budget = Budget(
        latency_ms=400,
        max_token_increase=0.2,
        input_price_per_1k=0.0005,
        output_price_per_1k=0.0015,
        requests_per_month=1_000_000,
        monthly_cost=50,
    )
    comparison = compare(make(0.4), make(1.6, output_tokens=57, finished=False), budget, accuracy=(0.8, 0.84))
    table = comparison.format_table()
    lines = table.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert lines[0].split() == ["metric", "unit", "base", "new", "change"]
    assert "latency p95                ms        400.0       1600.0   +300.0%" in lines
    assert any(line.startswith("accuracy") and line.endswith("+4.0 pt") for line in lines)
    assert "DO NOT SHIP" in lines and "budgets:" in lines and "cause:" in lines and "remedies:" in lines
    assert "  - mean output tokens 57.0 exceeds 44.4 (base +20%), +54% vs base 37.0" in lines
    assert any(line.startswith("trade-off: +4.0 points of accuracy") for line in lines)
    assert str(comparison) == table

    shipped = compare(make(0.4), make(0.4), Budget(latency_ms=500)).format_table()
    assert "SHIP" in shipped.splitlines() and "remedies:" not in shipped and "DO NOT SHIP" not in shipped


def test_to_dict_is_json_safe_with_nan_as_null():
    # One output token: TPOT is undefined (NaN) on both sides.
    base, new = make(0.4, output_tokens=1), make(0.5, output_tokens=1)
    comparison = compare(base, new, Budget(latency_ms=450, output_price_per_1k=1.0), accuracy=(0.8, 0.9))
    data = json.loads(json.dumps(comparison.to_dict(), allow_nan=False))
    assert set(data) == {
        "ship",
        "answer",
        "statuses",
        "causes",
        "latency_cause",
        "accuracy_source",
        "violations",
        "tradeoff",
        "remedies",
        "incompatible",
        "accuracy",
        "rows",
        "verdict",
    }
    assert data["ship"] is False and data["accuracy"] == [0.8, 0.9]
    tpot = next(r for r in data["rows"] if r["metric"] == "TPOT p50")
    assert tpot == {"metric": "TPOT p50", "unit": "ms", "base": None, "new": None, "change": None}
    assert data["verdict"]["checks"][0]["budget"] == "latency_ms"
    assert isinstance(comparison, Comparison)


# --------------------------------------------------------------------- the seed situation (issue #11)
def seed_pair() -> tuple[Measurement, Measurement]:
    """Latency 200 ms -> 800 ms per request, output tokens unchanged, every answer ends with EOS."""
    return make(0.2), make(0.8)


# $5000/month budget at 1M requests a month and prices that give a 4200 monthly bill today.
SEED_BUDGET = Budget(
    latency_ms=400,
    monthly_cost=5000,
    requests_per_month=1_000_000,
    input_price_per_1k=0.03,
    output_price_per_1k=0.0973,
)


def test_seed_situation_answers_like_an_engineer():
    base, new = seed_pair()
    comparison = compare(base, new, SEED_BUDGET, accuracy=(0.87, 0.91))
    assert not comparison.ship
    assert comparison.answer.startswith(
        "Do not ship: latency p95 breaks the 400 ms SLA (800 ms > 400 ms). Token efficiency is neutral "
        "(output tokens +0%), so cost is unchanged and within budget. The problem is pure latency"
    )
    assert comparison.statuses == [
        "latency p95 800 ms exceeds the 400 ms SLA, +300% vs base 200 ms",
        "monthly cost 4200 within 5000, unchanged vs base 4200",
    ]
    assert comparison.tradeoff == (
        "+4.0 points of accuracy for +300% latency (p95 800 ms, was 200 ms): breaks the 400 ms SLA"
    )
    assert comparison.remedies == list(SPEED_REMEDIES)  # quantization, pruning, distillation, merging, dtype
    assert "decide whether +4.0 points are worth it" in comparison.answer


def test_seed_situation_without_prices_says_what_is_missing_and_that_token_cost_is_unchanged():
    base, new = seed_pair()
    comparison = compare(base, new, Budget(latency_ms=400, monthly_cost=5000), accuracy=(0.87, 0.91))
    assert not comparison.ship
    assert comparison.statuses[1] == (
        "monthly cost not evaluated: needs `requests_per_month` and a price "
        "(`input_price_per_1k`/`output_price_per_1k` or `gpu_price_per_hour`); token cost per request is "
        "unchanged whatever the prices (same input and output tokens)"
    )
    assert "so token cost is unchanged" in comparison.answer
    # A budget on cost change needs no price at all when the token counts decide it.
    relative = compare(base, new, Budget(latency_ms=400, max_cost_increase=0.05), accuracy=(0.87, 0.91))
    assert relative.verdict.checks[1].passed is True
    assert "cost is unchanged and within budget" in relative.answer


def test_measured_quality_stands_in_for_accuracy():
    settings = {**SETTINGS, "scorer": "exact", "references_sha256": "r"}
    base = dataclasses.replace(make(0.2, settings=settings), quality_scores=(1.0, 1.0, 0.0, 0.0))
    new = dataclasses.replace(make(0.2, settings=settings), quality_scores=(1.0, 1.0, 1.0, 0.0))
    comparison = compare(base, new, Budget())
    assert comparison.accuracy == (0.5, 0.75) and comparison.accuracy_source == "measured"
    assert comparison.tradeoff.startswith("+25.0 points of accuracy for")
    given = compare(base, new, Budget(), accuracy=(0.8, 0.9))
    assert given.accuracy == (0.8, 0.9) and given.accuracy_source == "given"
    assert [r.metric for r in given.rows][-2:] == ["accuracy", "quality"]
    assert [r.metric for r in comparison.rows][-1] == "accuracy"  # the measured quality is the accuracy


def test_quality_breach_suggests_quality_remedies():
    settings = {**SETTINGS, "scorer": "exact", "references_sha256": "r"}
    base = dataclasses.replace(make(0.2, settings=settings), quality_scores=(1.0, 1.0, 1.0, 0.0))
    new = dataclasses.replace(make(0.2, settings=settings), quality_scores=(1.0, 0.0, 0.0, 0.0))
    comparison = compare(base, new, Budget(max_quality_drop=0.1))
    assert not comparison.ship
    assert comparison.statuses == ["quality 0.250 is below the minimum 0.650 (base -0.1), -0.500 vs base 0.750"]
    assert any("earlier checkpoint with higher quality" in r for r in comparison.remedies)
    assert comparison.causes == [
        "quality: the fine-tuned model answers fewer probe prompts right (0.750 -> 0.250)"
    ]
    assert "cost" not in comparison.answer  # no cost budget, no latency breach: nothing to say about cost
    unchanged = compare(base, base, Budget(min_quality=0.9))
    assert unchanged.causes == [
        "quality: the base model was no better (0.750): fine-tuning has not reached the minimum yet"
    ]


def test_a_relative_latency_budget_is_named_and_written_as_the_judged_ratio():
    def m(latencies: Sequence[float]) -> Measurement:
        return Measurement(
            samples=tuple(
                RequestSample(p, r, lat * (1 + 0.01 * r), 0.05, 7, 9, True)
                for p, lat in enumerate(latencies)
                for r in range(3)
            )
        )

    c = compare(m([0.2, 0.3, 0.4]), m([0.3, 0.45, 0.6]), Budget(max_latency_increase=0.2))
    # Not "latency p95 1.5 exceeds 1.2": the budget judges a paired ratio, not a percentile.
    assert c.statuses == ["latency judged ratio x1.500 exceeds x1.200 (base +20%)"]
    assert c.answer.startswith("Do not ship: latency judged ratio breaks its budget of x1.200 (base +20%)")
    assert c.violations[0].startswith("latency_judged_ratio x1.500 [")
