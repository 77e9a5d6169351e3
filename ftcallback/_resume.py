"""Resuming a run: the record restored from a checkpoint, completed from report.json; the arguments of this run
against the checkpoint's; the checkpoint the run resumed from.

transformers rebuilds a stateful callback from the ``args`` it saved (``restore_callback_states_from_checkpoint``),
and trainer_state.json keeps the record without per-check raw samples. These functions make a resumed run's record
equal an uninterrupted run's, and say which arguments win when the two disagree.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ._errors import ConfigError, FTCallbackError
from ._monitor import Monitor
from ._probe import ProbeSpec
from ._report import RunReport

logger = logging.getLogger("ftcallback")

#: Probe arguments that change precision, not what is measured: they may differ on resume.
_PRECISION_ONLY = frozenset({"num_sample_outputs", "warmup", "repeats"})


def read_report(path: Path | None) -> RunReport | None:
    """The report at ``path``, or None when there is none or it cannot be read."""
    if path is None or not path.exists():
        return None
    try:
        return RunReport.load(path)
    except FTCallbackError:
        return None


def restored_report(
    saved: Mapping[str, Any],
    *,
    report_path: Path | None,
    first_report_path: Callable[[str], Path],
    output_dir: str,
    global_step: int,
    run: int,
) -> RunReport:
    """The record restored from a checkpoint's trainer_state.json, completed from report.json.

    Args:
        saved: the small record the checkpoint holds (no raw samples per check).
        report_path: this run's report.json.
        first_report_path: where the report of a run with another ``output_dir`` lives.
        output_dir: this run's output folder.
        global_step: the step resumed at: later checks belong to the interrupted future and go.
        run: this callback's ``train()`` call.
    """
    record = RunReport.from_dict(saved)
    # Take the raw samples from the file when it has the same baseline, so that a resumed run's report equals an
    # uninterrupted run's.
    on_disk = read_report(report_path)
    if on_disk is None and record.output_dir and record.output_dir != output_dir:
        # Resumed into another output_dir (a copied checkpoint): the raw samples are in the first run's.
        on_disk = read_report(first_report_path(record.output_dir))
    if on_disk is not None and on_disk.baseline == record.baseline:
        full = {c.index: c for c in on_disk.checks}
        record.checks = [
            dataclasses.replace(c, measurement=full[c.index].measurement)
            if c.index in full and full[c.index].step == c.step
            else c
            for c in record.checks
        ]
    record.checks = [c for c in record.checks if c.step <= global_step or c.run < run]
    record.stopped = None
    logger.info(
        "resumed at step %d: restored the baseline and %d check(s) from the checkpoint",
        global_step,
        len(record.checks),
    )
    return record


def reloaded_report(report_path: Path | None, spec: ProbeSpec, global_step: int) -> RunReport | None:
    """Without a restored state: the run's report.json, when its baseline was measured with this probe."""
    previous = read_report(report_path)
    baseline = None
    if previous is not None:
        try:
            baseline = previous.baseline_measurement()
        except FTCallbackError:
            baseline = None
    if previous is None or baseline is None or spec.incompatibilities(baseline.settings):
        logger.warning(
            "resuming at step %d without a saved baseline matching this probe (%s): measuring the partly "
            "trained model as the baseline; pass `baseline=` or use "
            "restore_callback_states_from_checkpoint=True to keep the original one",
            global_step,
            "no readable report" if previous is None else "the report's baseline differs",
        )
        return None
    previous.checks = [c for c in previous.checks if c.step <= global_step]
    previous.checkpoints = [c for c in previous.checkpoints if c["step"] <= global_step]
    previous.stopped = None
    logger.warning(
        "resuming at step %d: reusing the baseline measured at train begin from %s instead of measuring "
        "the partly trained model",
        global_step,
        report_path,
    )
    previous.baseline_source = f"reloaded from {report_path} at resume"
    return previous


def note_resumed_checkpoint(monitor: Monitor, output_dir: str, global_step: int) -> None:
    """The checkpoint a run resumes from was saved before its own callback state was (so it is not in it)."""
    path = os.path.join(output_dir, f"checkpoint-{global_step}")
    known = {c.get("path") for c in monitor.report.checkpoints}
    if path not in known and os.path.isdir(path):
        monitor.record_checkpoint(global_step, path)


def reconcile_arguments(mine: Mapping[str, Any], theirs: Mapping[str, Any], *, probe_keys: set[str]) -> list[str]:
    """This run's arguments against the checkpoint's: this run's win, each difference logged with both values.

    Returns:
        The names of the arguments that differ.

    Raises:
        ConfigError: the probe differs (prompts, generation settings): the saved baseline cannot be compared.
    """
    changed = sorted(k for k in mine if k in theirs and mine[k] != theirs[k] and k != "logging_dir")
    probe_changed = sorted(set(changed) & probe_keys - _PRECISION_ONLY)
    if probe_changed:
        raise ConfigError(
            "resuming from a checkpoint whose EfficiencyCallback measured another probe ("
            + ", ".join(f"{k}: {theirs[k]!r} in the checkpoint, {mine[k]!r} now" for k in probe_changed)
            + "): its baseline cannot be compared with this run. Use the same prompts and generation "
            "settings, or set restore_callback_states_from_checkpoint=False and pass baseline= "
            "(a measurement of the untrained model)"
        )
    for key in changed:
        logger.warning(
            "resuming: EfficiencyCallback argument `%s` is %r in the checkpoint and %r in this run; using "
            "this run's value",
            key,
            theirs[key],
            mine[key],
        )
    return changed
