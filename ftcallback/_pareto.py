"""Which checkpoint to ship: quality against latency against cost, dominated checks marked.

A pure function over per-check figures, with no Trainer and no I/O: the monitor, the
report and the callback call :func:`pareto` with what they measured and show its answer.

Rules:

* Check *a* dominates check *b* when *a* is at least as good on every known dimension
  (quality higher or equal, latency and cost lower or equal) and strictly better on one.
  A dimension that is unknown (None or NaN) for either check is left out of that
  comparison, so a run without prices or references is judged on what it has.
* The recommendation is the check with the best quality among those within budget; ties go to
  the lower latency, then the earlier step. Without any quality figure, the latest check within
  budget is recommended (what the run knew before quality existed). No check within budget:
  no recommendation.

Example:
    >>> points = [
    ...     ParetoPoint(step=100, quality=0.80, latency_ms=210, cost=None, within_budget=True),
    ...     ParetoPoint(step=200, quality=0.86, latency_ms=260, cost=None, within_budget=True),
    ...     ParetoPoint(step=300, quality=0.84, latency_ms=300, cost=None, within_budget=True),
    ...     ParetoPoint(step=400, quality=0.91, latency_ms=800, cost=None, within_budget=False),
    ... ]
    >>> front = pareto(points)
    >>> front.dominated, front.recommended_step
    ((False, False, True, False), 200)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ParetoFront", "ParetoPoint", "pareto"]


@dataclass(frozen=True)
class ParetoPoint:
    """One check's figures.

    Attributes:
        step: the training step of the check (the checkpoint it describes).
        quality: mean quality score (higher is better); None or NaN when not scored.
        latency_ms: latency in milliseconds at the budget's statistic (lower is better).
        cost: cost per request (lower is better); None when unpriced.
        within_budget: the check's verdict passed (no budget breached).
    """

    step: int
    quality: float | None
    latency_ms: float | None
    cost: float | None
    within_budget: bool

    @classmethod
    def from_record(cls, record: Any, *, latency_metric: str = "latency_ms_p95") -> ParetoPoint:
        """The point of one check of a run report (a ``CheckRecord``: ``step``, ``status``, ``summary``,
        ``cost``, ``breached``); a failed check is never within budget.

        Args:
            record: the check.
            latency_metric: the summary key of the latency the budget is stated on (``Budget.latency_metric``).
        """
        summary, cost = record.summary or {}, record.cost or {}
        return cls(
            step=int(record.step),
            quality=summary.get("quality"),
            latency_ms=summary.get(latency_metric),
            cost=cost.get("cost_per_request"),
            within_budget=record.status == "ok" and not record.breached,
        )


@dataclass(frozen=True)
class ParetoFront:
    """The answer of :func:`pareto`.

    Attributes:
        dominated: per point, in input order, True when another point dominates it.
        recommended: index of the recommended point, or None when no point is within budget.
        reason: one sentence saying why that point (or why none).
    """

    dominated: tuple[bool, ...]
    recommended: int | None
    reason: str
    steps: tuple[int, ...] = ()

    @property
    def recommended_step(self) -> int | None:
        """The step of the recommended point, or None."""
        return None if self.recommended is None else self.steps[self.recommended]


def _known(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _dominates(a: ParetoPoint, b: ParetoPoint) -> bool:
    # (better-or-equal, strictly better) per dimension known on both sides; quality flips the sign.
    pairs = []
    if _known(a.quality) and _known(b.quality):
        pairs.append((-float(a.quality), -float(b.quality)))  # type: ignore[arg-type]
    for x, y in ((a.latency_ms, b.latency_ms), (a.cost, b.cost)):
        if _known(x) and _known(y):
            pairs.append((float(x), float(y)))  # type: ignore[arg-type]
    if not pairs:
        return False
    return all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)


def pareto(points: Sequence[ParetoPoint]) -> ParetoFront:
    """Mark dominated checks and recommend one (see the module docstring for the rules).

    Args:
        points: one :class:`ParetoPoint` per check, in any order.

    Returns:
        A :class:`ParetoFront`.
    """
    pts = list(points)
    dominated = tuple(any(_dominates(o, p) for j, o in enumerate(pts) if j != i) for i, p in enumerate(pts))
    steps = tuple(p.step for p in pts)
    within = [i for i, p in enumerate(pts) if p.within_budget]
    if not within:
        return ParetoFront(dominated, None, "no check is within budget", steps)
    scored = [i for i in within if _known(pts[i].quality)]
    if not scored:
        best = max(within, key=lambda i: pts[i].step)
        return ParetoFront(
            dominated, best, f"step {pts[best].step}: the latest check within budget (no quality scores)", steps
        )

    def latency(i: int) -> float:
        value = pts[i].latency_ms
        return float(value) if _known(value) else math.inf  # type: ignore[arg-type]

    best = min(scored, key=lambda i: (-float(pts[i].quality), latency(i), pts[i].step))  # type: ignore[arg-type]
    p = pts[best]
    return ParetoFront(
        dominated,
        best,
        f"step {p.step}: best quality within budget ({float(p.quality):.3f}"  # type: ignore[arg-type]
        + (f", latency {p.latency_ms:.0f} ms" if _known(p.latency_ms) else "")
        + ")",
        steps,
    )
