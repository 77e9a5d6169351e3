"""Device-synchronised timing, peak memory, and conditions interleaved so that drift hits them alike."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """``(fn(), seconds)`` with the device synchronised before both clock reads."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None


def interleaved(rounds: int, conditions: Mapping[str, Callable[[], float]]) -> dict[str, list[float]]:
    """Run each condition once per round, order reversed every other round (A B, B A, ...).

    Drift on a shared machine then hits every condition equally; compare per-round ratios.
    """
    names = list(conditions)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            out[name].append(conditions[name]())
    return out


def busy_wait(seconds: float) -> None:
    """Spin for ``seconds`` (time.sleep is too coarse for sub-millisecond forwards)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
