"""``EfficiencyCallback``: Trainer events in, measurements, verdicts, logs and stops out.

The callback is a thin adapter. It measures with :func:`ftcallback._measure.measure`,
judges with :func:`ftcallback._budget.evaluate`, records with
:class:`ftcallback._report.RunReport` and :class:`ftcallback._tensorboard.TensorBoardSink`,
and coordinates ranks with :mod:`ftcallback.distributed`.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ExportableState

from . import _distributed as distributed
from ._budget import Budget, BudgetCheck, Verdict, evaluate
from ._errors import BaselineError, ConfigError, FTCallbackError, MeasurementError, ModelError
from ._execution import describe_decoding
from ._measure import check_generation_kwargs, measure, validate_probe
from ._measurement import Measurement
from ._prompts import load_prompts, prompts_sha256, resolve_tokenizer
from ._report import CheckRecord, RunReport, report_path
from ._tensorboard import TensorBoardSink, resolve_log_dir

__all__ = ["EfficiencyCallback"]

# Decisions and stops are logged on the package logger itself, so that
# `logging.getLogger("ftcallback")` is all a user needs to watch.
logger = logging.getLogger("ftcallback")

#: Summary keys copied into `state.log_history` (and so into trainer_state.json) after each check.
_LOG_HISTORY_KEYS = (
    "latency_ms_p50",
    "latency_ms_p95",
    "ttft_ms_p50",
    "tpot_ms_p50",
    "output_tokens_mean",
    "tokens_per_second",
    "eos_fraction",
)


def _positive_int(name: str, value: Any, *, minimum: int = 1, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"`{name}` must be an integer >= {minimum}, got {value!r}{hint}")
    return value


def _json_normal(value: Any) -> Any:
    """The JSON form of a settings value, so settings compare the same before and after a save."""
    return json.loads(json.dumps(value, sort_keys=True, default=repr))


def _fmt_epoch(epoch: float | None) -> str:
    if epoch is None:
        return "?"
    return str(int(round(epoch))) if abs(epoch - round(epoch)) < 1e-6 else f"{epoch:.2f}"


class EfficiencyCallback(TrainerCallback, ExportableState):
    """Measure latency and output length before and during training, log them, and enforce a budget.

    A baseline is measured at ``on_train_begin`` on the model exactly as the Trainer will
    train it (device, dtype, autocast, adapters), before any optimizer step. The same
    probe is measured again at every epoch end (and every ``every_n_steps`` optimizer
    steps), compared with the baseline and the budget, logged to TensorBoard
    (``efficiency/*``), to ``<output_dir>/efficiency/report.json`` and to
    ``state.log_history``. After ``patience`` consecutive breaching checks the run stops
    with one WARNING on the ``ftcallback`` logger that says why.

    Args:
        prompts: probe prompts: a list of strings, a ``datasets.Dataset`` (column ``"prompt"`` or
            ``"text"``), or a path to a ``.txt`` (one per line) or ``.jsonl`` file.
        budget: a :class:`~ftcallback._budget.Budget` (or its ``to_dict()`` form); ``None`` only monitors.
        tokenizer: the tokenizer for the probe; defaults to the Trainer's ``processing_class``
            (a processor's ``.tokenizer`` is used).
        max_new_tokens: generation cap per response.
        generation_kwargs: extra ``generate`` arguments (greedy decoding by default).
        warmup: untimed warm-up calls before each measurement.
        repeats: timed passes over the probe per measurement.
        batch_size: prompts per ``generate`` call.
        every_n_steps: also measure every N optimizer steps, besides each epoch end.
        patience: consecutive breaching checks before stopping.
        stop_training: ``False`` warns and records breaches but never stops.
        baseline: a saved :class:`~ftcallback._measurement.Measurement` (a path or the object) to use
            instead of measuring at train begin; it must have been measured with the same probe and settings.
        apply_chat_template: wrap each prompt in the tokenizer's chat template (instruct models).
        strict: raise :class:`~ftcallback._errors.MeasurementError` when a measurement fails, instead of
            recording the failure and training on.
        seed: seed for sampling (when ``generation_kwargs`` sets ``do_sample=True``) and for the bootstrap.
        logging_dir: TensorBoard directory; by default the Trainer's TensorBoard run directory when
            ``report_to`` includes tensorboard, else ``<output_dir>/runs/<date>_<host>`` (with the loss
            curves mirrored there so they sit next to the efficiency curves).
        num_sample_outputs: decoded responses kept per check (report and TensorBoard text).

    Raises:
        ConfigError: an argument is invalid (the message names it and the fix).
        PromptError: the prompts are empty, malformed or unreadable.
        BaselineError: ``baseline`` is missing, corrupt, of another schema, or measured differently.

    Example:
        >>> from ftcallback import Budget, EfficiencyCallback
        >>> cb = EfficiencyCallback(["What is the capital of France?"],
        ...                         budget=Budget(max_token_increase=0.25), max_new_tokens=32)
        >>> # Trainer(model=..., args=..., train_dataset=..., processing_class=tok, callbacks=[cb]).train()
    """

    def __init__(
        self,
        prompts: Sequence[str] | Any,
        *,
        budget: Budget | Mapping[str, Any] | None = None,
        tokenizer: Any = None,
        max_new_tokens: int = 128,
        generation_kwargs: Mapping[str, Any] | None = None,
        warmup: int = 1,
        repeats: int = 3,
        batch_size: int = 1,
        every_n_steps: int | None = None,
        patience: int = 1,
        stop_training: bool = True,
        baseline: str | os.PathLike[str] | Measurement | Mapping[str, Any] | None = None,
        apply_chat_template: bool = False,
        strict: bool = False,
        seed: int = 0,
        logging_dir: str | os.PathLike[str] | None = None,
        num_sample_outputs: int = 3,
    ) -> None:
        self.prompts = load_prompts(prompts)
        if budget is None:
            budget = Budget()
        elif isinstance(budget, Mapping):
            budget = Budget.from_dict(budget)
        elif not isinstance(budget, Budget):
            raise ConfigError(
                f"`budget` must be an ftcallback.Budget, a dict of its fields, or None, got {type(budget).__name__}"
            )
        self.budget: Budget = budget
        self.tokenizer = tokenizer
        self.max_new_tokens = _positive_int("max_new_tokens", max_new_tokens)
        if generation_kwargs is not None and not isinstance(generation_kwargs, Mapping):
            raise ConfigError(
                f"`generation_kwargs` must be a dict of generate() arguments, got {type(generation_kwargs).__name__}"
            )
        self.generation_kwargs = dict(generation_kwargs or {})
        # Now, not at the first check: with a given baseline that check comes after an epoch of training.
        check_generation_kwargs(self.generation_kwargs)
        # Flags that have no effect (temperature without do_sample=True) are said once, here.
        describe_decoding(None, self.generation_kwargs).warn()
        self.warmup = _positive_int("warmup", warmup, minimum=0)
        self.repeats = _positive_int("repeats", repeats)
        self.batch_size = _positive_int("batch_size", batch_size)
        if every_n_steps is not None:
            _positive_int("every_n_steps", every_n_steps, hint=" (None measures at epoch ends only)")
        self.every_n_steps = every_n_steps
        self.patience = _positive_int("patience", patience, hint=" (1 stops at the first breaching check)")
        if not isinstance(stop_training, bool):
            raise ConfigError(f"`stop_training` must be True or False, got {stop_training!r}")
        self.stop_training = stop_training
        self.apply_chat_template = bool(apply_chat_template)
        self.strict = bool(strict)
        self.seed = int(seed)
        self.logging_dir = os.fspath(logging_dir) if logging_dir is not None else None
        self.num_sample_outputs = _positive_int("num_sample_outputs", num_sample_outputs, minimum=0)

        self._given_baseline, self._baseline_source = self._load_baseline(baseline)

        self.report: RunReport | None = None
        self.report_path: Path | None = None
        self.log_dir: str | None = None
        self._sink: TensorBoardSink | None = None
        self._consecutive_breaches = 0
        self._last_check_step: int | None = None
        self._started_at = 0.0
        self._trained_compiled: bool | None = None
        # Set by transformers when restoring from a checkpoint (see `state()`).
        self._saved_report: dict[str, Any] | None = None

    # ------------------------------------------------------------------ configuration
    def probe_settings(self) -> dict[str, Any]:
        """The settings a baseline must share with this run to be comparable."""
        return {
            "prompts_sha256": prompts_sha256(self.prompts, self.apply_chat_template),
            "num_prompts": len(self.prompts),
            "max_new_tokens": self.max_new_tokens,
            "generation_kwargs": _json_normal(self.generation_kwargs),
            "apply_chat_template": self.apply_chat_template,
        }

    def _load_baseline(self, baseline: Any) -> tuple[Measurement | None, str]:
        if baseline is None:
            return None, "measured at train begin"
        if isinstance(baseline, Measurement):
            m, source = baseline, "given as a Measurement"
        elif isinstance(baseline, Mapping):
            m, source = Measurement.from_dict(baseline), "given as a dict"
        elif isinstance(baseline, (str, os.PathLike)):
            m, source = Measurement.load(baseline), f"loaded from {os.fspath(baseline)}"
        else:
            raise ConfigError(
                f"`baseline` must be a path to a saved measurement, a Measurement, or None, "
                f"got {type(baseline).__name__}"
            )
        mismatches = self._incompatibilities(m)
        if mismatches:
            raise BaselineError(
                "`baseline` was measured with other prompts or settings than this run: "
                + "; ".join(mismatches)
                + ". Measure it again with the same probe (e.g. `ftcallback measure`) or drop `baseline=`"
            )
        return m, source

    def _incompatibilities(self, m: Measurement) -> list[str]:
        want = self.probe_settings()
        problems = []
        for key, value in want.items():
            theirs = m.settings.get(key)
            if key == "generation_kwargs":
                theirs = _json_normal(theirs or {})
            if theirs != value:
                problems.append(f"{key} is {theirs!r} in the baseline but {value!r} here")
        return problems

    def settings(self) -> dict[str, Any]:
        """The callback's settings as written into the report."""
        return {
            **self.probe_settings(),
            "warmup": self.warmup,
            "repeats": self.repeats,
            "batch_size": self.batch_size,
            "every_n_steps": self.every_n_steps,
            "patience": self.patience,
            "stop_training": self.stop_training,
            "strict": self.strict,
            "seed": self.seed,
        }

    # ------------------------------------------------------------------ ExportableState
    def state(self) -> dict[str, Any]:
        """JSON state saved into checkpoints' trainer_state.json and restored on resume.

        ``args`` rebuild an equivalent callback (the tokenizer is taken from the Trainer again);
        ``attributes`` bring back the baseline, the history and the patience counter.
        """
        args: dict[str, Any] = {
            "prompts": list(self.prompts),
            "budget": self.budget.to_dict(),
            "max_new_tokens": self.max_new_tokens,
            "generation_kwargs": _json_normal(self.generation_kwargs),
            "warmup": self.warmup,
            "repeats": self.repeats,
            "batch_size": self.batch_size,
            "every_n_steps": self.every_n_steps,
            "patience": self.patience,
            "stop_training": self.stop_training,
            "apply_chat_template": self.apply_chat_template,
            "strict": self.strict,
            "seed": self.seed,
            "logging_dir": self.logging_dir,
            "num_sample_outputs": self.num_sample_outputs,
        }
        attributes: dict[str, Any] = {"_consecutive_breaches": self._consecutive_breaches}
        if self.report is not None:
            attributes["_saved_report"] = self.report.to_dict(include_measurements=False)
        return {"args": args, "attributes": attributes}

    # ------------------------------------------------------------------ Trainer events
    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        model = kwargs.get("model")
        self._started_at = time.time()
        # The Trainer trains a compiled module but hands callbacks the original: say so in every record.
        self._trained_compiled = bool(getattr(args, "torch_compile", False))
        # User errors surface here, before any optimizer step, on every rank.
        if model is None:
            raise ModelError("EfficiencyCallback got no model from the Trainer")
        self.tokenizer = self.tokenizer or resolve_tokenizer(kwargs.get("processing_class"))
        self._validate_probe(model)
        self.report_path = report_path(str(args.output_dir))
        is_main = state.is_world_process_zero

        if is_main:
            self.log_dir, mirror = resolve_log_dir(
                args, started_at=self._started_at, override=self.logging_dir
            )
            self._sink = TensorBoardSink(self.log_dir, mirror_trainer_logs=mirror)

        if self._saved_report is not None:
            self.report = RunReport.from_dict(self._saved_report)
            self._saved_report = None
            logger.info(
                "resumed at step %d: restored the baseline and %d check(s) from the checkpoint",
                state.global_step,
                len(self.report.checks),
            )
        elif self._given_baseline is not None:
            self.report = self._new_report(args, self._given_baseline.to_dict(), self._baseline_source)
            logger.info("using the given baseline (%s); not measuring at train begin", self._baseline_source)
        elif state.global_step > 0:
            self.report = self._report_for_resume(args, state)
        else:
            self.report = self._new_report(args, None, self._baseline_source)

        self._consecutive_breaches = self.report.checks[-1].consecutive_breaches if self.report.checks else 0
        if self.report.baseline is None:
            self._check("baseline", args, state, control, model)
        elif is_main:
            self._write_baseline_to_tensorboard()
            self._save_report()

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.every_n_steps and state.global_step > 0 and state.global_step % self.every_n_steps == 0:
            self._check("step", args, state, control, kwargs.get("model"))

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._last_check_step == state.global_step:
            return  # a step check already measured this very model
        self._check("epoch", args, state, control, kwargs.get("model"))

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.report is None:
            return
        path = os.path.join(str(args.output_dir), f"checkpoint-{state.global_step}")
        self.report.record_checkpoint(state.global_step, path)
        if state.is_world_process_zero:
            self._save_report()

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if self._sink is not None and logs and state.is_world_process_zero:
            self._sink.log_trainer_logs(logs, state.global_step)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.report is None or not state.is_world_process_zero:
            return
        self._save_report()
        if self._sink is not None:
            self._sink.close()
        if self.report.stopped is None:
            logger.info(
                "training ended at step %d after %d check(s); report: %s",
                state.global_step,
                len(self.report.checks),
                self.report_path,
            )

    # ------------------------------------------------------------------ checks
    def _validate_probe(self, model: Any) -> None:
        """Fail at train begin, not hours later, on a probe the model cannot run."""
        validate_probe(
            model,
            self.tokenizer,
            self.prompts,
            max_new_tokens=self.max_new_tokens,
            generation_kwargs=self.generation_kwargs,
            apply_chat_template=self.apply_chat_template,
        )

    def _new_report(self, args: TrainingArguments, baseline: dict[str, Any] | None, source: str) -> RunReport:
        return RunReport(
            budget=self.budget.to_dict(),
            settings=self.settings(),
            baseline=baseline,
            baseline_source=source,
            output_dir=str(args.output_dir),
        )

    def _report_for_resume(self, args: TrainingArguments, state: TrainerState) -> RunReport:
        path = report_path(str(args.output_dir))
        try:
            previous = RunReport.load(path)
        except FTCallbackError as exc:
            logger.warning(
                "resuming at step %d without a saved baseline (%s): measuring the partly trained model as the "
                "baseline; pass `baseline=` or use restore_callback_states_from_checkpoint=True to keep the "
                "original one",
                state.global_step,
                exc,
            )
            return self._new_report(args, None, f"measured at resume (step {state.global_step})")
        baseline = previous.baseline_measurement()
        if baseline is None or self._incompatibilities(baseline):
            logger.warning(
                "resuming at step %d: the report at %s has no baseline matching this probe; measuring the "
                "partly trained model as the baseline",
                state.global_step,
                path,
            )
            return self._new_report(args, None, f"measured at resume (step {state.global_step})")
        previous.checks = [c for c in previous.checks if c.step <= state.global_step]
        previous.checkpoints = [c for c in previous.checkpoints if c["step"] <= state.global_step]
        previous.stopped = None
        previous.settings = self.settings()
        logger.warning(
            "resuming at step %d: reusing the baseline measured at train begin from %s instead of measuring "
            "the partly trained model",
            state.global_step,
            path,
        )
        previous.baseline_source = f"reloaded from {path} at resume"
        return previous

    def _check(
        self, kind: str, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any
    ) -> None:
        if model is None or self.report is None:
            return
        self._last_check_step = state.global_step
        mode = distributed.sharding_mode(model)
        is_main = state.is_world_process_zero
        if mode is None:
            decision = distributed.run_on_main(
                lambda beat: self._measure_and_decide(kind, args, state, model, beat, None), is_main=is_main
            )
        else:
            # Sharded parameters: every rank must take part in every forward pass.
            decision = self._measure_and_decide(kind, args, state, model, lambda: None, mode)
            if not is_main:
                decision = None
        decision = distributed.broadcast_from_main(decision)
        if decision is None:  # cannot happen unless the main process died; never stop one rank alone
            return
        self._consecutive_breaches = decision["consecutive"]
        if decision.get("error") and self.strict:
            raise MeasurementError(
                f"{kind} measurement at step {state.global_step} failed: {decision['error']}"
            )
        if decision["stop"]:
            control.should_training_stop = True

    def _measure_once(self, model: Any, batch_size: int, beat: Any, mode: str | None) -> Measurement:
        with distributed.generation_context(model, mode):
            m = measure(
                model,
                self.tokenizer,
                self.prompts,
                max_new_tokens=self.max_new_tokens,
                generation_kwargs=self.generation_kwargs,
                warmup=self.warmup,
                repeats=self.repeats,
                batch_size=batch_size,
                apply_chat_template=self.apply_chat_template,
                seed=self.seed,
                num_sample_outputs=self.num_sample_outputs,
                on_batch_end=beat,
                synced_gpus=True if mode is not None else None,
                trained_compiled=self._trained_compiled,
                warn_ignored=False,
            )
        # Say how it was measured: "zero3" / "fsdp1" / "fsdp2" (every rank generated), None (one process did).
        return dataclasses.replace(m, environment={**m.environment, "sharding_mode": mode})

    def _measure(self, model: Any, beat: Any, mode: str | None) -> Measurement:
        try:
            return self._measure_once(model, self.batch_size, beat, mode)
        except (torch.OutOfMemoryError, MemoryError) as exc:
            _release_memory()
            smaller = max(1, self.batch_size // 2)
            if smaller == self.batch_size:
                raise
            logger.warning(
                "measurement ran out of memory with batch_size=%d (%s); retrying once with batch_size=%d",
                self.batch_size,
                exc,
                smaller,
            )
            return self._measure_once(model, smaller, beat, mode).with_retry(
                "out_of_memory", batch_size=(self.batch_size, smaller)
            )

    def _measure_and_decide(
        self,
        kind: str,
        args: TrainingArguments,
        state: TrainerState,
        model: Any,
        beat: Any,
        mode: str | None,
    ) -> dict[str, Any]:
        assert self.report is not None  # set in on_train_begin, before any check
        epoch = state.epoch if kind != "baseline" else 0.0
        step = state.global_step
        try:
            m = self._measure(model, beat, mode)
            impossible = _impossible(m)
            if impossible:
                raise MeasurementError(f"impossible measurement: {impossible}")
        except (ConfigError, ModelError):
            raise  # a user error: the probe itself is wrong, say so now
        except Exception as exc:  # a failed measurement must not kill a healthy run
            _release_memory()
            error = f"{type(exc).__name__}: {exc}"
            record = CheckRecord(
                index=len(self.report.checks),
                kind=kind,
                epoch=epoch,
                step=step,
                status="failed",
                error=error,
                consecutive_breaches=self._consecutive_breaches,
            )
            self.report.add_check(record)
            if state.is_world_process_zero:
                self._save_report()
            logger.warning(
                "%s measurement at epoch %s (step %d) failed and was recorded; training continues%s: %s",
                kind,
                _fmt_epoch(epoch),
                step,
                "" if not self.strict else " (strict mode: raising)",
                error,
            )
            return {"stop": False, "consecutive": self._consecutive_breaches, "error": error}

        baseline: Measurement | None
        if kind == "baseline":
            self.report.baseline = m.to_dict()
            baseline = m
        else:
            baseline = self.report.baseline_measurement()
        verdict = evaluate(self.budget, m, baseline)
        if kind == "baseline":
            # Nothing to stop yet, but an SLA the untouched model already misses deserves a word now.
            for check in verdict.breaches:
                logger.warning("the baseline already breaches the budget: %s", check.describe())
            verdict = Verdict(checks=tuple(c for c in verdict.checks if not c.breached))
        breached = bool(verdict.breaches)
        consecutive = self._consecutive_breaches + 1 if breached else 0
        ratios, cost = self._ratios_and_cost(m, baseline)
        record = CheckRecord(
            index=len(self.report.checks),
            kind=kind,
            epoch=epoch,
            step=step,
            status="ok",
            summary=m.summary(),
            ratios=ratios,
            cost=cost,
            verdict=[_verdict_entry(c) for c in verdict.checks],
            breached=breached,
            consecutive_breaches=consecutive,
            measurement=m.to_dict(),
        )
        self.report.add_check(record)
        self._log_check(kind, epoch, step, m, verdict, ratios)

        stop = False
        if breached and consecutive >= self.patience:
            stop = self._on_budget_breached(epoch, step, verdict, args)
        elif breached:
            logger.warning(
                "budget breached at epoch %s (step %d), %d of %d consecutive checks before stopping: %s",
                _fmt_epoch(epoch),
                step,
                consecutive,
                self.patience,
                "; ".join(c.describe() for c in verdict.breaches),
            )

        if state.is_world_process_zero:
            self._append_log_history(state, m, ratios, cost, breached)
            if self._sink is not None:
                limits = self.budget.limits(baseline)
                self._sink.write_layout(list(limits))
                self._sink.log_check(
                    step if kind != "baseline" else 0, m.summary(), {**ratios, **cost}, limits
                )
                self._sink.log_samples(step if kind != "baseline" else 0, list(m.sample_outputs))
                self._sink.flush()
            self._save_report()
        return {"stop": stop, "consecutive": consecutive, "error": None}

    def _ratios_and_cost(
        self, m: Measurement, baseline: Measurement | None
    ) -> tuple[dict[str, float], dict[str, float]]:
        from ._stats import paired_ratio

        ratios: dict[str, float] = {}
        if baseline is not None:
            est = paired_ratio(
                baseline.per_prompt("latency_s"), m.per_prompt("latency_s"), seed=self.seed, resamples=500
            )
            ratios["latency_ratio"] = est.ratio
            ratios["latency_ratio_low"] = est.low
            ratios["latency_ratio_high"] = est.high
            b_out = baseline.output_tokens.mean
            ratios["output_tokens_ratio"] = m.output_tokens.mean / b_out if b_out > 0 else math.nan
        cost: dict[str, float] = {}
        per_request = self.budget.cost_per_request_of(m)
        if per_request is not None:
            cost["cost_per_request"] = per_request
            if self.budget.requests_per_month is not None:
                cost["monthly_cost"] = per_request * self.budget.requests_per_month
            if baseline is not None:
                b_cost = self.budget.cost_per_request_of(baseline)
                if b_cost:
                    cost["cost_ratio"] = per_request / b_cost
        return ratios, cost

    def _on_budget_breached(
        self, epoch: float | None, step: int, verdict: Verdict, args: TrainingArguments
    ) -> bool:
        assert self.report is not None
        first = verdict.breaches[0]
        recommended = self.report.last_within_budget_checkpoint
        others = "; ".join(c.describe() for c in verdict.breaches[1:])
        message = f"{first.describe()}" + (f"; also {others}" if others else "")
        # No full stop after the path: it is copied from the terminal as it is.
        hint = f". Last checkpoint within budget: {recommended}" if recommended else ""
        if self.stop_training:
            # Exactly `stopped["message"]` (plus the hint): the line users grep for and the report agree.
            logger.warning(
                "stopping training at epoch %s (step %d): %s%s", _fmt_epoch(epoch), step, message, hint
            )
        else:
            logger.warning(
                "budget breached at epoch %s (step %d): %s (stop_training=False: training continues)%s",
                _fmt_epoch(epoch),
                step,
                message,
                hint,
            )
            return False
        self.report.stopped = {
            "epoch": epoch,
            "step": step,
            "budget": first.budget,
            "metric": first.metric,
            "value": first.value,
            "limit": first.limit,
            "baseline": first.baseline,
            "reason": "budget_breached",
            "message": f"stopping training at epoch {_fmt_epoch(epoch)} (step {step}): {message}",
            "breaches": [c.to_dict() for c in verdict.breaches],
            "recommended_checkpoint": recommended,
        }
        return True

    # ------------------------------------------------------------------ sinks
    def _log_check(
        self,
        kind: str,
        epoch: float | None,
        step: int,
        m: Measurement,
        verdict: Verdict,
        ratios: Mapping[str, float],
    ) -> None:
        where = "baseline" if kind == "baseline" else f"epoch {_fmt_epoch(epoch)} (step {step})"
        ratio = ratios.get("latency_ratio")
        ratio_text = f", latency x{ratio:.2f}" if ratio is not None and math.isfinite(ratio) else ""
        tokens_ratio = ratios.get("output_tokens_ratio")
        tokens_text = (
            f" (x{tokens_ratio:.2f})" if tokens_ratio is not None and math.isfinite(tokens_ratio) else ""
        )
        status = (
            "" if kind == "baseline" else (" - within budget" if verdict.passed else " - BUDGET BREACHED")
        )
        logger.info(
            "%s: latency p50 %.1f ms p95 %.1f ms%s, ttft p50 %.1f ms, tpot p50 %.2f ms, output tokens %.1f%s%s",
            where,
            m.latency_ms.p50,
            m.latency_ms.p95,
            ratio_text,
            m.ttft_ms.p50,
            m.tpot_ms.p50,
            m.output_tokens.mean,
            tokens_text,
            status,
        )

    def _append_log_history(
        self,
        state: TrainerState,
        m: Measurement,
        ratios: Mapping[str, float],
        cost: Mapping[str, float],
        breached: bool,
    ) -> None:
        summary = m.summary()
        entry: dict[str, Any] = {}
        for key in _LOG_HISTORY_KEYS:
            entry[f"efficiency/{key}"] = summary.get(key)
        for key in ("latency_ratio", "output_tokens_ratio"):
            entry[f"efficiency/{key}"] = ratios.get(key)
        for key, value in cost.items():
            entry[f"efficiency/{key}"] = value
        entry["efficiency/breached"] = int(breached)
        # trainer_state.json is JSON: no NaN, no None noise.
        clean = {k: float(v) for k, v in entry.items() if v is not None and math.isfinite(float(v))}
        state.log_history.append({**clean, "epoch": state.epoch or 0.0, "step": state.global_step})

    def _write_baseline_to_tensorboard(self) -> None:
        assert self.report is not None
        baseline = self.report.baseline_measurement()
        if self._sink is None or baseline is None:
            return
        limits = self.budget.limits(baseline)
        self._sink.write_layout(list(limits))
        _, cost = self._ratios_and_cost(baseline, baseline)
        self._sink.log_check(
            0, baseline.summary(), {"latency_ratio": 1.0, "output_tokens_ratio": 1.0, **cost}, limits
        )
        self._sink.flush()

    def _save_report(self) -> None:
        if self.report is None or self.report_path is None:
            return
        try:
            self.report.save(self.report_path)
        except OSError as exc:  # a full disk must not kill training either
            logger.warning("could not write %s: %s", self.report_path, exc)


def _impossible(m: Measurement) -> str | None:
    """Why ``m`` cannot describe the model, or None. Such a check is recorded as failed, never compared:
    "0 output tokens" would otherwise pass every token budget. (Non-finite times are not impossible in
    this sense: the budget calls those lines not evaluable and still judges the token and cost lines.)"""
    if not m.samples:
        return "no request was measured"
    if all(s.output_tokens == 0 for s in m.samples):
        return "no response has any output token (generate returned nothing new)"
    return None


def _verdict_entry(check: BudgetCheck) -> dict[str, Any]:
    """A budget line as the report keeps it: the check's own fields plus its headroom (``margin``)."""
    margin = check.margin
    return {**check.to_dict(), "margin": margin if math.isfinite(margin) else None}


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
