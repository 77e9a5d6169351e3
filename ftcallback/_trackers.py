"""Sample outputs as a table, in each ``report_to`` tracker that has tables, through its own API.

Scalars reach every tracker through the Trainer's ``on_log`` route (:class:`ftcallback._sinks.TrackerSink`);
a table is not a scalar, and each tracker takes one its own way. One function per tracker, called only when
that tracker's Trainer callback is active, so a tracker that is not installed or not used is never imported.
Columns: ``step``, ``prompt_index``, ``prompt``, ``output``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["SAMPLES_KEY", "TABLE_WRITERS", "sample_rows", "write_sample_tables"]

logger = logging.getLogger("ftcallback.trackers")

#: The table's key (wandb, Trackio) and artifact file stem (MLflow).
SAMPLES_KEY = "efficiency/samples"
COLUMNS = ["step", "prompt_index", "prompt", "output"]


def sample_rows(step: int, samples: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """One row per sample output: ``[step, prompt_index, prompt, output]``.

    Example:
        >>> sample_rows(4, [{"prompt_index": 0, "prompt": "hi", "output": "hello"}])
        [[4, 0, 'hi', 'hello']]
    """
    return [
        [int(step), int(s.get("prompt_index", i)), str(s.get("prompt", "")), str(s.get("output", ""))]
        for i, s in enumerate(samples)
    ]


def _wandb(callback: Any, step: int, rows: list[list[Any]]) -> bool:
    import wandb

    if wandb.run is None:
        return False  # the run is not (or no longer) open
    # WandbCallback logs on the "train/global_step" axis; a row of the same step lines the table up with it.
    wandb.log({SAMPLES_KEY: wandb.Table(columns=list[str | int](COLUMNS), data=rows), "train/global_step": step})
    return True


def _mlflow(callback: Any, step: int, rows: list[list[Any]]) -> bool:
    import mlflow

    if mlflow.active_run() is None:
        return False  # MLflowCallback ended its run (in its on_train_end) or never started one
    # log_table appends to an existing artifact: one table holds every check, told apart by its step column.
    mlflow.log_table({c: [r[i] for r in rows] for i, c in enumerate(COLUMNS)}, artifact_file=f"{SAMPLES_KEY}.json")
    return True


def _trackio(callback: Any, step: int, rows: list[list[Any]]) -> bool:
    if not getattr(callback, "_initialized", False):
        return False  # TrackioCallback has not opened its run, or has finished it
    import trackio

    # TrackioCallback logs on trackio's own step counter with "train/global_step" as a value: the same here.
    trackio.log({SAMPLES_KEY: trackio.Table(columns=COLUMNS, data=rows), "train/global_step": step})
    return True


#: Trainer callback class name -> the function that writes the table to that tracker.
TABLE_WRITERS: dict[str, Callable[[Any, int, list[list[Any]]], bool]] = {
    "WandbCallback": _wandb,
    "MLflowCallback": _mlflow,
    "TrackioCallback": _trackio,
}


def write_sample_tables(callbacks: Sequence[Any], step: int, samples: Sequence[Mapping[str, Any]]) -> list[str]:
    """Write the sample outputs of one check to every tracker among ``callbacks`` that has tables.

    A tracker's failure is logged and never stops training.

    Returns:
        The names of the callbacks whose tracker got the table.
    """
    if not samples:
        return []
    rows = sample_rows(step, samples)
    written = []
    for callback in callbacks:
        name = type(callback).__name__
        writer = TABLE_WRITERS.get(name)
        if writer is None:
            continue
        try:
            if writer(callback, step, rows):
                written.append(name)
        except Exception as exc:  # a tracker's failure must not cost the run
            logger.warning("could not send the sample outputs to %s: %s", name, exc)
            logger.debug("traceback", exc_info=True)
    return written
