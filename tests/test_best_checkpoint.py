"""The best checkpoint is a checkpoint within budget: efficiency in the evaluation metrics, over-budget weights never
"best", the kept checkpoint survives rotation, and the model in memory at the end is the one the report names."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from helpers_training import PROBE, ForcedLength, make_trainer, plain_dataset, training_args
from transformers import TrainerCallback

from ftcallback import Budget, EfficiencyCallback, RunReport
from ftcallback._report import format_checks_table
from ftcallback.testing import tiny_causal_lm, tiny_tokenizer

pytestmark = pytest.mark.filterwarnings("ignore:timing is noisy")

EPOCHS = 3


class SeenMetrics(TrainerCallback):
    """After ftcallback's on_evaluate: the metrics dict the Trainer goes on to pick the best model from."""

    def __init__(self) -> None:
        self.seen: list[dict[str, float]] = []

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.seen.append(dict(metrics))


def _run(tmp_path: Path, *, within_budget_only: bool, metric: str = "eval_loss"):
    tok = tiny_tokenizer()
    model = tiny_causal_lm()
    length = ForcedLength(model, tok.eos_token_id, long_epochs=range(2, EPOCHS + 1))  # epochs 2-3 ramble
    cb = EfficiencyCallback(
        PROBE,
        budget=Budget(max_token_increase=0.5),
        max_new_tokens=6,
        repeats=1,
        warmup=0,
        stop_training=False,  # train on: the later, over-budget epochs have the lower loss
        best_model_within_budget=within_budget_only,
    )
    args = training_args(
        tmp_path,
        num_train_epochs=EPOCHS,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model=metric,
    )
    data = plain_dataset(tok, n=8)
    seen = SeenMetrics()
    trainer = make_trainer(model, args, data, tok, [length, cb, seen], eval_dataset=data)
    trainer.train()
    return trainer, seen


def test_over_budget_weights_are_never_the_best_and_the_best_survives_rotation(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ftcallback"):
        trainer, seen = _run(tmp_path, within_budget_only=True)
    report = RunReport.load(tmp_path)
    assert [c.breached for c in report.checks if c.kind == "epoch"] == [False, True, True]
    assert [m["eval_efficiency_within_budget"] for m in seen.seen] == [1.0, 0.0, 0.0]
    assert [m["eval_efficiency_output_tokens_mean"] for m in seen.seen] == [
        c.summary["output_tokens_mean"] for c in report.checks if c.kind == "epoch"
    ]
    assert [m["eval_loss"] for m in seen.seen][1:] == [float("inf")] * 2  # never the best
    # The Trainer's best is the within-budget epoch 1, kept from save_total_limit=1 and loaded at the end.
    assert trainer.state.best_model_checkpoint == str(tmp_path / "checkpoint-2")
    assert Path(trainer.state.best_model_checkpoint).is_dir()
    assert report.final_model == {"step": 2, "source": str(tmp_path / "checkpoint-2"), "within_budget": True}
    assert report.last_within_budget_checkpoint is not None and Path(report.last_within_budget_checkpoint).is_dir()
    assert not [r for r in caplog.records if "model in memory" in r.getMessage()]


def test_without_the_option_the_trainer_may_load_over_budget_weights_and_is_told(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ftcallback"):
        trainer, _ = _run(tmp_path, within_budget_only=False)
    report = RunReport.load(tmp_path)
    best = trainer.state.best_model_checkpoint
    assert best != str(tmp_path / "checkpoint-2")  # a lower loss, over budget
    assert report.final_model["within_budget"] is False
    recommended = report.last_within_budget_checkpoint
    assert recommended is not None and Path(recommended).is_dir()  # kept from rotation (hard links)
    warned = [r.getMessage() for r in caplog.records if "model in memory" in r.getMessage()]
    assert warned == [
        f"the model in memory at the end of training ({best}, loaded by load_best_model_at_end) breaches the "
        f"budget; the checkpoint within budget is {recommended}"
    ]


def test_the_efficiency_flag_itself_can_pick_the_best_model(tmp_path):
    trainer, _ = _run(tmp_path, within_budget_only=False, metric="efficiency_within_budget")
    assert trainer.args.greater_is_better
    assert trainer.state.best_model_checkpoint == str(tmp_path / "checkpoint-2")


class QualityByEpoch(TrainerCallback):
    """A scorer whose grade depends on the epoch being checked: a stand-in for a model that gets better, then
    worse, then better again but over budget (what real fine-tunes do, made exact)."""

    def __init__(self, grades: dict[int, float]) -> None:
        self.grades, self.epoch = grades, 0

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.epoch = int(round(state.epoch or 0)) + 1

    def score(self, prompt: str, output: str, reference: str) -> float:
        return self.grades.get(self.epoch, 0.0)


def test_the_best_quality_within_budget_is_in_memory_and_on_disk(tmp_path):
    tok = tiny_tokenizer()
    model = tiny_causal_lm()
    length = ForcedLength(model, tok.eos_token_id, long_epochs={4})  # epoch 4 rambles: over the token budget
    grades = QualityByEpoch({0: 0.5, 1: 0.6, 2: 0.9, 3: 0.7, 4: 0.95})
    cb = EfficiencyCallback(
        [(p, "a reference answer") for p in PROBE],
        scorer=grades.score,
        budget=Budget(max_token_increase=0.5),
        max_new_tokens=6,
        repeats=1,
        warmup=0,
        stop_training=False,
    )
    args = training_args(
        tmp_path,
        num_train_epochs=4,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="efficiency_quality",
    )
    data = plain_dataset(tok, n=8)
    trainer = make_trainer(model, args, data, tok, [grades, length, cb], eval_dataset=data)
    trainer.train()

    report = RunReport.load(tmp_path)
    assert [round(c.summary["quality"], 2) for c in report.checks] == [0.5, 0.6, 0.9, 0.7, 0.95]
    assert [c.breached for c in report.checks] == [False, False, False, False, True]
    # Epoch 2 (step 4): the best quality among the checks within budget; epoch 4 scores higher but is over budget.
    best = str(tmp_path / "checkpoint-4")
    assert trainer.state.best_model_checkpoint == best and Path(best).is_dir()
    assert report.final_model == {"step": 4, "source": best, "within_budget": True}
    assert report.recommended_checkpoint["step"] == 4
    assert Path(report.recommended_checkpoint["path"]).is_dir()
    assert report.recommended_checkpoint["reason"].startswith("step 4: best quality within budget (0.900")
    rows = report.to_dict()["pareto"]
    assert [(r["step"], round(r["quality"], 2), r["within_budget"]) for r in rows] == [
        (2, 0.6, True),
        (4, 0.9, True),
        (6, 0.7, True),
        (8, 0.95, False),
    ]
    assert not rows[1]["dominated"]  # the best quality is never dominated (timing decides the others)


def test_an_older_best_quality_checkpoint_is_kept_from_rotation(tmp_path):
    """No load_best_model_at_end: the Trainer protects only the newest checkpoint, ftcallback keeps the best."""
    tok = tiny_tokenizer()
    model = tiny_causal_lm()
    grades = QualityByEpoch({0: 0.5, 1: 0.6, 2: 0.9, 3: 0.7})
    cb = EfficiencyCallback(
        [(p, "a reference answer") for p in PROBE], scorer=grades.score, max_new_tokens=4, repeats=1, warmup=0
    )
    args = training_args(tmp_path, num_train_epochs=3, save_strategy="epoch", save_total_limit=1)
    trainer = make_trainer(model, args, plain_dataset(tok, n=8), tok, [grades, cb])
    trainer.train()

    report = RunReport.load(tmp_path)
    assert not (tmp_path / "checkpoint-4").exists()  # rotated away by the Trainer
    recommended = report.recommended_checkpoint
    assert recommended["step"] == 4 and Path(recommended["path"]).is_dir()
    assert Path(recommended["path"]).parent == tmp_path / "efficiency" / "checkpoints"
    assert sorted(p.name for p in (tmp_path / "efficiency" / "checkpoints").iterdir()) == ["checkpoint-4"]
    # `ftcallback report` shows quality per check and names the checkpoint to ship, with why.
    table = format_checks_table(report, width=200)
    assert "quality" in table.splitlines()[0]
    assert f"recommended checkpoint: {recommended['path']} (step 4: best quality within budget (0.900" in table
    # TensorBoard has the quality curve next to latency and tokens; the plot gets a quality panel.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in tmp_path.glob("runs/*/events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events.parent))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    assert {"efficiency/quality", "efficiency/latency_ms_p95", "efficiency/output_tokens_mean"} <= tags
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    from ftcallback import plot_report

    without = RunReport.from_dict(report.to_dict())
    for check in without.checks:
        check.summary.pop("quality", None)
    with_panel = imread(plot_report(report, tmp_path / "quality.png")).shape[0]
    assert with_panel > imread(plot_report(without, tmp_path / "plain.png")).shape[0]  # one panel more
