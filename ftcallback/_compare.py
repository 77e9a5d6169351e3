"""Ship or do not ship: a base model and its fine-tuned version, side by side, against a budget.

:func:`compare` is the core of ``ftcallback compare BASE FINETUNED``. It refuses two
measurements taken with different prompts or settings (unless ``allow_mismatch``),
evaluates the fine-tuned measurement against the budget with the base as baseline, lays
the main figures side by side, and explains itself:

* every budget's status, passing ones included (``monthly cost 4200 within 5000, unchanged
  vs base 4200``);
* the cause of each violation: the latency change is split into output-token change and
  per-token time change (:func:`latency_cause`), token cost follows length, self-hosted cost
  follows latency;
* remedies chosen by that cause (:data:`SPEED_REMEDIES`, :data:`LENGTH_REMEDIES`); a lower
  ``max_new_tokens`` only when responses run to the cap without EOS, since with EOS it would
  cut real answers;
* the trade-off in one sentence, naming the budget it breaks.

The accuracy is the one given, else the measured quality when both sides were scored on
references.

Example:
    >>> from ftcallback._measurement import Measurement, RequestSample
    >>> base = Measurement(samples=(RequestSample(0, 0, 0.40, 0.05, 20, 37, True),))
    >>> new = Measurement(samples=(RequestSample(0, 0, 0.60, 0.05, 20, 57, True),))
    >>> c = compare(base, new, Budget(max_token_increase=0.2), accuracy=(0.80, 0.84))
    >>> c.ship, c.violations
    (False, ['output_tokens_mean 57.0 exceeds budget 44.4 (baseline 37.0, +54%)'])
    >>> print(c.tradeoff)  # doctest: +NORMALIZE_WHITESPACE
    +4.0 points of accuracy for +50% latency (p95 600 ms, was 400 ms) and +54% output tokens
    (mean 57.0, was 37.0): breaks the mean output tokens budget of 44.4 (base +20%)
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ._budget import Budget, BudgetCheck, Verdict, evaluate
from ._decompose import LatencyDecomposition
from ._errors import BaselineError, ConfigError
from ._format import RATIO_METRICS, percent_change, significant
from ._json import json_float
from ._measurement import Measurement

__all__ = ["LENGTH_REMEDIES", "SPEED_REMEDIES", "Comparison", "LatencyCause", "Row", "compare", "latency_cause"]

# Budgets whose breach is a latency problem whatever the pricing; cost budgets follow the pricing:
# token (API) cost moves with length only, accelerator-hour cost with latency.
_LATENCY_BUDGETS = frozenset({"latency_ms", "max_latency_increase"})
_LENGTH_BUDGETS = frozenset({"output_tokens", "max_token_increase"})
_COST_BUDGETS = frozenset({"cost_per_request", "max_cost_increase", "monthly_cost"})
_QUALITY_BUDGETS = frozenset({"min_quality", "max_quality_drop"})
# A change smaller than this (5%) is called unchanged when naming a cause.
_NEGLIGIBLE = 0.05
# Below this (0.5%) a figure is "unchanged" in a status line.
_UNCHANGED = 0.005

_SMALLER_DTYPE = "Serve in a smaller dtype (bfloat16 or float16 instead of float32)."
#: Remedies for slower tokens (same length, more time per token): serve the model faster. The dtype one is
#: left out when the model was measured in half precision already.
SPEED_REMEDIES = (
    "Quantize the served model (int8 or 4-bit, e.g. torchao, bitsandbytes, GPTQ or AWQ).",
    "Prune layers (drop or merge the least useful decoder layers) or distil into a smaller model.",
    "Merge LoRA adapters into the base weights before serving (`model.merge_and_unload()`): "
    "unmerged adapters add matmuls to every adapted layer.",
    _SMALLER_DTYPE,
)
#: Remedies for longer answers (more tokens per response): teach the model to stop.
LENGTH_REMEDIES = (
    "Keep the EOS token in the training labels (EOS supervision) so the model learns where to stop.",
    "Train on shorter targets (trim or summarise long responses, filter overly long examples).",
    "Train for fewer epochs, or ship an earlier checkpoint (the last one within budget).",
)
#: Remedies for lost quality.
QUALITY_REMEDIES = (
    "Ship an earlier checkpoint with higher quality (see the Pareto view of the run report).",
    "Lower the learning rate or train fewer epochs (forgetting), or add examples like the failing prompts.",
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
    return 0.0 if base == new == 0 else math.nan


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


# --------------------------------------------------------------------- cause of a latency change
@dataclass(frozen=True)
class LatencyCause:
    """Why latency moved: longer answers, slower tokens, or both.

    Mean latency = mean output tokens x mean time per output token (TTFT spread over the tokens),
    so the latency ratio is exactly the token ratio times the per-token ratio.

    Attributes:
        latency_change: relative change of mean latency, e.g. 3.0 for +300%.
        token_change: relative change of mean output tokens.
        per_token_change: relative change of time per output token (the decomposition's speed factor
            when there is one, else mean latency per output token).
        kind: ``"speed"`` (tokens within 5%, each token slower), ``"length"`` (per-token time within 5%,
            more tokens), ``"both"``, ``"none"`` (neither moved by 5%) or ``"unknown"`` (not measurable).
    """

    latency_change: float
    token_change: float
    per_token_change: float
    kind: str

    def sentence(self, base: Measurement, new: Measurement) -> str:
        """One sentence for people, with the figures."""
        tokens = (
            f"output tokens {percent_change(self.token_change)}, "
            f"{base.output_tokens.mean:.1f} -> {new.output_tokens.mean:.1f}"
        )
        per_token = f"time per output token {percent_change(self.per_token_change)}"
        if self.kind == "speed":
            return (
                f"answers are as long as before ({tokens}) but each token is slower ({per_token}): "
                "a speed problem, not a length problem"
            )
        if self.kind == "length":
            return f"answers are longer ({tokens}) at the same speed per token ({per_token}): a length problem"
        if self.kind == "both":
            share = math.log1p(self.token_change) / math.log1p(self.latency_change) if self.latency_change else 0
            return (
                f"answers are longer ({tokens}) and each token is slower ({per_token}); "
                f"length explains about {min(max(share, 0.0), 1.0):.0%} of the latency change"
            )
        if self.kind == "none":
            return f"neither length ({tokens}) nor speed ({per_token}) moved by more than {_NEGLIGIBLE:.0%}"
        return "the latency change cannot be split into length and speed (a figure is missing)"


def latency_cause(
    base: Measurement, new: Measurement, decomposition: LatencyDecomposition | None = None
) -> LatencyCause:
    """Split the change of latency into output-token change and per-token time change.

    With the verdict's :class:`~ftcallback._decompose.LatencyDecomposition` (prompt by prompt, the machine
    divided out, the speed effect with an interval), its length and speed factors decide, and a speed change
    counts only when significant. Without one, the means: mean latency = mean output tokens x mean time per
    output token.

    Example:
        >>> from ftcallback._measurement import Measurement, RequestSample
        >>> base = Measurement(samples=(RequestSample(0, 0, 0.2, 0.05, 20, 37, True),))
        >>> new = Measurement(samples=(RequestSample(0, 0, 0.8, 0.05, 20, 37, True),))
        >>> c = latency_cause(base, new)
        >>> c.kind, round(c.per_token_change, 2), c.token_change
        ('speed', 3.0, 0.0)
    """
    if decomposition is not None and all(
        math.isfinite(v) for v in (decomposition.total, decomposition.length, decomposition.speed)
    ):
        d = decomposition
        longer = abs(d.length - 1) > _NEGLIGIBLE
        slower = d.speed_significant and abs(d.speed - 1) > _NEGLIGIBLE
        kind = {(False, False): "none", (False, True): "speed", (True, False): "length", (True, True): "both"}[
            (longer, slower)
        ]
        tokens = _change(base.output_tokens.mean, new.output_tokens.mean)  # what the sentence shows
        return LatencyCause(d.total - 1, tokens, d.speed - 1, kind)
    b_lat, n_lat = base.latency_ms.mean, new.latency_ms.mean
    b_tok, n_tok = base.output_tokens.mean, new.output_tokens.mean
    latency = _change(b_lat, n_lat)
    tokens = _change(b_tok, n_tok)
    per_token = _change(b_lat / b_tok, n_lat / n_tok) if b_tok > 0 and n_tok > 0 else math.nan
    if not (math.isfinite(latency) and math.isfinite(tokens) and math.isfinite(per_token)):
        return LatencyCause(latency, tokens, per_token, "unknown")
    longer, slower = abs(tokens) > _NEGLIGIBLE, abs(per_token) > _NEGLIGIBLE
    kind = {(False, False): "none", (False, True): "speed", (True, False): "length", (True, True): "both"}[
        (longer, slower)
    ]
    return LatencyCause(latency, tokens, per_token, kind)


# --------------------------------------------------------------------- the comparison
@dataclass(frozen=True)
class Comparison:
    """The ship / do-not-ship comparison of a base model and its fine-tuned version.

    Attributes:
        verdict: the fine-tuned measurement evaluated against the budget, the base as baseline.
        rows: the side-by-side figures (:class:`Row`).
        ship: True when no budget is breached.
        violations: :meth:`BudgetCheck.describe` of each breached budget.
        tradeoff: one sentence stating what was gained, what it costs, and which budget it breaks.
        remedies: what to try, chosen by the cause of each violation; empty when shipping.
        incompatible: settings that differ between the two measurements (compared anyway only with
            ``allow_mismatch=True``).
        accuracy: ``(before, after)``: given, or the measured quality when both sides have references.
        statuses: one line per budget, passing ones included, e.g.
            ``"monthly cost 4200 within 5000, unchanged vs base 4200"``.
        causes: one line per violation saying what caused it.
        cause: the split of the latency change into length and speed.
        accuracy_source: ``"given"``, ``"measured"`` (quality scored on references) or ``None``.
        answer: the verdict in a few sentences: ship or not, why, and what kind of problem it is.

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
    statuses: list[str] = field(default_factory=list)
    causes: list[str] = field(default_factory=list)
    cause: LatencyCause | None = None
    accuracy_source: str | None = None
    answer: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (NaN as null) for ``ftcallback compare --json``."""
        cause = self.cause
        return {
            "ship": self.ship,
            "answer": self.answer,
            "violations": list(self.violations),
            "statuses": list(self.statuses),
            "causes": list(self.causes),
            "latency_cause": None
            if cause is None
            else {
                "kind": cause.kind,
                "latency_change": json_float(cause.latency_change),
                "token_change": json_float(cause.token_change),
                "per_token_change": json_float(cause.per_token_change),
            },
            "tradeoff": self.tradeoff,
            "remedies": list(self.remedies),
            "incompatible": list(self.incompatible),
            "accuracy": None if self.accuracy is None else list(self.accuracy),
            "accuracy_source": self.accuracy_source,
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

    def format_table(self, width: int = 80, *, warnings: bool = True) -> str:
        """The table and the verdict block as plain text that fits a ``width``-column terminal.

        Args:
            width: the widest a line may be.
            warnings: start with the settings that differ (the CLI prints them on stderr instead).
        """
        wrap = textwrap.TextWrapper(width=width, subsequent_indent="    ")
        lines: list[str] = []
        if self.incompatible and warnings:
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
        if self.answer:
            lines.append(textwrap.fill(self.answer, width=width))
        if self.statuses:
            lines.append("budgets:")
            lines += [wrap.fill(f"  - {line}") for line in self.statuses]
        if self.causes:
            lines.append("cause:")
            lines += [wrap.fill(f"  - {line}") for line in self.causes]
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
    if unit == "" or metric in ("accuracy", "quality"):
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
        base_1m, new_1m = budget.cost_per_1m_output_tokens_of(base), budget.cost_per_1m_output_tokens_of(new)
        if base_1m is not None and new_1m is not None:
            rows.append(row("cost per 1M out tokens", "", base_1m, new_1m))
        base_month, new_month = budget.monthly_cost_of(base), budget.monthly_cost_of(new)
        if base_month is not None and new_month is not None:
            rows.append(row("monthly cost", "", base_month, new_month))
    if accuracy is not None:
        rows.append(row("accuracy", "%" if max(accuracy) > 1.0 else "", accuracy[0], accuracy[1]))
    if (base.has_quality or new.has_quality) and accuracy != (base.quality, new.quality):
        rows.append(row("quality", "score", base.quality, new.quality))  # measured, next to a given accuracy
    return rows


# --------------------------------------------------------------------- budget statuses
def _label(check: BudgetCheck, budget: Budget) -> str:
    if check.budget == "max_latency_increase":
        return "latency judged ratio"  # paired, per prompt, the machine taken out: not a percentile
    if check.budget in _LATENCY_BUDGETS:
        return f"latency {budget.latency_stat}"
    if check.budget in _LENGTH_BUDGETS:
        return "mean output tokens"
    if check.budget == "monthly_cost":
        return "monthly cost"
    if check.budget == "max_cost_increase" and check.metric == "token_cost_ratio":
        return "token cost per request (ratio to base)"
    if check.budget in _COST_BUDGETS:
        return "cost per request"
    return "quality"


def _value(metric: str, value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    if "cost" in metric and "ratio" not in metric:
        return significant(value, 4)
    if metric.startswith("latency_ms"):
        return f"{value:.0f} ms"
    if metric in ("quality", "token_cost_ratio"):
        return f"{value:.3f}"
    if metric in RATIO_METRICS:
        return f"x{value:.3f}"
    return f"{value:.1f}"


def _limit_phrase(check: BudgetCheck, budget: Budget) -> str:
    limit = _value(check.metric, check.limit)
    if check.budget == "latency_ms":
        return f"the {limit} SLA"
    if check.budget == "max_latency_increase" and budget.max_latency_increase is not None:
        return f"{limit} (base +{budget.max_latency_increase:.0%})"
    if check.budget == "max_token_increase" and budget.max_token_increase is not None:
        return f"{limit} (base +{budget.max_token_increase:.0%})"
    if check.budget == "max_cost_increase" and budget.max_cost_increase is not None:
        return f"{limit} (base +{budget.max_cost_increase:.0%})"
    if check.budget == "max_quality_drop" and budget.max_quality_drop is not None:
        return f"{limit} (base -{budget.max_quality_drop:g})"
    return limit


def _versus_base(check: BudgetCheck) -> str:
    base = check.baseline
    if base is None or not math.isfinite(base) or not math.isfinite(check.value):
        return ""
    if check.metric == "token_cost_ratio":
        return ""
    if check.is_minimum:
        diff = check.value - base
        change = "unchanged" if abs(diff) < 5e-4 else f"{diff:+.3f}"
    else:
        ratio = check.ratio if check.ratio is not None else (check.value / base if base else math.nan)
        change = "unchanged" if math.isfinite(ratio) and abs(ratio - 1) < _UNCHANGED else percent_change(ratio - 1)
    return f", {change} vs base {_value(check.metric, base)}"


def _status(check: BudgetCheck, budget: Budget, token_note: str) -> str:
    """One line per budget: ``monthly cost 4200 within 5000, unchanged vs base 4200``."""
    label = _label(check, budget)
    if check.passed is None:
        detail = check.detail or "unknown reason"
        note = f"; {token_note}" if token_note and check.budget in _COST_BUDGETS and not budget.priced else ""
        return f"{label} not evaluated: {detail}{note}"
    value = _value(check.metric, check.value)
    if check.is_minimum:
        relation = "meets the minimum" if check.passed else "is below the minimum"
    else:
        relation = "within" if check.passed else "exceeds"
    text = f"{label} {value} {relation} {_limit_phrase(check, budget)}{_versus_base(check)}"
    if check.metric == "token_cost_ratio":
        text += f": {check.detail}"
    elif check.passed and check.value > check.limit and check.detail:
        text += f"; not significant: {check.detail}"
    return text


def _token_cost_note(base: Measurement, new: Measurement) -> str:
    """What token counts alone say about token (API) cost, whatever the prices."""
    ratios = [
        _change(base.input_tokens.mean, new.input_tokens.mean),
        _change(base.output_tokens.mean, new.output_tokens.mean),
    ]
    if not all(math.isfinite(r) for r in ratios):
        return ""
    if all(abs(r) < _UNCHANGED for r in ratios):
        return "token cost per request is unchanged whatever the prices (same input and output tokens)"
    low, high = min(ratios), max(ratios)
    return (
        "under any token prices the cost per request changes by between "
        f"{percent_change(low)} and {percent_change(high)}"
    )


# --------------------------------------------------------------------- causes and remedies
def _latency_driven_cost(budget: Budget) -> bool:
    return budget.gpu_price_per_hour is not None


def _causes(
    base: Measurement, new: Measurement, budget: Budget, verdict: Verdict, cause: LatencyCause
) -> tuple[list[str], list[str]]:
    """One cause line per breached budget, and the remedies chosen by those causes."""
    lines: list[str] = []
    speed = length = quality = truncation = False
    for check in verdict.breaches:
        label = _label(check, budget)
        latency_driven = check.budget in _LATENCY_BUDGETS or (
            check.budget in _COST_BUDGETS and _latency_driven_cost(budget)
        )
        if latency_driven:
            why = cause.sentence(base, new)
            if check.budget in _COST_BUDGETS:
                why = f"self-hosted cost follows latency; {why}"
            lines.append(f"{label}: {why}")
            speed |= cause.kind in ("speed", "both", "unknown")
            length |= cause.kind in ("length", "both")
        elif check.budget in _LENGTH_BUDGETS or check.budget in _COST_BUDGETS:
            token_change = _change(base.output_tokens.mean, new.output_tokens.mean)
            what = "token cost follows length; " if check.budget in _COST_BUDGETS else ""
            lines.append(
                f"{label}: {what}answers are longer (output tokens {percent_change(token_change)}, "
                f"{base.output_tokens.mean:.1f} -> {new.output_tokens.mean:.1f})"
            )
            length = True
        elif check.budget in _QUALITY_BUDGETS:
            b_q, n_q = base.quality, new.quality
            if math.isfinite(b_q) and n_q < b_q:
                why = f"the fine-tuned model answers fewer probe prompts right ({b_q:.3f} -> {n_q:.3f})"
            elif math.isfinite(b_q):
                why = f"the base model was no better ({b_q:.3f}): fine-tuning has not reached the minimum yet"
            else:
                why = "the probe's answers score below the minimum"
            lines.append(f"{label}: {why}")
            quality = True
    truncated, before = new.truncated_fraction, base.truncated_fraction
    truncation = length and math.isfinite(truncated) and truncated > 0 and not truncated <= before
    remedies: list[str] = []
    if length:
        remedies += LENGTH_REMEDIES
    if truncation:
        # Only when responses run to the cap without EOS: with EOS, a lower cap would cut real answers.
        remedies.append(
            f"{truncated:.0%} of responses now stop at `max_new_tokens` without EOS ({before:.0%} before): "
            "check that the EOS token is in the training labels; until then a lower `max_new_tokens` caps "
            "the runaway answers."
        )
    if speed:
        dtype = str(new.model.get("param_dtype") or new.model.get("dtype") or "")
        for remedy in SPEED_REMEDIES:
            if remedy is _SMALLER_DTYPE:
                if dtype == "float32":
                    remedy = f"{remedy[:-1]}: it was measured in float32."
                elif dtype:  # already half precision (or smaller): quantization is the next step
                    continue
            remedies.append(remedy)
    if quality:
        remedies += QUALITY_REMEDIES
    return lines, list(dict.fromkeys(remedies))


# --------------------------------------------------------------------- trade-off and answer
def _breach_phrase(check: BudgetCheck, budget: Budget, *, named: bool = True) -> str:
    """``the 400 ms SLA``; with ``named=False`` (after the metric's label) ``its budget of 44.4``."""
    if check.budget == "latency_ms":
        return f"the {_value(check.metric, check.limit)} SLA"
    if check.is_minimum:
        return f"{'the quality' if named else 'its'} minimum of {_value(check.metric, check.limit)}"
    what = f"the {_label(check, budget)}" if named else "its"
    return f"{what} budget of {_limit_phrase(check, budget)}"


def _tradeoff(
    base: Measurement,
    new: Measurement,
    budget: Budget,
    accuracy: tuple[float, float] | None,
    verdict: Verdict,
) -> str:
    stat = budget.latency_stat
    b_lat, n_lat = base.latency_ms.get(stat), new.latency_ms.get(stat)
    if math.isfinite(n_lat) and math.isfinite(b_lat):
        latency = f"{percent_change(_change(b_lat, n_lat))} latency ({stat} {n_lat:.0f} ms, was {b_lat:.0f} ms)"
    elif math.isfinite(n_lat):
        latency = f"latency {stat} {n_lat:.0f} ms (no baseline figure)"
    else:
        latency = "latency not measured"
    b_tok, n_tok = base.output_tokens.mean, new.output_tokens.mean
    token_change = _change(b_tok, n_tok)
    if math.isfinite(token_change):
        tokens = f"{percent_change(token_change)} output tokens (mean {n_tok:.1f}, was {b_tok:.1f})"
    else:
        tokens = "output tokens not measured"
    # An unchanged length is noise in the sentence; name it only when it moved.
    paid = latency if abs(token_change) < 0.01 else f"{latency} and {tokens}"
    text = paid if accuracy is None else f"{_accuracy_points(accuracy):+.1f} points of accuracy for {paid}"
    breaks = [_breach_phrase(c, budget) for c in verdict.breaches]
    if breaks:
        listed = breaks[0] if len(breaks) == 1 else ", ".join(breaks[:-1]) + " and " + breaks[-1]
        text += f": breaks {listed}"
    elif any(c.passed is True for c in verdict.checks):
        text += ": within every budget that could be evaluated"
    if accuracy is None:
        text += "; no accuracy given to weigh them against"
    return text


def _answer(
    base: Measurement,
    budget: Budget,
    verdict: Verdict,
    cause: LatencyCause,
    token_note: str,
    accuracy: tuple[float, float] | None,
) -> str:
    """The verdict as an engineer would say it: what breaks, what does not move, what kind of problem it is."""
    if verdict.passed:
        head = "Ship: no budget is breached."
        if verdict.not_evaluable:
            head += f" {len(verdict.not_evaluable)} budget(s) could not be evaluated (see below)."
        return head
    breaches = verdict.breaches
    said = []
    for c in breaches:
        relation = "<" if c.is_minimum else ">"
        figures = f"{_value(c.metric, c.value)} {relation} {_value(c.metric, c.limit)}"
        said.append(f"{_label(c, budget)} breaks {_breach_phrase(c, budget, named=False)} ({figures})")
    parts = ["Do not ship: " + "; ".join(said) + "."]
    breached = {c.budget for c in breaches}
    cost_checks = [c for c in verdict.checks if c.budget in _COST_BUDGETS]
    cost_ok = [c for c in cost_checks if c.passed is True]
    neutral = abs(cause.token_change) < _NEGLIGIBLE if math.isfinite(cause.token_change) else False
    cost_or_latency = bool(cost_checks) or bool(breached & _LATENCY_BUDGETS)
    if neutral and cost_or_latency and not budget.gpu_price_per_hour:
        tokens = f"output tokens {percent_change(cause.token_change)}"
        if cost_ok and not (breached & _COST_BUDGETS):
            parts.append(f"Token efficiency is neutral ({tokens}), so cost is unchanged and within budget.")
        elif token_note and not (breached & _COST_BUDGETS):
            parts.append(f"Token efficiency is neutral ({tokens}), so token cost is unchanged.")
    if breached <= _LATENCY_BUDGETS:
        kind = {"speed": "pure latency: slower tokens, not longer answers", "length": "longer answers"}.get(
            cause.kind, ""
        )
        if kind:
            parts.append(f"The problem is {kind}.")
    if accuracy is not None:
        points = _accuracy_points(accuracy)
        if points > 0:
            parts.append(f"Fix it with the remedies below, or decide whether {points:+.1f} points are worth it.")
    return " ".join(parts)


def compare(
    base: Measurement,
    new: Measurement,
    budget: Budget,
    *,
    accuracy: tuple[float, float] | None = None,
    allow_mismatch: bool = False,
) -> Comparison:
    """Compare a fine-tuned model's measurement with its base model's against a budget.

    Args:
        base: measurement of the base model (the baseline).
        new: measurement of the fine-tuned model.
        budget: what the fine-tuned model may cost; relative budgets are relative to ``base``.
        accuracy: ``(before, after)`` task accuracy, as fractions (<= 1) or percentages. Without it,
            the measured quality is used when both measurements were scored on references.
        allow_mismatch: compare measurements taken with different prompts or settings anyway (the
            differences are then listed in ``incompatible``).

    Returns:
        A :class:`Comparison`; ``ship`` is True when no budget is breached.

    Raises:
        ConfigError: ``accuracy`` is not a pair of finite numbers in [0, 100].
        BaselineError: the measurements were taken with different prompts or settings and
            ``allow_mismatch`` is False; the message names each difference.

    Example:
        >>> from ftcallback._measurement import Measurement, RequestSample
        >>> m = Measurement(samples=(RequestSample(0, 0, 0.40, 0.05, 20, 37, True),))
        >>> compare(m, m, Budget(latency_ms=500)).ship
        True
    """
    accuracy = _validate_accuracy(accuracy)
    incompatible = [d.message for d in base.incompatibilities(new)]
    if incompatible and not allow_mismatch:
        raise BaselineError(
            "the measurements cannot be compared: they were taken with different prompts or settings ("
            + "; ".join(incompatible)
            + "); measure both the same way, or pass allow_mismatch=True (--allow-mismatch) to compare anyway"
        )
    source = "given" if accuracy is not None else None
    if accuracy is None and base.has_quality and new.has_quality:
        accuracy, source = (base.quality, new.quality), "measured"
    verdict = evaluate(budget, new, base)
    cause = latency_cause(base, new, verdict.decomposition)
    token_note = _token_cost_note(base, new)
    causes, remedies = _causes(base, new, budget, verdict, cause)
    ship = verdict.passed
    return Comparison(
        verdict=verdict,
        rows=_rows(base, new, budget, accuracy),
        ship=ship,
        violations=[c.describe() for c in verdict.breaches],
        tradeoff=_tradeoff(base, new, budget, accuracy, verdict),
        remedies=remedies,
        incompatible=incompatible,
        accuracy=accuracy,
        statuses=[_status(c, budget, token_note) for c in verdict.checks],
        causes=causes,
        cause=cause,
        accuracy_source=source,
        answer=_answer(base, budget, verdict, cause, token_note, accuracy),
    )
