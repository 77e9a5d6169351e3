"""Machine-drift control: a fixed reference workload, and the machine's speed factor it estimates.

A check must tell a slower model from a slower machine. :class:`ReferenceWorkload` is a frozen,
deterministic little network run on the model's device between the probe's ``generate`` calls
(:func:`~ftcallback._measure.measure` times it once before every call); its timings are kept in
``Measurement.reference_s``. :func:`machine_factor` compares those of a check with those of the
baseline: the same work taking 1.4x as long means the machine (shared CPU, throttled GPU, other
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
from ._stats import RESAMPLES, RatioEstimate, independent_ratio

__all__ = ["MachineFactor", "ReferenceWorkload", "machine_factor"]

# Width, depth and rows of the reference MLP by device type: a few milliseconds on one CPU thread,
# and on an accelerator large enough that the kernels, not their launches, dominate.
_DEFAULT_SHAPE = {"cpu": (192, 4, 32), "cuda": (4096, 8, 256)}


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
        shape = (width or default[0], depth or default[1], rows or default[2])
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
    """How much slower the machine ran the reference workload during a check than during the baseline.

    Attributes:
        estimate: ``check / baseline`` reference time, a trimmed-mean ratio with its bootstrap interval.
        moved: True when the interval excludes 1: the machine changed speed beyond its own noise, so
            the check's speed effect is divided by ``estimate.ratio``.
    """

    estimate: RatioEstimate
    moved: bool

    @property
    def factor(self) -> float:
        """The factor a speed effect is divided by: the estimate when the machine moved, else 1."""
        return self.estimate.ratio if self.moved else 1.0

    def describe(self) -> str:
        """``machine x1.38 [1.31, 1.46] (moved; normalised)`` or ``machine x1.01 [0.97, 1.05] (steady)``."""
        e = self.estimate
        state = "moved; speed normalised" if self.moved else "steady"
        return f"machine x{e.ratio:.2f} [{e.low:.2f}, {e.high:.2f}] ({state})"

    def to_dict(self) -> dict[str, Any]:
        return {"estimate": self.estimate.to_dict(), "moved": self.moved}

    @classmethod
    def from_dict(cls, data: Any) -> MachineFactor:
        return cls(RatioEstimate.from_dict(data["estimate"]), bool(data["moved"]))


def machine_factor(
    baseline: Any,
    measurement: Any,
    *,
    confidence: float = 0.95,
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> MachineFactor | None:
    """The machine's speed factor between ``baseline`` and ``measurement`` (two Measurements).

    Returns:
        None when either side has fewer than 3 reference timings or they ran different workloads
        (then nothing is normalised).
    """
    base, new = tuple(baseline.reference_s), tuple(measurement.reference_s)
    if len(base) < 3 or len(new) < 3:
        return None
    if baseline.environment.get("reference") != measurement.environment.get("reference"):
        return None
    est = independent_ratio(base, new, confidence=confidence, resamples=resamples, seed=seed)
    if not math.isfinite(est.ratio):
        return None
    return MachineFactor(est, est.low > 1.0 or est.high < 1.0)
