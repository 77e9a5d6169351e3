"""The result of a measurement: raw per-request samples and the summaries derived from them.

A :class:`Measurement` keeps every sample it was computed from, derives all
statistics on demand, and round-trips through JSON (``to_dict`` / ``from_dict``,
``save`` / ``load``) with a schema version, so a baseline can be measured once
and reused.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from ._errors import BaselineError
from ._json import float_from_json, json_float, jsonable, read_json, write_json_atomic
from ._stats import Stats, median_cv, summarize

__all__ = ["RECORD_FACTS", "SCHEMA_VERSION", "comparable_facts", "Incompatibility", "Measurement", "RequestSample"]

#: Version of the JSON layout written by :meth:`Measurement.to_dict`. Bumped on incompatible changes.
SCHEMA_VERSION = 1

# Relative tolerance when checking a saved summary against the one its samples give (JSON keeps floats
# exactly; this only absorbs a last-bit difference from another platform's libm).
_SUMMARY_RTOL = 1e-9
#: Figures a difference can make incomparable: latency (with TTFT, TPOT, throughput) and output tokens (with cost).
LATENCY, TOKENS = "latency", "tokens"

_UNKNOWN: Any = object()  # a fact an older measurement file does not record: never called a difference


@dataclass(frozen=True)
class ComparableFact:
    """One recorded fact that must agree between a baseline and a later measurement.

    Attributes:
        name: how the fact is named in an :class:`Incompatibility` (``"max_new_tokens"``, ``"decoding"``).
        path: where it lives in :meth:`Measurement.to_dict` (``("settings", "max_new_tokens")``).
        affects: the figures a difference makes incomparable (:data:`LATENCY`, :data:`TOKENS`).
        tokens_unless_greedy: a difference also makes output tokens incomparable unless both sides decode
            greedily (batching and retries leave greedy tokens alone but reseed sampling per batch).
        missing: the value of a key an older file lacks; ``_UNKNOWN`` skips the comparison.
        keys: for a fact that is an object, the keys that matter (``autocast``'s ``source`` does not).
    """

    name: str
    path: tuple[str, ...]
    affects: frozenset[str]
    tokens_unless_greedy: bool = False
    missing: Any = _UNKNOWN
    keys: tuple[str, ...] | None = None

    def value(self, record: Mapping[str, Any]) -> Any:
        """This fact's value in a :meth:`Measurement.to_dict` record (``_UNKNOWN`` when not recorded)."""
        value = _lookup(record, self.path, self.missing)
        if self.path == ("settings", "generation_kwargs") and value is not _UNKNOWN:
            value = jsonable(value or {})  # older files may hold an unnormalised form
        if self.keys is not None and isinstance(value, Mapping):
            # An empty object is what an older file reads back as: not recorded, not a difference.
            return {k: value.get(k) for k in self.keys} if value else _UNKNOWN
        return value


_BOTH = frozenset({LATENCY, TOKENS})
_LATENCY_ONLY = frozenset({LATENCY})

#: What must agree for a comparison to be fair beyond the probe's settings, and which figures a difference
#: spoils. The rule: what the model is asked (the probe's settings, the decoding) and the numbers it computes
#: in (dtypes, autocast) change both latency and tokens; how it is run (batch size or an out-of-memory retry,
#: compile, adapters and their merged state, device, sharding) changes latency only, and output tokens too
#: when decoding samples. Relative budgets over a spoiled figure are not evaluable
#: (:func:`ftcallback._budget.evaluate`); absolute budgets still judge the measurement on its own.
#: The settings rows come from :mod:`ftcallback._probe` (``COMPARABLE_SETTINGS``, ``LATENCY_SETTINGS``):
#: see :func:`comparable_facts` for the whole list.
RECORD_FACTS: tuple[ComparableFact, ...] = (
    # A served model and transformers' generate differ in everything: timing path, and token counting (a server's
    # usage leaves the EOS token out). A measurement without a backend is one of generate.
    ComparableFact("backend", ("environment", "backend"), _BOTH, missing="transformers-generate"),
    ComparableFact("decoding", ("decoding",), _BOTH, keys=("mode", "parameters")),  # ignored flags change nothing
    ComparableFact("param_dtype", ("model", "param_dtype"), _BOTH),
    ComparableFact("compute_dtype", ("model", "compute_dtype"), _BOTH),
    ComparableFact("autocast", ("environment", "autocast"), _BOTH, keys=("enabled", "dtype")),
    ComparableFact("retry", ("retry",), _LATENCY_ONLY, tokens_unless_greedy=True, missing=None),
    ComparableFact("compile", ("model", "compile", "measured_compiled"), _LATENCY_ONLY),
    ComparableFact("adapters", ("model", "adapters"), _LATENCY_ONLY),
    ComparableFact("device", ("environment", "device_type"), _LATENCY_ONLY),
    ComparableFact("device_name", ("environment", "device_name"), _LATENCY_ONLY),
    ComparableFact("sharding_mode", ("environment", "sharding_mode"), _LATENCY_ONLY, missing=None),
)


@functools.cache
def comparable_facts() -> tuple[ComparableFact, ...]:
    """Every fact that must agree between a baseline and a later measurement, in the order reported.

    The probe's settings first (:data:`ftcallback._probe.COMPARABLE_SETTINGS` spoil both figures,
    :data:`ftcallback._probe.LATENCY_SETTINGS` latency, and tokens too under sampling), then
    :data:`RECORD_FACTS`.
    """
    from ._probe import COMPARABLE_SETTINGS, LATENCY_SETTINGS  # _probe imports _prompts; keep this module light

    return (
        *(ComparableFact(k, ("settings", k), _BOTH, missing=None) for k in COMPARABLE_SETTINGS),
        *(
            ComparableFact(k, ("settings", k), _LATENCY_ONLY, tokens_unless_greedy=True, missing=None)
            for k in LATENCY_SETTINGS
        ),
        *RECORD_FACTS,
    )


@dataclass(frozen=True)
class Incompatibility:
    """One difference between a baseline and a later measurement that makes some figures incomparable.

    Attributes:
        fact: the :class:`ComparableFact` name (``"decoding"``, ``"retry"``, ``"max_new_tokens"``, ...).
        baseline: the baseline's value (JSON form).
        current: the later measurement's value.
        affects: the figures that cannot be compared: ``"latency"`` and/or ``"tokens"``.
        message: one human sentence.
    """

    fact: str
    baseline: Any
    current: Any
    affects: frozenset[str]
    message: str

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        return {
            "fact": self.fact,
            "baseline": self.baseline,
            "current": self.current,
            "affects": sorted(self.affects),
            "message": self.message,
        }


def _lookup(data: Mapping[str, Any], path: Sequence[str], missing: Any) -> Any:
    value: Any = data
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return missing
        value = value[key]
    return value


def _show(fact: str, value: Any) -> str:
    """A fact's value as a reader wants it in a sentence."""
    if value is None:
        return "none"
    if fact == "decoding" and isinstance(value, Mapping):
        params = ", ".join(f"{k}={v}" for k, v in (value.get("parameters") or {}).items())
        return f"{value.get('mode')}" + (f" ({params})" if params else "")
    if fact == "autocast" and isinstance(value, Mapping):
        return f"on, {value.get('dtype')}" if value.get("enabled") else "off"
    if fact == "compile":
        return "compiled" if value else "not compiled"
    if fact == "retry" and isinstance(value, Mapping):
        changed = ", ".join(f"{k} {v[0]} -> {v[1]}" for k, v in (value.get("changed") or {}).items())
        return f"retried after {value.get('reason')} ({changed})"
    if fact == "adapters" and isinstance(value, list):
        if not value:
            return "no adapters"
        return "; ".join(
            f"{a.get('type')} {a.get('name')} r={a.get('r')} {'merged' if a.get('merged') else 'unmerged'}"
            for a in value
        )
    return repr(value)


def _spoiled(affects: frozenset[str]) -> str:
    if affects == _BOTH:
        return "latency and output tokens are not comparable"
    if affects == _LATENCY_ONLY:
        return "latency is not comparable"
    return "output tokens are not comparable"


@dataclass(frozen=True)
class RequestSample:
    """One request of one repeat: what a user of the served model would have seen.

    Attributes:
        prompt_index: index of the prompt in the probe set.
        repeat: index of the timed repeat (warm-up calls are not samples).
        latency_s: end-to-end latency in seconds, from the call to ``generate`` until this
            request's last token exists (until ``generate`` returns for the requests that end the call).
        ttft_s: time to first token in seconds, from the call until the first new token exists.
        input_tokens: prompt tokens, padding excluded.
        output_tokens: generated tokens up to and including the first EOS, padding excluded.
        finished: True when the response ended with EOS; False when it was cut at ``max_new_tokens``.
        token_times_s: seconds since the call started at which each output token existed (one per
            output token; empty when not recorded, e.g. in files written before it existed).
    """

    prompt_index: int
    repeat: int
    latency_s: float
    ttft_s: float
    input_tokens: int
    output_tokens: int
    finished: bool
    token_times_s: tuple[float, ...] = ()

    @property
    def tpot_s(self) -> float:
        """Time per output token after the first: ``(latency - ttft) / (output_tokens - 1)``; NaN below 2 tokens."""
        if self.output_tokens < 2:
            return math.nan
        return (self.latency_s - self.ttft_s) / (self.output_tokens - 1)

    @property
    def inter_token_s(self) -> tuple[float, ...]:
        """Gaps between consecutive output tokens (inter-token latency), seconds; empty when not recorded."""
        t = self.token_times_s
        return tuple(b - a for a, b in zip(t, t[1:], strict=False))

    @property
    def truncated(self) -> bool:
        """True when the response was cut at ``max_new_tokens`` without an EOS."""
        return not self.finished


def _ms(values: Sequence[float]) -> list[float]:
    return [v * 1000.0 for v in values]


@dataclass(frozen=True)
class Measurement:
    """Raw samples of one measurement plus the context needed to compare it with another.

    Attributes:
        samples: one :class:`RequestSample` per prompt and timed repeat.
        settings: how it was measured (``max_new_tokens``, ``generation_kwargs``, ``warmup``,
            ``repeats``, ``batch_size``, ``apply_chat_template``, ``num_prompts``, ``prompts_sha256``, ``seed``).
        model: what was measured (class, name or path, dtype, device, parameter count).
        environment: where (library versions, device name, autocast, generation mode).
        decoding: the decoding generate really did: ``{"mode", "parameters", "ignored"}``
            (:class:`ftcallback._execution.Decoding`).
        retry: None, or what a retry changed: ``{"reason": "out_of_memory", "changed": {"batch_size": [4, 2]}}``.
        warmup_latencies_s: wall time of each untimed warm-up call, the first call apart.
        reference_s: per ``generate`` call, in call order, the time of the fixed reference workload run
            just before it (see :class:`~ftcallback._drift.ReferenceWorkload`), NaN for a call it was not
            run before (it runs before a call while it costs at most half the calls' time); empty when
            none ran.
        cpu_share: per ``generate`` call on a CPU device, the share of the time the calling thread was
            ready to run that it did run (1.0 on a quiet machine, less when other processes take the CPU;
            sleeping or blocking counts in neither), one entry per call in call order, warm-up calls first
            (NaN for a call the clock saw no run time of); empty where the OS does not tell (not Linux).
        cpu_run_s, cpu_wait_s: per ``generate`` call, in the same order, the CPU seconds the calling thread
            ran, and the seconds it waited ready to run while other work had the CPU (the part of the
            call's wall time contention added). What is left of the wall time is sleeping, blocking and
            device waits. Empty where the OS does not tell.
        peak_memory_bytes: peak device memory allocated during generation (CUDA only, else None).
        sample_outputs: a few decoded responses, ``{"prompt_index", "prompt", "output"}``.
        quality_scores: one score per prompt (index = prompt index) of the last repeat's response
            against the prompt's reference, NaN for a prompt without one; empty when not scored
            (see :mod:`ftcallback._quality`).
        wall_time_s: wall time of the whole measurement, warm-up included.
        created_at: ISO-8601 UTC timestamp.
        schema_version: JSON layout version.

    Example:
        >>> m = Measurement(samples=(RequestSample(0, 0, 0.5, 0.1, 5, 9, True),))
        >>> m.latency_ms.p50, m.output_tokens.mean
        (500.0, 9.0)
    """

    samples: tuple[RequestSample, ...]
    settings: Mapping[str, Any] = field(default_factory=dict)
    model: Mapping[str, Any] = field(default_factory=dict)
    environment: Mapping[str, Any] = field(default_factory=dict)
    decoding: Mapping[str, Any] = field(default_factory=dict)
    retry: Mapping[str, Any] | None = None
    warmup_latencies_s: tuple[float, ...] = ()
    reference_s: tuple[float, ...] = ()
    cpu_share: tuple[float, ...] = ()
    cpu_run_s: tuple[float, ...] = ()
    cpu_wait_s: tuple[float, ...] = ()
    peak_memory_bytes: int | None = None
    sample_outputs: tuple[Mapping[str, Any], ...] = ()
    quality_scores: tuple[float, ...] = ()
    wall_time_s: float = math.nan
    created_at: str = ""
    schema_version: int = SCHEMA_VERSION

    # ----------------------------------------------------------------- from figures
    @classmethod
    def from_figures(
        cls,
        *,
        latency_ms: float,
        output_tokens: int,
        input_tokens: int = 0,
        ttft_ms: float | None = None,
        quality: float | None = None,
        finished: bool = True,
        dtype: str | None = None,
    ) -> Measurement:
        """A measurement stated as figures rather than measured: every request takes ``latency_ms``.

        For comparing what is known ("200 ms and 150 tokens before, 800 ms after") without saved files.
        Three identical requests stand for the figures, so every budget, relative ones included, can be
        judged (an identical slowdown is certain, not noise).

        Raises:
            ConfigError: a figure is not a finite positive number (tokens: a positive integer).

        Example:
            >>> m = Measurement.from_figures(latency_ms=200, output_tokens=150, quality=0.87)
            >>> m.latency_ms.p95, m.output_tokens.mean, m.quality
            (200.0, 150.0, 0.87)
        """
        from ._errors import ConfigError

        def positive(name: str, value: Any, kind: type = float) -> Any:
            ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
            if not ok or value < 0 or (kind is int and value != int(value)):
                raise ConfigError(f"`{name}` must be a finite number >= 0, got {value!r}")
            return kind(value)

        latency_s = positive("latency_ms", latency_ms) / 1000.0
        ttft_s = latency_s if ttft_ms is None else positive("ttft_ms", ttft_ms) / 1000.0
        n_in, n_out = positive("input_tokens", input_tokens, int), positive("output_tokens", output_tokens, int)
        repeats = 3
        samples = tuple(RequestSample(0, r, latency_s, ttft_s, n_in, n_out, bool(finished)) for r in range(repeats))
        settings: dict[str, Any] = {"source": "figures"}
        scores: tuple[float, ...] = ()
        if quality is not None:
            scores = (positive("quality", quality),)
            settings.update(scorer="given", references_sha256="given")
        model = {"param_dtype": dtype} if dtype else {}
        return cls(samples=samples, settings=settings, model=model, quality_scores=scores)

    # ----------------------------------------------------------------- summaries
    @cached_property
    def latency_ms(self) -> Stats:
        """End-to-end latency per request, milliseconds."""
        return summarize(_ms([s.latency_s for s in self.samples]))

    @cached_property
    def ttft_ms(self) -> Stats:
        """Time to first token per request, milliseconds."""
        return summarize(_ms([s.ttft_s for s in self.samples]))

    @cached_property
    def tpot_ms(self) -> Stats:
        """Time per output token after the first, milliseconds (requests with fewer than 2 tokens left out)."""
        return summarize(_ms([s.tpot_s for s in self.samples if s.output_tokens >= 2]))

    @cached_property
    def itl_ms(self) -> Stats:
        """Inter-token latency, milliseconds: every gap between consecutive tokens of every request."""
        return summarize(_ms([gap for s in self.samples for gap in s.inter_token_s]))

    @cached_property
    def output_tokens(self) -> Stats:
        """Output tokens per response."""
        return summarize([float(s.output_tokens) for s in self.samples])

    @cached_property
    def input_tokens(self) -> Stats:
        """Input (prompt) tokens per request."""
        return summarize([float(s.input_tokens) for s in self.samples])

    @property
    def tokens_per_second(self) -> float:
        """Output tokens per second of request latency: sum of output tokens / sum of latencies."""
        total_time = math.fsum(s.latency_s for s in self.samples if math.isfinite(s.latency_s))
        total_tokens = sum(s.output_tokens for s in self.samples if math.isfinite(s.latency_s))
        return total_tokens / total_time if total_time > 0 else math.nan

    @property
    def eos_fraction(self) -> float:
        """Fraction of responses that ended with EOS."""
        return sum(s.finished for s in self.samples) / len(self.samples) if self.samples else math.nan

    @property
    def truncated_fraction(self) -> float:
        """Fraction of responses cut at ``max_new_tokens``."""
        return 1.0 - self.eos_fraction if self.samples else math.nan

    @property
    def quality(self) -> float:
        """Mean quality score over the prompts with a reference; NaN when nothing was scored."""
        from ._quality import mean_quality

        return mean_quality(self.quality_scores)

    @property
    def has_quality(self) -> bool:
        """True when at least one response was scored against a reference."""
        return any(math.isfinite(s) for s in self.quality_scores)

    @property
    def noise_cv(self) -> float:
        """Timing noise: median over prompts of the coefficient of variation of latency across repeats.

        Variation between prompts (different lengths) is real, so it is left out; what is
        left is how much the same request varies. NaN with a single repeat.
        """
        return median_cv(self.per_prompt("latency_s").values())

    def slo_attainment(
        self, *, latency_ms: float | None = None, ttft_ms: float | None = None, tpot_ms: float | None = None
    ) -> float:
        """Fraction of requests meeting every limit given (vLLM's "goodput" share); NaN without samples.

        A request with fewer than 2 output tokens has no TPOT and meets a TPOT limit by definition;
        a request with a non-finite latency or TTFT meets nothing.

        Example:
            >>> m = Measurement(samples=(RequestSample(0, 0, 0.5, 0.1, 5, 9, True),
            ...                          RequestSample(1, 0, 0.9, 0.1, 5, 9, True)))
            >>> m.slo_attainment(latency_ms=600)
            0.5
        """
        if not self.samples:
            return math.nan

        def meets(s: RequestSample) -> bool:
            if latency_ms is not None and not s.latency_s * 1000.0 <= latency_ms:
                return False
            if ttft_ms is not None and not s.ttft_s * 1000.0 <= ttft_ms:
                return False
            tpot = s.tpot_s
            return tpot_ms is None or math.isnan(tpot) or tpot * 1000.0 <= tpot_ms

        return sum(meets(s) for s in self.samples) / len(self.samples)

    def cost_per_request(self, input_price_per_1k: float = 0.0, output_price_per_1k: float = 0.0) -> float:
        """Mean cost of one request: input tokens x input price + output tokens x output price, per 1000 tokens."""
        if not self.samples:
            return math.nan
        return (
            self.input_tokens.mean * input_price_per_1k + self.output_tokens.mean * output_price_per_1k
        ) / 1000.0

    def per_prompt(self, attribute: str) -> dict[int, list[float]]:
        """Samples of ``attribute`` (a :class:`RequestSample` field or property) grouped by prompt index."""
        grouped: dict[int, list[float]] = {}
        for s in self.samples:
            grouped.setdefault(s.prompt_index, []).append(float(getattr(s, attribute)))
        return grouped

    def summary(self) -> dict[str, float]:
        """Flat summary used by the report, TensorBoard (``efficiency/<key>``) and the CLI tables."""
        out: dict[str, float] = {"requests": float(len(self.samples))}
        for prefix, stats in (
            ("latency_ms", self.latency_ms),
            ("ttft_ms", self.ttft_ms),
            ("tpot_ms", self.tpot_ms),
        ):
            for stat in ("mean", "p50", "p90", "p95", "p99", "std", "cv", "min", "max"):
                out[f"{prefix}_{stat}"] = stats.get(stat)
        for prefix, stats in (("output_tokens", self.output_tokens), ("input_tokens", self.input_tokens)):
            for stat in ("mean", "p50", "p95", "min", "max"):
                out[f"{prefix}_{stat}"] = stats.get(stat)
        if any(s.token_times_s for s in self.samples):
            for stat in ("mean", "p50", "p99", "max"):
                out[f"itl_ms_{stat}"] = self.itl_ms.get(stat)
        out["tokens_per_second"] = self.tokens_per_second
        out["eos_fraction"] = self.eos_fraction
        out["truncated_fraction"] = self.truncated_fraction
        out["noise_cv"] = self.noise_cv
        if self.peak_memory_bytes is not None:
            out["peak_memory_mb"] = self.peak_memory_bytes / 2**20
        if self.has_quality:
            out["quality"] = self.quality
        return out

    def __repr__(self) -> str:
        return (
            f"Measurement(requests={len(self.samples)}, latency_ms_p50={self.latency_ms.p50:.1f}, "
            f"latency_ms_p95={self.latency_ms.p95:.1f}, ttft_ms_p50={self.ttft_ms.p50:.1f}, "
            f"tpot_ms_p50={self.tpot_ms.p50:.2f}, output_tokens_mean={self.output_tokens.mean:.1f}, "
            f"noise_cv={self.noise_cv:.3f})"
        )

    # ----------------------------------------------------------------- comparison
    def incompatibilities(self, other: Measurement) -> list[Incompatibility]:
        """What differs between this measurement (the baseline) and ``other``, per :func:`comparable_facts`.

        Empty when the two are comparable. Each :class:`Incompatibility` says which figures it spoils;
        a retry that changed the batch size is reported once, as the retry.
        """
        mine, theirs = self.to_dict(include_samples=False), other.to_dict(include_samples=False)
        greedy = all(
            (d.get("mode") if isinstance(d, Mapping) else "greedy") in ("greedy", None)
            for d in (mine.get("decoding"), theirs.get("decoding"))
        )
        problems: list[Incompatibility] = []
        for fact in comparable_facts():
            base, new = fact.value(mine), fact.value(theirs)
            if base is _UNKNOWN or new is _UNKNOWN or base == new:
                continue
            affects = fact.affects | ({TOKENS} if fact.tokens_unless_greedy and not greedy else set())
            affects = frozenset(affects)
            message = (
                f"{fact.name} is {_show(fact.name, base)} in the baseline but {_show(fact.name, new)} here; "
                f"{_spoiled(affects)}"
            )
            problems.append(Incompatibility(fact.name, base, new, affects, message))
        if self.has_quality and other.has_quality:  # other references or another scorer: quality only
            from ._probe import QUALITY_SETTINGS

            for key in QUALITY_SETTINGS:
                base, new = self.settings.get(key), other.settings.get(key)
                if base != new:
                    message = f"{key} is {base!r} in the baseline but {new!r} here; quality is not comparable"
                    problems.append(Incompatibility(key, base, new, frozenset({"quality"}), message))
        retried = {k for r in (self.retry, other.retry) if r for k in (r.get("changed") or {})}
        return [p for p in problems if not (p.fact in retried and any(q.fact == "retry" for q in problems))]

    def with_retry(self, reason: str, **changed: tuple[Any, Any]) -> Measurement:
        """This measurement marked as a retry: ``m.with_retry("out_of_memory", batch_size=(4, 2))``.

        The retried measurement is recorded as it ran (its ``settings`` hold the new values); ``retry`` says
        why and what changed, so a comparison with the baseline flags it (:meth:`incompatibilities`).
        """
        return replace(self, retry={"reason": reason, "changed": {k: [v[0], v[1]] for k, v in changed.items()}})

    # ----------------------------------------------------------------- JSON
    def to_dict(self, *, include_samples: bool = True) -> dict[str, Any]:
        """A JSON-serialisable dict with ``schema_version``; inverse of :meth:`from_dict`.

        ``include_samples=False`` leaves out the raw samples and the summary (the record alone).
        """
        record = {
            "schema_version": self.schema_version,
            "created_at": self.created_at,
            "settings": dict(self.settings),
            "model": dict(self.model),
            "environment": dict(self.environment),
            "decoding": dict(self.decoding),
            "retry": None if self.retry is None else dict(self.retry),
        }
        if not include_samples:
            return record
        cols = [f.name for f in fields(RequestSample) if f.name != "token_times_s"]
        samples: dict[str, list[Any]] = {c: [json_float(getattr(s, c)) for s in self.samples] for c in cols}
        if any(s.token_times_s for s in self.samples):
            samples["token_times_s"] = [[json_float(t) for t in s.token_times_s] for s in self.samples]
        return {
            **record,
            "wall_time_s": json_float(self.wall_time_s),
            "warmup_latencies_s": [json_float(v) for v in self.warmup_latencies_s],
            "reference_s": [json_float(v) for v in self.reference_s],
            "cpu_share": [json_float(v) for v in self.cpu_share],
            "cpu_run_s": [json_float(v) for v in self.cpu_run_s],
            "cpu_wait_s": [json_float(v) for v in self.cpu_wait_s],
            "peak_memory_bytes": self.peak_memory_bytes,
            "summary": {k: json_float(v) for k, v in self.summary().items()},
            "sample_outputs": [dict(o) for o in self.sample_outputs],
            "quality_scores": [json_float(v) for v in self.quality_scores],
            # Columnar: compact, and readable with one line of pandas.
            "samples": samples,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Measurement:
        """Rebuild a measurement written by :meth:`to_dict`.

        The saved ``summary`` (written for people and other tools) must agree with what the samples
        give: a summary edited by hand is rejected, never silently replaced by recomputed figures.

        Raises:
            BaselineError: the data is not a measurement, has another schema version, or its summary
                disagrees with its samples.
        """
        if not isinstance(data, Mapping) or "samples" not in data:
            raise BaselineError("not an ftcallback measurement: no 'samples' field")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BaselineError(
                f"measurement schema_version {version!r} is not supported (this ftcallback reads "
                f"{SCHEMA_VERSION}); measure the baseline again with this version"
            )
        try:
            cols = data["samples"]
            n = len(cols["latency_s"])
            token_times = cols.get("token_times_s") or [[] for _ in range(n)]
            samples = tuple(
                RequestSample(
                    prompt_index=int(cols["prompt_index"][i]),
                    repeat=int(cols["repeat"][i]),
                    latency_s=float_from_json(cols["latency_s"][i]),
                    ttft_s=float_from_json(cols["ttft_s"][i]),
                    input_tokens=int(cols["input_tokens"][i]),
                    output_tokens=int(cols["output_tokens"][i]),
                    finished=bool(cols["finished"][i]),
                    token_times_s=tuple(float_from_json(t) for t in token_times[i]),
                )
                for i in range(n)
            )
            measurement = cls(
                samples=samples,
                settings=dict(data.get("settings", {})),
                model=_model_record(data.get("model", {})),
                environment=dict(data.get("environment", {})),
                decoding=dict(data.get("decoding") or {}),
                retry=None if data.get("retry") is None else dict(data["retry"]),
                warmup_latencies_s=tuple(float_from_json(v) for v in data.get("warmup_latencies_s", [])),
                reference_s=tuple(float_from_json(v) for v in data.get("reference_s", [])),
                cpu_share=tuple(float_from_json(v) for v in data.get("cpu_share", [])),
                cpu_run_s=tuple(float_from_json(v) for v in data.get("cpu_run_s", [])),
                cpu_wait_s=tuple(float_from_json(v) for v in data.get("cpu_wait_s", [])),
                peak_memory_bytes=data.get("peak_memory_bytes"),
                sample_outputs=tuple(dict(o) for o in data.get("sample_outputs", [])),
                quality_scores=tuple(float_from_json(v) for v in data.get("quality_scores", [])),
                wall_time_s=float_from_json(data.get("wall_time_s")),
                created_at=str(data.get("created_at", "")),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise BaselineError(f"corrupt measurement: {type(exc).__name__}: {exc}") from exc
        _check_summary(data.get("summary"), measurement.summary())
        return measurement

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the measurement as JSON, atomically (a crash leaves the previous file whole)."""
        path = Path(path)
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, what: str = "baseline file") -> Measurement:
        """Read a measurement saved with :meth:`save` (or the ``baseline`` of a report.json).

        Args:
            path: the JSON file.
            what: how error messages name the file (the CLI says which side of a comparison it is).

        Raises:
            BaselineError: the file is missing, not JSON, or not a measurement of this schema.
        """
        path = Path(path)
        data = read_json(path, what=what, error=BaselineError)
        if isinstance(data, Mapping) and "samples" not in data and isinstance(data.get("baseline"), Mapping):
            data = data["baseline"]  # a report.json: take its baseline
        try:
            return cls.from_dict(data)
        except BaselineError as exc:
            raise BaselineError(f"{what} {str(path)!r}: {exc}") from exc


def _check_summary(saved: Any, derived: Mapping[str, float]) -> None:
    """Raise when a saved summary states a figure its samples do not give.

    Keys only one side has are skipped: an older file lacks newer keys, a newer one may carry keys this
    version does not compute.
    """
    if saved is None:
        return
    if not isinstance(saved, Mapping):
        raise BaselineError(f"'summary' must be an object, got {type(saved).__name__}")
    for key, value in derived.items():
        if key not in saved:
            continue
        stated = saved[key]
        try:
            stated_f = float_from_json(stated)
        except (TypeError, ValueError):
            stated_f = None
        same = stated_f is not None and (
            (math.isnan(stated_f) and math.isnan(value))
            or stated_f == value
            or math.isclose(stated_f, value, rel_tol=_SUMMARY_RTOL, abs_tol=1e-12)
        )
        if not same:
            raise BaselineError(
                f"field 'summary.{key}' is {stated!r} but the samples give {json_float(value)!r}; the summary "
                "was edited or the samples were changed. Measure again, or delete 'summary' from the file "
                "to use the samples as they are"
            )
def _model_record(model: Mapping[str, Any]) -> dict[str, Any]:
    """The ``model`` record, with the parameter dtype of files older than ``param_dtype`` under its new name."""
    out = dict(model)
    if "dtype" in out and "param_dtype" not in out:
        out["param_dtype"] = out.pop("dtype")
    return out
