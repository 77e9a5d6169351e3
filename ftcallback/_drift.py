"""Machine-drift control: a fixed reference workload, and the machine's speed factor it estimates.

A check must tell a slower model from a slower machine. A reference workload is fixed, deterministic work
run on the model's device between the probe's ``generate`` calls (:func:`~ftcallback._measure.measure` times
it before the calls, as often as half their time allows); its timings are kept in
``Measurement.reference_s``. On a CPU it is :class:`ModelShapedReference`, a one-layer copy of the model's
own architecture generating a few tokens; elsewhere, or where no copy can be built, the MLP of
:class:`ReferenceWorkload`. On a CPU, ``measure`` also records, per call, the thread's CPU run time
and run-queue wait (``cpu_run_s``, ``cpu_wait_s``, and their ``cpu_share``), from the OS's
accounting. :func:`machine_factor` compares both with the baseline's: the same work taking 1.4x as
long means the machine (shared CPU, throttled GPU, other jobs) became 1.4x slower. Where requests can
be matched to their calls (:func:`request_cpu`, :func:`request_references`),
:func:`~ftcallback._decompose.decompose` takes the machine out timing by timing, which pairs each
request with the machine state it met; otherwise the speed effect is divided by the whole factor.

The assumption (DESIGN.md, "Why latency moved"): what slows the machine down slows the reference and the
model's decoding steps by the same factor, because both are the same kind of work (on a CPU, the model's own
layer and ``generate`` loop; in the same process, on the same device, at the same thread count) timed at
interleaved moments; and run-queue wait is exactly the time contention added.
"""

from __future__ import annotations

import copy
import logging
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ._errors import ConfigError
from ._stats import RESAMPLES, RatioEstimate, combine_log_intervals, independent_ratio

__all__ = [
    "MachineFactor",
    "ModelShapedReference",
    "ReferenceWorkload",
    "machine_factor",
    "request_cpu",
    "request_references",
]

logger = logging.getLogger("ftcallback")

# Width, depth and rows of the reference MLP by device type. On a CPU (where the one-layer copy of the model
# is preferred, and this is the fallback), decode-shaped: one row through 16 layers, matrix-vector products as
# in a decoding step (about 0.6 ms on one thread); it tracked a tiny model's and SmolLM2's decoding under load
# within 6% (sd of log ratio), where the earlier 64-row matrix-matrix workload drifted 15% from the tiny
# model's. On an accelerator, large enough that the kernels, not their launches, dominate.
_DEFAULT_SHAPE = {"cpu": (256, 16, 1), "cuda": (4096, 8, 256)}


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


class ModelShapedReference(ReferenceWorkload):
    """The model's own architecture cut to one layer, with random weights: the reference workload on a CPU.

    On a CPU, a small model's decoding time is mostly the work around its arithmetic (``generate``'s loop,
    the operator dispatch, the attention cache, caches and memory) rather than the products a small dense
    network does. A one-layer copy of the model's own architecture, generating ``tokens`` tokens with
    ``generate`` from a fixed prompt, does that same kind of work, so a machine that slows one slows the other
    by the same factor. Measured on the tiny GPT-2 of benchmark 8 (40 windows of 24 calls, every other pair of
    windows under two busy processes), the model's latency over its local reference varied 0.65% from window to
    window quiet and 0.74% loaded, and loading the machine moved it by -0.15%; with the 16-layer MLP the same
    figures were 2.5%, 2.3% and +1.8% (BENCHMARKS.md, benchmark 8).

    The copy is built from ``model.config`` with one hidden layer and at most ``MAX_VOCAB`` tokens (so that
    its memory is a layer's, not an embedding table's; a copy that would still hold more than half the
    model's parameters, and more than ``SMALL``, is not built), its weights from a private seed (every run of every
    process does the same arithmetic; the global RNG is untouched), in the model's dtype, on its device. It
    never sees the model's weights and never changes them. Use :meth:`for_model`, which falls back to the
    MLP where a copy cannot be built.

    Args:
        model: the model whose architecture to copy (PEFT, compile and DDP wrappers are looked through).
        device: where the model generates.
        tokens: new tokens each timing generates (one prefill and ``tokens - 1`` decoding steps).

    Raises:
        ValueError, TypeError, RuntimeError: the model has no architecture that can be copied this way
            (:meth:`for_model` catches these).
    """

    MAX_VOCAB = 1024
    #: A copy is built only if it holds at most this share of the model's parameters, or fewer than ``SMALL``.
    MAX_SHARE = 0.5
    SMALL = 2_000_000

    def __init__(self, model: Any, device: str | torch.device, *, tokens: int = 4) -> None:
        from transformers import GenerationConfig, PretrainedConfig

        base = _architecture_owner(model)
        config = getattr(base, "config", None)
        if not isinstance(config, PretrainedConfig) or getattr(config, "is_encoder_decoder", False):
            raise TypeError(f"{type(base).__name__} has no decoder-only transformers config to copy")
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 2:
            raise ConfigError(f"`tokens` must be an int >= 2, got {tokens!r}")
        if config.get_text_config() is not config:  # a composite model (vision and text towers): no layer to copy
            raise TypeError(f"{type(config).__name__} is a composite config")
        config = copy.deepcopy(config)
        config.num_hidden_layers = 1
        if isinstance(getattr(config, "layer_types", None), list):
            config.layer_types = config.layer_types[:1]
        config.vocab_size = vocab = min(int(config.vocab_size), self.MAX_VOCAB)
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(config, name, None)
            if value is not None and any(int(v) >= vocab for v in (value if isinstance(value, list) else [value])):
                setattr(config, name, None)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        self.device = torch.device(device)
        parameter = next(iter(base.parameters()))
        dtype = parameter.dtype if parameter.is_floating_point() else torch.float32
        with torch.device("meta"):  # its size first, at no cost: a copy that is not small is not built
            size = sum(p.numel() for p in type(base)(config).parameters())
        if size > max(self.MAX_SHARE * sum(p.numel() for p in base.parameters()), self.SMALL):
            raise ValueError(f"a one-layer copy would hold {size} parameters")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            clone = type(base)(config)
        self._model = clone.to(device=self.device, dtype=dtype).eval().requires_grad_(False)
        self._generation = GenerationConfig(
            max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0, eos_token_id=None
        )
        self._input = torch.arange(3, 11, device=self.device).unsqueeze(0) % vocab
        self._mask = torch.ones_like(self._input)
        self.tokens = tokens
        dtype_name = str(dtype).removeprefix("torch.")
        self._spec = f"{config.model_type}x1/v{vocab}/{dtype_name}/gen{tokens}/{self.device.type}"
        out = self.run()  # fails here, not at the first check, if this architecture cannot generate so
        if out.shape[-1] != self._input.shape[-1] + tokens:
            made = out.shape[-1] - self._input.shape[-1]
            raise RuntimeError(f"the one-layer copy generated {made} tokens, not {tokens}")

    @classmethod
    def for_model(cls, model: Any, device: str | torch.device) -> ReferenceWorkload:
        """The model-shaped reference on a CPU, the MLP elsewhere or where the architecture cannot be copied.

        On an accelerator the MLP stays: its shape was chosen so that kernels, not their launches, dominate,
        and the model-shaped copy has not been measured there.
        """
        device = torch.device(device)
        if device.type != "cpu":
            return ReferenceWorkload(device)
        try:
            return cls(model, device)
        except Exception as exc:  # any architecture the copy cannot handle: the generic workload still works
            logger.debug("reference workload: no one-layer copy of %s (%s); using the MLP", type(model).__name__, exc)
            return ReferenceWorkload(device)

    @property
    def spec(self) -> str:
        return self._spec

    def run(self) -> Any:
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            return self._model.generate(
                input_ids=self._input, attention_mask=self._mask, generation_config=self._generation
            )

    def __repr__(self) -> str:
        return f"ModelShapedReference({self.spec})"


def _architecture_owner(model: Any) -> Any:
    """The transformers model whose class and config define ``model``'s architecture (PEFT and wrappers peeled)."""
    from ._measure import unwrap_model

    model = unwrap_model(model)
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


@dataclass(frozen=True)
class MachineFactor:
    """How much slower the machine was during a check than during the baseline, and from what.

    Attributes:
        estimate: the whole factor, ``contention x device`` (a part that was not measured counts as 1),
            with an interval combining both parts' uncertainty.
        moved: True when that interval excludes 1: the machine changed speed beyond its own noise (an
            environment change). The speed effect is divided by ``estimate.ratio`` either way.
        contention: on a CPU, how much less of the CPU the probe's thread got when it wanted it (other
            processes, dataloader workers), check over baseline; a model that sleeps or blocks is not in
            it. As :func:`machine_factor` estimates it: ``1 / cpu_share`` of the ``generate`` calls; as the
            decomposition reports it (:meth:`with_effects`): what taking each call's run-queue wait out of
            its timings took off the latency, the interval keeping the estimate's relative width.
        device: the reference workload's time, check over baseline: the same work on the same device
            at another speed (clock throttling, a shared accelerator, memory-bandwidth neighbours); in the
            decomposition, what dividing each timing's computing by the local reference took off.
    """

    estimate: RatioEstimate
    moved: bool
    contention: RatioEstimate | None = None
    device: RatioEstimate | None = None

    @property
    def factor(self) -> float:
        """The factor a speed effect is divided by."""
        return self.estimate.ratio

    def with_effects(self, contention: float | None, device: float | None) -> MachineFactor:
        """This factor with its parts re-centred on the effects divided out request by request.

        :func:`~ftcallback._decompose.decompose` divides the machine out of each timing (its call's share of
        the CPU, the reference's local speed); ``contention`` and ``device`` are what that took off the
        model's latency (None: the part was not divided out that way, kept as estimated). Each part keeps
        its interval's relative width, and ``length x speed x machine`` stays exactly the observed change.
        """

        def recentre(part: RatioEstimate | None, effect: float | None) -> RatioEstimate | None:
            if part is None or effect is None or not (math.isfinite(effect) and effect > 0 and part.ratio > 0):
                return part
            scale = effect / part.ratio
            return RatioEstimate(effect, part.low * scale, part.high * scale, part.pairs, part.confidence)

        parts = [recentre(self.contention, contention), recentre(self.device, device)]
        present = [p for p in parts if p is not None]
        if not present:
            return self
        estimate = present[0]
        for part in present[1:]:
            estimate = combine_log_intervals(estimate, part, divide=False)
        return MachineFactor(estimate, estimate.low > 1.0 or estimate.high < 1.0, parts[0], parts[1])

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
    # NaN: a call the reference was not run before.
    base_ref, new_ref = ([v for v in m.reference_s if math.isfinite(v) and v > 0] for m in (baseline, measurement))
    same = baseline.environment.get("reference") == measurement.environment.get("reference")
    if len(base_ref) >= 3 and len(new_ref) >= 3 and same:
        device = independent_ratio(base_ref, new_ref, confidence=confidence, resamples=resamples, seed=seed + 1)
    # A part that cannot be estimated (no finite timing on a side) is no part: it is neither divided out
    # nor reported.
    contention, device = (p if p is not None and math.isfinite(p.ratio) else None for p in (contention, device))
    parts = [p for p in (contention, device) if p is not None]
    if not parts:
        return None
    estimate = parts[0]
    for part in parts[1:]:
        estimate = combine_log_intervals(estimate, part, divide=False)
    return MachineFactor(estimate, estimate.low > 1.0 or estimate.high < 1.0, contention, device)



# Reference timings on each side of a request that give its local device speed (a median of the 2 x 2 + 1
# nearest): one timing alone is noisy, and the machine's speed drifts over seconds.
_LOCAL_CALLS = 2


def _call_of(measurement: Any) -> tuple[Callable[[Any], int], int] | None:
    """Which ``generate`` call timed a request, and how many calls there were: warm-up calls first, then
    ``repeats`` passes over the batches (consecutive groups of ``batch_size`` prompts). None when the
    settings do not say."""
    numbers = [measurement.settings.get(k) for k in ("warmup", "repeats", "batch_size", "num_prompts")]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in numbers):
        return None
    warmup, repeats, batch_size, num_prompts = numbers
    if batch_size < 1 or num_prompts < 1:
        return None
    batches = -(-num_prompts // batch_size)

    def call(sample: Any) -> int:
        return warmup + sample.repeat * batches + sample.prompt_index // batch_size

    return call, warmup + repeats * batches


def _per_call(measurement: Any, values: tuple[float, ...]) -> tuple[Callable[[Any], int], tuple[float, ...]] | None:
    matched = _call_of(measurement)
    if matched is None or not values or len(values) != matched[1]:
        return None
    return matched[0], values


def request_cpu(measurement: Any) -> dict[tuple[int, int], tuple[float, float]] | None:
    """How each timed request's latency split on the CPU: ``{(prompt, repeat): (ran, waited)}``, as fractions.

    ``Measurement.cpu_run_s`` / ``cpu_wait_s`` have one entry per ``generate`` call, in call order: the
    CPU seconds the thread ran, and the seconds it was ready to run while other work had the CPU. Over
    the call's wall time (its last request's latency) they are the shares of computing and of
    contention; the rest of the wall time the thread slept or blocked (on I/O, a device, a lock). A
    request's latency less its waiting share is its latency without contention, and a slower model
    that sleeps stays slower (dividing by the CPU share instead would shrink such waits too).

    Returns:
        None when the calls cannot be matched to the requests (nothing recorded, settings missing, or a
        count that does not add up, as in files written before these were kept).

    Example:
        >>> from ftcallback._measurement import Measurement, RequestSample
        >>> m = Measurement(
        ...     samples=(RequestSample(0, 0, 0.4, 0.1, 5, 9, True), RequestSample(1, 0, 0.5, 0.1, 5, 9, True)),
        ...     settings={"warmup": 1, "repeats": 1, "batch_size": 1, "num_prompts": 2},
        ...     cpu_run_s=(0.4, 0.2, 0.5), cpu_wait_s=(0.0, 0.2, 0.0),
        ... )
        >>> request_cpu(m)
        {(0, 0): (0.5, 0.5), (1, 0): (1.0, 0.0)}
    """
    runs = _per_call(measurement, tuple(measurement.cpu_run_s))
    waits = _per_call(measurement, tuple(measurement.cpu_wait_s))
    if runs is None or waits is None:
        return None
    call = runs[0]
    walls: dict[int, float] = {}
    for s in measurement.samples:  # a call lasts until its last request's last token
        if math.isfinite(s.latency_s) and s.latency_s > 0:
            walls[call(s)] = max(walls.get(call(s), 0.0), s.latency_s)
    out: dict[tuple[int, int], tuple[float, float]] = {}
    for s in measurement.samples:
        k = call(s)
        if k >= len(runs[1]):  # a file whose settings do not describe its samples
            return None
        ran, waited = runs[1][k], waits[1][k]
        if k in walls and math.isfinite(ran) and math.isfinite(waited) and ran > 0:
            wait_f = min(max(waited / walls[k], 0.0), 0.99)
            out[(s.prompt_index, s.repeat)] = (min(ran / walls[k], 1.0 - wait_f), wait_f)
    return out


def request_references(measurement: Any) -> dict[tuple[int, int], float] | None:
    """The machine's local speed at each timed request: the median of the ``2 x _LOCAL_CALLS + 1`` reference
    timings nearest its call (the reference may run before only some calls: see :func:`~ftcallback.measure`).
    ``{(prompt, repeat): seconds}``; None as for :func:`request_cpu`, or when the measurement ran no reference
    workload.

    Example:
        >>> from ftcallback._measurement import Measurement, RequestSample
        >>> nan = float("nan")
        >>> m = Measurement(
        ...     samples=tuple(RequestSample(0, r, 0.4, 0.1, 5, 9, True) for r in range(10)),
        ...     settings={"warmup": 1, "repeats": 10, "batch_size": 1, "num_prompts": 1},
        ...     reference_s=(1.0, nan, 2.0, nan, 3.0, nan, 4.0, nan, 5.0, nan, 6.0),  # before every other call
        ... )
        >>> request_references(m)[(0, 0)], request_references(m)[(0, 9)]  # calls 1 and 10
        (3.0, 4.0)
    """
    matched = _per_call(measurement, tuple(measurement.reference_s))
    if matched is None:
        return None
    call, times = matched
    timed = [(k, v) for k, v in enumerate(times) if math.isfinite(v) and v > 0]
    out: dict[tuple[int, int], float] = {}
    for s in measurement.samples:
        k = call(s)
        if k >= len(times):  # a file whose settings do not describe its samples
            return None
        nearest = sorted(timed, key=lambda kv: (abs(kv[0] - k), kv[0]))[: 2 * _LOCAL_CALLS + 1]
        if nearest:
            out[(s.prompt_index, s.repeat)] = statistics.median(v for _, v in nearest)
    return out
