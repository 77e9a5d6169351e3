"""Machine-drift control: a fixed reference workload, and the machine's speed factor it estimates.

A check must tell a slower model from a slower machine. :class:`ReferenceWorkload` is a frozen,
deterministic little network run on the model's device between the probe's ``generate`` calls
(:func:`~ftcallback._measure.measure` times it once before every call); its timings are kept in
``Measurement.reference_s``. On a CPU, ``measure`` also records each call's share of the CPU
(``Measurement.cpu_share``: time run over time ready to run, from the OS's run-queue
accounting). :func:`machine_factor` compares both with
the baseline's: the same work taking 1.4x as long means the machine (shared CPU, throttled GPU, other
jobs) became 1.4x slower, and the model's speed effect is divided by that factor before it is judged.

The assumption (DESIGN.md, "Machine drift"): what slows the machine down slows a small dense
network and the model's decoding steps by the same factor, because both are the same kind of
work (dense matmuls in the same process, on the same device, at the same thread count) timed at
interleaved moments.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ._errors import ConfigError
from ._stats import RESAMPLES, RatioEstimate, combine_log_intervals, independent_ratio

__all__ = ["MachineFactor", "ReferenceWorkload", "machine_factor"]

# Width, depth and rows of the reference MLP by device type: a few milliseconds on one CPU thread,
# and on an accelerator large enough that the kernels, not their launches, dominate.
_DEFAULT_SHAPE = {"cpu": (256, 4, 64), "cuda": (4096, 8, 256)}


class ReferenceWorkload:
    """A frozen MLP of fixed random weights, timed between the probe's calls to sense the machine.

    Its weights come from a private generator (seed 0), so every run of every process does the same
    arithmetic; it runs under ``torch.no_grad()`` with autocast off, touches no global RNG and no
    model state, and is built once and reused for every measurement of a run.

    Args:
        device: where the model generates (the workload must share its device).
        width: features of each square layer; default by device type.
        depth: number of layers; default by device type.
        rows: rows of the input batch; default by device type.

    Example:
        >>> ref = ReferenceWorkload("cpu", width=16, depth=2, rows=4)
        >>> ref.seconds() > 0
        True
    """

    def __init__(
        self,
        device: str | torch.device = "cpu",
        *,
        width: int | None = None,
        depth: int | None = None,
        rows: int | None = None,
    ) -> None:
        self.device = torch.device(device)
        default = _DEFAULT_SHAPE.get(self.device.type, _DEFAULT_SHAPE["cuda"])
        shape = tuple(d if v is None else v for v, d in zip((width, depth, rows), default, strict=True))
        for name, value in zip(("width", "depth", "rows"), shape, strict=True):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"`{name}` must be an int >= 1, got {value!r}")
        self.width, self.depth, self.rows = shape
        gen = torch.Generator().manual_seed(0)
        scale = 1.0 / math.sqrt(self.width)
        self._weights = [
            (torch.randn(self.width, self.width, generator=gen) * scale).to(self.device)
            for _ in range(self.depth)
        ]
        self._input = torch.randn(self.rows, self.width, generator=gen).to(self.device)

    @property
    def spec(self) -> str:
        """What the workload is, recorded with its timings: two timings compare only under one spec."""
        return f"mlp{self.width}x{self.depth}x{self.rows}/{self.device.type}"

    def run(self) -> Any:
        """One pass of the fixed work (untimed)."""
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            x = self._input
            for w in self._weights:
                x = torch.tanh(x @ w)
            return x

    def seconds(
        self, clock: Callable[[], float] = time.perf_counter, sync: Callable[[], Any] | None = None
    ) -> float:
        """Seconds one pass takes by ``clock``, the device synchronised before each read."""
        if sync is not None:
            sync()
        start = clock()
        self.run()
        if sync is not None:
            sync()
        return clock() - start

    def __repr__(self) -> str:
        return f"ReferenceWorkload({self.spec})"


@dataclass(frozen=True)
class MachineFactor:
    """How much slower the machine was during a check than during the baseline, and from what.

    Attributes:
        estimate: the whole factor, ``contention x device`` (a part that was not measured counts as 1),
            with an interval combining both parts' uncertainty.
        moved: True when that interval excludes 1: the machine changed speed beyond its own noise (an
            environment change). The speed effect is divided by ``estimate.ratio`` either way.
        contention: on a CPU, ``1 / cpu_share`` of the probe's own ``generate`` calls (time ready to run
            per second run), check over baseline: how much less of the CPU the thread got when it wanted
            it (other processes, dataloader workers); a model that sleeps or blocks is not in it.
        device: the reference workload's time, check over baseline: the same work on the same device
            at another speed (clock throttling, a shared accelerator, memory-bandwidth neighbours).
    """

    estimate: RatioEstimate
    moved: bool
    contention: RatioEstimate | None = None
    device: RatioEstimate | None = None

    @property
    def factor(self) -> float:
        """The factor a speed effect is divided by."""
        return self.estimate.ratio

    def describe(self) -> str:
        """e.g. ``machine x1.38 [1.31, 1.46] (CPU contention x1.37, device x1.01; moved, divided out)``."""
        e = self.estimate
        parts = [
            f"{name} x{part.ratio:.2f}"
            for name, part in (("CPU contention", self.contention), ("device", self.device))
            if part is not None
        ]
        state = "moved, divided out" if self.moved else "within its noise, divided out"
        return f"machine x{e.ratio:.2f} [{e.low:.2f}, {e.high:.2f}] ({', '.join(parts)}; {state})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "estimate": self.estimate.to_dict(),
            "moved": self.moved,
            "contention": None if self.contention is None else self.contention.to_dict(),
            "device": None if self.device is None else self.device.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Any) -> MachineFactor:
        def est(key: str) -> RatioEstimate | None:
            value = data.get(key)
            return None if value is None else RatioEstimate.from_dict(value)

        estimate = est("estimate")
        if estimate is None:
            raise ValueError("a machine factor needs an 'estimate'")
        return cls(estimate, bool(data["moved"]), est("contention"), est("device"))


def machine_factor(
    baseline: Any,
    measurement: Any,
    *,
    confidence: float = 0.95,
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> MachineFactor | None:
    """The machine's speed factor between ``baseline`` and ``measurement`` (two Measurements).

    Two parts, each a trimmed-mean ratio with a bootstrap interval, multiplied (their log half-widths
    added in quadrature): CPU contention from ``cpu_share`` (of every ``generate`` call, precise
    because each call spans many scheduler slices) and device speed from ``reference_s`` (the
    reference workload, in thread CPU seconds on a CPU so that preemption does not enter it twice).
    A part needs at least 3 values on both sides (and the same reference workload).

    Returns:
        None when neither part can be estimated (then nothing is normalised).
    """
    contention = device = None
    base_share = [1.0 / v for v in baseline.cpu_share if v > 0]
    new_share = [1.0 / v for v in measurement.cpu_share if v > 0]
    if len(base_share) >= 3 and len(new_share) >= 3:
        contention = independent_ratio(base_share, new_share, confidence=confidence, resamples=resamples, seed=seed)
    base_ref, new_ref = tuple(baseline.reference_s), tuple(measurement.reference_s)
    same = baseline.environment.get("reference") == measurement.environment.get("reference")
    if len(base_ref) >= 3 and len(new_ref) >= 3 and same:
        device = independent_ratio(base_ref, new_ref, confidence=confidence, resamples=resamples, seed=seed + 1)
    parts = [p for p in (contention, device) if p is not None and math.isfinite(p.ratio)]
    if not parts:
        return None
    estimate = parts[0]
    for part in parts[1:]:
        estimate = combine_log_intervals(estimate, part, divide=False)
    return MachineFactor(estimate, estimate.low > 1.0 or estimate.high < 1.0, contention, device)
