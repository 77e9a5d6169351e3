"""Budgets on latency, output length, cost and quality, and the verdicts that check a measurement against them.

A :class:`Budget` says what is allowed: absolute limits (an SLA in milliseconds, a cap on
mean output tokens, a cap on cost, a minimum quality) and limits relative to a baseline
(+25% latency, +20% tokens, at most 2 points of quality lost). :func:`evaluate` turns a
budget, a measurement and an optional baseline into a :class:`Verdict`: one
:class:`BudgetCheck` per budget that is set.

Cost is priced one of two ways:

* API pricing: ``input_price_per_1k`` / ``output_price_per_1k``;
  cost per request = (mean input tokens x input price + mean output tokens x output price) / 1000.
* Self-hosted pricing: ``gpu_price_per_hour`` (and ``gpu_concurrency``, the requests one accelerator
  serves at once); cost per request = mean end-to-end latency in seconds x
  ``gpu_price_per_hour`` / 3600 / ``gpu_concurrency``, so a slower model costs more.

Either way cost per 1M output tokens = cost per request / mean output tokens x 1e6, and the
monthly cost = cost per request x ``requests_per_month``.

Decision rules:

* Absolute budgets compare the current statistic with the limit.
* ``max_latency_increase`` compares prompt by prompt against the baseline and judges a
  ratio, decomposed (:func:`~ftcallback._decompose.decompose`) into longer answers (exact),
  per-token speed (bootstrap interval) and the machine's own speed (reference workload,
  :mod:`ftcallback._drift`), which is divided out. With a token budget set, the
  latency budget judges the speed effect only (length is the token budget's decision); without
  one it judges length x speed. It is breached only when that ratio exceeds
  ``1 + max_latency_increase`` **and** its interval lies wholly above 1, so neither timing noise
  nor a slower machine stops a run. One ratio, computed once with the caller's seed and the
  budget's confidence (Bonferroni-adjusted for an adaptive measurement, :mod:`ftcallback._sequential`).
* ``min_slo_attainment`` is the fraction of requests meeting every absolute latency limit given.
* Token and cost budgets compare means: under greedy decoding they are deterministic.
* Quality budgets are lower bounds: ``min_quality`` on the mean score, ``max_quality_drop`` on
  the points lost against the baseline.
* A non-finite value, a missing baseline for a relative budget, a zero baseline, or a cost budget
  without a price or volume gives ``passed=None`` ("not evaluable") with one line saying what is
  missing (:attr:`Budget.unevaluable` lists them up front), never a breach.
* ``max_cost_increase`` without any price is still judged under API pricing when the token counts
  decide it: the cost ratio then lies between the input-token and the output-token ratios whatever
  the prices are.

Example:
    >>> from ftcallback._measurement import Measurement, RequestSample
    >>> m = Measurement(samples=(RequestSample(0, 0, 0.5, 0.1, 5, 57, True),))
    >>> evaluate(Budget(output_tokens=44.4), m).first_breach.describe()
    'output_tokens_mean 57.0 exceeds budget 44.4'
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import ConfigError
from ._format import confidence_level, metric_value, percent_change
from ._json import float_from_json, json_float

if TYPE_CHECKING:
    from ._decompose import LatencyDecomposition
    from ._drift import MachineFactor
    from ._measurement import Measurement
    from ._stats import RatioEstimate

# `_measurement`, `_stats`, `_decompose` and `_drift` pull in numpy (and torch): they are imported where
# used, so that the CLI can build its budget flags from this module without paying for them
# (``ftcallback --help`` stays instant).

__all__ = ["LATENCY_STATS", "Budget", "BudgetCheck", "Verdict", "evaluate"]

#: Statistics of end-to-end latency a budget can be stated on.
LATENCY_STATS = ("mean", "p50", "p90", "p95", "p99")

# Why each kind of field exists, appended to validation errors so the message carries the fix.
_LIMIT_HINTS = {
    "latency_ms": "an SLA on end-to-end latency per request in milliseconds, e.g. 400",
    "ttft_ms": "an SLA on time to first token in milliseconds, e.g. 200",
    "tpot_ms": "an SLA on time per output token after the first in milliseconds, e.g. 50",
    "output_tokens": "a cap on mean output tokens per response, e.g. 64",
    "requests_per_month": "expected requests per month, e.g. 1000000",
    "monthly_cost": "a cap on projected monthly cost, in the currency of the prices",
    "cost_per_request": "a cap on mean cost per request, in the currency of the prices",
    "gpu_price_per_hour": "the price of one accelerator hour when self-hosting, e.g. 2.5",
    "gpu_concurrency": "requests one accelerator serves at once, e.g. 8",
    "min_quality": "the lowest acceptable mean quality score, e.g. 0.85",
}
_FRACTIONS = ("max_latency_increase", "max_token_increase", "max_cost_increase")
_PRICES = ("input_price_per_1k", "output_price_per_1k")
_COST_BUDGETS = ("cost_per_request", "max_cost_increase", "monthly_cost")
#: What to set for a price, as one phrase (the CLI turns the backticked names into its flags).
PRICE_FIELDS_TEXT = "`input_price_per_1k`/`output_price_per_1k` or `gpu_price_per_hour`"
# Fields that produce a check; prices and requests_per_month only parameterise the cost ones.
_BUDGET_FIELDS = (
    "latency_ms",
    "max_latency_increase",
    "ttft_ms",
    "tpot_ms",
    "min_slo_attainment",
    "max_truncated_fraction",
    "output_tokens",
    "max_token_increase",
    "cost_per_request",
    "max_cost_increase",
    "monthly_cost",
    "min_quality",
    "max_quality_drop",
)
_DEFAULT_CONFIDENCE = 0.95
_DEFAULT_CONCURRENCY = 1.0


def _number(name: str, value: Any) -> float:
    # bool is an int subclass: True would silently mean 1.0, which is never what was meant.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"`{name}` must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"`{name}` must be a finite number, got {value!r}")
    return value


@dataclass(frozen=True, kw_only=True, repr=False)
class Budget:
    """What a fine-tuned model may cost at inference; every field is optional.

    ``Budget()`` with nothing set is valid: the run is measured and monitored, never stopped.

    Attributes:
        latency_ms: absolute SLA on end-to-end latency per request, in milliseconds.
        latency_stat: statistic of latency the latency budgets apply to: one of
            ``"mean"``, ``"p50"``, ``"p90"``, ``"p95"``, ``"p99"``.
        max_latency_increase: allowed fraction over the baseline latency (0.25 = +25%), judged
            prompt by prompt, the machine's own drift divided out, and only when the slowdown is
            statistically significant. With a token budget set it judges per-token speed only.
        ttft_ms: absolute SLA on time to first token, in milliseconds, at ``latency_stat``.
        tpot_ms: absolute SLA on time per output token after the first, in milliseconds, at ``latency_stat``.
        min_slo_attainment: minimum fraction of requests meeting every absolute latency limit set
            (``latency_ms``, ``ttft_ms``, ``tpot_ms``), in (0, 1]: vLLM's "goodput" share.
        max_truncated_fraction: maximum fraction of responses cut at ``max_new_tokens`` without an
            EOS, in [0, 1): the "never learned to stop" failure.
        output_tokens: absolute cap on mean output tokens per response.
        max_token_increase: allowed fraction over the baseline's mean output tokens.
        input_price_per_1k: API pricing: price of 1000 input (prompt) tokens.
        output_price_per_1k: API pricing: price of 1000 output tokens.
        gpu_price_per_hour: self-hosted pricing: price of one accelerator hour; cost per request =
            mean latency (s) x ``gpu_price_per_hour`` / 3600 / ``gpu_concurrency``. Not with token prices.
        gpu_concurrency: self-hosted pricing: requests one accelerator serves at once.
        requests_per_month: expected traffic, to project a monthly cost.
        monthly_cost: cap on cost per request x ``requests_per_month``.
        cost_per_request: cap on mean cost per request.
        max_cost_increase: allowed fraction over the baseline's cost per request.
        min_quality: lowest acceptable mean quality score (needs probe references).
        max_quality_drop: most quality the model may lose against the baseline, in score points
            (0.02 = two percentage points on a 0-1 scale).
        confidence: confidence level of the latency significance interval, in (0, 1).

    A cost budget without the price or volume it needs is accepted and reported as not evaluable
    (:attr:`unevaluable` says what is missing), so a budget can be stated before the prices are known.

    Raises:
        ConfigError: a field has an invalid value; the message names it and the fix.

    Example:
        >>> b = Budget(latency_ms=400, max_token_increase=0.2)
        >>> b
        Budget(latency_ms=400.0, latency_stat='p95', max_token_increase=0.2)
        >>> Budget.from_dict(b.to_dict()) == b
        True
    """

    latency_ms: float | None = None
    latency_stat: str = "p95"
    max_latency_increase: float | None = None
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    min_slo_attainment: float | None = None
    max_truncated_fraction: float | None = None
    output_tokens: float | None = None
    max_token_increase: float | None = None
    input_price_per_1k: float | None = None
    output_price_per_1k: float | None = None
    requests_per_month: float | None = None
    monthly_cost: float | None = None
    cost_per_request: float | None = None
    max_cost_increase: float | None = None
    gpu_price_per_hour: float | None = None
    gpu_concurrency: float = _DEFAULT_CONCURRENCY
    min_quality: float | None = None
    max_quality_drop: float | None = None
    confidence: float = _DEFAULT_CONFIDENCE

    def __post_init__(self) -> None:
        for name, hint in _LIMIT_HINTS.items():
            value = getattr(self, name)
            if value is None:
                continue
            value = _number(name, value)
            if value <= 0:
                raise ConfigError(f"`{name}` must be > 0, got {value!r} ({hint})")
            object.__setattr__(self, name, value)
        for name in _FRACTIONS:
            value = getattr(self, name)
            if value is None:
                continue
            value = _number(name, value)
            if value <= 0:
                raise ConfigError(f"`{name}` must be > 0, got {value!r} (0.25 means +25% over the baseline)")
            object.__setattr__(self, name, value)
        for name in _PRICES:
            value = getattr(self, name)
            if value is None:
                continue
            value = _number(name, value)
            if value < 0:
                raise ConfigError(
                    f"`{name}` must be >= 0, got {value!r} (the price of 1000 tokens, e.g. 0.002)"
                )
            object.__setattr__(self, name, value)
        if not isinstance(self.latency_stat, str) or self.latency_stat not in LATENCY_STATS:
            raise ConfigError(
                f"`latency_stat` must be one of {', '.join(map(repr, LATENCY_STATS))}, "
                f"got {self.latency_stat!r}"
            )
        if self.min_slo_attainment is not None:
            value = _number("min_slo_attainment", self.min_slo_attainment)
            if not 0.0 < value <= 1.0:
                raise ConfigError(
                    f"`min_slo_attainment` must be in (0, 1], got {value!r} (0.9 means 90% of requests "
                    "meet every latency limit)"
                )
            if self.latency_ms is None and self.ttft_ms is None and self.tpot_ms is None:
                raise ConfigError(
                    "`min_slo_attainment` needs a per-request limit to attain: set `latency_ms`, "
                    "`ttft_ms` and/or `tpot_ms`"
                )
            object.__setattr__(self, "min_slo_attainment", value)
        if self.max_truncated_fraction is not None:
            value = _number("max_truncated_fraction", self.max_truncated_fraction)
            if not 0.0 <= value < 1.0:
                raise ConfigError(
                    f"`max_truncated_fraction` must be in [0, 1), got {value!r} (0.1 allows 10% of "
                    "answers cut at max_new_tokens)"
                )
            object.__setattr__(self, "max_truncated_fraction", value)
        confidence = _number("confidence", self.confidence)
        if not 0.0 < confidence < 1.0:
            raise ConfigError(
                f"`confidence` must be in (0, 1), got {confidence!r} (0.95 means a 95% interval)"
            )
        object.__setattr__(self, "confidence", confidence)
        if self.max_quality_drop is not None:
            drop = _number("max_quality_drop", self.max_quality_drop)
            if drop < 0:
                raise ConfigError(
                    f"`max_quality_drop` must be >= 0, got {drop!r} (score points the model may lose against "
                    "the baseline: 0.02 = two points on a 0-1 scale)"
                )
            object.__setattr__(self, "max_quality_drop", drop)

        prices = [getattr(self, name) for name in _PRICES]
        token_priced = any(p is not None for p in prices)
        if token_priced and self.gpu_price_per_hour is not None:
            raise ConfigError(
                "`gpu_price_per_hour` (self-hosted pricing) and `input_price_per_1k`/`output_price_per_1k` "
                "(API pricing) cannot both be set; keep the one that describes how the model is served"
            )
        cost_budgets = [name for name in _COST_BUDGETS if getattr(self, name) is not None]
        if cost_budgets and token_priced and not any(p is not None and p > 0 for p in prices):
            raise ConfigError(
                f"`{cost_budgets[0]}` needs a non-zero price: at least one of `input_price_per_1k`, "
                f"`output_price_per_1k` must be > 0, got {prices[0]!r} and {prices[1]!r}"
            )

    # ----------------------------------------------------------------- queries
    @property
    def is_empty(self) -> bool:
        """True when no budget is set: measurements are monitored, nothing can be breached."""
        return all(getattr(self, name) is None for name in _BUDGET_FIELDS)

    @property
    def priced(self) -> bool:
        """True when a price is set (a token price or ``gpu_price_per_hour``), so cost can be computed."""
        return self.token_priced or self.gpu_price_per_hour is not None

    @property
    def token_priced(self) -> bool:
        """True for API pricing: at least one token price is set."""
        return self.input_price_per_1k is not None or self.output_price_per_1k is not None

    def missing(self, budget_field: str) -> str | None:
        """What ``budget_field`` needs to be evaluated and is not set, as a phrase; None when nothing is.

        Only configuration counts here (a price, a volume); a missing baseline or a failed measurement is
        reported by :func:`evaluate`.

        Example:
            >>> Budget(monthly_cost=5000, gpu_price_per_hour=2.5).missing("monthly_cost")
            'needs `requests_per_month`'
        """
        needs = []
        if budget_field == "monthly_cost" and self.requests_per_month is None:
            needs.append("`requests_per_month`")
        if budget_field in ("cost_per_request", "monthly_cost") and not self.priced:
            needs.append(f"a price ({PRICE_FIELDS_TEXT})")
        return "needs " + " and ".join(needs) if needs else None

    @property
    def unevaluable(self) -> tuple[str, ...]:
        """One line per budget that is set but can never be evaluated as configured, saying what is missing.

        ``max_cost_increase`` without a price is not listed: token counts alone may decide it.

        Example:
            >>> Budget(monthly_cost=5000, output_price_per_1k=0.002).unevaluable
            ('`monthly_cost` not evaluated: needs `requests_per_month`',)
        """
        out = []
        for name in _COST_BUDGETS:
            if getattr(self, name) is not None:
                why = self.missing(name)
                if why is not None:
                    out.append(f"`{name}` not evaluated: {why}")
        return tuple(out)

    @property
    def latency_metric(self) -> str:
        """Summary key the latency budgets apply to, e.g. ``"latency_ms_p95"``."""
        return f"latency_ms_{self.latency_stat}"

    @property
    def limits_tokens(self) -> bool:
        """True when a token budget is set: output length is then that budget's decision, and
        ``max_latency_increase`` judges per-token speed only."""
        return self.output_tokens is not None or self.max_token_increase is not None

    def slo_attainment_of(self, measurement: Measurement) -> float | None:
        """Fraction of ``measurement``'s requests meeting every absolute latency limit; None without one."""
        if self.latency_ms is None and self.ttft_ms is None and self.tpot_ms is None:
            return None
        return measurement.slo_attainment(latency_ms=self.latency_ms, ttft_ms=self.ttft_ms, tpot_ms=self.tpot_ms)

    def cost_per_request_of(self, measurement: Measurement) -> float | None:
        """Mean cost of one request of ``measurement`` at this budget's prices; None when unpriced.

        Example:
            >>> from ftcallback._measurement import Measurement, RequestSample
            >>> m = Measurement(samples=(RequestSample(0, 0, 0.5, 0.1, 1000, 500, True),))
            >>> Budget(input_price_per_1k=0.001, output_price_per_1k=0.002).cost_per_request_of(m)
            0.002
        """
        if self.token_priced:
            return measurement.cost_per_request(self.input_price_per_1k or 0.0, self.output_price_per_1k or 0.0)
        if self.gpu_price_per_hour is not None:
            # Accelerator time is what is paid for: the mean request holds the accelerator for its
            # end-to-end latency, shared with `gpu_concurrency - 1` other requests.
            return measurement.latency_ms.mean / 1000.0 * self.gpu_price_per_hour / 3600.0 / self.gpu_concurrency
        return None

    def cost_per_1m_output_tokens_of(self, measurement: Measurement) -> float | None:
        """Cost of one million output tokens: cost per request / mean output tokens x 1e6; None when unpriced.

        Under self-hosted pricing this is ``gpu_price_per_hour`` / 3600 / (tokens per second x
        ``gpu_concurrency``) x 1e6, i.e. it follows the measured throughput.

        Example:
            >>> from ftcallback._measurement import Measurement, RequestSample
            >>> m = Measurement(samples=(RequestSample(0, 0, 2.0, 0.1, 10, 100, True),))
            >>> round(Budget(gpu_price_per_hour=3.6).cost_per_1m_output_tokens_of(m), 6)
            20.0
        """
        cost = self.cost_per_request_of(measurement)
        tokens = measurement.output_tokens.mean
        if cost is None or not (math.isfinite(tokens) and tokens > 0):
            return None
        return cost / tokens * 1e6

    def monthly_cost_of(self, measurement: Measurement) -> float | None:
        """Projected monthly cost (cost per request x ``requests_per_month``); None when not computable."""
        cost = self.cost_per_request_of(measurement)
        if cost is None or self.requests_per_month is None:
            return None
        return cost * self.requests_per_month

    def limits(self, baseline: Measurement | None = None) -> dict[str, float]:
        """The limit of each budgeted metric, in that metric's unit, keyed like ``Measurement.summary()``.

        Relative token and cost budgets become ``baseline x (1 + fraction)``; they are left out
        without a usable baseline. ``max_latency_increase`` is a limit on the judged ratio,
        ``"latency_judged_ratio": 1 + fraction`` (the observed ``latency_ratio`` is not what it judges).
        ``min_slo_attainment`` is a minimum. When an absolute and a relative budget apply to the same metric,
        the tighter wins.

        Args:
            baseline: the reference measurement for relative budgets.

        Returns:
            e.g. ``{"latency_ms_p95": 400.0, "output_tokens_mean": 44.4, "cost_per_request": 0.0001}``;
            ``"quality"`` is a minimum, every other limit a maximum.

        Example:
            >>> from ftcallback._measurement import Measurement, RequestSample
            >>> base = Measurement(samples=(RequestSample(0, 0, 0.5, 0.1, 5, 37, True),))
            >>> Budget(latency_ms=400, max_token_increase=0.2).limits(base)
            {'latency_ms_p95': 400.0, 'output_tokens_mean': 44.4}
            >>> Budget(max_latency_increase=0.2, ttft_ms=200, min_slo_attainment=0.9).limits(base)
            {'latency_judged_ratio': 1.2, 'ttft_ms_p95': 200.0, 'slo_attainment': 0.9}
        """
        out: dict[str, float] = {}

        def tighter(metric: str, limit: float | None) -> None:
            if limit is not None and math.isfinite(limit) and limit > 0:
                out[metric] = min(out.get(metric, math.inf), limit)

        def relative(fraction: float | None, base_value: float | None) -> float | None:
            if fraction is None or base_value is None:
                return None
            return base_value * (1.0 + fraction)

        base_tokens = baseline.output_tokens.mean if baseline is not None else None
        base_cost = self.cost_per_request_of(baseline) if baseline is not None else None

        tighter(self.latency_metric, self.latency_ms)
        if self.max_latency_increase is not None and baseline is not None and baseline.samples:
            out["latency_judged_ratio"] = 1.0 + self.max_latency_increase
        tighter(f"ttft_ms_{self.latency_stat}", self.ttft_ms)
        tighter(f"tpot_ms_{self.latency_stat}", self.tpot_ms)
        if self.min_slo_attainment is not None:
            out["slo_attainment"] = self.min_slo_attainment
        if self.max_truncated_fraction is not None:
            out["truncated_fraction"] = self.max_truncated_fraction
        tighter("output_tokens_mean", self.output_tokens)
        tighter("output_tokens_mean", relative(self.max_token_increase, base_tokens))
        tighter("cost_per_request", self.cost_per_request)
        tighter("cost_per_request", relative(self.max_cost_increase, base_cost))
        tighter("monthly_cost", self.monthly_cost)
        # Quality limits are minimums; the higher (stricter) one wins.
        floors = [self.min_quality] if self.min_quality is not None else []
        if self.max_quality_drop is not None and baseline is not None and baseline.has_quality:
            floors.append(baseline.quality - self.max_quality_drop)
        if floors:
            out["quality"] = max(floors)
        return out

    # ----------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        """The fields that are set, plus ``latency_stat`` (``confidence``, ``gpu_concurrency`` when not the default)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if (f.name, value) in (("confidence", _DEFAULT_CONFIDENCE), ("gpu_concurrency", _DEFAULT_CONCURRENCY)):
                continue
            if value is not None:
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Budget:
        """Build a budget from a mapping such as :meth:`to_dict`'s output; ``None`` values mean unset.

        Raises:
            ConfigError: ``data`` is not a mapping, has unknown keys, or a value is invalid.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"a budget must be a mapping of field names to values, got {type(data).__name__}"
            )
        known = [f.name for f in fields(cls)]
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ConfigError(
                f"unknown budget field(s) {', '.join(unknown)}; known fields: {', '.join(known)}"
            )
        return cls(**{k: v for k, v in data.items() if v is not None})

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Budget:
        """Read a budget from a ``.toml`` or ``.json`` file whose keys are this class's field names.

        A TOML file may also hold the fields under a ``[budget]`` table.

        Args:
            path: the file; its suffix decides the format.

        Raises:
            ConfigError: the file cannot be read or parsed, or a field is unknown or invalid; the
                message names the file and the field.

        Example:
            >>> import pathlib, tempfile
            >>> f = pathlib.Path(tempfile.mkdtemp()) / "budget.toml"
            >>> _ = f.write_text("max_token_increase = 0.2\\nlatency_ms = 400\\n")
            >>> Budget.from_file(f)
            Budget(latency_ms=400.0, latency_stat='p95', max_token_increase=0.2)
        """
        file = Path(path)
        suffix = file.suffix.lower()
        if suffix not in (".toml", ".json"):
            raise ConfigError(f"budget file {str(file)!r} must end with .toml or .json, got {suffix or 'no suffix'!r}")
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(f"cannot read budget file {str(file)!r}: {reason}") from exc
        try:
            if suffix == ".toml":
                import tomllib

                data: Any = tomllib.loads(text)
                if set(data) == {"budget"} and isinstance(data["budget"], Mapping):
                    data = data["budget"]
            else:
                import json

                data = json.loads(text)
        except ValueError as exc:  # tomllib.TOMLDecodeError and json.JSONDecodeError are ValueErrors
            raise ConfigError(f"budget file {str(file)!r} is not valid {suffix[1:].upper()}: {exc}") from exc
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"budget file {str(file)!r}: {exc}") from exc

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"Budget({inner})"


# --------------------------------------------------------------------- checks
#: Metrics whose limit is a minimum (higher is better, breached below it); every other limit is a maximum.
MINIMUM_METRICS = frozenset({"quality", "slo_attainment"})


@dataclass(frozen=True)
class BudgetCheck:
    """The outcome of one budget against one measurement.

    Attributes:
        budget: the :class:`Budget` field checked, e.g. ``"max_token_increase"``.
        metric: what was measured, a ``Measurement.summary()`` key or ``"cost_per_request"`` /
            ``"monthly_cost"``.
        value: the measured value, in the metric's unit.
        limit: the allowed value, in the metric's unit.
        baseline: the baseline's value of the metric, when there is one.
        passed: True within budget, False breached, None not evaluable (see ``detail``).
        detail: how the decision was made (the paired ratio and its interval) or why it could not be.
        ratio: ``value`` relative to the baseline (the judged ratio for relative latency).
        interval: the ratio's confidence interval, for relative latency.
        estimate: for relative latency, the :class:`RatioEstimate` that decided (``value``,
            ``interval`` and its confidence are this object's); log and report this very object.
        decomposition: for relative latency, the change split into longer answers, per-token speed
            and the machine (:class:`~ftcallback._decompose.LatencyDecomposition`).

    Example:
        >>> c = BudgetCheck("max_token_increase", "output_tokens_mean", 57.0, 44.4, 37.0, False)
        >>> c.describe()
        'output_tokens_mean 57.0 exceeds budget 44.4 (baseline 37.0, +54%)'
    """

    budget: str
    metric: str
    value: float
    limit: float
    baseline: float | None = None
    passed: bool | None = None
    detail: str = ""
    ratio: float | None = None
    interval: tuple[float, float] | None = None
    estimate: RatioEstimate | None = None
    decomposition: LatencyDecomposition | None = None

    @property
    def is_minimum(self) -> bool:
        """True when the limit is a minimum (``quality``, ``slo_attainment``): breached below it."""
        return self.metric in MINIMUM_METRICS

    @property
    def breached(self) -> bool:
        """True only for a real breach (not for a check that could not be evaluated)."""
        return self.passed is False

    @property
    def margin(self) -> float:
        """Headroom ``(limit - value) / limit`` (``(value - limit) / limit`` for a minimum): positive
        within budget, negative over, NaN unknown."""
        if not (math.isfinite(self.value) and math.isfinite(self.limit)) or self.limit == 0:
            return math.nan
        headroom = self.value - self.limit if self.is_minimum else self.limit - self.value
        return headroom / abs(self.limit)

    def _vs_baseline(self) -> str:
        if self.baseline is None or not math.isfinite(self.baseline):
            return ""
        if self.is_minimum:
            diff = self.value - self.baseline
            change = f", {diff:+.3f}" if math.isfinite(diff) else ""
            return f" (baseline {metric_value(self.metric, self.baseline)}{change})"
        ratio = self.ratio
        if ratio is None and self.baseline > 0 and math.isfinite(self.value):
            ratio = self.value / self.baseline
        change = f", {percent_change(ratio - 1.0)}" if ratio is not None and math.isfinite(ratio) else ""
        return f" (baseline {metric_value(self.metric, self.baseline)}{change})"

    def describe(self) -> str:
        """One line for the log: ``output_tokens_mean 57.0 exceeds budget 44.4 (baseline 37.0, +54%)``."""
        if self.passed is None:
            return f"{self.metric} not evaluable: {self.detail or 'unknown reason'}"
        value, limit = metric_value(self.metric, self.value), metric_value(self.metric, self.limit)
        if self.estimate is not None:
            e = self.estimate
            head = f"{self.metric} {value} [{e.low:.3f}, {e.high:.3f}]"
            verb = "exceeds" if self.passed is False else "within"
            why = f" ({self.decomposition.describe()})" if self.decomposition is not None else ""
            return f"{head} {verb} budget {limit}{why}"
        if self.is_minimum:
            verb = "below minimum" if self.passed is False else "meets minimum"
            return f"{self.metric} {value} {verb} {limit}{self._vs_baseline()}"
        if self.passed is False:
            return f"{self.metric} {value} exceeds budget {limit}{self._vs_baseline()}"
        text = f"{self.metric} {value} within budget {limit}{self._vs_baseline()}"
        # A passed check above its limit is a slowdown within noise: say why it did not count.
        if self.value > self.limit and self.detail:
            text += f"; not significant: {self.detail}"
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (NaN as null); inverse of :meth:`from_dict`."""
        return {
            "budget": self.budget,
            "metric": self.metric,
            "value": json_float(self.value),
            "limit": json_float(self.limit),
            "baseline": json_float(self.baseline),
            "passed": self.passed,
            "detail": self.detail,
            "ratio": json_float(self.ratio),
            "interval": None if self.interval is None else [json_float(v) for v in self.interval],
            "estimate": None
            if self.estimate is None
            else {k: json_float(v) for k, v in self.estimate.to_dict().items()},
            "decomposition": None if self.decomposition is None else self.decomposition.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BudgetCheck:
        """Rebuild a check written by :meth:`to_dict`.

        Raises:
            ConfigError: a required field is missing or has the wrong type.
        """
        try:
            interval = data.get("interval")
            baseline, ratio = data.get("baseline"), data.get("ratio")
            estimate, decomposition = data.get("estimate"), data.get("decomposition")
            if estimate is not None or decomposition is not None:
                from ._decompose import LatencyDecomposition
                from ._stats import RatioEstimate
            passed = data.get("passed")
            return cls(
                budget=str(data["budget"]),
                metric=str(data["metric"]),
                value=float_from_json(data["value"]),
                limit=float_from_json(data["limit"]),
                baseline=None if baseline is None else float(baseline),
                passed=None if passed is None else bool(passed),
                detail=str(data.get("detail", "")),
                ratio=None if ratio is None else float(ratio),
                interval=None
                if interval is None
                else (float_from_json(interval[0]), float_from_json(interval[1])),
                estimate=None if estimate is None else RatioEstimate.from_dict(estimate),
                decomposition=None if decomposition is None else LatencyDecomposition.from_dict(decomposition),
            )
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise ConfigError(f"not a budget check: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class Verdict:
    """All checks of one measurement against a budget.

    Attributes:
        checks: one :class:`BudgetCheck` per budget that is set, in a fixed order.
        decomposition: with a baseline, why latency moved (whether or not a latency budget is set):
            log ``decomposition.describe()`` wherever the latency verdict appears.
        machine: with reference timings on both sides, the machine's speed factor.

    Example:
        >>> Verdict(checks=()).passed
        True
    """

    checks: tuple[BudgetCheck, ...] = ()
    decomposition: LatencyDecomposition | None = None
    machine: MachineFactor | None = None

    @property
    def environment_changed(self) -> bool:
        """True when the machine ran the reference workload at another speed than at the baseline
        (beyond its noise): timings moved for a reason that is not the model's."""
        return self.machine is not None and self.machine.moved

    @property
    def passed(self) -> bool:
        """True when no check is breached (checks that could not be evaluated do not count)."""
        return not any(c.breached for c in self.checks)

    @property
    def breaches(self) -> tuple[BudgetCheck, ...]:
        """The breached checks."""
        return tuple(c for c in self.checks if c.breached)

    @property
    def not_evaluable(self) -> tuple[BudgetCheck, ...]:
        """The checks that could not be evaluated (``passed is None``)."""
        return tuple(c for c in self.checks if c.passed is None)

    @property
    def first_breach(self) -> BudgetCheck | None:
        """The first breached check, or None."""
        return next((c for c in self.checks if c.breached), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe ``{"passed": bool, "checks": [...], "decomposition": ..., "machine": ...}``."""
        return {
            "passed": self.passed,
            "checks": [c.to_dict() for c in self.checks],
            "decomposition": None if self.decomposition is None else self.decomposition.to_dict(),
            "machine": None if self.machine is None else self.machine.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Verdict:
        """Rebuild a verdict from :meth:`to_dict`'s output, or from a bare list of check dicts (report.json).

        Raises:
            ConfigError: the data is not a verdict.
        """
        decomposition = machine = None
        if isinstance(data, Mapping):
            if "checks" not in data:
                raise ConfigError("not a verdict: no 'checks' field")
            items = data["checks"]
            try:
                from ._decompose import LatencyDecomposition
                from ._drift import MachineFactor

                if data.get("decomposition") is not None:
                    decomposition = LatencyDecomposition.from_dict(data["decomposition"])
                if data.get("machine") is not None:
                    machine = MachineFactor.from_dict(data["machine"])
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise ConfigError(f"not a verdict: {type(exc).__name__}: {exc}") from exc
        else:
            items = data
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
            raise ConfigError(f"not a verdict: 'checks' must be a list, got {type(items).__name__}")
        return cls(
            checks=tuple(BudgetCheck.from_dict(c) for c in items), decomposition=decomposition, machine=machine
        )

    def __repr__(self) -> str:
        breaches = [c.budget for c in self.breaches]
        not_evaluable = [c.budget for c in self.not_evaluable]
        return (
            f"Verdict(passed={self.passed}, checks={len(self.checks)}, breaches={breaches}, "
            f"not_evaluable={not_evaluable})"
        )


# --------------------------------------------------------------------- evaluate
def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _absolute(budget_field: str, metric: str, value: float, limit: float, base: float | None) -> BudgetCheck:
    base = base if _finite(base) else None
    ratio = value / base if base is not None and base > 0 and math.isfinite(value) else None
    if not math.isfinite(value):
        return BudgetCheck(budget_field, metric, value, limit, base, None, f"value is {value}", ratio)
    return BudgetCheck(budget_field, metric, value, limit, base, value <= limit, "", ratio)


def _relative(
    budget_field: str, metric: str, value: float, fraction: float, base: float | None, what: str
) -> BudgetCheck:
    """A mean compared with the baseline's mean; deterministic metrics (tokens, cost) need no interval."""
    if base is None:
        return BudgetCheck(budget_field, metric, value, math.nan, None, None, "no baseline")
    limit = base * (1.0 + fraction)
    if not math.isfinite(base):
        return BudgetCheck(budget_field, metric, value, limit, base, None, f"baseline is {base}")
    if base == 0:
        return BudgetCheck(budget_field, metric, value, limit, base, None, "baseline is zero")
    if not math.isfinite(value):
        return BudgetCheck(budget_field, metric, value, limit, base, None, f"value is {value}")
    ratio = value / base
    detail = f"{what} {metric_value(metric, value)} vs baseline {metric_value(metric, base)} (x{ratio:.3f})"
    return BudgetCheck(budget_field, metric, value, limit, base, value <= limit, detail, ratio)


def _relative_latency(
    budget: Budget,
    fraction: float,
    measurement: Measurement,
    baseline: Measurement | None,
    decomposition: LatencyDecomposition | None,
) -> BudgetCheck:
    """The relative latency budget, judged on the decomposition's ratio (see the module docstring)."""
    name, metric, limit = "max_latency_increase", "latency_judged_ratio", 1.0 + fraction
    if baseline is None:
        return BudgetCheck(name, metric, math.nan, limit, None, None, "no baseline")
    if decomposition is None:
        return BudgetCheck(
            name,
            metric,
            math.nan,
            limit,
            None,
            None,
            "no prompt has finite latencies in both the baseline and this measurement",
        )
    # Length is exact and belongs to the token budget when one is set; the speed effect (machine divided
    # out) is the latency budget's own business either way.
    judged = decomposition.speed_estimate if budget.limits_tokens else decomposition.model_estimate
    breached = judged.ratio > limit and judged.significant_increase
    what = "per-token speed (length is the token budget's)" if budget.limits_tokens else "length x per-token speed"
    stat = budget.latency_stat
    detail = (
        f"judged {what} x{judged.ratio:.3f}, {confidence_level(judged.confidence)} interval [{judged.low:.3f}, "
        f"{judged.high:.3f}] over {judged.pairs} prompts; observed {stat} {measurement.latency_ms.get(stat):.1f} ms "
        f"vs baseline {baseline.latency_ms.get(stat):.1f} ms"
    )
    machine = decomposition.machine
    if machine is not None and machine.moved:
        raw = decomposition.total if not budget.limits_tokens else decomposition.total / decomposition.length
        if raw > limit and not breached:
            detail += f"; environment change, not a model breach: {machine.describe()}"
        else:
            detail += f"; {machine.describe()}"
    return BudgetCheck(
        name, metric, judged.ratio, limit, None, not breached, detail, judged.ratio, (judged.low, judged.high),
        judged, decomposition,
    )


def _unpriced(budget: Budget, budget_field: str, metric: str, limit: float) -> BudgetCheck:
    return BudgetCheck(budget_field, metric, math.nan, limit, None, None, budget.missing(budget_field) or "")


def _token_cost_change(fraction: float, measurement: Measurement, baseline: Measurement | None) -> BudgetCheck:
    """``max_cost_increase`` without prices, under API pricing.

    Cost per request is ``a x input tokens + b x output tokens`` with unknown prices ``a, b >= 0``, so its
    ratio to the baseline lies between the input-token ratio and the output-token ratio. The budget is
    met when the larger one is within it, breached when even the smaller one exceeds it, and needs a
    price in between.
    """
    metric, limit = "token_cost_ratio", 1.0 + fraction
    if baseline is None:
        return BudgetCheck("max_cost_increase", metric, math.nan, limit, None, None, "no baseline")
    ratios = []
    for stats_of in (lambda m: m.input_tokens.mean, lambda m: m.output_tokens.mean):
        base, new = stats_of(baseline), stats_of(measurement)
        if base == new == 0:  # no such tokens on either side: that price does not matter
            ratios.append(1.0)
            continue
        if not (math.isfinite(base) and math.isfinite(new)) or base <= 0:
            return BudgetCheck(
                "max_cost_increase", metric, math.nan, limit, 1.0, None, f"needs a price ({PRICE_FIELDS_TEXT})"
            )
        ratios.append(new / base)
    low, high = min(ratios), max(ratios)
    detail = (
        "no price set: under any token prices the cost per request changes by between "
        f"{percent_change(low - 1)} and {percent_change(high - 1)} (input tokens {percent_change(ratios[0] - 1)}, "
        f"output tokens {percent_change(ratios[1] - 1)})"
    )
    if high <= limit:
        return BudgetCheck("max_cost_increase", metric, high, limit, 1.0, True, detail, high, (low, high))
    if low > limit:
        return BudgetCheck("max_cost_increase", metric, low, limit, 1.0, False, detail, low, (low, high))
    return BudgetCheck(
        "max_cost_increase", metric, high, limit, 1.0, None, f"{detail}; needs a price ({PRICE_FIELDS_TEXT})",
        high, (low, high),
    )


def _quality_check(budget_field: str, limit: float, measurement: Measurement, base: float | None) -> BudgetCheck:
    value = measurement.quality
    if not math.isfinite(value):
        why = "not scored: no probe prompt has a reference (give references and a scorer)"
        return BudgetCheck(budget_field, "quality", value, limit, base, None, why)
    return BudgetCheck(budget_field, "quality", value, limit, base, value >= limit)


def evaluate(
    budget: Budget, measurement: Measurement, baseline: Measurement | None = None, *, seed: int = 0
) -> Verdict:
    """Check ``measurement`` against every budget that is set.

    Every interval here is computed once, with ``seed``, the budget's confidence (Bonferroni-adjusted
    when the measurement was adaptive, :func:`~ftcallback._sequential.looks_of`) and
    :data:`~ftcallback._stats.RESAMPLES` resamples; the checks carry the very objects that decided.

    Args:
        budget: the budget.
        measurement: the measurement to judge.
        baseline: the reference for relative budgets (the model before fine-tuning); without it
            relative checks are not evaluable (``passed=None``).
        seed: seed of the bootstrap (the callback's ``seed``), for reproducible decisions.

    Returns:
        A :class:`Verdict` with one check per budget set, in the order latency, latency increase,
        TTFT, TPOT, SLO attainment, truncated fraction, tokens, token increase, cost per request,
        cost increase, monthly cost, minimum quality, quality drop; plus the latency decomposition and
        machine factor when there is a baseline.

    Example:
        >>> from ftcallback._measurement import Measurement, RequestSample
        >>> base = Measurement(samples=(RequestSample(0, 0, 0.5, 0.1, 5, 37, True),))
        >>> new = Measurement(samples=(RequestSample(0, 0, 0.7, 0.1, 5, 57, True),))
        >>> v = evaluate(Budget(max_token_increase=0.2), new, base)
        >>> v.passed, v.first_breach.describe()
        (False, 'output_tokens_mean 57.0 exceeds budget 44.4 (baseline 37.0, +54%)')
    """
    checks: list[BudgetCheck] = []
    stat = budget.latency_stat
    from ._decompose import decompose
    from ._drift import machine_factor
    from ._sequential import looks_of
    from ._stats import bonferroni_confidence

    confidence = bonferroni_confidence(budget.confidence, looks_of(measurement))
    machine = decomposition = None
    if baseline is not None:
        machine = machine_factor(baseline, measurement, confidence=confidence, seed=seed)
        decomposition = decompose(baseline, measurement, confidence=confidence, seed=seed, machine=machine)
    if budget.latency_ms is not None:
        base = baseline.latency_ms.get(stat) if baseline is not None else None
        value = measurement.latency_ms.get(stat)
        checks.append(_absolute("latency_ms", budget.latency_metric, value, budget.latency_ms, base))
    if budget.max_latency_increase is not None:
        checks.append(
            _relative_latency(budget, budget.max_latency_increase, measurement, baseline, decomposition)
        )
    for name, stats_of in (("ttft_ms", lambda m: m.ttft_ms), ("tpot_ms", lambda m: m.tpot_ms)):
        limit = getattr(budget, name)
        if limit is not None:
            base = stats_of(baseline).get(stat) if baseline is not None else None
            checks.append(_absolute(name, f"{name}_{stat}", stats_of(measurement).get(stat), limit, base))
    if budget.min_slo_attainment is not None:
        attained = budget.slo_attainment_of(measurement)
        assert attained is not None  # validation requires an absolute latency limit
        base_attained = budget.slo_attainment_of(baseline) if baseline is not None else None
        if not math.isfinite(attained):
            checks.append(
                BudgetCheck("min_slo_attainment", "slo_attainment", attained, budget.min_slo_attainment,
                            base_attained, None, "no requests")
            )
        else:
            checks.append(
                BudgetCheck("min_slo_attainment", "slo_attainment", attained, budget.min_slo_attainment,
                            base_attained, attained >= budget.min_slo_attainment)
            )
    if budget.max_truncated_fraction is not None:
        base_truncated = baseline.truncated_fraction if baseline is not None else None
        truncated = measurement.truncated_fraction
        check = _absolute(
            "max_truncated_fraction", "truncated_fraction", truncated, budget.max_truncated_fraction, base_truncated
        )
        checks.append(check)

    tokens = measurement.output_tokens.mean
    base_tokens = baseline.output_tokens.mean if baseline is not None else None
    if budget.output_tokens is not None:
        checks.append(
            _absolute("output_tokens", "output_tokens_mean", tokens, budget.output_tokens, base_tokens)
        )
    if budget.max_token_increase is not None:
        checks.append(
            _relative(
                "max_token_increase",
                "output_tokens_mean",
                tokens,
                budget.max_token_increase,
                base_tokens,
                "mean output tokens",
            )
        )

    cost = budget.cost_per_request_of(measurement)
    base_cost = budget.cost_per_request_of(baseline) if baseline is not None else None
    if budget.cost_per_request is not None:
        if cost is None:
            checks.append(_unpriced(budget, "cost_per_request", "cost_per_request", budget.cost_per_request))
        else:
            checks.append(
                _absolute("cost_per_request", "cost_per_request", cost, budget.cost_per_request, base_cost)
            )
    if budget.max_cost_increase is not None:
        if cost is None:
            checks.append(_token_cost_change(budget.max_cost_increase, measurement, baseline))
        else:
            checks.append(
                _relative("max_cost_increase", "cost_per_request", cost, budget.max_cost_increase, base_cost, "cost")
            )
    if budget.monthly_cost is not None:
        rpm = budget.requests_per_month
        if cost is None or rpm is None:
            checks.append(_unpriced(budget, "monthly_cost", "monthly_cost", budget.monthly_cost))
        else:
            base_monthly = base_cost * rpm if base_cost is not None else None
            checks.append(_absolute("monthly_cost", "monthly_cost", cost * rpm, budget.monthly_cost, base_monthly))

    base_quality = baseline.quality if baseline is not None and baseline.has_quality else None
    if budget.min_quality is not None:
        checks.append(_quality_check("min_quality", budget.min_quality, measurement, base_quality))
    if budget.max_quality_drop is not None:
        if base_quality is None:
            why = "no baseline" if baseline is None else "the baseline has no quality score (no references)"
            checks.append(BudgetCheck("max_quality_drop", "quality", measurement.quality, math.nan, None, None, why))
        else:
            limit = base_quality - budget.max_quality_drop
            checks.append(_quality_check("max_quality_drop", limit, measurement, base_quality))
    if baseline is not None:
        checks = _not_comparable(checks, baseline, measurement)
    if decomposition is not None and decomposition.machine is not None:
        machine = decomposition.machine  # the factor as divided out (contention request by request)
    return Verdict(checks=tuple(checks), decomposition=decomposition, machine=machine)

# Relative budgets and the figure each compares with the baseline (cost follows tokens).
_RELATIVE_FIGURES = {"max_latency_increase": "latency", "max_token_increase": "tokens", "max_cost_increase": "tokens"}


def _not_comparable(checks: list[BudgetCheck], baseline: Measurement, measurement: Measurement) -> list[BudgetCheck]:
    """Relative checks over a figure the two measurements cannot compare, turned not evaluable.

    Which difference spoils which figure is decided in one place, :func:`ftcallback._measurement.comparable_facts`
    (a retried check's latency never meets the baseline's; its greedy tokens still do).
    """
    differences = baseline.incompatibilities(measurement)
    if not differences:
        return checks
    out = []
    for check in checks:
        figure = _RELATIVE_FIGURES.get(check.budget)
        spoiled = [d.message for d in differences if figure in d.affects]
        if figure is None or not spoiled or check.passed is None:
            out.append(check)
            continue
        detail = "not comparable with the baseline: " + "; ".join(spoiled)
        out.append(replace(check, passed=None, detail=detail))
    return out
