"""The stop decision on a busy machine, through a real Trainer.

One busy process per core starts right after the baseline (at the end of the first optimizer step) and runs
to the end of training: the probe's thread has to share its core. An unchanged model must not be stopped;
a model that got slower must still be, at the epoch it slowed down. Relations only: no test here reads a duration.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers_training import (
    PROBE,
    SlowDown,
    ftcallback_logs,
    make_trainer,
    plain_dataset,
    read_report,
    training_args,
)
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ftcallback import Budget, EfficiencyCallback
from ftcallback.testing import tiny_causal_lm, tiny_tokenizer

pytestmark = pytest.mark.slow

# A CPU-bound loop that ends by itself once its parent is gone (a killed benchmark or test leaves no load behind).
BUSY = "import os\nwhile os.getppid() == {}: pass"

# Fixed-length answers (only speed can change), the callback's default repeats and adaptive rule.
LATENCY = {"max_new_tokens": 8, "generation_kwargs": {"min_new_tokens": 8}, "repeats": 3}


class BusyAfterBaseline(TrainerCallback):
    """Starts ``processes`` CPU-bound processes after the first optimizer step; stops them at train end."""

    def __init__(self, processes: int | None = None) -> None:
        # One per core: the probe's thread then has to share a core, whatever the machine.
        self.processes = processes or os.cpu_count() or 2
        self.procs: list[subprocess.Popen[bytes]] = []

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.global_step == 1 and not self.procs:
            self.procs = [
                subprocess.Popen([sys.executable, "-c", BUSY.format(os.getpid())]) for _ in range(self.processes)
            ]
            time.sleep(0.2)  # let the scheduler spread them

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait()

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.stop()


def run(tmp_path: Path, *callbacks: TrainerCallback, model: torch.nn.Module, epochs: int) -> tuple[Any, dict, list]:
    tok = tiny_tokenizer()
    busy = BusyAfterBaseline()
    cb = EfficiencyCallback(PROBE, budget=Budget(max_latency_increase=0.2), **LATENCY)
    trainer = make_trainer(
        model,
        training_args(tmp_path, num_train_epochs=epochs, learning_rate=0.0),
        plain_dataset(tok),
        tok,
        [cb, busy, *callbacks],
    )
    try:
        with ftcallback_logs() as records:
            trainer.train()
    finally:
        busy.stop()
    return trainer, read_report(tmp_path), records


def stop_lines(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if r.getMessage().startswith("stopping training")]


def test_an_unchanged_model_on_a_machine_that_gets_busy_is_not_stopped(tmp_path: Path) -> None:
    trainer, report, records = run(tmp_path, model=tiny_causal_lm("gpt2"), epochs=3)
    checks = [c for c in report["checks"] if c["kind"] == "epoch"]
    # Every check's ratios in every failure message: on a shared machine, the figures are the diagnosis.
    ratios = [c["ratios"] for c in checks]
    assert report["stopped"] is None and stop_lines(records) == [], (report["stopped"], ratios)
    assert trainer.state.global_step == trainer.state.max_steps
    assert len(checks) == 3 and not any(c["breached"] for c in checks), ratios
    # The load was there and was taken out: the machine ran slower than at the baseline, and what is
    # judged is nearer 1 than what was observed.
    assert max(r["machine_factor"] for r in ratios) > 1.0, ratios
    loaded = [r for r in ratios if r["machine_factor"] > 1.2]
    assert loaded, ratios  # one busy process per core: the machine did get slower
    assert all(abs(r["latency_judged_ratio"] - 1) < abs(r["latency_ratio"] - 1) for r in loaded), ratios


def test_a_slower_model_on_a_machine_that_gets_busy_is_stopped_when_it_slows(tmp_path: Path) -> None:
    model = tiny_causal_lm("gpt2")
    slow = SlowDown(model, seconds=0.010, from_epoch=2)  # sleeps in every eval-mode forward pass from epoch 2
    trainer, report, records = run(tmp_path, slow, model=model, epochs=3)
    ratios = [c["ratios"] for c in report["checks"] if c["kind"] == "epoch"]
    assert [c["breached"] for c in report["checks"]] == [False, False, True], ratios
    stopped = report["stopped"]
    assert (stopped["epoch"], stopped["step"]) == (2, 4) and trainer.state.global_step == 4
    assert stopped["metric"] == "latency_judged_ratio" and stopped["value"] > 1.2
    assert stop_lines(records) == [stopped["message"]]
    assert "from per-token speed" in stopped["message"] and "+0% from longer answers (exact)" in stopped["message"]
