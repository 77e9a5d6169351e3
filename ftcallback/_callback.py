"""``EfficiencyCallback``: Trainer events in, measurements to the monitor, its decisions back to the Trainer.

The callback is an adapter. It measures with :func:`ftcallback.measure`, hands each measurement to the
Trainer-free :class:`~ftcallback._monitor.Monitor` (verdict, patience, stop), broadcasts the decision so
that every rank acts alike, and lets the sinks (report, TensorBoard, trackers) write the outcome on the
main process. What it owns is what only a Trainer has: events, ranks, checkpoints, resume.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import time
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ExportableState

from . import _distributed as distributed
from ._budget import Budget
from ._checkpoints import pin, record_final_model
from ._errors import BaselineError, ConfigError, MeasurementError, ModelError
from ._execution import describe_decoding
from ._forms import form_cost, parse_form
from ._measure import validate_probe
from ._measurement import Measurement
from ._monitor import CheckOutcome, Monitor, fmt_epoch
from ._probe import ProbeSpec
from ._prober import Prober, release_memory
from ._prompts import load_probe, resolve_tokenizer
from ._report import RunReport, report_path
from ._resume import note_resumed_checkpoint, reconcile_arguments, reloaded_report, restored_report
from ._sinks import ReportSink, TrackerSink
from ._tensorboard import TensorBoardSink, resolve_log_dir
from ._trainer_facts import (
    EVAL_SUMMARY_KEYS,
    TRACKERS,
    best_metric_key,
    check_not_meta,
    check_parallelism,
    eval_key,
    find_calling_trainer,
    last_loss,
    report_to,
    termination_requested,
    watch_jit_checkpoint,
)

__all__ = ["EfficiencyCallback"]

# Decisions and stops are logged on the package logger itself, so that
# `logging.getLogger("ftcallback")` is all a user needs to watch.
logger = logging.getLogger("ftcallback")

def _positive_int(name: str, value: Any, *, minimum: int = 1, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"`{name}` must be an integer >= {minimum}, got {value!r}{hint}")
    return value


def _resolve_budget(budget: Any) -> Budget:
    if budget is None:
        return Budget()
    if isinstance(budget, Budget):
        return budget
    if isinstance(budget, Mapping):
        return Budget.from_dict(budget)
    if isinstance(budget, (str, os.PathLike)):
        return Budget.from_file(budget)
    raise ConfigError(
        "`budget` must be an ftcallback.Budget, a dict of its fields, a .toml/.json file path, "
        f"or None, got {type(budget).__name__}"
    )


class EfficiencyCallback(TrainerCallback, ExportableState):
    """Measure latency and output length before and during training, log them, and enforce a budget.

    A baseline is measured at ``on_train_begin`` on the model exactly as the Trainer will
    train it (device, dtype, autocast, adapters), before any optimizer step. The same
    probe is measured again at every epoch end (and every ``every_n_steps`` optimizer
    steps), compared with the baseline and the budget, logged to TensorBoard
    (``efficiency/*``), to ``<output_dir>/efficiency/report.json``, to every ``report_to``
    tracker and the console, and to ``state.log_history``. After ``patience`` consecutive
    breaching checks the run stops with one WARNING on the ``ftcallback`` logger that says why.

    Args:
        prompts: probe prompts: a list of strings, a ``datasets.Dataset`` (column ``"prompt"`` or
            ``"text"``), or a path to a ``.txt`` (one per line) or ``.jsonl`` file. Prompts may carry a reference
            answer (``{"prompt": ..., "reference": ...}`` lines, a ``reference`` column, ``(prompt, reference)``
            pairs): quality is then scored on the very generations that are timed, at no extra generate cost.
        budget: a :class:`~ftcallback.Budget`, its ``to_dict()`` form, or the path of a ``.toml`` /
            ``.json`` file of its fields (:meth:`Budget.from_file`); ``None`` only monitors.
        tokenizer: the tokenizer for the probe; defaults to the Trainer's ``processing_class``
            (a processor's ``.tokenizer`` is used).
        max_new_tokens: generation cap per response.
        generation_kwargs: extra ``generate`` arguments (greedy decoding by default).
        warmup: untimed warm-up calls before each measurement.
        repeats: timed passes over the probe per measurement. With ``max_latency_increase`` in the budget, a
            check whose latency verdict is too close to call measures more, up to 3x ``repeats``, and the
            baseline (the yardstick every check shares) is measured until the standard error of its latency
            level is at most 0.75%: from 2x ``repeats`` (at least 6 passes) up to 9x (a fixed 3x when sharded).
        batch_size: prompts per ``generate`` call.
        every_n_steps: also measure every N optimizer steps, besides each epoch end.
        patience: consecutive breaching checks before stopping.
        stop_training: ``False`` warns and records breaches but never stops.
        baseline: a saved :class:`~ftcallback.Measurement` (a path or the object) to use
            instead of measuring at train begin; it must have been measured with the same probe and settings.
        apply_chat_template: wrap each prompt in the tokenizer's chat template (instruct models).
        strict: raise :class:`~ftcallback.MeasurementError` when a measurement fails, instead of
            recording the failure and training on.
        seed: seed for sampling (when ``generation_kwargs`` sets ``do_sample=True``) and for the bootstrap
            that decides latency budgets.
        logging_dir: TensorBoard directory; by default the Trainer's TensorBoard run directory when
            ``report_to`` includes tensorboard, else ``<output_dir>/runs/<date>_<host>`` (with the loss
            curves mirrored there so they sit next to the efficiency curves).
        num_sample_outputs: decoded responses kept per check (report and TensorBoard text).
        name: tells several callbacks in one Trainer apart: each writes
            ``<output_dir>/efficiency/<name>/report.json`` and ``efficiency/<name>/*`` tags. Two callbacks
            with the same name in one Trainer are refused at train begin.
        trainer: the Trainer, to route the metrics to its ``report_to`` trackers. Optional: when not
            given, the callback finds the Trainer that calls it.
        scorer: how a response is scored against its reference: ``"exact"`` (default: exact match after
            normalisation), ``"contains"``, ``"regex"``, ``"numeric"``, or
            ``score(prompt, output, reference) -> float``.
        best_model_within_budget: with ``metric_for_best_model`` set, weights over budget get the worst value of
            that metric at evaluation, so that ``load_best_model_at_end`` and ``save_strategy="best"`` never pick
            them. The evaluation metrics also carry ``eval_efficiency_within_budget`` (1 or 0),
            ``eval_efficiency_latency_ms_p50`` / ``_p95``, ``eval_efficiency_output_tokens_mean`` and, with
            references, ``eval_efficiency_quality``, from the latest check at or before the evaluated step.
        deployed_form: also measure, at every check, the model as it will be served: ``"merged"`` (LoRA
            adapters merged in place, base weights restored bit for bit), ``"bf16"`` / ``"fp16"`` (cast in
            place, originals put back), ``"int8"`` (a quantized CPU copy), or ``"merged+bf16"``. Budgets then
            judge that form against the baseline in the same form; the report, TensorBoard
            (``efficiency/deployed/*``) and trackers carry both. A form that does not fit in memory is
            recorded as a failed check, never run. Not with ``baseline=`` (it holds the training form only).

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

    #: Live instances: a callback rebuilt by transformers from a checkpoint finds the one the user passed to this
    #: run (whose arguments win over the checkpoint's): the newest unused one of the same name.
    _instances: weakref.WeakSet[EfficiencyCallback] = weakref.WeakSet()
    _created = itertools.count()

    def __init__(
        self,
        prompts: Sequence[str] | Any,
        *,
        budget: Budget | Mapping[str, Any] | str | os.PathLike[str] | None = None,
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
        name: str | None = None,
        trainer: Any = None,
        best_model_within_budget: bool = True,
        scorer: Any = None,
        deployed_form: str | None = None,
    ) -> None:
        from ._measure import check_generation_kwargs

        if generation_kwargs is not None and not isinstance(generation_kwargs, Mapping):
            raise ConfigError(
                f"`generation_kwargs` must be a dict of generate() arguments, got {type(generation_kwargs).__name__}"
            )
        # Now, not at the first check: with a given baseline that check comes after an epoch of training.
        check_generation_kwargs(dict(generation_kwargs or {}))
        # Flags that have no effect (temperature without do_sample=True) are said once, here.
        describe_decoding(None, generation_kwargs).warn()
        probe = load_probe(prompts)
        self.spec = ProbeSpec(
            prompts=probe.prompts,
            references=probe.references,
            scorer=scorer,
            max_new_tokens=_positive_int("max_new_tokens", max_new_tokens),
            generation_kwargs=dict(generation_kwargs or {}),
            warmup=_positive_int("warmup", warmup, minimum=0),
            repeats=_positive_int("repeats", repeats),
            batch_size=_positive_int("batch_size", batch_size),
            seed=int(seed),
            apply_chat_template=bool(apply_chat_template),
            num_sample_outputs=_positive_int("num_sample_outputs", num_sample_outputs, minimum=0),
        )
        self.budget: Budget = _resolve_budget(budget)
        self.tokenizer = tokenizer
        if every_n_steps is not None:
            _positive_int("every_n_steps", every_n_steps, hint=" (None measures at epoch ends only)")
        self.every_n_steps = every_n_steps
        self.patience = _positive_int("patience", patience, hint=" (1 stops at the first breaching check)")
        if not isinstance(stop_training, bool):
            raise ConfigError(f"`stop_training` must be True or False, got {stop_training!r}")
        self.stop_training = stop_training
        self.strict = bool(strict)
        self.logging_dir = os.fspath(logging_dir) if logging_dir is not None else None
        if name is not None and (not isinstance(name, str) or not name or "/" in name or name.startswith(".")):
            raise ConfigError(f"`name` must be a non-empty string without '/' (a folder and tag name), got {name!r}")
        self.name = name
        self.trainer = trainer
        if not isinstance(best_model_within_budget, bool):
            raise ConfigError(f"`best_model_within_budget` must be True or False, got {best_model_within_budget!r}")
        self.best_model_within_budget = best_model_within_budget
        self.deployed_form = None if deployed_form is None else parse_form(deployed_form)
        if self.deployed_form is not None and baseline is not None:
            raise ConfigError(
                f"`baseline` cannot be given with `deployed_form={self.deployed_form!r}`: a saved measurement "
                "holds the training form only, and the budget judges the deployed form against its own baseline. "
                "Drop `baseline=` (both forms are then measured at train begin) or drop `deployed_form=`"
            )

        self._given_baseline, self._baseline_source = self._load_baseline(baseline)

        # How every check of this run measures (probe, reference workload, adaptive rule, retry, deployed form).
        self._prober = Prober(self.spec, self.budget, deployed_form=self.deployed_form)
        self.monitor: Monitor | None = None
        self.report_path: Path | None = None
        self.log_dir: str | None = None
        self._tensorboard: TensorBoardSink | None = None
        self._report_sink: ReportSink | None = None
        self._trackers: TrackerSink | None = None
        self._pending_tracker_send: CheckOutcome | None = None
        self._trainer: Any = None  # the Trainer running this callback (given, or found at train begin)
        self._last_check_step: int | None = None
        self._run = -1  # train() calls seen; 0 during the first
        # Set by transformers when restoring from a checkpoint (see `state()`).
        self._saved_report: dict[str, Any] | None = None
        self._restored_args: dict[str, Any] | None = None
        self._serial = next(EfficiencyCallback._created)  # a WeakSet has no order; this tells the newest
        EfficiencyCallback._instances.add(self)

    # ------------------------------------------------------------------ read-only views
    @property
    def prompts(self) -> list[str]:
        return list(self.spec.prompts)

    @property
    def max_new_tokens(self) -> int:
        return self.spec.max_new_tokens

    @property
    def report(self) -> RunReport | None:
        """The run's record (None before ``on_train_begin``)."""
        return self.monitor.report if self.monitor is not None else None

    def settings(self) -> dict[str, Any]:
        """The callback's settings as written into the report."""
        return {
            **self.spec.settings(),
            "every_n_steps": self.every_n_steps,
            "patience": self.patience,
            "stop_training": self.stop_training,
            "strict": self.strict,
            "name": self.name,
            "deployed_form": self.deployed_form,
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
        mismatches = self.spec.incompatibilities(m.settings)
        if mismatches:
            raise BaselineError(
                "`baseline` was measured with other prompts or settings than this run: "
                + "; ".join(mismatches)
                + ". Measure it again with the same probe (e.g. `ftcallback measure`) or drop `baseline=`"
            )
        return m, source

    # ------------------------------------------------------------------ ExportableState
    def _args(self) -> dict[str, Any]:
        return {
            **self.spec.to_dict(),
            "budget": self.budget.to_dict(),
            "every_n_steps": self.every_n_steps,
            "patience": self.patience,
            "stop_training": self.stop_training,
            "strict": self.strict,
            "logging_dir": self.logging_dir,
            "name": self.name,
            "best_model_within_budget": self.best_model_within_budget,
            "deployed_form": self.deployed_form,
        }

    def state(self) -> dict[str, Any]:
        """JSON state saved into checkpoints' trainer_state.json and restored on resume.

        ``args`` rebuild an equivalent callback; ``attributes`` bring back the record (baseline, checks,
        checkpoints; per-check raw samples stay in report.json, which a resume reads when it exists).
        """
        attributes: dict[str, Any] = {"_restored_args": self._args()}
        if self.report is not None:
            attributes["_saved_report"] = self.report.to_dict(include_measurements=False)
        return {"args": self._args(), "attributes": attributes}

    def _adopt_user_arguments(self) -> None:
        """Rebuilt from a checkpoint by transformers: the arguments the user gave this run win, with a WARNING
        naming both values; a different probe cannot reuse the saved baseline and is refused."""
        saved = self._restored_args
        self._restored_args = None
        candidates = [
            cb
            for cb in list(EfficiencyCallback._instances)
            if cb is not self and cb.name == self.name and cb._saved_report is None and cb.monitor is None
        ]
        # A callback built but never trained (an earlier notebook cell) may still be alive: the newest one wins.
        user = max(candidates, key=lambda cb: cb._serial, default=None)
        if user is None or saved is None:
            return
        reconcile_arguments(user._args(), saved, probe_keys=set(user.spec.to_dict()))
        self.spec, self.budget = user.spec, user.budget
        self.every_n_steps, self.patience = user.every_n_steps, user.patience
        self.stop_training, self.strict = user.stop_training, user.strict
        self.best_model_within_budget = user.best_model_within_budget
        self.logging_dir, self.trainer = user.logging_dir, user.trainer
        self.deployed_form = user.deployed_form
        self._prober = Prober(self.spec, self.budget, deployed_form=self.deployed_form)
        self.tokenizer = self.tokenizer or user.tokenizer

    # ------------------------------------------------------------------ Trainer events
    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        model = kwargs.get("model")
        started_at = time.time()
        # The Trainer trains a compiled module but hands callbacks the original: say so in every record.
        self._prober.trained_compiled = bool(getattr(args, "torch_compile", False))
        # User errors surface here, before any optimizer step, on every rank.
        if model is None:
            raise ModelError("EfficiencyCallback got no model from the Trainer")
        check_not_meta(model)
        check_parallelism(args)
        if self._restored_args is not None:
            self._adopt_user_arguments()
        self.tokenizer = self.tokenizer or resolve_tokenizer(kwargs.get("processing_class"))
        self._prober.tokenizer = self.tokenizer
        validate_probe(
            model,
            self.tokenizer,
            list(self.spec.prompts),
            max_new_tokens=self.spec.max_new_tokens,
            generation_kwargs=self.spec.generation_kwargs,
            apply_chat_template=self.spec.apply_chat_template,
            references=self.spec.references,
            scorer=self.spec.scorer,
        )
        if state.is_world_process_zero and self._run < 0:
            for line in self.budget.unevaluable:  # a cost budget without prices would silently never be checked
                logger.warning("%s%s", f"[{self.name}] " if self.name else "", line)
        if self.deployed_form is not None:
            self._check_deployed_form(model)
        trainer = self.trainer or find_calling_trainer(self)
        self._trainer = trainer
        self._check_names(trainer)
        watch_jit_checkpoint(trainer)
        self._run += 1
        self.report_path = _report_path(args.output_dir, self.name)
        self._start_monitor(args, state)
        assert self.monitor is not None

        if state.is_world_process_zero:
            self._open_sinks(args, started_at, trainer)
        if self.monitor.baseline is None:
            self._check("baseline", args, state, control, model)
        elif state.is_world_process_zero:
            self._write_baseline(state)

    def _check_deployed_form(self, model: Any) -> None:
        """A form the model cannot take is a user error: say so before the first step, on every rank."""
        assert self.deployed_form is not None
        mode = distributed.sharding_mode(model)
        if mode is not None:
            raise ConfigError(
                f"`deployed_form={self.deployed_form!r}` cannot be measured on a sharded model ({mode}): every "
                "rank holds a slice of the weights. Drop `deployed_form=` and measure the saved checkpoint with "
                "`ftcallback compare --what-if` after training"
            )
        form_cost(model, self.deployed_form)  # raises ModelError: no adapters to merge, int8 off CPU, ...

    def _start_monitor(self, args: TrainingArguments, state: TrainerState) -> None:
        """A fresh record, a resumed one, or the first run's kept for a second ``train()``."""
        if self.monitor is not None and self._saved_report is None:
            # A second train() with the same callback: the model in memory is the trained one, so measuring a
            # new baseline would hide what the first run did. Keep the first baseline and record on.
            logger.warning(
                "EfficiencyCallback reused for train() call %d: keeping the baseline measured at the first "
                "train() and appending checks to the same record (create a new EfficiencyCallback for a "
                "fresh baseline)",
                self._run + 1,
            )
            report = self.monitor.report
            if report.stopped is not None:  # this call may train to the end: what stopped the last one stays
                report.earlier_stops.append(report.stopped)
            report.stopped = None
            self.monitor.report.output_dir = str(args.output_dir)
            return
        monitor = Monitor(
            self.spec,
            self.budget,
            patience=self.patience,
            stop_training=self.stop_training,
            baseline=self._given_baseline,
            baseline_source=self._baseline_source,
            output_dir=str(args.output_dir),
            name=self.name,
            settings=self.settings(),
        )
        restored = (
            None
            if self._saved_report is None
            else restored_report(
                self._saved_report,
                report_path=self.report_path,
                first_report_path=lambda out: _report_path(out, self.name),
                output_dir=str(args.output_dir),
                global_step=state.global_step,
                run=self._run,
            )
        )
        self._saved_report = None
        if restored is not None:
            monitor.adopt_report(restored)
        elif self._given_baseline is None and state.global_step > 0:
            reloaded = reloaded_report(self.report_path, self.spec, state.global_step)
            if reloaded is not None:
                monitor.adopt_report(reloaded)
            else:
                monitor.report.baseline_source = f"measured at resume (step {state.global_step})"
        monitor.report.settings = self.settings()
        monitor.report.budget = self.budget.to_dict()
        monitor.report.output_dir = str(args.output_dir)  # a resume may write into another folder
        self.monitor = monitor
        if state.global_step > 0 and monitor.report.baseline is not None:
            note_resumed_checkpoint(monitor, str(args.output_dir), state.global_step)

    def _check_names(self, trainer: Any) -> None:
        if trainer is None:
            return
        same = [
            cb
            for cb in trainer.callback_handler.callbacks
            if isinstance(cb, EfficiencyCallback) and cb is not self and cb.name == self.name
        ]
        if same:
            raise ConfigError(
                f"this Trainer has {len(same) + 1} EfficiencyCallbacks named {self.name!r}: they would write the "
                "same report.json and TensorBoard tags; give each a distinct `name=`"
            )

    def _open_sinks(self, args: TrainingArguments, started_at: float, trainer: Any) -> None:
        assert self.monitor is not None and self.report_path is not None
        self._report_sink = ReportSink(self.report_path, self.monitor.report)
        if self._tensorboard is None:
            self.log_dir, mirror = resolve_log_dir(args, started_at=started_at, override=self.logging_dir)
            self._tensorboard = TensorBoardSink(self.log_dir, mirror_trainer_logs=mirror, name=self.name)
        if trainer is not None:
            self._trackers = TrackerSink(trainer, self)
        else:
            wanted = [r for r in report_to(args) if r in TRACKERS]
            if wanted:
                logger.warning(
                    "EfficiencyCallback could not find the Trainer, so %s will not receive the efficiency "
                    "metrics; pass trainer=... to EfficiencyCallback",
                    ", ".join(wanted),
                )

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._flush_pending_trackers(state)

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

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        """Put the efficiency of the weights being evaluated into the evaluation metrics, where
        ``metric_for_best_model`` (and so ``load_best_model_at_end`` and ``save_strategy="best"``) can use them,
        and keep a checkpoint over budget from ever being the best one."""
        if metrics is None or self.monitor is None:
            return
        check = self.monitor.check_at(state.global_step)
        if check is None:
            return
        for key in EVAL_SUMMARY_KEYS:
            value = check.summary.get(key)
            if value is not None and math.isfinite(value):
                metrics[eval_key(f"efficiency_{key}", self.name)] = float(value)
        metrics[eval_key("efficiency_within_budget", self.name)] = float(not check.breached)
        best_key = best_metric_key(args)
        if check.breached and self.best_model_within_budget and best_key in metrics:
            # Over budget: the worst possible value, so _determine_best_metric never picks these weights.
            metrics[best_key] = -math.inf if args.greater_is_better else math.inf
            logger.info(
                "%sstep %d is over budget: %s set to %s so that it is never the best model",
                f"[{self.name}] " if self.name else "",
                state.global_step,
                best_key,
                metrics[best_key],
            )

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.monitor is None:
            return
        path = os.path.join(str(args.output_dir), f"checkpoint-{state.global_step}")
        entry = self.monitor.record_checkpoint(state.global_step, path)
        if state.is_world_process_zero:
            recommended = self.monitor.report.recommended_checkpoint
            # Keep the checkpoint to ship from rotation once it is the recommendation (best quality within budget,
            # or the latest within budget): an older recommendation stays kept until a better one is saved.
            if (
                entry["within_budget"]
                and args.save_total_limit is not None
                and recommended is not None
                and recommended["step"] == state.global_step
            ):
                assert self.report_path is not None
                pin(path, self.report_path.parent / "checkpoints", self.monitor)
            self._save_report()

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if self._tensorboard is not None and logs and state.is_world_process_zero:
            self._tensorboard.log_trainer_logs(logs, state.global_step)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.monitor is None or not state.is_world_process_zero:
            return
        if self._trackers is not None:
            self._trackers.end_training()
        self._flush_pending_trackers(state)
        loaded = state.best_model_checkpoint if args.load_best_model_at_end else None
        record_final_model(self.monitor, loaded, state.global_step, self.name)
        self._save_report()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self.monitor.report.stopped is None:
            logger.info(
                "training ended at step %d after %d check(s); report: %s",
                state.global_step,
                len(self.monitor.report.checks),
                self.report_path,
            )

    # ------------------------------------------------------------------ checks
    def _check(
        self, kind: str, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any
    ) -> None:
        if model is None or self.monitor is None:
            return
        is_main = state.is_world_process_zero
        # transformers' JIT checkpointing after SIGTERM: the job has seconds left to save, not minutes to
        # measure. (A callback that merely ends training early still gets its last epoch measured.) The main
        # process decides for all ranks, which must skip or measure alike, and says it once.
        if kind != "baseline" and distributed.broadcast_from_main(
            termination_requested(self._trainer) if is_main else None
        ):
            if is_main:
                logger.warning(
                    "%sSIGTERM received: training is stopping at step %d to save a checkpoint; skipping the %s "
                    "check so that the job can exit in time",
                    f"[{self.name}] " if self.name else "",
                    state.global_step,
                    kind,
                )
            self._last_check_step = state.global_step  # one WARNING: the epoch end of this step is not a second
            return
        self._last_check_step = state.global_step
        mode = distributed.sharding_mode(model)
        # A bar where the Trainer shows its own, on the main process only.
        label = "baseline" if kind == "baseline" else f"{kind} check at step {state.global_step}"
        self._prober.progress = label if is_main and not args.disable_tqdm else False
        if mode is None:
            decision = distributed.run_on_main(
                lambda beat: self._measure_and_decide(kind, state, model, beat, None), is_main=is_main
            )
        else:
            # Sharded parameters: every rank must take part in every forward pass; the main one decides.
            decision = self._measure_and_decide(kind, state, model, lambda: None, mode, decide=is_main)
        decision = distributed.broadcast_from_main(decision if is_main else None)
        if decision is None:  # cannot happen unless the main process died; never stop one rank alone
            return
        if decision.get("error") and self.strict:
            raise MeasurementError(f"{kind} measurement at step {state.global_step} failed: {decision['error']}")
        if decision["stop"]:
            control.should_training_stop = True

    def _measure_and_decide(
        self,
        kind: str,
        state: TrainerState,
        model: Any,
        beat: Any,
        mode: str | None,
        *,
        decide: bool = True,
    ) -> dict[str, Any] | None:
        monitor = self.monitor
        assert monitor is not None  # set in on_train_begin, before any check
        epoch = state.epoch if kind != "baseline" else 0.0
        step = state.global_step
        quiet = contextlib.nullcontext() if decide else _silenced()
        try:
            with quiet:
                m, deployed = self._prober.measure(
                    model, baseline=monitor.baseline, mode=mode, beat=beat, speak=decide, is_baseline=kind == "baseline"
                )
        except (ConfigError, ModelError):
            raise  # a user error: the probe itself is wrong, say so now
        except Exception as exc:  # a failed measurement must not kill a healthy run
            release_memory()
            if not decide:
                return None
            error = f"{type(exc).__name__}: {exc}"
            outcome = monitor.observe_failure(error, kind=kind, epoch=epoch, step=step, run=self._run)
            self._save_report()
            logger.warning(
                "%s%s measurement at epoch %s (step %d) failed and was recorded; training continues%s: %s",
                f"[{self.name}] " if self.name else "",
                kind,
                fmt_epoch(epoch),
                step,
                "" if not self.strict else " (strict mode: raising)",
                error,
            )
            # A bug in ftcallback must not look like an ordinary failed check to whoever debugs it.
            logger.debug("traceback of the failed %s measurement", kind, exc_info=exc)
            self._send_trackers(outcome, state, immediately=kind != "baseline")
            return {"stop": False, "error": error}
        if not decide:
            return None
        outcome = monitor.observe(m, kind=kind, epoch=epoch, step=step, run=self._run, deployed=deployed)
        outcome.record.loss = last_loss(state)
        if state.is_world_process_zero:
            tb_step = step if kind != "baseline" else 0
            if self._tensorboard is not None:
                self._tensorboard.write(outcome, tb_step)
            self._send_trackers(outcome, state, immediately=kind != "baseline")
            self._save_report()
        return {"stop": outcome.decision.stop, "error": None}

    # ------------------------------------------------------------------ sinks
    def _send_trackers(self, outcome: CheckOutcome, state: TrainerState, *, immediately: bool) -> None:
        """Trackers and the console get each check; the baseline waits for the first step, when the progress
        bar that prints logged metrics exists."""
        if immediately:
            if self._trackers is not None:
                self._trackers.write(outcome, state.global_step)
            else:
                state.log_history.append({**outcome.metrics(), "epoch": state.epoch or 0.0, "step": state.global_step})
        else:
            self._pending_tracker_send = outcome

    def _flush_pending_trackers(self, state: TrainerState) -> None:
        outcome, self._pending_tracker_send = self._pending_tracker_send, None
        if outcome is not None and state.is_world_process_zero:
            self._send_trackers(outcome, state, immediately=True)

    def _write_baseline(self, state: TrainerState) -> None:
        """A given or restored baseline: write its curves at step 0 once, as a measured one would be."""
        assert self.monitor is not None
        baseline = self.monitor.baseline
        if baseline is None or self._run > 0 or any(c.kind == "baseline" for c in self.monitor.report.checks):
            self._save_report()
            return
        outcome = self.monitor.observe(baseline, kind="baseline", epoch=0.0, step=0, record=False)
        if self._tensorboard is not None:
            self._tensorboard.write(outcome, 0)
        self._send_trackers(outcome, state, immediately=False)
        self._save_report()

    def _save_report(self) -> None:
        if self._report_sink is not None:
            self._report_sink.write()


# ---------------------------------------------------------------------- helpers
def _report_path(output_dir: Any, name: str | None) -> Path:
    path = report_path(str(output_dir))
    return path if not name else path.parent / name / path.name


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    """Warnings of a rank that measures only to take part in sharded generation: the main rank says them once."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
