"""Where a check's outcome is written: one small protocol, one class per destination.

Sinks run on the main process only (the callback creates them there and nowhere else). Each takes the
:class:`~ftcallback._monitor.CheckOutcome` the monitor computed, so every destination shows the same
numbers. The TensorBoard sink lives in :mod:`ftcallback._tensorboard`; this module holds the protocol, the
report writer and the route to every ``report_to`` tracker.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ._monitor import CheckOutcome
    from ._report import RunReport

__all__ = ["ReportSink", "Sink", "TrackerSink"]

logger = logging.getLogger("ftcallback")

#: Integrations ftcallback does not route metrics to: TensorBoard is written by ftcallback itself (with
#: limit lines and a layout), and the callbacks of ftcallback never receive their own metrics back.
_NOT_ROUTED = ("TensorBoardCallback", "EfficiencyCallback")
#: What still takes logs once training has ended: the console. The MLflow and Trackio callbacks end their runs
#: in their ``on_train_end``, which runs before ours; a log sent to them afterwards would open a new, stray run.
_AFTER_TRAIN_END = ("ProgressCallback", "PrinterCallback", "NotebookProgressCallback")


class Sink(Protocol):
    """A destination for check outcomes."""

    def write(self, outcome: CheckOutcome, step: int) -> None:
        """Write one check at the Trainer's ``global_step`` (0 for the baseline)."""

    def close(self) -> None:
        """Flush and release what the sink holds; it may be written to again afterwards."""


class ReportSink:
    """Writes the run's ``report.json`` atomically after every change; a full disk never stops training."""

    def __init__(self, path: Path, report: RunReport) -> None:
        self.path = path
        self.report = report

    def write(self, outcome: CheckOutcome | None = None, step: int = 0) -> None:
        try:
            self.report.save(self.path)
        except OSError as exc:
            logger.warning("could not write %s: %s", self.path, exc)

    def close(self) -> None:
        self.write()


class TrackerSink:
    """Sends each check to every tracker the Trainer reports to, as ``Trainer.log`` would.

    ``Trainer.log`` is what reaches wandb, MLflow, Trackio, Comet and the console (the progress bar prints
    each logged dict), but callbacks are not given the Trainer and run after the reporting ones. So this sink
    calls each other callback's ``on_log`` with the efficiency metrics, in the Trainer's own order, and
    appends them to ``state.log_history`` as ``Trainer.log`` does. TensorBoard is left out: ftcallback writes
    it itself, with limit lines, so routing there too would duplicate every curve under a ``train/`` tag.

    Args:
        trainer: the ``transformers.Trainer`` running the callback.
        owner: the callback itself (never sent its own metrics).
    """

    def __init__(self, trainer: Any, owner: Any) -> None:
        self.trainer = trainer
        self.owner = owner
        self.train_ended = False

    def targets(self) -> list[Any]:
        return [
            cb
            for cb in self.trainer.callback_handler.callbacks
            if cb is not self.owner
            and type(cb).__name__ not in _NOT_ROUTED
            and (not self.train_ended or type(cb).__name__ in _AFTER_TRAIN_END)
        ]

    def end_training(self) -> None:
        """From now on only the console gets checks: the trackers' runs may be closed (see ``_AFTER_TRAIN_END``)."""
        self.train_ended = True

    def write(self, outcome: CheckOutcome, step: int) -> None:
        self.send(outcome.metrics(), step)
        if outcome.measurement is not None and not self.train_ended:
            from ._trackers import write_sample_tables

            write_sample_tables(self.targets(), step, list(outcome.measurement.sample_outputs))

    def send(self, metrics: dict[str, float], step: int) -> None:
        if not metrics:
            return
        trainer = self.trainer
        state = trainer.state
        logs: dict[str, float] = dict(metrics)
        if state.epoch is not None:
            logs["epoch"] = state.epoch
        state.log_history.append({**logs, "step": state.global_step})
        for callback in self.targets():
            try:
                callback.on_log(
                    trainer.args,
                    state,
                    trainer.control,
                    logs=dict(logs),
                    model=trainer.model,
                    processing_class=getattr(trainer, "processing_class", None),
                )
            except Exception as exc:  # a tracker's failure must not cost the run
                logger.warning("could not send efficiency metrics to %s: %s", type(callback).__name__, exc)
                logger.debug("traceback", exc_info=True)

    def close(self) -> None:
        pass
