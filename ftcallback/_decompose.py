"""Why latency moved: longer answers (exact), slower tokens (statistical), a slower machine (reference).

Per prompt, the latency the check's answer would have had at the baseline's own speed is
``TTFT_base + (n_out_check - 1) x TPOT_base``, computed for every baseline repeat. Against it:

* the **length effect** is that counterfactual over the baseline's latency. Under greedy decoding the
  output lengths are deterministic, so it is exact: it uses no timing of the check at all;
* the **speed effect** is the check's latency over that counterfactual, i.e. prompt by prompt at equal
  length, with the hierarchical bootstrap interval of :func:`~ftcallback._stats.paired_ratio`;
* the **machine factor** (:mod:`ftcallback._drift`) is divided out of the speed effect *request by
  request* where both measurements say, per ``generate`` call, what the machine was doing: each timing
  loses the part its call spent waiting for the CPU (contention), the part spent computing is divided
  by the reference workload's local speed (device), and time slept or blocked is kept as it is. The
  machine's noise then leaves the timings instead of being added beside them, and the factor reported
  is what that took off. Files without per-call values (written before they were kept) divide by the
  measurement-level factor, its uncertainty added to the interval.

The total, the length and the speed are geometric means over prompts of per-prompt median ratios; the
machine is what is left, total over length and speed, so they multiply exactly:
``total = length x speed x machine``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from ._drift import MachineFactor, request_cpu, request_references
from ._format import percent_change
from ._json import json_float
from ._measurement import Measurement, RequestSample
from ._stats import RESAMPLES, RatioEstimate, combine_log_intervals, paired_ratio

__all__ = ["LatencyDecomposition", "decompose", "level_uncertainty", "machine_free_by_prompt"]


def _pct(ratio: float) -> str:
    """A ratio as the signed percentage change it means: ``1.25`` -> ``"+25%"``."""
    return percent_change(ratio - 1.0)


@dataclass(frozen=True)
class LatencyDecomposition:
    """A latency change split into its causes, each ratio check / baseline.

    Attributes:
        total: observed change (geometric mean over prompts of the per-prompt median latency ratio).
        length: change from the number of output tokens alone, at the baseline's per-token speed; exact.
        speed: change in per-token speed at equal length, the machine factor divided out.
        speed_low, speed_high: the ``confidence`` interval of ``speed`` (widened by the machine's).
        speed_significant: the interval excludes 1.
        confidence: confidence level of the interval.
        pairs: prompts compared.
        machine: the machine factor, when both measurements timed the reference workload.

    Example:
        >>> d = LatencyDecomposition(1.6, 1.57, 1.019, 0.98, 1.06, False, 0.95, 8)
        >>> d.describe()
        'latency +60%: +57% from longer answers (exact), +2% from per-token speed [-2%, +6%] (not significant)'
    """

    total: float
    length: float
    speed: float
    speed_low: float
    speed_high: float
    speed_significant: bool
    confidence: float = 0.95
    pairs: int = 0
    machine: MachineFactor | None = None

    @property
    def speed_estimate(self) -> RatioEstimate:
        """``speed`` and its interval as a :class:`RatioEstimate`."""
        return RatioEstimate(self.speed, self.speed_low, self.speed_high, self.pairs, self.confidence)

    @property
    def model_estimate(self) -> RatioEstimate:
        """The model's own effect, ``length x speed`` (machine excluded); exact length scales the interval."""
        return RatioEstimate(
            self.length * self.speed,
            self.length * self.speed_low,
            self.length * self.speed_high,
            self.pairs,
            self.confidence,
        )

    def describe(self) -> str:
        """One line: what changed and why, the exact part and the statistical part told apart."""
        speed = (
            f"{_pct(self.speed)} from per-token speed [{_pct(self.speed_low)}, {_pct(self.speed_high)}] "
            f"({'significant' if self.speed_significant else 'not significant'})"
        )
        text = f"latency {_pct(self.total)}: {_pct(self.length)} from longer answers (exact), {speed}"
        if self.machine is not None:
            text += f", {_pct(self.machine.estimate.ratio)} from the {self.machine.describe()}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": json_float(self.total),
            "length": json_float(self.length),
            "speed": json_float(self.speed),
            "speed_low": json_float(self.speed_low),
            "speed_high": json_float(self.speed_high),
            "speed_significant": self.speed_significant,
            "confidence": self.confidence,
            "pairs": self.pairs,
            "machine": None if self.machine is None else self.machine.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Any) -> LatencyDecomposition:
        def num(key: str) -> float:
            value = data.get(key)
            return math.nan if value is None else float(value)

        machine = data.get("machine")
        return cls(
            total=num("total"),
            length=num("length"),
            speed=num("speed"),
            speed_low=num("speed_low"),
            speed_high=num("speed_high"),
            speed_significant=bool(data.get("speed_significant", False)),
            confidence=num("confidence"),
            pairs=int(data.get("pairs", 0)),
            machine=None if machine is None else MachineFactor.from_dict(machine),
        )


def _by_prompt(m: Measurement) -> dict[int, list[RequestSample]]:
    grouped: dict[int, list[RequestSample]] = {}
    for s in m.samples:
        grouped.setdefault(s.prompt_index, []).append(s)
    return grouped


def _median(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def decompose(
    baseline: Measurement,
    measurement: Measurement,
    *,
    confidence: float = 0.95,
    seed: int = 0,
    machine: MachineFactor | None = None,
    resamples: int = RESAMPLES,
) -> LatencyDecomposition | None:
    """Split the latency change from ``baseline`` to ``measurement`` into length, speed and machine.

    Args:
        baseline: the reference measurement.
        measurement: the check.
        confidence: two-sided confidence of the speed interval.
        seed: seed of the bootstrap (the callback's seed).
        machine: the machine factor (:func:`~ftcallback._drift.machine_factor`); divided out of the
            speed effect, request by request where the calls can be matched to the requests (see the
            module docstring), else as a whole with its uncertainty added to the interval. The returned
            decomposition's ``machine`` is the factor as divided out.
        resamples: bootstrap resamples.

    Returns:
        The decomposition, or None when no prompt has finite latencies on both sides.
    """
    base, new = _by_prompt(baseline), _by_prompt(measurement)
    # A baseline prompt with a single output token has no TPOT of its own: the baseline's typical one.
    fallback_tpot = _median([s.tpot_s for s in baseline.samples])
    base_latency: dict[int, list[float]] = {}
    predicted: dict[int, list[tuple[float, RequestSample]]] = {}
    new_latency: dict[int, list[tuple[float, RequestSample]]] = {}
    for k, base_samples in base.items():
        if k not in new:
            continue
        n_new = _median([float(s.output_tokens) for s in new[k]])
        preds = []
        for s in base_samples:
            tpot = s.tpot_s if s.output_tokens >= 2 else fallback_tpot
            extra = n_new - 1.0
            preds.append(s.ttft_s + extra * tpot if extra > 0 else s.ttft_s)
            if s.output_tokens == n_new:  # the same length: the counterfactual is the latency itself
                preds[-1] = s.latency_s
        lat_b = [s.latency_s for s in base_samples]
        lat_n = [s.latency_s for s in new[k]]
        if all(
            math.isfinite(v) and v > 0 for v in (_median(lat_b), _median(preds), _median(lat_n))
        ):
            base_latency[k] = lat_b
            predicted[k] = list(zip(preds, base_samples, strict=True))
            new_latency[k] = [(s.latency_s, s) for s in new[k]]
    if not base_latency:
        return None

    frame = _fastest_frame(baseline, measurement)

    def ratio(
        cpu: tuple[_Cpu, _Cpu] | None = None, refs: tuple[_Weights, _Weights] | None = None, *, interval: bool = True
    ) -> RatioEstimate:
        """The paired ratio check / counterfactual, each timing taken out of its call's machine state; without
        ``interval`` the point alone (no bootstrap: ``evaluate`` runs at every adaptive look)."""
        scale = frame if refs is not None else 1.0
        sides = []
        for i, timed in enumerate((predicted, new_latency)):
            side_cpu = None if cpu is None else cpu[i]
            side_refs = None if refs is None else refs[i]
            sides.append({k: _machine_free(pairs, side_cpu, side_refs, scale) for k, pairs in timed.items()})
        return paired_ratio(
            sides[0], sides[1], confidence=confidence, resamples=resamples if interval else 0, seed=seed
        )

    raw_speed = ratio(interval=False)
    if not math.isfinite(raw_speed.ratio):
        return None
    length = math.exp(
        statistics.fmean(
            math.log(_median([v for v, _ in predicted[k]]) / _median(base_latency[k])) for k in base_latency
        )
    )
    speed: RatioEstimate | None = None
    if machine is not None:
        # The machine divided out of each timing where both sides say, call by call, what it was: the call's
        # wait for the CPU (contention) and the reference workload's local speed (device). Paired this way the
        # machine's own noise leaves the timings instead of being added beside them.
        waits = _both(request_cpu, baseline, measurement) if machine.contention is not None else None
        refs = _both(request_references, baseline, measurement) if machine.device is not None else None
        after_wait = ratio(cpu=waits, interval=refs is None) if waits is not None else raw_speed
        full = ratio(cpu=waits, refs=refs) if refs is not None else after_wait
        if (waits is None and refs is None) or not (math.isfinite(after_wait.ratio) and math.isfinite(full.ratio)):
            # Divided out even when it did not move beyond its noise: a load that came and went during the
            # measurement leaves a factor of 1.2 with an interval reaching 1, and ignoring it would judge
            # the model by the machine. Its uncertainty is in the interval, so a steady machine costs little.
            speed = combine_log_intervals(ratio(), machine.estimate, divide=True)
        else:
            machine = machine.with_effects(
                raw_speed.ratio / after_wait.ratio if waits is not None else None,
                after_wait.ratio / full.ratio if refs is not None else None,
            )
            speed = full
            # A part that could not be matched to the requests is divided out as a whole, its uncertainty added.
            for part, matched in ((machine.contention, waits), (machine.device, refs)):
                if part is not None and matched is None:
                    speed = combine_log_intervals(speed, part, divide=True)
    if speed is None:
        speed = ratio()
    return LatencyDecomposition(
        total=length * raw_speed.ratio,
        length=length,
        speed=speed.ratio,
        speed_low=speed.low,
        speed_high=speed.high,
        speed_significant=speed.low > 1.0 or speed.high < 1.0,
        confidence=confidence,
        pairs=speed.pairs,
        machine=machine,
    )


_Weights = dict[tuple[int, int], float]
_Cpu = dict[tuple[int, int], tuple[float, float]]


_T = TypeVar("_T")


def _both(
    per_request: Callable[[Measurement], dict[tuple[int, int], _T] | None],
    baseline: Measurement,
    measurement: Measurement,
) -> tuple[dict[tuple[int, int], _T], dict[tuple[int, int], _T]] | None:
    """``per_request`` of both measurements, or None unless both give one for some request."""
    a, b = per_request(baseline), per_request(measurement)
    return (a, b) if a and b else None


def _fastest_frame(baseline: Measurement, measurement: Measurement) -> float:
    """The device speed both sides' computing is expressed at: the faster of the two measurements' median
    reference times.

    Computing is divided by the device's local speed, so a model that only computes is judged the same in any
    frame. Time a model spends not computing (a sleep, I/O, a device wait inside ``forward``) is not divided,
    so its weight against the computing depends on the frame: at a baseline that met a slow moment of the
    machine, a wait that adds 25% on the machine at its best reads as 20%. Contention is taken out to none,
    the quiet machine; the device is taken to the faster state measured, the nearer of the two to the machine
    at its best.
    """
    times = [_median(list(m.reference_s)) for m in (baseline, measurement)]
    finite = [t for t in times if math.isfinite(t) and t > 0]
    return min(finite) if finite else 1.0


def _machine_free(
    pairs: list[tuple[float, RequestSample]], cpu: _Cpu | None, refs: _Weights | None, scale: float
) -> list[float]:
    """Timings with the machine taken out, call by call: the share spent waiting for the CPU removed, the
    share spent computing divided by the device's local speed (reference time over ``scale``), the rest
    (sleeping, blocking) kept as it is. Without CPU accounting the whole timing counts as computing. A
    timing whose call has no value is left out."""
    out = []
    for value, s in pairs:
        key = (s.prompt_index, s.repeat)
        if (cpu is not None and key not in cpu) or (refs is not None and key not in refs):
            continue
        ran, waited = cpu[key] if cpu is not None else (1.0, 0.0)
        device = refs[key] / scale if refs is not None else 1.0
        out.append(value * (ran / device + max(0.0, 1.0 - ran - waited)))
    return out


def machine_free_by_prompt(measurement: Measurement, *, device: bool = True) -> dict[int, list[float]]:
    """Each prompt's latencies with the machine taken out call by call the way :func:`decompose` takes it out (the
    wait for the CPU removed, the computing divided by the reference's local speed; ``device=False``: the wait
    alone), but in the measurement's own frame (its median reference time): the timings whose spread a
    comparison sees. Timings whose call has no value, or that are not finite, are left out; without per-call
    values, the latencies as measured.

    Example:
        >>> from ftcallback._measurement import RequestSample
        >>> m = Measurement(samples=(RequestSample(0, 0, 0.4, 0.1, 5, 9, True),
        ...                          RequestSample(0, 1, 0.6, 0.1, 5, 9, True)))
        >>> machine_free_by_prompt(m)
        {0: [0.4, 0.6]}
    """
    cpu = request_cpu(measurement) or None
    refs = (request_references(measurement) or None) if device else None
    scale = _median(list(measurement.reference_s)) if refs is not None else 1.0
    out = {}
    for k, pairs in _by_prompt(measurement).items():
        timings = _machine_free([(s.latency_s, s) for s in pairs], cpu, refs, scale)
        out[k] = [v for v in timings if math.isfinite(v) and v > 0]
    return out


def level_uncertainty(measurement: Measurement, *, resamples: int = 500, seed: int = 0) -> float:
    """How well ``measurement`` knows its own latency level, as a check is compared with it: the standard
    error, in log units, of the geometric mean over prompts of each prompt's median machine-free latency
    (``0.0075`` is 0.75%). Requests are resampled within each prompt (the prompts are the same at
    every check, so they are not); the machine is taken out call by call the way :func:`decompose` takes it
    out (in this measurement's own frame), so a load that comes and goes is not counted as the model's noise.

    The baseline is every check's yardstick: its error is in every ratio and never averages out, so it is
    measured until this is small (:func:`~ftcallback._sequential.baseline_needs_more`).

    Returns:
        The standard error; ``inf`` when no prompt has two usable timings.

    Example:
        >>> from ftcallback._measurement import RequestSample
        >>> m = Measurement(samples=tuple(RequestSample(p, r, 0.5 + 0.01 * r, 0.1, 5, 9, True)
        ...                               for p in range(2) for r in range(4)))
        >>> 0 < level_uncertainty(m) < 0.02
        True
    """
    logs = [
        np.log(np.asarray(values))
        for values in machine_free_by_prompt(measurement).values()
        if len(values) >= 2  # a prompt without two timings has no spread to read; decompose drops it too
    ]
    if not logs:
        return math.inf
    rng = np.random.default_rng(seed)
    level = np.mean([np.median(a[rng.integers(0, a.size, (resamples, a.size))], axis=1) for a in logs], axis=0)
    return float(np.std(level))
