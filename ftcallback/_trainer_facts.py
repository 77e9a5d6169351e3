"""What the callback needs to know about the Trainer that callbacks are not told: the Trainer itself, whether a
SIGTERM is being handled, which settings cannot be measured, and the names the Trainer looks metrics up by.

Everything here reads the Trainer and its arguments; nothing decides anything about a run (that is the monitor's).
"""

from __future__ import annotations

import inspect
from typing import Any

from transformers import TrainerState, TrainingArguments

from ._errors import ConfigError, ModelError

#: Integrations that show metrics a user would look for; without a route to them, say so once.
TRACKERS = ("wandb", "mlflow", "trackio", "comet_ml", "neptune", "clearml", "dvclive", "swanlab", "aim")




def eval_key(key: str, name: str | None) -> str:
    return f"eval_{key}" if not name else f"eval_{key}_{name}"


#: Summary keys put into the evaluation metrics as ``eval_efficiency_<key>``.
EVAL_SUMMARY_KEYS = ("latency_ms_p50", "latency_ms_p95", "output_tokens_mean", "quality")


def best_metric_key(args: TrainingArguments) -> str | None:
    """``metric_for_best_model`` as the Trainer looks it up in the evaluation metrics."""
    name = getattr(args, "metric_for_best_model", None)
    if not name:
        return None
    return name if name.startswith("eval_") else f"eval_{name}"


def report_to(args: TrainingArguments) -> list[str]:
    report_to = getattr(args, "report_to", None) or []
    return [report_to] if isinstance(report_to, str) else list(report_to)


def find_calling_trainer(callback: Any) -> Any:
    """The Trainer whose callback handler is calling ``callback`` now, found on the call stack (callbacks are
    not given the Trainer). None when there is none, e.g. a callback driven by hand."""
    frame = inspect.currentframe()
    try:
        while frame is not None:
            candidate = frame.f_locals.get("self")
            handler = getattr(candidate, "callback_handler", None)
            if handler is not None and callback in getattr(handler, "callbacks", ()):
                return candidate
            frame = frame.f_back
    finally:
        del frame
    return None


def _jit_managers(trainer: Any) -> list[Any]:
    if trainer is None:
        return []
    managers = (getattr(cb, "jit_manager", None) for cb in trainer.callback_handler.callbacks)
    return [m for m in managers if m is not None]


def watch_jit_checkpoint(trainer: Any) -> None:
    """Remember that transformers' JIT checkpointing saved on SIGTERM.

    ``JITCheckpointCallback`` runs before user callbacks and resets ``is_checkpoint_requested`` as soon as it
    starts saving, so by the time this callback's ``on_epoch_end`` runs the flag is False again although the job
    is stopping. The manager's ``execute_jit_checkpoint`` is wrapped (once per manager) to leave a mark.
    """
    for manager in _jit_managers(trainer):
        manager._ftcallback_terminating = False  # a new train() call: no SIGTERM seen in it yet
        if getattr(manager, "_ftcallback_watched", False):
            continue
        execute = manager.execute_jit_checkpoint

        def marked(_execute: Any = execute, _manager: Any = manager) -> Any:
            _manager._ftcallback_terminating = True
            return _execute()

        manager.execute_jit_checkpoint = marked
        manager._ftcallback_watched = True


def termination_requested(trainer: Any) -> bool:
    """True when transformers' JIT checkpointing caught a SIGTERM and the Trainer is saving and exiting."""
    return any(
        getattr(m, "is_checkpoint_requested", False) or getattr(m, "_ftcallback_terminating", False)
        for m in _jit_managers(trainer)
    )


def check_not_meta(model: Any) -> None:
    param = next(iter(model.parameters()), None)
    if param is not None and param.device.type == "meta":
        raise ModelError(
            "the model's parameters are on the meta device (created without weights, e.g. under "
            "init_empty_weights or device_map='meta'): nothing can be generated; load real weights before "
            "training"
        )


def check_parallelism(args: TrainingArguments) -> None:
    config = getattr(args, "parallelism_config", None)
    if config is None:
        return
    sizes = {
        name: int(getattr(config, attr, 1) or 1)
        for name, attr in (("tensor", "tp_size"), ("sequence", "sp_size"), ("context", "cp_size"))
    }
    split = {name: size for name, size in sizes.items() if size > 1}
    if split:
        raise ConfigError(
            "EfficiencyCallback does not support `parallelism_config` with "
            + ", ".join(f"{name} parallelism of size {size}" for name, size in split.items())
            + ": the model is split across ranks and a measurement would time a partial model. Measure the "
            "model with data parallelism, FSDP or DeepSpeed ZeRO, or with `ftcallback measure` after training"
        )


def last_loss(state: TrainerState) -> float | None:
    for entry in reversed(state.log_history):
        loss = entry.get("loss")
        if isinstance(loss, (int, float)):
            return float(loss)
    return None
