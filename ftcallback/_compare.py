"""Ship or do not ship: a base model and its fine-tuned version, side by side, against a budget.

:func:`compare` is the core of ``ftcallback compare BASE FINETUNED``. It evaluates the
fine-tuned measurement against the budget with the base as baseline, lays the main
figures side by side, states the trade-off in one sentence (accuracy gained against
latency and length paid) and, when a budget is breached, lists remedies that fit what
was breached.

Example:
    >>> from ftcallback._measurement import Measurement, RequestSample
    >>> base = Measurement(samples=(RequestSample(0, 0, 0.40, 0.05, 20, 37, True),))
    >>> new = Measurement(samples=(RequestSample(0, 0, 0.60, 0.05, 20, 57, True),))
    >>> c = compare(base, new, Budget(max_token_increase=0.2), accuracy=(0.80, 0.84))
    >>> c.ship, c.violations
    (False, ['output_tokens_mean 57.0 exceeds budget 44.4 (baseline 37.0, +54%)'])
    >>> print(c.tradeoff)  # doctest: +NORMALIZE_WHITESPACE
    +4.0 points of accuracy for +50% latency (p95 600 ms against 400 ms before)
    and +54% output tokens (mean 57.0 against 37.0)
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ._budget import Budget, Verdict, evaluate
from ._errors import ConfigError
from ._format import percent_change, significant
from ._measurement import Measurement, json_float

__all__ = ["Comparison", "Row", "compare"]

_LATENCY_BUDGETS = frozenset({"latency_ms", "max_latency_increase"})
_LENGTH_BUDGETS = frozenset(
    {"output_tokens", "max_token_increase", "cost_per_request", "max_cost_increase", "monthly_cost"}
)
# Longer responses alone make every request slower; above this growth, length is named as the cause.
_LENGTH_GROWTH_THAT_EXPLAINS_LATENCY = 0.10

# Shared by both lists so that a verdict breaching latency and length lists it once.
_MAX_NEW_TOKENS = "Lower `max_new_tokens` at serving time to cut the longest responses."
_LATENCY_REMEDIES = (
    "Quantize the served model (int8 or 4-bit, e.g. bitsandbytes, GPTQ or AWQ).",
    "Merge LoRA adapters into the base weights before serving (`model.merge_and_unload()`): "
    "unmerged adapters add matmuls to every adapted layer.",
    "Use speculative decoding with a small draft model, or distil into a smaller model.",
    _MAX_NEW_TOKENS,
)
_LENGTH_REMEDIES = (
    _MAX_NEW_TOKENS,
    "Control length in training: keep the EOS token in the labels (EOS supervision) and "
    "penalise or filter overly long targets in the training data.",
    "Train for fewer epochs, or ship an earlier checkpoint (the last one within budget).",
    "Use training data with shorter targets (trim or summarise long responses).",
)


class Row(NamedTuple):
    """One line of the comparison table.

    Attributes:
        metric: readable label, e.g. ``"latency p95"``.
        unit: e.g. ``"ms"``, ``"tokens"``, ``"tok/s"``; empty for plain fractions and money.
        base: value of the base model.
        new: value of the fine-tuned model.
        change: ``(new - base) / base``; NaN when not computable.
    """

    metric: str
    unit: str
    base: float
    new: float
    change: float


def _change(base: float, new: float) -> float:
    if math.isfinite(base) and math.isfinite(new) and base != 0:
        return (new - base) / base
    return math.nan


def _accuracy_points(accuracy: tuple[float, float]) -> float:
    """Accuracy gain in percentage points: values <= 1 are fractions, larger ones already percentages."""
    before, after = accuracy
    scale = 100.0 if max(before, after) <= 1.0 else 1.0
    return (after - before) * scale


def _validate_accuracy(accuracy: Any) -> tuple[float, float] | None:
    if accuracy is None:
        return None
    try:
        before, after = accuracy
    except (TypeError, ValueError):
        raise ConfigError(
            f"`accuracy` must be a pair (before, after), got {accuracy!r} (e.g. (0.80, 0.84) or (80.0, 84.0))"
        ) from None
    out = []
    for value in (before, after):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(
                f"`accuracy` values must be finite numbers, got {accuracy!r} (e.g. (0.80, 0.84))"
            )
        if not 0 <= value <= 100:
            raise ConfigError(
                f"`accuracy` values must be in [0, 1] (fractions) or [0, 100] (percentages), got {accuracy!r}"
            )
        out.append(float(value))
    return out[0], out[1]


@dataclass(frozen=True)
class Comparison:
    """The ship / do-not-ship comparison of a base model and its fine-tuned version.

    Attributes:
        verdict: the fine-tuned measurement evaluated against the budget, the base as baseline.
        rows: the side-by-side figures (:class:`Row`).
        ship: True when no budget is breached.
        violations: :meth:`BudgetCheck.describe` of each breached budget.
        tradeoff: one sentence stating what was gained and what it costs.
        remedies: what to try, fitted to the violations; empty when shipping.
        incompatible: settings that differ between the two measurements (compared anyway).
        accuracy: ``(before, after)`` when given.

    Example:
        >>> from ftcallback._measurement import Measurement, RequestSample
        >>> m = Measurement(samples=(RequestSample(0, 0, 0.40, 0.05, 20, 37, True),))
        >>> print(compare(m, m, Budget()).format_table().splitlines()[0])
        metric                   unit         base          new    change
    """

    verdict: Verdict
    rows: list[Row]
    ship: bool
    violations: list[str]
    tradeoff: str
    remedies: list[str]
    incompatible: list[str] = field(default_factory=list)
    accuracy: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (NaN as null) for ``ftcallback compare --json``."""
        return {
            "ship": self.ship,
            "violations": list(self.violations),
            "tradeoff": self.tradeoff,
            "remedies": list(self.remedies),
            "incompatible": list(self.incompatible),
            "accuracy": None if self.accuracy is None else list(self.accuracy),
            "rows": [
                {
                    "metric": r.metric,
                    "unit": r.unit,
                    "base": json_float(r.base),
                    "new": json_float(r.new),
                    "change": json_float(r.change),
                }
                for r in self.rows
            ],
            "verdict": self.verdict.to_dict(),
        }

    def format_table(self, width: int = 80) -> str:
        """The table and the verdict block as plain text that fits a ``width``-column terminal."""
        wrap = textwrap.TextWrapper(width=width, subsequent_indent="    ")
        lines: list[str] = []
        if self.incompatible:
            lines.append("WARNING: the measurements were taken with different settings; compared anyway:")
            lines += [wrap.fill(f"  - {p}") for p in self.incompatible]
            lines.append("")
        lines.append(f"{'metric':<22}{'unit':>7}{'base':>13}{'new':>13}{'change':>10}")
        for r in self.rows:
            if r.metric == "accuracy" and self.accuracy is not None:
                change = f"{_accuracy_points(self.accuracy):+.1f} pt"
            else:
                change = f"{r.change * 100:+.1f}%" if math.isfinite(r.change) else "n/a"
            base, new = _fmt_cell(r.metric, r.unit, r.base), _fmt_cell(r.metric, r.unit, r.new)
            lines.append(f"{r.metric:<22}{r.unit:>7}{base:>13}{new:>13}{change:>10}")
        lines.append("")
        lines.append("SHIP" if self.ship else "DO NOT SHIP")
        if self.violations:
            lines.append("violations:")
            lines += [wrap.fill(f"  - {v}") for v in self.violations]
        not_evaluable = self.verdict.not_evaluable
        if not_evaluable:
            lines.append("not evaluable:")
            lines += [wrap.fill(f"  - {c.budget}: {c.describe()}") for c in not_evaluable]
        lines.append(textwrap.fill(f"trade-off: {self.tradeoff}", width=width, subsequent_indent="  "))
        if self.remedies:
            lines.append("remedies:")
            lines += [wrap.fill(f"  - {r}") for r in self.remedies]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format_table()


def _fmt_cell(metric: str, unit: str, value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    if "cost" in metric:
        return significant(value, 4)
    if unit == "" or metric == "accuracy":
        return f"{value:.3f}" if value <= 1.0 else f"{value:.1f}"
    return f"{value:.1f}"


def _rows(
    base: Measurement, new: Measurement, budget: Budget, accuracy: tuple[float, float] | None
) -> list[Row]:
    def row(metric: str, unit: str, b: float, n: float) -> Row:
        return Row(metric, unit, float(b), float(n), _change(b, n))

    stats = ["p50", "p95", "p99"]
    if budget.latency_stat not in stats:  # show the statistic the budget is stated on
        stats = sorted([*stats, budget.latency_stat], key=("mean", "p50", "p90", "p95", "p99").index)
    rows = [row(f"latency {s}", "ms", base.latency_ms.get(s), new.latency_ms.get(s)) for s in stats]
    rows += [
        row("TTFT p50", "ms", base.ttft_ms.p50, new.ttft_ms.p50),
        row("TPOT p50", "ms", base.tpot_ms.p50, new.tpot_ms.p50),
        row("output tokens mean", "tokens", base.output_tokens.mean, new.output_tokens.mean),
        row("output tokens p95", "tokens", base.output_tokens.p95, new.output_tokens.p95),
        row("throughput", "tok/s", base.tokens_per_second, new.tokens_per_second),
        row("EOS fraction", "", base.eos_fraction, new.eos_fraction),
    ]
    base_cost, new_cost = budget.cost_per_request_of(base), budget.cost_per_request_of(new)
    if base_cost is not None and new_cost is not None:
        rows.append(row("cost per request", "", base_cost, new_cost))
        base_month, new_month = budget.monthly_cost_of(base), budget.monthly_cost_of(new)
        if base_month is not None and new_month is not None:
            rows.append(row("monthly cost", "", base_month, new_month))
    if accuracy is not None:
        rows.append(row("accuracy", "%" if max(accuracy) > 1.0 else "", accuracy[0], accuracy[1]))
    return rows


def _tradeoff(
    base: Measurement, new: Measurement, budget: Budget, accuracy: tuple[float, float] | None
) -> str:
    stat = budget.latency_stat
    b_lat, n_lat = base.latency_ms.get(stat), new.latency_ms.get(stat)
    if math.isfinite(n_lat):
        against = (
            f"a {budget.latency_ms:.0f} ms SLA"
            if budget.latency_ms is not None
            else (f"{b_lat:.0f} ms before" if math.isfinite(b_lat) else "no baseline figure")
        )
        latency = f"{percent_change(_change(b_lat, n_lat))} latency ({stat} {n_lat:.0f} ms against {against})"
    else:
        latency = "latency not measured"
    b_tok, n_tok = base.output_tokens.mean, new.output_tokens.mean
    if math.isfinite(b_tok) and math.isfinite(n_tok):
        tokens = f"{percent_change(_change(b_tok, n_tok))} output tokens (mean {n_tok:.1f} against {b_tok:.1f})"
    else:
        tokens = "output tokens not measured"
    if accuracy is None:
        return f"{latency} and {tokens}; no accuracy given to weigh them against"
    token_change = _change(b_tok, n_tok)
    # An unchanged length is noise in the sentence; name it only when it moved.
    paid = f"{latency} and {tokens}" if not abs(token_change) < 0.01 else latency
    return f"{_accuracy_points(accuracy):+.1f} points of accuracy for {paid}"


def _length_remedies(base: Measurement, new: Measurement) -> list[str]:
    remedies = list(_LENGTH_REMEDIES)
    truncated, before = new.truncated_fraction, base.truncated_fraction
    if math.isfinite(truncated) and truncated > 0 and not truncated <= before:
        remedies.append(
            f"{truncated:.0%} of responses now stop at `max_new_tokens` without EOS "
            f"({before:.0%} before): check that the EOS token is in the training labels."
        )
    return remedies


def _remedies(base: Measurement, new: Measurement, verdict: Verdict) -> list[str]:
    breached = {c.budget for c in verdict.breaches}
    if not breached:
        return []
    remedies: list[str] = []
    if breached & _LATENCY_BUDGETS:
        token_growth = _change(base.output_tokens.mean, new.output_tokens.mean)
        if math.isfinite(token_growth) and token_growth > _LENGTH_GROWTH_THAT_EXPLAINS_LATENCY:
            # Latency grows with length: fixing length is cheaper than changing how the model is served.
            remedies.append(
                f"Responses got longer ({percent_change(token_growth)} output tokens), which alone makes requests "
                f"slower: control their length first."
            )
            remedies += _length_remedies(base, new)
        remedies += _LATENCY_REMEDIES
    if breached & _LENGTH_BUDGETS:
        remedies += _length_remedies(base, new)
    # Latency and length remedies overlap; keep each once, in first-seen order.
    return list(dict.fromkeys(remedies))


def compare(
    base: Measurement,
    new: Measurement,
    budget: Budget,
    *,
    accuracy: tuple[float, float] | None = None,
) -> Comparison:
    """Compare a fine-tuned model's measurement with its base model's against a budget.

    Args:
        base: measurement of the base model (the baseline).
        new: measurement of the fine-tuned model.
        budget: what the fine-tuned model may cost; relative budgets are relative to ``base``.
        accuracy: ``(before, after)`` task accuracy, as fractions (<= 1) or percentages.

    Returns:
        A :class:`Comparison`; ``ship`` is True when no budget is breached. Settings that differ
        between the measurements are listed in ``incompatible`` and the comparison is still made.

    Raises:
        ConfigError: ``accuracy`` is not a pair of finite numbers in [0, 100].

    Example:
        >>> from ftcallback._measurement import Measurement, RequestSample
        >>> m = Measurement(samples=(RequestSample(0, 0, 0.40, 0.05, 20, 37, True),))
        >>> compare(m, m, Budget(latency_ms=500)).ship
        True
    """
    accuracy = _validate_accuracy(accuracy)
    verdict = evaluate(budget, new, base)
    return Comparison(
        verdict=verdict,
        rows=_rows(base, new, budget, accuracy),
        ship=verdict.passed,
        violations=[c.describe() for c in verdict.breaches],
        tradeoff=_tradeoff(base, new, budget, accuracy),
        remedies=_remedies(base, new, verdict),
        incompatible=[d.message for d in base.incompatibilities(new)],
        accuracy=accuracy,
    )
