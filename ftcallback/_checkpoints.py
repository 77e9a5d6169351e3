"""Checkpoints as the run's record needs them: the one to ship kept from rotation, and the weights left in memory.

The Trainer's ``save_total_limit`` rotation protects only the newest checkpoint and ``best_model_checkpoint``; the
checkpoint ftcallback recommends could be deleted milliseconds after a stop line names it. :func:`pin` keeps it as
hard links (no extra disk; copies where links are impossible) under ``<report folder>/checkpoints/``.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from ._monitor import Monitor

logger = logging.getLogger("ftcallback")


def pin(path: str, pins: Path, monitor: Monitor) -> None:
    """Keep the checkpoint at ``path`` from rotation as ``pins/<name>``; the previous kept copy goes."""
    source = Path(path)
    if not source.is_dir():
        return
    target = pins / source.name
    try:
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target, copy_function=_link_or_copy)
    except OSError as exc:
        logger.warning("could not keep %s from checkpoint rotation: %s", path, exc)
        return
    for old in pins.iterdir():
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    monitor.report.pinned_checkpoints = {os.path.abspath(path): str(target)}


def record_final_model(monitor: Monitor, loaded: str | None, global_step: int, name: str | None) -> None:
    """Record which weights are in memory at the end and whether they are within budget; say so when they are not
    and nothing else has (``load_best_model_at_end`` may have loaded a checkpoint over budget).

    Args:
        monitor: the run's monitor.
        loaded: the checkpoint ``load_best_model_at_end`` loaded, or None (the last step's weights).
        global_step: the last step.
        name: the callback's name, for the log line.
    """
    report = monitor.report
    step = int(loaded.rstrip("/").rsplit("-", 1)[-1]) if loaded and loaded.rstrip("/")[-1].isdigit() else None
    at = step if step is not None else global_step
    within = monitor.within_budget_at(at)
    report.final_model = {"step": at, "source": loaded or "last step", "within_budget": within}
    # After our own stop the stop line has said it (with the checkpoint to use); say it when nothing did.
    if within is False and (report.stopped is None or loaded):
        recommended = monitor.recommended_checkpoint()
        logger.warning(
            "%sthe model in memory at the end of training (%s) breaches the budget%s",
            f"[{name}] " if name else "",
            f"{loaded}, loaded by load_best_model_at_end" if loaded else f"step {at}",
            f"; the checkpoint within budget is {recommended}" if recommended else "",
        )


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
