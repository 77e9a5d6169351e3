"""The ship / do-not-ship comparison: rows, verdict, trade-off sentence, remedies, table and JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from ftcallback._budget import Budget
from ftcallback._compare import Comparison, Row, compare
from ftcallback._errors import ConfigError
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
    assert [r.metric for r in priced.rows] == [*BASE_LABELS, "cost per request"]
    monthly = compare(base, new, Budget(output_price_per_1k=2.0, requests_per_month=1000), accuracy=(80, 84))
    assert [r.metric for r in monthly.rows] == [*BASE_LABELS, "cost per request", "monthly cost", "accuracy"]
    rows = {r.metric: r for r in monthly.rows}
    assert rows["cost per request"].base == pytest.approx(37 * 2.0 / 1000)
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
    text = " ".join(comparison.remedies)
    for expected in (
        "max_new_tokens",
        "EOS supervision",
        "length",
        "fewer epochs",
        "earlier checkpoint",
        "shorter",
    ):
        assert expected in text
    assert "Quantize" not in text and "merge_and_unload" not in text


def test_latency_breach_suggests_serving_changes():
    comparison = compare(make(0.4), make(1.6), Budget(latency_ms=400))
    assert not comparison.ship
    assert comparison.violations == ["latency_ms_p95 1600.0 exceeds budget 400.0 (baseline 400.0, +300%)"]
    text = " ".join(comparison.remedies)
    for expected in ("int8", "4-bit", "merge_and_unload", "speculative decoding", "distil", "max_new_tokens"):
        assert expected in text
    assert "EOS supervision" not in text  # the length did not change


def test_latency_breach_from_longer_responses_puts_length_first():
    comparison = compare(make(0.4), make(0.8, output_tokens=74), Budget(max_latency_increase=0.25))
    assert not comparison.ship
    assert comparison.remedies[0].startswith("Responses got longer (+100% output tokens)")
    assert any("EOS supervision" in r for r in comparison.remedies)
    assert any("merge_and_unload" in r for r in comparison.remedies)
    assert len(comparison.remedies) == len(set(comparison.remedies))  # shared advice listed once


def test_truncated_responses_point_at_eos_in_the_labels():
    comparison = compare(make(0.4), make(0.4, output_tokens=64, finished=False), Budget(output_tokens=50))
    assert comparison.remedies[-1] == (
        "100% of responses now stop at `max_new_tokens` without EOS (0% before): "
        "check that the EOS token is in the training labels."
    )


def test_not_evaluable_checks_do_not_block_shipping():
    nan_new = make(math.nan)
    comparison = compare(make(0.4), nan_new, Budget(max_latency_increase=0.2))
    assert comparison.ship and comparison.verdict.not_evaluable
    assert "not evaluable" in comparison.format_table()


# --------------------------------------------------------------------- trade-off
def test_tradeoff_sentence_with_accuracy_and_sla():
    comparison = compare(make(0.4), make(1.6), Budget(latency_ms=400), accuracy=(0.80, 0.84))
    assert (
        comparison.tradeoff == "+4.0 points of accuracy for +300% latency (p95 1600 ms against a 400 ms SLA)"
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
    assert tradeoff == f"{points} points of accuracy for +0% latency (p95 400 ms against 400 ms before)"


def test_tradeoff_names_length_and_says_when_there_is_no_accuracy():
    base, new = make(0.4), make(0.6, output_tokens=57)
    assert compare(base, new, Budget(), accuracy=(0.8, 0.84)).tradeoff == (
        "+4.0 points of accuracy for +50% latency (p95 600 ms against 400 ms before) "
        "and +54% output tokens (mean 57.0 against 37.0)"
    )
    assert compare(base, new, Budget()).tradeoff == (
        "+50% latency (p95 600 ms against 400 ms before) and +54% output tokens (mean 57.0 against 37.0); "
        "no accuracy given to weigh them against"
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
def test_incompatible_settings_warn_but_still_compare():
    new = make(0.4, settings={**SETTINGS, "max_new_tokens": 128})
    comparison = compare(make(0.4), new, Budget(latency_ms=500))
    message = "max_new_tokens is 64 in the baseline but 128 here; latency and output tokens are not comparable"
    assert comparison.incompatible == [message]
    assert comparison.ship
    table = comparison.format_table()
    assert table.startswith("WARNING: the measurements were taken with different settings")
    assert "max_new_tokens is 64 in the baseline but 128 here;" in table


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
    assert "DO NOT SHIP" in lines and "violations:" in lines and "remedies:" in lines
    assert "  - output_tokens_mean 57.0 exceeds budget 44.4 (baseline 37.0, +54%)" in lines
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
