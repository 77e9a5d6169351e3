"""Summary statistics and the paired comparison used to decide whether a change is real.

Everything here is pure: numbers in, numbers out. Non-finite values (NaN, inf)
are ignored by the summaries and counted, so one failed sample never turns a
whole summary into NaN, and an all-NaN input gives an all-NaN summary rather
than an exception.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "RESAMPLES",
    "RatioEstimate",
    "Stats",
    "bonferroni_confidence",
    "combine_log_intervals",
    "independent_ratio",
    "paired_ratio",
    "percentile",
    "summarize",
]

#: Bootstrap resamples behind every interval a decision uses: one count, so a logged interval is the
#: interval that decided.
RESAMPLES = 2000


def median_cv(groups: Iterable[Sequence[float]]) -> float:
    """Median over groups of each group's coefficient of variation (groups of one value left out); NaN if none.

    Example:
        >>> round(median_cv([[1.0, 1.0], [1.0, 3.0], [5.0]]), 3)
        0.354
    """
    cvs = [c for c in (summarize(v).cv for v in groups if len(v) > 1) if math.isfinite(c)]
    return summarize(cvs).p50 if cvs else math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """Return the ``q``-th percentile (0-100) with linear interpolation, as ``numpy.percentile`` does.

    Non-finite values are ignored; an empty input gives NaN.
    """
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        return math.nan
    if len(finite) == 1:
        return float(finite[0])
    pos = (len(finite) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(finite) - 1)
    return float(finite[lo] + (finite[hi] - finite[lo]) * (pos - lo))


@dataclass(frozen=True)
class Stats:
    """Summary of a sample of one quantity.

    Attributes:
        count: number of finite values summarised.
        mean, std: arithmetic mean and sample standard deviation (ddof=1; 0 for one value).
        cv: coefficient of variation, ``std / mean`` (NaN when the mean is 0).
        min, p50, p90, p95, p99, max: order statistics (linear interpolation).
        nonfinite: number of NaN or infinite values that were left out.
    """

    count: int
    mean: float
    std: float
    cv: float
    min: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float
    nonfinite: int = 0

    def get(self, stat: str) -> float:
        """Return the statistic named ``stat`` (``"mean"``, ``"p50"``, ``"p95"``, ...)."""
        value = getattr(self, stat)
        return float(value)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize(values: Sequence[float]) -> Stats:
    """Summarise ``values`` into a :class:`Stats`.

    Example:
        >>> summarize([1.0, 2.0, 3.0]).p50
        2.0
    """
    finite = [float(v) for v in values if math.isfinite(v)]
    nonfinite = len(values) - len(finite)
    n = len(finite)
    if n == 0:
        nan = math.nan
        return Stats(0, nan, nan, nan, nan, nan, nan, nan, nan, nan, nonfinite)
    mean = math.fsum(finite) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / (n - 1)) if n > 1 else 0.0
    cv = std / mean if mean != 0 else math.nan
    return Stats(
        count=n,
        mean=mean,
        std=std,
        cv=cv,
        min=min(finite),
        p50=percentile(finite, 50),
        p90=percentile(finite, 90),
        p95=percentile(finite, 95),
        p99=percentile(finite, 99),
        max=max(finite),
        nonfinite=nonfinite,
    )


@dataclass(frozen=True)
class RatioEstimate:
    """A paired estimate of ``new / base`` with a bootstrap confidence interval.

    Attributes:
        ratio: geometric mean over keys (prompts) of the ratio of per-key medians.
        low, high: bounds of the two-sided ``confidence`` bootstrap interval of ``ratio``.
        pairs: number of keys present on both sides with finite, positive values.
        confidence: the interval's confidence level.
    """

    ratio: float
    low: float
    high: float
    pairs: int
    confidence: float

    @property
    def significant_increase(self) -> bool:
        """True when the whole interval lies above 1: the increase is not explained by noise."""
        return math.isfinite(self.low) and self.low > 1.0

    @property
    def significant_decrease(self) -> bool:
        """True when the whole interval lies below 1."""
        return math.isfinite(self.high) and self.high < 1.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, float | None]) -> RatioEstimate:
        """Inverse of :meth:`to_dict` (``None`` read as NaN, as JSON writes NaN)."""

        def num(key: str) -> float:
            value = data.get(key)
            return math.nan if value is None else float(value)

        return cls(num("ratio"), num("low"), num("high"), int(num("pairs") or 0), num("confidence"))


def bonferroni_confidence(confidence: float, looks: int) -> float:
    """Per-look confidence that keeps the error rate of ``looks`` looks at most that of one look.

    Example:
        >>> round(bonferroni_confidence(0.95, 3), 4)
        0.9833
    """
    return 1.0 - (1.0 - confidence) / max(1, looks)


def combine_log_intervals(a: RatioEstimate, b: RatioEstimate, *, divide: bool) -> RatioEstimate:
    """``a / b`` (``divide``) or ``a * b`` with an interval widened by both uncertainties.

    The half-widths are added in quadrature on the log scale, as for the product of two independent,
    roughly log-normal estimates; the result keeps ``a``'s pairs and confidence.
    """
    sign = -1.0 if divide else 1.0
    point = math.exp(math.log(a.ratio) + sign * math.log(b.ratio))
    a_down, a_up = math.log(a.ratio / a.low), math.log(a.high / a.ratio)
    # Dividing by b: b's upper uncertainty lowers the result.
    b_down, b_up = math.log(b.ratio / b.low), math.log(b.high / b.ratio)
    if divide:
        b_down, b_up = b_up, b_down
    low = point * math.exp(-math.hypot(a_down, b_down))
    high = point * math.exp(math.hypot(a_up, b_up))
    return RatioEstimate(point, low, high, a.pairs, a.confidence)


def independent_ratio(
    base: Sequence[float],
    new: Sequence[float],
    *,
    confidence: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = 0,
    trim: float = 0.1,
) -> RatioEstimate:
    """Ratio of trimmed means ``new / base`` of two independent samples, with a bootstrap interval.

    A trimmed mean, not a median: the timings this serves (a fixed reference workload on a machine
    that other processes share) are slowed on average by the share of the CPU taken, which a median
    of short timings misses when most of them fit between two preemptions; trimming ``trim`` of each
    tail keeps one freak timing from deciding.

    Returns:
        A :class:`RatioEstimate` with ``pairs = min(len(base), len(new))``; all NaN when either side
        has no finite positive value.
    """
    b = np.asarray([v for v in base if math.isfinite(v) and v > 0], dtype=float)
    n = np.asarray([v for v in new if math.isfinite(v) and v > 0], dtype=float)
    if not b.size or not n.size:
        return RatioEstimate(math.nan, math.nan, math.nan, 0, confidence)
    point = _trimmed_mean(n[None, :], trim)[0] / _trimmed_mean(b[None, :], trim)[0]
    rng = np.random.default_rng(seed)
    b_rep = _trimmed_mean(b[rng.integers(0, b.size, (resamples, b.size))], trim)
    n_rep = _trimmed_mean(n[rng.integers(0, n.size, (resamples, n.size))], trim)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(n_rep / b_rep, [alpha, 1.0 - alpha])
    return RatioEstimate(float(point), float(low), float(high), int(min(b.size, n.size)), confidence)


def _trimmed_mean(rows: np.ndarray, trim: float) -> np.ndarray:
    """Mean of each row after dropping ``trim`` of its values at each end."""
    k = int(rows.shape[1] * trim)
    ordered = np.sort(rows, axis=1)
    return np.asarray(ordered[:, k : rows.shape[1] - k].mean(axis=1))


def paired_ratio(
    base: Mapping[int, Sequence[float]],
    new: Mapping[int, Sequence[float]],
    *,
    confidence: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> RatioEstimate:
    """Estimate how much larger ``new`` is than ``base``, key by key, and how sure that is.

    Each key (a prompt) has repeated samples on both sides. The point estimate is
    the geometric mean over keys of ``median(new[k]) / median(base[k])``: a
    prompt-by-prompt comparison, so prompts of different lengths do not blur the
    ratio; the median across repeats keeps one disturbed call from deciding, and the
    geometric mean across prompts still sees a slowdown that hits only some prompts
    (answers that grew for three prompts out of eight must not read as "x1.00",
    which a median across prompts would say). The interval comes from a
    hierarchical bootstrap (keys resampled, then repeats within each key on both
    sides), which captures both timing noise and disagreement between prompts.
    It uses its own seeded generator and leaves the global RNGs alone.

    Args:
        base: samples of the reference, by key.
        new: samples of the candidate, by key.
        confidence: two-sided confidence level of the interval, in (0, 1).
        resamples: number of bootstrap resamples; 0 gives the point with a NaN interval.
        seed: seed of the bootstrap's private generator, for reproducible decisions.

    Returns:
        A :class:`RatioEstimate`; all NaN when no key has finite positive values on both sides.
    """
    keys = [k for k in base if k in new]
    base_arrays: list[np.ndarray] = []
    new_arrays: list[np.ndarray] = []
    for k in keys:
        b = np.asarray([v for v in base[k] if math.isfinite(v) and v > 0], dtype=float)
        n = np.asarray([v for v in new[k] if math.isfinite(v) and v > 0], dtype=float)
        if b.size and n.size:
            base_arrays.append(b)
            new_arrays.append(n)
    pairs = len(base_arrays)
    if pairs == 0:
        return RatioEstimate(math.nan, math.nan, math.nan, 0, confidence)
    log_ratios = [np.log(np.median(n) / np.median(b)) for b, n in zip(base_arrays, new_arrays, strict=True)]
    point = float(np.exp(np.mean(log_ratios)))
    if resamples <= 0:  # the point alone: no interval asked for
        return RatioEstimate(point, math.nan, math.nan, pairs, confidence)
    rng = np.random.default_rng(seed)
    # One row of bootstrap ratios per key: repeats resampled within the key, on both sides.
    per_key = np.empty((pairs, resamples))
    for i, (b, n) in enumerate(zip(base_arrays, new_arrays, strict=True)):
        b_med = np.median(b[rng.integers(0, b.size, (resamples, b.size))], axis=1)
        n_med = np.median(n[rng.integers(0, n.size, (resamples, n.size))], axis=1)
        per_key[i] = n_med / b_med
    # Then keys resampled with replacement, one draw of keys per bootstrap replicate.
    key_idx = rng.integers(0, pairs, (resamples, pairs))
    replicate = np.exp(np.mean(np.log(np.take_along_axis(per_key.T, key_idx, axis=1)), axis=1))
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(replicate, [alpha, 1.0 - alpha])
    return RatioEstimate(point, float(low), float(high), pairs, confidence)
