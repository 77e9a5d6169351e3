"""How a run measures its model at a check: the probe, the machine's reference workload, the adaptive rule, the
out-of-memory retry and the deployed form, in one place. No Trainer, no decisions: measurements out.

The callback owns *when* to measure and on which ranks; the :class:`Prober` owns *how*, the same way at every check
of the run, so that a baseline and a later check differ only in the model.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from collections.abc import Callable
from typing import Any

import torch

from . import _distributed as distributed
from ._budget import Budget
from ._decompose import level_uncertainty
from ._drift import ModelShapedReference, ReferenceWorkload
from ._errors import MeasurementError
from ._forms import measure_in_form
from ._measure import measure
from ._measurement import Measurement
from ._probe import ProbeSpec
from ._sequential import BASELINE_PRECISION, baseline_needs_more, needs_more

__all__ = ["ADAPTIVE_CAP", "BASELINE_CAP", "Prober"]

#: A check under a relative latency budget may extend to this many times ``repeats``; so is a sharded
#: baseline measured (a fixed count: every rank must make the same calls).
ADAPTIVE_CAP = 3
#: An unsharded baseline under a relative latency budget is measured to a precision
#: (:func:`~ftcallback._sequential.baseline_needs_more`), from 2x ``repeats`` (at least 6 passes) up to this
#: many times ``repeats``.
BASELINE_CAP = 9

logger = logging.getLogger("ftcallback")


class Prober:
    """Measure a model the way every check of one run does.

    Args:
        spec: the probe.
        budget: the budget (its relative latency limit turns the adaptive rule on).
        deployed_form: also measure the model as it will be served (see :mod:`ftcallback._forms`), or None.

    Attributes:
        tokenizer: the probe's tokenizer (set once the Trainer's is known).
        trained_compiled: whether the trained module runs compiled (recorded, never measured compiled).
        progress: what :func:`ftcallback.measure` shows while measuring (False, or a label).
    """

    def __init__(self, spec: ProbeSpec, budget: Budget, *, deployed_form: str | None = None) -> None:
        self.spec = spec
        self.budget = budget
        self.deployed_form = deployed_form
        self.tokenizer: Any = None
        self.trained_compiled: bool | None = None
        self.progress: bool | str = False
        self._reference: ReferenceWorkload | None = None

    def measure(
        self,
        model: Any,
        *,
        baseline: Measurement | None,
        mode: str | None,
        beat: Callable[[], Any],
        speak: bool = True,
        is_baseline: bool = False,
    ) -> tuple[Measurement, Measurement | None]:
        """The training form's measurement and, with a deployed form, that form's.

        ``is_baseline`` says this measurement is the run's baseline (measured to a precision, or 3x when sharded). It is
        said, not inferred from ``baseline is None``: in sharded mode only the main rank holds the
        baseline, and every rank must make the same ``generate`` calls.

        Raises:
            MeasurementError: a measurement that cannot describe the model (nothing measured, no output token).
            Anything the engine raises; an out-of-memory error is retried once at half the batch size.
        """
        m = self._with_retry(model, baseline, mode, beat, speak, is_baseline)
        deployed = None
        if self.deployed_form is not None:
            deployed = measure_in_form(
                model,
                self.deployed_form,
                lambda served: self._with_retry(served, baseline, mode, beat, speak, is_baseline),
            )
        for measured in (m, deployed):
            impossible = _impossible(measured) if measured is not None else None
            if impossible:
                raise MeasurementError(f"impossible measurement: {impossible}")
        if is_baseline and speak:
            _say_precision("baseline", m)
            if deployed is not None:
                _say_precision(f"baseline deployed {self.deployed_form}", deployed)
        return m, deployed

    def _once(
        self,
        model: Any,
        batch_size: int,
        baseline: Measurement | None,
        mode: str | None,
        beat: Callable[[], Any],
        is_baseline: bool,
    ) -> Measurement:
        kwargs: dict[str, Any] = {**self.spec.measure_kwargs(), "batch_size": batch_size}
        device = next(iter(model.parameters())).device
        if self._reference is None or self._reference.device != device:
            # One fixed workload per run, timed beside every generate call: how fast is the machine right now? Built
            # from the first model measured (the training form), so a deployed form is timed against the same one.
            # Sharded, every rank generates in lockstep: the plain MLP, which no rank can fail to build. A baseline
            # timed with the MLP (a run resumed from a report written before the copy) keeps it: two timings
            # compare only under one workload.
            mlp = ReferenceWorkload(device)
            timed_with = baseline.environment.get("reference") if baseline is not None else None
            keep_mlp = mode is not None or (isinstance(timed_with, str) and timed_with.startswith(mlp.spec + "/"))
            self._reference = mlp if keep_mlp else ModelShapedReference.for_model(model, device)
        kwargs["reference"] = self._reference
        cap = ADAPTIVE_CAP * self.spec.repeats
        if is_baseline and self.budget.max_latency_increase is not None:
            # The baseline is the yardstick of every check: its noise is shared by all of them and never
            # averages out (a lucky-fast baseline makes every check look slow), so it is measured to a stated
            # precision. Sharded, every rank must make the same calls: a fixed 3 x repeats instead.
            if mode is None:
                step, seed = self.spec.repeats, self.spec.seed
                kwargs["until"] = lambda m: not baseline_needs_more(m, step=step, seed=seed)
                kwargs["max_repeats"] = BASELINE_CAP * step
            else:
                kwargs["repeats"] = cap
        elif not is_baseline and baseline is not None and mode is None and self.budget.max_latency_increase is not None:
            # Adaptive: measure more while the latency verdict is inconclusive, up to 3x the repeats. Not when
            # sharded: every rank must make the same number of generate calls, and their timings differ.
            budget, seed = self.budget, self.spec.seed
            kwargs["until"] = lambda m: not needs_more(budget, m, baseline, seed=seed)
            kwargs["max_repeats"] = cap
        with distributed.generation_context(model, mode):
            m = measure(
                model,
                self.tokenizer,
                list(self.spec.prompts),
                **kwargs,
                on_batch_end=beat,
                synced_gpus=True if mode is not None else None,
                progress=self.progress,
                trained_compiled=self.trained_compiled,
                warn_ignored=False,
            )
        settings = m.settings
        if is_baseline and "sequential" in settings:
            # Measured to a precision, not to a verdict: recorded apart, so that no later comparison that takes
            # this file as its judged side reads it as looks and widens its confidence.
            settings = {k: v for k, v in settings.items() if k != "sequential"}
            plan = m.settings["sequential"]
            achieved = level_uncertainty(m, seed=self.spec.seed)
            settings["precision"] = {**plan, "standard_error": BASELINE_PRECISION, "achieved": achieved}
        # Say how it was measured: "zero3" / "fsdp1" / "fsdp2" (every rank generated), None (one process did).
        return dataclasses.replace(m, settings=settings, environment={**m.environment, "sharding_mode": mode})

    def _with_retry(
        self,
        model: Any,
        baseline: Measurement | None,
        mode: str | None,
        beat: Callable[[], Any],
        speak: bool,
        is_baseline: bool,
    ) -> Measurement:
        batch_size = self.spec.batch_size
        try:
            return self._once(model, batch_size, baseline, mode, beat, is_baseline)
        except (torch.OutOfMemoryError, MemoryError) as exc:
            release_memory()
            smaller = max(1, batch_size // 2)
            if smaller == batch_size:
                raise
            if speak:  # in sharded mode every rank retries; the main one says it
                logger.warning(
                    "measurement ran out of memory with batch_size=%d (%s); retrying once with batch_size=%d: "
                    "its latency will not be compared with the baseline, its tokens will",
                    batch_size,
                    exc,
                    smaller,
                )
            return self._once(model, smaller, baseline, mode, beat, is_baseline).with_retry(
                "out_of_memory", batch_size=(batch_size, smaller)
            )


def _say_precision(label: str, m: Measurement) -> None:
    """One line on how precisely a baseline measured to a precision knows its latency level: every check's ratio
    carries that error. Nothing for a baseline measured to a fixed count."""
    precision = m.settings.get("precision")
    if not isinstance(precision, dict):
        return
    achieved = precision.get("achieved")
    if not isinstance(achieved, (int, float)):
        return
    passes = m.settings.get("repeats")
    if achieved <= BASELINE_PRECISION or passes != precision.get("max_repeats"):
        logger.debug(
            "%s: %d passes, standard error of its latency level %.2f%% (target %.2f%%)",
            label,
            passes,
            100.0 * achieved,
            100.0 * BASELINE_PRECISION,
        )
    else:
        logger.info(
            "%s: the cap of %d passes reached with a standard error of its latency level of %.2f%% (target "
            "%.2f%%): the machine or the model's calls are noisy; every check's latency interval carries it, "
            "so a latency change near the limit is called later (raise repeats for a longer cap)",
            label,
            passes,
            100.0 * achieved,
            100.0 * BASELINE_PRECISION,
        )


def _impossible(m: Measurement) -> str | None:
    """Why ``m`` cannot describe the model, or None. Such a check is recorded as failed, never compared:
    "0 output tokens" would otherwise pass every token budget. (Non-finite times are not impossible in
    this sense: the budget calls those lines not evaluable and still judges the token and cost lines.)"""
    if not m.samples:
        return "no request was measured"
    if all(s.output_tokens == 0 for s in m.samples):
        return "no response has any output token (generate returned nothing new)"
    return None


def release_memory() -> None:
    """Give back what a failed measurement left allocated."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
