"""Every checkpoint ftcallback names exists when named, and the model left in memory is judged.

Real Trainer runs with a tiny GPT-2: 4 epochs of 2 steps, a checkpoint per epoch; answers are forced long in
epoch 3 only, so the check at step 6 breaches ``max_token_increase`` and stops the run. The last checkpoint
within budget is ``checkpoint-4``, which ``save_total_limit=1`` rotation deletes when ``checkpoint-6`` is saved.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest
from helpers_training import PROBE, ForcedLength, plain_dataset, read_report, short_answer_model, training_args
from transformers import AutoModelForCausalLM, Trainer, default_data_collator

from ftcallback import Budget, EfficiencyCallback
from ftcallback import _callback as callback_module
from ftcallback.cli import main as cli_main
from ftcallback.testing import tiny_tokenizer

pytestmark = pytest.mark.filterwarnings("ignore:timing is noisy")


def _run(
    out: Path,
    *,
    evaluate: bool = False,
    caplog: pytest.LogCaptureFixture | None = None,
    best_model_within_budget: bool = True,
    **overrides: Any,
) -> tuple[Trainer, EfficiencyCallback]:
    tok = tiny_tokenizer()
    model = short_answer_model()
    length = ForcedLength(model, tok.eos_token_id, long_epochs={3})
    cb = EfficiencyCallback(
        PROBE[:2],
        budget=Budget(max_token_increase=1.0),
        max_new_tokens=6,
        repeats=1,
        warmup=0,
        best_model_within_budget=best_model_within_budget,
    )
    kwargs: dict[str, Any] = {"num_train_epochs": 4, "save_strategy": "epoch", **overrides}
    if evaluate:
        kwargs.setdefault("eval_strategy", "epoch")
    trainer = Trainer(
        model=model,
        args=training_args(out, **kwargs),
        train_dataset=plain_dataset(tok),
        eval_dataset=plain_dataset(tok, 4) if evaluate else None,
        processing_class=tok,
        data_collator=default_data_collator,
        callbacks=[cb, length],
    )
    if caplog is not None:
        with caplog.at_level(logging.INFO, logger="ftcallback"):
            trainer.train()
    else:
        trainer.train()
    return trainer, cb


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ftcallback" and r.levelno == logging.WARNING]


def _assert_loadable(path: str) -> None:
    assert Path(path).is_dir(), path
    AutoModelForCausalLM.from_pretrained(path)


def test_rotation_keeps_the_named_checkpoint(tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys) -> None:
    out = tmp_path / "out"
    trainer, cb = _run(out, caplog=caplog, save_total_limit=1)
    assert trainer.state.global_step == 6
    report = read_report(out)
    assert report["stopped"]["step"] == 6
    pinned = str(out / "efficiency" / "checkpoints" / "checkpoint-4")
    assert not (out / "checkpoint-4").exists()  # rotated away by the Trainer
    assert report["stopped"]["recommended_checkpoint"] == pinned
    assert report["last_within_budget_checkpoint"] == pinned
    assert report["pinned_checkpoints"] == {os.path.abspath(out / "checkpoint-4"): pinned}
    stop = [m for m in _warnings(caplog) if m.startswith("stopping training")]
    assert len(stop) == 1 and stop[0].endswith(f"Last checkpoint within budget: {pinned}")
    # Only the latest within-budget pin is kept: checkpoint-2's went when checkpoint-4 was pinned.
    assert sorted(p.name for p in (out / "efficiency" / "checkpoints").iterdir()) == ["checkpoint-4"]
    # Hard links: no extra disk.
    weights = out / "efficiency" / "checkpoints" / "checkpoint-4" / "model.safetensors"
    assert weights.stat().st_nlink == 1  # the original is gone; the link is what remains
    _assert_loadable(pinned)

    capsys.readouterr()
    assert cli_main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"last within-budget checkpoint: {pinned}" in printed


def test_without_save_total_limit_nothing_is_pinned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "out"
    _run(out, caplog=caplog)
    report = read_report(out)
    original = str(out / "checkpoint-4")
    assert report["stopped"]["recommended_checkpoint"] == original
    assert report["last_within_budget_checkpoint"] == original
    assert not (out / "efficiency" / "checkpoints").exists()
    assert report["pinned_checkpoints"] == {}
    _assert_loadable(original)


def test_pin_falls_back_to_copies_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: str, dst: str) -> None:
        raise OSError(95, "Operation not supported")  # EOPNOTSUPP, as on some network filesystems

    monkeypatch.setattr(callback_module.os, "link", no_links)
    out = tmp_path / "out"
    _run(out, save_total_limit=1)
    report = read_report(out)
    pinned = Path(report["last_within_budget_checkpoint"])
    assert pinned == out / "efficiency" / "checkpoints" / "checkpoint-4"
    assert report["stopped"]["recommended_checkpoint"] == str(pinned)
    _assert_loadable(str(pinned))


def test_load_best_model_at_end_over_budget_is_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Without best_model_within_budget, eval_loss picks the latest checkpoint, which breaches: the user is told,
    and where to look instead."""
    out = tmp_path / "out"
    trainer, cb = _run(
        out,
        evaluate=True,
        caplog=caplog,
        best_model_within_budget=False,
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
    )
    assert trainer.state.best_model_checkpoint == str(out / "checkpoint-6")
    report = read_report(out)
    pinned = str(out / "efficiency" / "checkpoints" / "checkpoint-4")
    assert report["final_model"] == {"step": 6, "source": str(out / "checkpoint-6"), "within_budget": False}
    said = [m for m in _warnings(caplog) if "the model in memory at the end of training" in m]
    assert said == [
        f"the model in memory at the end of training ({out / 'checkpoint-6'}, loaded by load_best_model_at_end) "
        f"breaches the budget; the checkpoint within budget is {pinned}"
    ]
    assert report["last_within_budget_checkpoint"] == pinned
    _assert_loadable(pinned)


@pytest.mark.parametrize("metric", ["efficiency_within_budget", "eval_efficiency_within_budget"])
def test_load_best_model_by_the_budget_loads_a_within_budget_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, metric: str
) -> None:
    out = tmp_path / "out"
    trainer, cb = _run(
        out,
        evaluate=True,
        caplog=caplog,
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model=metric,
        greater_is_better=True,
    )
    report = read_report(out)
    best = trainer.state.best_model_checkpoint
    assert best is not None
    assert report["final_model"]["within_budget"] is True
    assert report["final_model"]["source"] == best
    assert not [m for m in _warnings(caplog) if "the model in memory" in m]
    steps_within = {c["step"] for c in report["checkpoints"] if c["within_budget"]}
    assert int(best.rsplit("-", 1)[-1]) in steps_within
