"""The measurement engine: time ``generate`` on a fixed probe without disturbing training.

:func:`measure` tokenises the probe once, left-pads it by hand into batches, runs
``warmup`` untimed calls and then ``repeats`` timed passes over the batches, and
returns a :class:`~ftcallback._measurement.Measurement` with one
:class:`~ftcallback._measurement.RequestSample` per prompt and repeat.

Timing uses a stopping criterion that never stops: ``generate`` calls it once per
decoding step, right after the step's token was appended, so each call is the
moment a new token exists (the device is synchronised first on accelerators).
That gives time-to-first-token and, for every request of a batch, the step at
which its last token appeared, without a streamer and without re-running anything.

Whatever :func:`measure` touches it puts back: train/eval flags of every module,
the python / numpy / torch / CUDA RNG states, the tokenizer, ``model.config`` and
``model.generation_config``. A training run with a measurement in the middle gives
bit-identical losses to one without.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import datetime
import functools
import importlib.metadata
import logging
import math
import platform
import random
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from ._drift import ReferenceWorkload
from ._errors import ConfigError, FTCallbackError, ModelError, NoisyMeasurementWarning, PromptError
from ._execution import ComputeProbe, Decoding, adapters_info, build_generation_config, compile_info
from ._measurement import Measurement, RequestSample
from ._probe import probe_settings
from ._progress import Progress
from ._prompts import encode_prompts, load_probe, resolve_tokenizer, validate_references
from ._quality import Scorer, resolve_scorer, score_outputs
from ._sequential import sequential_settings
from ._stats import median_cv

__all__ = ["check_generation_kwargs", "measure", "unwrap_model", "validate_probe"]

logger = logging.getLogger("ftcallback.measure")

# Above this median per-prompt CV of latency across repeats the timing is called noisy (the usual 10%
# of benchmark tools).
_NOISE_CV_LIMIT = 0.10
#: The reference workload is timed before the first calls whatever it costs (the machine's state at the start) ...
REFERENCE_MIN_TIMINGS = 3
#: ... and then before a call while it has cost at most this share of the generate calls' time: before every
#: call unless the workload is more than half as long as a call. Pairing each call with its own timing matters
#: under load: on benchmark 8's tiny model (9 ms calls, a 4.5 ms one-layer copy), an unchanged model checked
#: under two busy processes had a judged-ratio spread of 1.6-2.1% timed before every call or at 0.5, 3.7% at
#: 0.25 (20 baseline / check pairs each); quiet, 0.10 widened a +25% check's spread from 0.9% to 1.4%.
REFERENCE_SHARE = 0.5

# generate() arguments that measure() owns; letting generation_kwargs set them would make the
# recorded settings lie or break the per-request bookkeeping.
_OWNED_KWARGS = {
    "input_ids": "the prompts come from the `prompts` argument",
    "inputs": "the prompts come from the `prompts` argument",
    "attention_mask": "measure() builds the attention mask itself",
    "max_new_tokens": "use the `max_new_tokens` argument of measure()",
    "max_length": "use the `max_new_tokens` argument of measure()",
    "synced_gpus": "use the `synced_gpus` argument of measure()",
}


# ----------------------------------------------------------------- public API
def unwrap_model(model: Any) -> Any:
    """Peel distributed and compile wrappers off ``model`` down to the module that owns ``generate``.

    ``DistributedDataParallel`` / ``DataParallel`` and DeepSpeed engines are unwrapped through
    ``.module``, ``torch.compile`` wrappers through ``._orig_mod``. A PEFT ``PeftModel`` is kept as
    it is: its own ``generate`` routes through the adapters.

    Example:
        >>> import torch
        >>> layer = torch.nn.Linear(2, 2)
        >>> unwrap_model(torch.nn.DataParallel(layer)) is layer
        True
    """
    for _ in range(32):  # wrappers nest a few levels at most; the bound only guards against cycles
        names = {cls.__name__ for cls in type(model).__mro__}
        if "PeftModel" in names:
            return model
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, torch.nn.Module):
            model = inner
            continue
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)) or (
            "DeepSpeedEngine" in names
        ):
            model = model.module
            continue
        return model
    return model


def validate_probe(
    model: Any,
    tokenizer: Any,
    prompts: Any,
    *,
    max_new_tokens: int = 128,
    generation_kwargs: Mapping[str, Any] | None = None,
    apply_chat_template: bool = False,
    references: Sequence[str | None] | None = None,
    scorer: str | Scorer | None = None,
) -> None:
    """Check, without generating, everything :func:`measure` would reject about this probe.

    The callback calls it at ``on_train_begin`` so that a bad probe fails before the first optimizer
    step, even when a given baseline means the first measurement comes only after an epoch.

    Raises:
        ConfigError, PromptError, ModelError: as :func:`measure` would.
    """
    _check_int("max_new_tokens", max_new_tokens, 1)
    _prepare(
        model,
        tokenizer,
        prompts,
        max_new_tokens,
        generation_kwargs,
        apply_chat_template,
        name_rejected=True,
        references=references,
        scorer=scorer,
    )


@dataclass
class _Probe:
    """A validated probe: what measure() needs before its first generate call."""

    tokenizer: Any
    prompts: list[str]
    target: Any
    pad_id: int
    encoded: list[list[int]]
    user_kwargs: dict[str, Any]
    base_config: GenerationConfig
    call_kwargs: dict[str, Any]
    decoding: Decoding
    references: tuple[str | None, ...] | None = None
    scorer: tuple[str, Scorer] | None = None

    @property
    def do_sample(self) -> bool:
        return "sampl" in self.decoding.mode


def _references(
    carried: tuple[str | None, ...] | None,
    references: Sequence[str | None] | None,
    scorer: str | Scorer | None,
    n: int,
) -> tuple[tuple[str | None, ...] | None, tuple[str, Scorer] | None]:
    """The references to score against (explicit ones win over those the prompts carry) and the scorer."""
    if references is not None:
        if isinstance(references, (str, bytes)) or not isinstance(references, Sequence):
            raise ConfigError(
                f"`references` must be a list with one reference (str or None) per prompt, "
                f"got {type(references).__name__}"
            )
        validate_references(references, n)
        carried = tuple(references) if any(r is not None for r in references) else None
    if carried is None:
        if scorer is not None:
            raise ConfigError(
                "`scorer` is set but no prompt has a reference to score against; pass references=[...] "
                'or prompts with references ({"prompt": ..., "reference": ...} lines, a reference column, '
                "or (prompt, reference) pairs)"
            )
        return None, None
    return carried, resolve_scorer(scorer)


def _prepare(
    model: Any,
    tokenizer: Any,
    prompts: Any,
    max_new_tokens: int,
    generation_kwargs: Mapping[str, Any] | None,
    apply_chat_template: bool,
    *,
    name_rejected: bool = False,
    references: Sequence[str | None] | None = None,
    scorer: str | Scorer | None = None,
) -> _Probe:
    """Validate and prepare a probe.

    ``name_rejected`` turns a tokenizer's own error into a :class:`PromptError` naming the prompt: right
    before training (a user error to fix now), not inside a check, where a tokenizer that starts rejecting
    a prompt is a failed measurement the callback records while training goes on.
    """
    if generation_kwargs is not None and not isinstance(generation_kwargs, Mapping):
        raise ConfigError(
            f"`generation_kwargs` must be a dict of generate() keyword arguments or None, "
            f"got {type(generation_kwargs).__name__}"
        )
    user_kwargs = dict(generation_kwargs or {})
    check_generation_kwargs(user_kwargs)
    tokenizer = resolve_tokenizer(tokenizer)
    probe_prompts = load_probe(prompts)
    prompt_list = list(probe_prompts.prompts)
    refs, resolved_scorer = _references(probe_prompts.references, references, scorer, len(prompt_list))
    target = unwrap_model(model)
    _check_can_generate(target)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ModelError(
            f"the tokenizer ({type(tokenizer).__name__}) has neither a pad token nor an EOS token, so "
            "batches cannot be padded nor responses ended; use the model's own tokenizer or set "
            "tokenizer.eos_token"
        )
    encoded: list[list[int]] = []
    for i, prompt in enumerate(prompt_list):
        try:
            encoded += encode_prompts(tokenizer, [prompt], apply_chat_template=apply_chat_template)
        except FTCallbackError:
            raise
        except Exception as exc:  # the tokenizer's own error would not say which prompt, nor what to do
            if not name_rejected:
                raise
            raise PromptError(
                f"the tokenizer rejected `prompts[{i}]` ({type(exc).__name__}: {exc}); fix or remove that prompt"
            ) from exc
    _check_context(target, encoded, max_new_tokens)
    base_config, call_kwargs, decoding = _generation_setup(target, tokenizer, user_kwargs, pad_id)
    return _Probe(
        tokenizer,
        prompt_list,
        target,
        pad_id,
        encoded,
        user_kwargs,
        base_config,
        call_kwargs,
        decoding,
        refs,
        resolved_scorer,
    )


def measure(
    model: Any,
    tokenizer: Any,
    prompts: Any,
    *,
    max_new_tokens: int = 128,
    generation_kwargs: Mapping[str, Any] | None = None,
    warmup: int = 1,
    repeats: int = 3,
    batch_size: int = 1,
    apply_chat_template: bool = False,
    seed: int = 0,
    num_sample_outputs: int = 3,
    on_batch_end: Callable[[], Any] | None = None,
    synced_gpus: bool | None = None,
    references: Sequence[str | None] | None = None,
    scorer: str | Scorer | None = None,
    trained_compiled: bool | None = None,
    warn_ignored: bool = True,
    clock: Callable[[], float] = time.perf_counter,
    cpu_clock: Callable[[], tuple[float, float]] | None = None,
    reference: ReferenceWorkload | None = None,
    until: Callable[[Measurement], bool] | None = None,
    max_repeats: int | None = None,
    progress: bool | str = False,
) -> Measurement:
    """Measure latency and output length of ``model.generate`` on a probe of prompts.

    Each prompt is one request. Per request it records end-to-end latency, time to first token,
    input tokens (padding excluded), output tokens up to and including the first EOS, and whether
    the response ended with EOS or was cut at ``max_new_tokens``.

    Args:
        model: a causal LM with ``generate`` (``AutoModelForCausalLM``), possibly wrapped in DDP,
            a DeepSpeed engine or ``torch.compile``, or a PEFT model.
        tokenizer: its tokenizer, or a processor with a ``.tokenizer``.
        prompts: a list of strings, a ``datasets.Dataset`` or a ``.txt`` / ``.jsonl`` path
            (see :func:`ftcallback._prompts.load_prompts`).
        max_new_tokens: generation budget per request.
        generation_kwargs: extra ``generate`` keyword arguments; they override the engine's defaults
            (greedy, ``pad_token_id``). ``stopping_criteria`` are kept next to the engine's timer.
        warmup: untimed calls before timing, cycling through the batches.
        repeats: timed passes over all prompts.
        batch_size: prompts per ``generate`` call, grouped in order and left-padded.
        apply_chat_template: wrap each prompt as a user turn with the tokenizer's chat template.
        seed: seed for ``do_sample=True`` (reseeded before every call; the caller's RNG is restored).
        num_sample_outputs: how many decoded responses (the first prompts, last repeat) to keep.
        on_batch_end: called with no argument after every ``generate`` call, outside the timed region.
        synced_gpus: passed to ``generate`` when not None (ZeRO-3 / FSDP, where every rank must join).
        references: one reference answer (or None) per prompt; overrides references the prompts carry.
            With references, every prompt's response of the last repeat is decoded and scored (no extra
            ``generate`` call): ``Measurement.quality_scores`` and ``Measurement.quality``.
        scorer: how a response is scored against its reference: ``"exact"`` (default), ``"contains"``,
            ``"regex"``, ``"numeric"`` or a callable ``score(prompt, output, reference) -> float``
            (see :mod:`ftcallback._quality`).
        trained_compiled: whether the module being trained runs compiled while ``model`` is its uncompiled
            original (the Trainer's ``args.torch_compile``); None detects it from ``model``. Recorded in
            ``model["compile"]``.
        warn_ignored: log one WARNING when ``generation_kwargs`` set flags that have no effect (e.g.
            ``temperature`` without ``do_sample=True``). The callback warns once at construction instead
            and passes False.
        clock: where every timestamp comes from (seconds); tests inject a fake one to drive time exactly.
        cpu_clock: returns ``(seconds this thread ran, seconds it waited, ready, for a CPU)``; default
            :func:`thread_cpu_clock` where the OS tells (Linux), else none. It gives each call's share
            of the CPU (``Measurement.cpu_share``), which tells a contended CPU from a slower model:
            time the thread slept or blocked (a model that waits) is in neither number.
        reference: a fixed workload on the model's device, timed before ``generate`` calls (warm-up
            included) into ``Measurement.reference_s``, to sense the machine's own speed: timed in thread
            CPU seconds on a CPU when ``cpu_clock`` is there (being descheduled is what ``cpu_share``
            measures), by ``clock`` with the device synchronised otherwise. It runs before the first
            ``REFERENCE_MIN_TIMINGS`` calls and then before a call whenever it has so far cost at most
            ``REFERENCE_SHARE`` (half) of the calls' time: before every call of a model whose calls are long,
            fewer when the calls are shorter than twice the workload (a cap, for answers of a token or two).
        until: adaptive measurement: called with the measurement so far after every ``repeats``
            passes; True ends it, False adds ``repeats`` more passes, up to ``max_repeats``
            (typically ``lambda m: not needs_more(budget, m, baseline, seed=seed)``).
        max_repeats: the cap on timed passes for ``until`` (default ``3 * repeats``); recorded with
            the number of looks in ``settings["sequential"]``, which sets the decision's confidence.
        progress: show the timed requests' progress (a bar on a terminal, INFO lines every 10% elsewhere)
            and announce the expected duration after the first request; a string names what is measured
            ("baseline"), True says "measure". See :class:`~ftcallback._progress.Progress`.

    Returns:
        A :class:`~ftcallback._measurement.Measurement` with ``len(prompts) * repeats`` samples
        (more when ``until`` asked for more); ``settings["repeats"]`` is the number of passes done.

    Raises:
        ConfigError: an argument is out of range, or ``generation_kwargs`` sets what measure() owns.
        PromptError: no prompts, or a prompt plus ``max_new_tokens`` exceeds the model's context.
        ModelError: the model cannot generate, or the tokenizer has neither a pad nor an EOS token.

    Example:
        >>> from ftcallback.testing import tiny_causal_lm, tiny_tokenizer
        >>> tok = tiny_tokenizer()
        >>> m = measure(tiny_causal_lm(), tok, ["the model returns"], max_new_tokens=4, repeats=2)
        >>> len(m.samples), m.samples[0].output_tokens <= 4
        (2, True)
    """
    if not callable(clock):
        raise ConfigError(f"`clock` must be a callable returning seconds, got {type(clock).__name__}")
    if cpu_clock is not None and not callable(cpu_clock):
        raise ConfigError(
            f"`cpu_clock` must be a callable returning (run seconds, wait seconds) or None, got "
            f"{type(cpu_clock).__name__}"
        )
    wall_start = clock()
    _check_int("max_new_tokens", max_new_tokens, 1)
    _check_int("repeats", repeats, 1)
    _check_int("batch_size", batch_size, 1)
    _check_int("warmup", warmup, 0)
    _check_int("num_sample_outputs", num_sample_outputs, 0)
    _check_int("seed", seed, None)
    if reference is not None and not isinstance(reference, ReferenceWorkload):
        raise ConfigError(
            f"`reference` must be a ReferenceWorkload or None, got {type(reference).__name__}"
        )
    if until is not None and not callable(until):
        raise ConfigError(f"`until` must be callable (Measurement -> bool) or None, got {type(until).__name__}")
    if max_repeats is not None:
        _check_int("max_repeats", max_repeats, 1)
        if max_repeats < repeats:
            raise ConfigError(f"`max_repeats` must be >= `repeats` ({repeats}), got {max_repeats}")
    cap = repeats if until is None else (max_repeats if max_repeats is not None else 3 * repeats)
    if on_batch_end is not None and not callable(on_batch_end):
        raise ConfigError(f"`on_batch_end` must be callable or None, got {type(on_batch_end).__name__}")
    probe = _prepare(
        model,
        tokenizer,
        prompts,
        max_new_tokens,
        generation_kwargs,
        apply_chat_template,
        references=references,
        scorer=scorer,
    )
    tokenizer, prompt_list, target, pad_id = probe.tokenizer, probe.prompts, probe.target, probe.pad_id
    encoded, user_kwargs = probe.encoded, probe.user_kwargs
    base_config, call_kwargs, do_sample = probe.base_config, probe.call_kwargs, probe.do_sample
    scoring = probe.references is not None
    device = _model_device(target)
    if warn_ignored:
        probe.decoding.warn()
    compute = ComputeProbe(model, target, device)
    if cpu_clock is None and device.type == "cpu":
        cpu_clock = thread_cpu_clock()
    cpu_time = None if cpu_clock is None or device.type != "cpu" else (lambda: cpu_clock()[0])

    eos_ids = _eos_ids(base_config, tokenizer)
    sync = _synchronizer(device)
    timer = _StepTimer(clock, sync)
    call_kwargs["stopping_criteria"] = StoppingCriteriaList(
        [*call_kwargs.get("stopping_criteria", ()), timer]
    )
    if synced_gpus is not None:
        call_kwargs["synced_gpus"] = bool(synced_gpus)

    batches = _make_batches(encoded, batch_size, pad_id, device)
    configs = [_with_length(base_config, target, max_new_tokens, b.input_ids.shape[1]) for b in batches]
    logger.debug(
        "measure: %s on %s, %d prompts in %d batches of <= %d, warmup=%d, repeats=%d, max_new_tokens=%d, "
        "do_sample=%s",
        type(target).__name__,
        device,
        len(prompt_list),
        len(batches),
        batch_size,
        warmup,
        repeats,
        max_new_tokens,
        do_sample,
    )

    def run(index: int) -> tuple[list[list[int]], float, float]:
        """One generate call on batch ``index``: (new token ids per row, start, end)."""
        batch = batches[index]
        if do_sample:
            _seed_all(seed + index, device)  # same seed per batch: repeats see the same tokens
        if reference is not None:
            # Timed before this call only while it has cost at most REFERENCE_SHARE of the calls' time so far
            # (and before the first few calls whatever it costs): a yardstick as long as a short model's call
            # would otherwise double the measurement. Untimed calls read the nearest timings.
            if len(reference_times) < REFERENCE_MIN_TIMINGS or spent[0] <= REFERENCE_SHARE * spent[1]:
                before = clock()
                reference_times.append(reference.seconds(cpu_time or clock, sync))
                spent[0] += clock() - before
            else:
                reference_times.append(math.nan)
        timer.reset()
        if sync is not None:
            sync()
        cpu_start = cpu_clock() if cpu_time is not None and cpu_clock is not None else None
        start = clock()
        out = target.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            generation_config=configs[index],
            **call_kwargs,
        )
        if sync is not None:
            sync()
        end = clock()
        spent[1] += end - start
        if cpu_start is not None and cpu_clock is not None:
            cpu_end = cpu_clock()
            ran, waited = cpu_end[0] - cpu_start[0], cpu_end[1] - cpu_start[1]
            # One entry per call, NaN when the clock saw no run time: entry k is call k's share.
            cpu_shares.append(ran / (ran + max(0.0, waited)) if ran > 0 else math.nan)
            cpu_runs.append(max(0.0, ran))
            cpu_waits.append(max(0.0, waited))
        sequences = out if isinstance(out, torch.Tensor) else out.sequences
        return sequences[:, batch.input_ids.shape[1] :].tolist(), start, end

    cuda = device.type == "cuda"
    reference_times: list[float] = []
    spent = [0.0, 0.0]  # seconds spent on the reference workload, and in generate calls
    cpu_shares: list[float] = []
    cpu_runs: list[float] = []
    cpu_waits: list[float] = []
    samples: list[RequestSample] = []
    last_outputs: dict[int, list[int]] = {}
    warmup_latencies: list[float] = []
    settings = probe_settings(
        prompt_list,
        max_new_tokens=max_new_tokens,
        generation_kwargs=user_kwargs,
        warmup=warmup,
        repeats=repeats,
        batch_size=batch_size,
        apply_chat_template=apply_chat_template,
        seed=seed,
        references=probe.references,
        scorer=probe.scorer[0] if probe.scorer is not None else None,
    )
    if until is not None:
        settings["sequential"] = sequential_settings(repeats, cap)
    reference_label = None
    if reference is not None:
        reference_label = f"{reference.spec}/{'cpu' if cpu_time is not None else 'wall'}"

    def snapshot(done: int, peak: int | None) -> Measurement:
        decoded = {i: tokenizer.decode(ids, skip_special_tokens=True) for i, ids in sorted(last_outputs.items())}
        quality_scores: tuple[float, ...] = ()
        if probe.references is not None and probe.scorer is not None:
            # The last pass's responses (greedy ones are the same on every pass): no extra generate call.
            outputs = [decoded[i] for i in range(len(prompt_list))]
            quality_scores = score_outputs(prompt_list, outputs, probe.references, probe.scorer[1])
        # The compute dtype is known once a forward pass has run: the record is built after generating.
        environment = _environment(target, device, synced_gpus, compute)
        if reference_label is not None:
            environment["reference"] = reference_label
        return Measurement(
            samples=tuple(samples),
            settings={**settings, "repeats": done},
            model=_model_info(target, device, model, compute, trained_compiled),
            environment=environment,
            decoding=probe.decoding.to_dict(),
            warmup_latencies_s=tuple(warmup_latencies),
            reference_s=tuple(reference_times),
            cpu_share=tuple(cpu_shares),
            cpu_run_s=tuple(cpu_runs),
            cpu_wait_s=tuple(cpu_waits),
            peak_memory_bytes=peak,
            sample_outputs=tuple(
                {"prompt_index": i, "prompt": prompt_list[i], "output": text}
                for i, text in decoded.items()
                if i < num_sample_outputs
            ),
            quality_scores=quality_scores,
            wall_time_s=clock() - wall_start,
            created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        )

    done = 0
    bar = Progress(
        len(prompt_list) * repeats,
        progress if isinstance(progress, str) else "measure",
        enabled=bool(progress),
        clock=clock,
    )
    with _undisturbed(target, device), _installed(compute), contextlib.closing(bar):
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        for w in range(warmup):
            _, start, end = run(w % len(batches))
            warmup_latencies.append(end - start)
            if on_batch_end is not None:
                on_batch_end()
        logger.debug("measure: %d warm-up calls took %.3f s", warmup, sum(warmup_latencies))
        bar.start()
        while True:
            for r in range(done, min(done + repeats, cap)):
                for b, batch in enumerate(batches):
                    rows, start, end = run(b)
                    width = batch.input_ids.shape[1]
                    for row, prompt_index, input_len in zip(
                        rows, batch.indices, batch.input_lengths, strict=True
                    ):
                        n_out, finished = _count_output(row, eos_ids)
                        latency = _request_end(timer, width + n_out, len(row), n_out, end) - start
                        ttft = (timer.times[0] if timer.times else end) - start
                        token_times = tuple(_token_time(timer, width, k, end) - start for k in range(n_out))
                        samples.append(
                            RequestSample(prompt_index, r, latency, ttft, input_len, n_out, finished, token_times)
                        )
                        if scoring or prompt_index < num_sample_outputs:
                            last_outputs[prompt_index] = row[:n_out]
                    bar.update(len(rows))
                    if on_batch_end is not None:
                        on_batch_end()
            done = min(done + repeats, cap)
            peak = int(torch.cuda.max_memory_allocated(device)) if cuda else None
            measurement = snapshot(done, peak)
            if until is None or done >= cap or until(measurement):
                break
            logger.debug("measure: look at %d repeats inconclusive, measuring %d more", done, repeats)
            bar.extend(len(prompt_list) * (min(done + repeats, cap) - done))

    _log_result(measurement)
    return measurement


# ----------------------------------------------------------------- timing
_SCHEDSTAT = "/proc/thread-self/schedstat"


def thread_cpu_clock() -> Callable[[], tuple[float, float]] | None:
    """A clock of ``(CPU seconds this thread ran, seconds it waited ready-to-run)``, or None off Linux.

    Linux accounts a thread's run-queue wait in ``/proc/thread-self/schedstat`` (second field): time it
    was ready but other work had the CPU. Sleeping and blocking are in neither number, so a model that
    waits inside ``forward`` is not mistaken for a busy machine. The run time comes from
    ``time.thread_time`` (schedstat's own is only updated at scheduler ticks).
    """
    try:
        with open(_SCHEDSTAT, encoding="ascii") as fh:
            int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None

    def read() -> tuple[float, float]:
        with open(_SCHEDSTAT, encoding="ascii") as fh:
            waited_ns = int(fh.read().split()[1])
        return time.thread_time(), waited_ns / 1e9

    return read


class _StepTimer(StoppingCriteria):
    """A stopping criterion that never stops: it notes when each decoding step's token exists.

    ``generate`` calls it right after appending a step's tokens, so ``times[k]`` is when the
    sequence reached ``lengths[k]`` tokens. The per-step work is a device sync (accelerators
    only), a clock read and two appends; the all-False answer is cached.
    """

    def __init__(self, clock: Callable[[], float], sync: Callable[[], Any] | None) -> None:
        self._clock = clock
        self._sync = sync
        self._never: torch.Tensor | None = None
        self.times: list[float] = []
        self.lengths: list[int] = []

    def reset(self) -> None:
        self.times = []
        self.lengths = []

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        if self._sync is not None:
            self._sync()
        self.times.append(self._clock())
        self.lengths.append(input_ids.shape[1])
        never = self._never
        if never is None or never.shape[0] != input_ids.shape[0]:
            never = self._never = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        return never


def _request_end(timer: _StepTimer, length: int, n_cols: int, n_out: int, end: float) -> float:
    """When a request's last token existed: its step's timestamp, or ``end`` if it lasted the whole call."""
    if n_out >= n_cols:
        return end
    lengths = timer.lengths
    # One token per step in greedy / sampling / beam search, so the index is direct; assisted decoding
    # appends several tokens per step, hence the search.
    k = n_out - 1
    if not (0 <= k < len(lengths) and lengths[k] == length):
        k = bisect.bisect_left(lengths, length)
    return timer.times[k] if k < len(timer.times) else end


def _token_time(timer: _StepTimer, width: int, k: int, end: float) -> float:
    """When output token ``k`` (0-based) of a row existed: the step that reached ``width + k + 1`` tokens."""
    lengths, length = timer.lengths, width + k + 1
    if not (0 <= k < len(lengths) and lengths[k] == length):
        k = bisect.bisect_left(lengths, length)
    return timer.times[k] if k < len(timer.times) else end


def _count_output(row: Sequence[int], eos_ids: frozenset[int]) -> tuple[int, bool]:
    """Output tokens up to and including the first EOS (padding follows it), and whether there was one."""
    for k, token in enumerate(row):
        if token in eos_ids:
            return k + 1, True
    return len(row), False


def _synchronizer(device: torch.device) -> Callable[[], Any] | None:
    """A no-argument function that waits for ``device``, or None on CPU where work is already synchronous."""
    if device.type == "cpu":
        return None
    if device.type == "cuda":
        return functools.partial(torch.cuda.synchronize, device)
    backend = getattr(torch, device.type, None)
    sync = getattr(backend, "synchronize", None)
    if not callable(sync):
        return None
    if device.type == "mps":
        return sync  # torch.mps.synchronize takes no device
    return functools.partial(sync, device)


# ----------------------------------------------------------------- non-disturbance
@contextlib.contextmanager
def _undisturbed(model: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """Eval mode, no autograd, and on exit every module's training flag and every RNG as they were."""
    flags = [(m, m.training) for m in model.modules()]
    py_state = random.getstate()
    np_state = np.random.get_state()
    cpu_state = torch.get_rng_state()
    accel = _accelerator_rng_state(device)
    try:
        model.eval()
        # no_grad, not inference_mode: anything a first forward creates (ZeRO-3's resident parameters,
        # lazily built rotary caches or buffers) would stay an inference tensor, and the next training
        # step would fail with "Inference tensors cannot be saved for backward".
        with torch.no_grad():
            yield
    finally:
        # Per module: a model whose submodules were in mixed modes (e.g. a frozen, eval-mode encoder)
        # must come back mixed, which model.train(flag) would not do.
        for module, flag in flags:
            module.training = flag
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(cpu_state)
        for set_state, state in accel:
            set_state(state)


@contextlib.contextmanager
def _installed(compute: ComputeProbe) -> Iterator[None]:
    """The compute probe's hook in place for the first forward pass, and gone afterwards whatever happens."""
    compute.install()
    try:
        yield
    finally:
        compute.remove()


def _accelerator_rng_state(device: torch.device) -> list[tuple[Callable[[Any], Any], Any]]:
    """(setter, state) pairs for the accelerator RNGs worth saving."""
    saved: list[tuple[Callable[[Any], Any], Any]] = []
    # Only an initialised CUDA context has state worth saving; asking an uninitialised one would create it.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        saved.append((torch.cuda.set_rng_state_all, torch.cuda.get_rng_state_all()))
    if device.type not in ("cpu", "cuda"):
        backend = getattr(torch, device.type, None)
        for getter, setter in (
            ("get_rng_state_all", "set_rng_state_all"),
            ("get_rng_state", "set_rng_state"),
        ):
            if hasattr(backend, getter) and hasattr(backend, setter):
                saved.append((getattr(backend, setter), getattr(backend, getter)()))
                break
    return saved


def _seed_all(seed: int, device: torch.device) -> None:
    # Not torch.manual_seed: on a machine whose CUDA is not initialised yet it would queue a seeding of
    # CUDA for later, outside the guard that restores the RNG states.
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    elif device.type != "cpu":
        backend = getattr(torch, device.type, None)
        seeder = getattr(backend, "manual_seed_all", None) or getattr(backend, "manual_seed", None)
        if callable(seeder):
            seeder(seed)


# ----------------------------------------------------------------- setup helpers
def _check_int(name: str, value: Any, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"`{name}` must be an int, got {type(value).__name__} ({value!r})")
    if minimum is not None and value < minimum:
        raise ConfigError(f"`{name}` must be >= {minimum}, got {value}")


def _check_can_generate(target: Any) -> None:
    can_generate = getattr(target, "can_generate", None)
    if not callable(getattr(target, "generate", None)) or (callable(can_generate) and not can_generate()):
        raise ModelError(
            f"{type(target).__name__} cannot generate text; load a model with a language-modelling head, "
            "e.g. AutoModelForCausalLM.from_pretrained(...) instead of AutoModel"
        )
    config = getattr(target, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        raise ModelError(
            f"{type(target).__name__} is an encoder-decoder model; ftcallback measures decoder-only "
            "causal LMs (AutoModelForCausalLM)"
        )
    if not isinstance(target, torch.nn.Module):
        raise ModelError(f"`model` must be a torch.nn.Module, got {type(target).__name__}")


def _model_device(target: Any) -> torch.device:
    device = getattr(target, "device", None)
    if isinstance(device, torch.device):
        return device
    for p in target.parameters():
        return p.device
    return torch.device("cpu")


def _context_length(target: Any) -> int | None:
    config = getattr(target, "config", None)
    if config is None:
        return None
    get_text = getattr(config, "get_text_config", None)
    text_config = get_text() if callable(get_text) else config
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(text_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _check_context(target: Any, encoded: Sequence[Sequence[int]], max_new_tokens: int) -> None:
    limit = _context_length(target)
    for i, ids in enumerate(encoded):
        if not ids:
            raise PromptError(f"`prompts[{i}]` encodes to no tokens; give it some text the tokenizer knows")
        if limit is not None and len(ids) + max_new_tokens > limit:
            raise PromptError(
                f"`prompts[{i}]` has {len(ids)} tokens; with max_new_tokens={max_new_tokens} that is "
                f"{len(ids) + max_new_tokens} > the model's context of {limit} positions; "
                "shorten the prompt or lower max_new_tokens"
            )


def check_generation_kwargs(user_kwargs: Mapping[str, Any]) -> None:
    for key, why in _OWNED_KWARGS.items():
        if key in user_kwargs:
            raise ConfigError(f"`generation_kwargs` must not set {key!r}: {why}")
    if user_kwargs.get("use_cache") is False:
        raise ConfigError(
            "`generation_kwargs` must not set use_cache=False: the measurement always decodes with "
            "the KV cache"
        )
    num_return = user_kwargs.get("num_return_sequences")
    if num_return is not None and num_return != 1:
        raise ConfigError(
            f"`generation_kwargs` num_return_sequences must be 1 (one response per request), "
            f"got {num_return!r}"
        )


def _generation_setup(
    target: Any, tokenizer: Any, user_kwargs: dict[str, Any], pad_id: int
) -> tuple[GenerationConfig, dict[str, Any], Decoding]:
    """The generation config every call uses, the remaining generate() kwargs, and the decoding it does.

    See :func:`ftcallback._execution.build_generation_config`; here the probe's pad token, the KV cache
    and the tokenizer that stop strings need are added.
    """
    model_config = getattr(target, "generation_config", None)
    config, call_kwargs, decoding = build_generation_config(
        model_config if isinstance(model_config, GenerationConfig) else None, user_kwargs
    )
    # The settings record what generate() was asked beyond a config object (as they always have).
    user_kwargs.pop("generation_config", None)
    config.pad_token_id = pad_id
    if config.stop_strings is not None and "tokenizer" not in call_kwargs:
        call_kwargs["tokenizer"] = tokenizer  # generate needs it to match stop strings
    return config, call_kwargs, decoding


def _with_length(
    config: GenerationConfig, target: Any, max_new_tokens: int, input_len: int
) -> GenerationConfig:
    """A per-batch copy of ``config`` that asks for exactly ``max_new_tokens`` without a length warning.

    generate warns when both ``max_new_tokens`` and ``max_length`` end up set, and it refills a None
    ``max_length`` from ``model.generation_config``. A checkpoint that sets ``max_length`` (but not
    ``max_new_tokens``) therefore gets the equivalent ``max_length = input + max_new_tokens`` instead.
    """
    config = copy.deepcopy(config)
    model_config = getattr(target, "generation_config", None)
    if (
        getattr(model_config, "max_new_tokens", None) is None
        and getattr(model_config, "max_length", None) is not None
    ):
        config.max_new_tokens = None
        config.max_length = input_len + max_new_tokens
    else:
        config.max_new_tokens = max_new_tokens
        config.max_length = None
    return config


def _eos_ids(config: GenerationConfig, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    eos = config.eos_token_id
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(int(e) for e in eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)


@dataclass(frozen=True)
class _Batch:
    indices: list[int]
    input_lengths: list[int]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor


def _make_batches(
    encoded: Sequence[Sequence[int]], batch_size: int, pad_id: int, device: torch.device
) -> list[_Batch]:
    """Consecutive groups of ``batch_size`` prompts, left-padded with ``pad_id``, already on ``device``."""
    batches = []
    for first in range(0, len(encoded), batch_size):
        group = encoded[first : first + batch_size]
        width = max(len(ids) for ids in group)
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, tokens in enumerate(group):
            if tokens:
                ids[row, width - len(tokens) :] = torch.tensor(tokens, dtype=torch.long)
                mask[row, width - len(tokens) :] = 1
        batches.append(
            _Batch(
                indices=list(range(first, first + len(group))),
                input_lengths=[len(t) for t in group],
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
            )
        )
    return batches


# ----------------------------------------------------------------- records
def _model_info(
    target: Any, device: torch.device, model: Any, compute: ComputeProbe, trained_compiled: bool | None
) -> dict[str, Any]:
    config = getattr(target, "config", None)
    name = getattr(target, "name_or_path", None) or getattr(config, "_name_or_path", None) or ""
    dtype = getattr(target, "dtype", None)
    if not isinstance(dtype, torch.dtype):
        dtype = next((p.dtype for p in target.parameters()), None)
    param_dtype = str(dtype).removeprefix("torch.") if dtype is not None else "unknown"
    # ZeRO-3 leaves empty placeholders in the parameters and keeps the true size in ds_numel.
    num_parameters = sum(int(getattr(p, "ds_numel", p.numel())) for p in target.parameters())
    return {
        "class": type(target).__name__,
        "name_or_path": str(name),
        "param_dtype": param_dtype,
        "compute_dtype": compute.record(param_dtype)[1] or param_dtype,
        "device": str(device),
        "num_parameters": num_parameters,
        "compile": compile_info(model, target, trained_compiled),
        "adapters": adapters_info(target),
    }


def _ftcallback_version() -> str:
    try:
        return importlib.metadata.version("ftcallback")
    except importlib.metadata.PackageNotFoundError:
        import ftcallback

        return str(getattr(ftcallback, "__version__", "unknown"))


def _environment(target: Any, device: torch.device, synced_gpus: bool | None, compute: ComputeProbe) -> dict[str, Any]:
    import transformers

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "ftcallback": _ftcallback_version(),
        "device_type": device.type,
        "device_name": _device_name(device),
        "cpu_threads": torch.get_num_threads(),
        "generation_mode": "synced" if synced_gpus else "single",
        # What the forward pass really ran under (seen inside it, not guessed from the call site).
        "autocast": compute.record(None)[0],
    }
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        env["world_size"] = torch.distributed.get_world_size()
        env["rank"] = torch.distributed.get_rank()
    return env


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    if device.type == "cpu":
        return platform.processor() or platform.machine()
    return device.type


def machine_free_noise_cv(m: Measurement, *, device: bool = True) -> float:
    """:attr:`Measurement.noise_cv` of the latencies with the machine taken out call by call, as a relative
    latency check takes it out (:func:`~ftcallback._decompose.machine_free_by_prompt`): the noise that check
    really sees. ``device=False`` takes out only the time each call waited for the CPU (on a CPU shared with
    other processes most of the variation of the same request can be that wait). The plain ``noise_cv`` where
    nothing can be taken out."""
    from ._decompose import machine_free_by_prompt

    steady = median_cv(machine_free_by_prompt(m, device=device).values())
    return steady if math.isfinite(steady) else m.noise_cv


def _log_result(m: Measurement) -> None:
    logger.info(
        "measured %d requests: latency p50 %.1f ms (p95 %.1f), TTFT p50 %.1f ms, TPOT p50 %.2f ms, "
        "%.1f output tokens/request, %.0f%% ended with EOS, noise CV %.3f",
        len(m.samples),
        m.latency_ms.p50,
        m.latency_ms.p95,
        m.ttft_ms.p50,
        m.tpot_ms.p50,
        m.output_tokens.mean,
        100.0 * m.eos_fraction,
        m.noise_cv,
    )
    if m.has_quality:
        logger.info(
            "quality %.3f (%s, mean over %d prompts with a reference)",
            m.quality,
            m.settings.get("scorer"),
            sum(math.isfinite(s) for s in m.quality_scores),
        )
    if m.noise_cv > _NOISE_CV_LIMIT:
        # A Python warning, not a log record: it says so where the user looks (stderr, pytest's
        # warnings summary) without adding WARNING records next to the callback's stop line.
        steady = machine_free_noise_cv(m, device=False)
        varied = (
            f"timing is noisy: the same request varied by {100.0 * m.noise_cv:.0f}% (median CV of latency "
            f"across repeats, threshold {100.0 * _NOISE_CV_LIMIT:.0f}%)"
        )
        absolute = (
            "; absolute limits (latency_ms, ttft_ms, tpot_ms, SLO attainment) see it, as a user of this machine would"
        )
        if steady <= _NOISE_CV_LIMIT:
            advice = (
                f", {100.0 * steady:.0f}% without the time it waited for the CPU: other processes took the CPU. "
                "Relative latency checks take that wait out" + absolute
            )
        elif (machine_free := machine_free_noise_cv(m)) <= _NOISE_CV_LIMIT:
            advice = (
                f", {100.0 * machine_free:.0f}% with the machine taken out (its wait for the CPU, and its speed as "
                "the reference workload timed it beside each call): the machine's speed varied, not the model's. "
                "Relative latency checks take that out" + absolute
            )
        else:
            plan = m.settings.get("sequential")
            passes = m.settings.get("repeats")
            if isinstance(plan, Mapping):
                # Measured adaptively: the pass count is the rule's, not the user's `repeats`.
                advice = (
                    f", also with the machine taken out, over {passes} passes (repeats={plan.get('step')}, "
                    f"measured adaptively up to {plan.get('max_repeats')}); measure on a quieter machine, with "
                    "torch.set_num_threads(1) on a shared CPU, or raise repeats (the cap grows with it)"
                )
            else:
                advice = f"; increase repeats (now {passes}) or measure on a quieter machine"
        warnings.warn(varied + advice, NoisyMeasurementWarning, stacklevel=3)
    logger.debug("measure: done in %.3f s", m.wall_time_s)
