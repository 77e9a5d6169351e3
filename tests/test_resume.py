"""Resuming from a checkpoint keeps the original baseline, the history and the patience counter.

Two real Trainer runs per test: the first breaches once (``patience=2``, so it goes on) and is interrupted
after epoch 1 with a checkpoint; a new Trainer, model and callback resume from that checkpoint. The
second breach after the resume stops the run only if the counter survived, and only if the comparison is
still against the original baseline (the model's answers are long from epoch 1 on: a baseline measured
at resume would be long too and never breach).

Output lengths are forced through the logits, so every breach is deterministic: no timing involved.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil

import pytest
from helpers_training import ForcedLength, make_trainer, token_rows, training_args
from transformers import TrainerCallback

from ftcallback import Budget, ConfigError, EfficiencyCallback
from ftcallback import _prober as prober_module
from ftcallback._report import RunReport, report_path
from ftcallback.testing import tiny_causal_lm, tiny_tokenizer

pytestmark = pytest.mark.filterwarnings("ignore:timing is noisy")

PROMPTS = ["the model returns", "a user measures the latency"]
MAX_NEW_TOKENS = 4
STEPS_PER_EPOCH = 2  # 16 rows, batch 8
EPOCHS = 4


class InterruptAfterEpoch(TrainerCallback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, args, state, control, **kwargs):
        if round(state.epoch) >= self.epoch:
            control.should_training_stop = True


def _efficiency_callback() -> EfficiencyCallback:
    return EfficiencyCallback(
        PROMPTS,
        budget=Budget(max_token_increase=1.0),
        max_new_tokens=MAX_NEW_TOKENS,
        repeats=2,
        warmup=0,
        patience=2,
    )


def _trainer(output_dir, *, restore: bool, extra_callbacks=(), long_from_start: bool = False):
    """Answers are long from the first epoch on (EOS forbidden), short before it unless ``long_from_start``."""
    tok = tiny_tokenizer()
    model = tiny_causal_lm()
    length = ForcedLength(model, tok.eos_token_id, range(1, EPOCHS + 1), long_at_start=long_from_start)
    cb = _efficiency_callback()
    args = training_args(
        output_dir,
        num_train_epochs=EPOCHS,
        per_device_train_batch_size=8,
        save_strategy="epoch",
        logging_strategy="no",
        restore_callback_states_from_checkpoint=restore,
    )
    trainer = make_trainer(model, args, token_rows(tok), tok, [length, *extra_callbacks, cb])
    return trainer, cb


def _efficiency(trainer) -> EfficiencyCallback:
    found = [c for c in trainer.callback_handler.callbacks if isinstance(c, EfficiencyCallback)]
    assert len(found) == 1
    return found[0]


@pytest.fixture
def count_measurements(monkeypatch):
    calls = []
    real = prober_module.measure

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(prober_module, "measure", counting)
    return calls


@pytest.fixture
def interrupted_run(tmp_path):
    """Run 1: baseline (short answers), epoch 1 breaches (long answers, 1 of 2), interrupted, checkpointed."""
    out = tmp_path / "out"
    trainer, cb = _trainer(out, restore=False, extra_callbacks=[InterruptAfterEpoch(1)])
    trainer.train()
    assert trainer.state.global_step == STEPS_PER_EPOCH
    assert [(c.kind, c.breached, c.consecutive_breaches) for c in cb.report.checks] == [
        ("baseline", False, 0),
        ("epoch", True, 1),
    ]
    assert cb.report.stopped is None  # patience 2: one breach does not stop
    checkpoint = out / f"checkpoint-{STEPS_PER_EPOCH}"
    assert (checkpoint / "trainer_state.json").is_file()
    return out, checkpoint, cb.report.baseline


def _assert_resumed_and_stopped(trainer, out, baseline_before):
    cb = _efficiency(trainer)
    # The second breach (epoch 2) stops the run: the patience counter continued from 1.
    assert trainer.state.global_step == 2 * STEPS_PER_EPOCH
    assert [(c.kind, c.step, c.breached, c.consecutive_breaches) for c in cb.report.checks] == [
        ("baseline", 0, False, 0),
        ("epoch", STEPS_PER_EPOCH, True, 1),
        ("epoch", 2 * STEPS_PER_EPOCH, True, 2),
    ]
    assert cb.report.stopped["step"] == 2 * STEPS_PER_EPOCH
    assert cb.report.stopped["metric"] == "output_tokens_mean"
    # Compared with the original (short-answer) baseline, not with the half-trained model.
    assert cb.report.baseline["created_at"] == baseline_before["created_at"]
    assert cb.report.baseline["samples"] == baseline_before["samples"]
    assert cb.report.checks[-1].ratios["output_tokens_ratio"] == pytest.approx(MAX_NEW_TOKENS)
    on_disk = RunReport.load(report_path(out))
    assert [c.kind for c in on_disk.checks] == ["baseline", "epoch", "epoch"]
    # Nothing recorded before the interruption is lost: every check keeps its raw samples, and the
    # checkpoint the run resumed from is still listed (it was saved before its own callback state was).
    assert all(c.measurement is not None and c.measurement["samples"] for c in on_disk.checks)
    assert [c["step"] for c in on_disk.checkpoints] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert on_disk.stopped["step"] == 2 * STEPS_PER_EPOCH
    return cb


def test_resume_with_restored_callback_state(interrupted_run, count_measurements, caplog):
    out, checkpoint, baseline_before = interrupted_run
    trainer, given = _trainer(out, restore=True)
    with caplog.at_level(logging.INFO, logger="ftcallback"):
        trainer.train(resume_from_checkpoint=str(checkpoint))

    cb = _assert_resumed_and_stopped(trainer, out, baseline_before)
    assert cb is not given  # transformers rebuilt the callback from the checkpoint's state
    assert len(count_measurements) == 1  # epoch 2 only: no new baseline
    assert (
        "ftcallback",
        logging.INFO,
        "resumed at step 2: restored the baseline and 2 check(s) from the checkpoint",
    ) in caplog.record_tuples
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    saved = state["stateful_callbacks"]["EfficiencyCallback"]
    assert saved["attributes"]["_saved_report"]["checks"][-1]["consecutive_breaches"] == 1
    assert saved["args"]["prompts"] == PROMPTS and saved["args"]["patience"] == 2


def test_resume_without_restored_state_reloads_the_baseline_from_the_report(
    interrupted_run, count_measurements, caplog
):
    out, checkpoint, baseline_before = interrupted_run
    trainer, given = _trainer(out, restore=False)
    with caplog.at_level(logging.INFO, logger="ftcallback"):
        trainer.train(resume_from_checkpoint=str(checkpoint))

    cb = _assert_resumed_and_stopped(trainer, out, baseline_before)
    assert cb is given
    assert len(count_measurements) == 1
    path = report_path(out)
    assert (
        "ftcallback",
        logging.WARNING,
        f"resuming at step 2: reusing the baseline measured at train begin from {path} instead of measuring "
        "the partly trained model",
    ) in caplog.record_tuples
    assert cb.report.baseline_source == f"reloaded from {path} at resume"


def test_resume_without_any_saved_baseline_says_it_measures_the_trained_model(
    interrupted_run, count_measurements, caplog
):
    out, checkpoint, _ = interrupted_run
    shutil.rmtree(out / "efficiency")  # the report is gone, and the checkpoint's state is not restored
    trainer, cb = _trainer(out, restore=False, long_from_start=True)
    with caplog.at_level(logging.WARNING, logger="ftcallback"):
        trainer.train(resume_from_checkpoint=str(checkpoint))

    warnings = [
        m for name, level, m in caplog.record_tuples if level == logging.WARNING and name == "ftcallback"
    ]
    assert any(
        m.startswith("resuming at step 2 without a saved baseline matching this probe (no readable report)")
        and m.endswith(
            "measuring the partly trained model as the baseline; pass `baseline=` or use "
            "restore_callback_states_from_checkpoint=True to keep the original one"
        )
        for m in warnings
    ), warnings
    # The new baseline already has long answers, so nothing breaches any more: the run trains to the end.
    assert cb.report.baseline_source == "measured at resume (step 2)"
    assert cb.report.checks[0].kind == "baseline" and cb.report.checks[0].step == STEPS_PER_EPOCH
    assert trainer.state.global_step == EPOCHS * STEPS_PER_EPOCH
    assert cb.report.stopped is None
    assert len(count_measurements) == 1 + (EPOCHS - 1)


def _comparable(report: RunReport) -> list:
    """What an uninterrupted run and a resumed one must agree on (timings differ between any two runs)."""
    return [
        (c.kind, c.step, c.breached, c.consecutive_breaches, c.summary["output_tokens_mean"], c.measurement is not None)
        for c in report.checks
    ]


@pytest.mark.parametrize("restore", [True, False])
def test_a_resumed_report_equals_the_uninterrupted_one(tmp_path, interrupted_run, restore):
    out, checkpoint, _ = interrupted_run
    trainer, _ = _trainer(out, restore=restore)
    trainer.train(resume_from_checkpoint=str(checkpoint))
    resumed = RunReport.load(report_path(out))

    straight_out = tmp_path / "straight"
    trainer, _ = _trainer(straight_out, restore=False)
    trainer.train()
    straight = RunReport.load(report_path(straight_out))

    assert _comparable(resumed) == _comparable(straight)
    assert [(c["step"], c["within_budget"]) for c in resumed.checkpoints] == [
        (c["step"], c["within_budget"]) for c in straight.checkpoints
    ]
    assert resumed.stopped["message"] == straight.stopped["message"]


def test_on_restore_this_runs_budget_wins_and_says_so(interrupted_run, caplog):
    out, checkpoint, _ = interrupted_run
    trainer, _ = _trainer(out, restore=True)
    given = _efficiency(trainer)
    given.budget = Budget(max_token_increase=10.0)  # looser than the checkpoint's 1.0: epoch 2 stays within
    with caplog.at_level(logging.WARNING, logger="ftcallback"):
        trainer.train(resume_from_checkpoint=str(checkpoint))
    cb = _efficiency(trainer)
    assert cb is not given and cb.budget == given.budget
    assert cb.report.budget == given.budget.to_dict()
    assert trainer.state.global_step == EPOCHS * STEPS_PER_EPOCH  # never stopped: the new budget was used
    assert (
        "ftcallback",
        logging.WARNING,
        f"resuming: EfficiencyCallback argument `budget` is {Budget(max_token_increase=1.0).to_dict()!r} in the "
        f"checkpoint and {given.budget.to_dict()!r} in this run; using this run's value",
    ) in caplog.record_tuples


def test_on_restore_another_probe_is_refused(interrupted_run):
    out, checkpoint, _ = interrupted_run
    trainer, _ = _trainer(out, restore=True)
    given = _efficiency(trainer)
    given.spec = dataclasses.replace(given.spec, max_new_tokens=MAX_NEW_TOKENS + 1)
    with pytest.raises(ConfigError, match=r"max_new_tokens: 4 in the checkpoint, 5 now\): its baseline cannot"):
        trainer.train(resume_from_checkpoint=str(checkpoint))
