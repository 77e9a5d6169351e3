"""EfficiencyCallback end to end: real ``transformers.Trainer`` runs with tiny models.

What is asserted are behaviours and relations (which epoch breaches first, that the stopping run stops
exactly there, that numbers in the log, the report, TensorBoard and trainer_state.json agree), never
absolute durations. Latency tests make the slowdown huge (a sleep per forward pass) and fix the output
length, so that only speed changes.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers_training import (
    PROBE,
    ForcedLength,
    SlowDown,
    StopAfterEpoch,
    ftcallback_logs,
    longer_answers_dataset,
    make_trainer,
    plain_dataset,
    read_report,
    short_answer_model,
    training_args,
)
from tensorboard.backend.event_processing import event_accumulator
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

import ftcallback._prober as prober_module
from ftcallback import BaselineError, Budget, BudgetCheck, EfficiencyCallback, Measurement, measure
from ftcallback._prompts import encode_prompts, prompts_sha256
from ftcallback._tensorboard import HEADLINE_KEYS
from ftcallback.testing import tiny_causal_lm, tiny_tokenizer

STOP_LINE = re.compile(
    r"^stopping training at epoch (\d+) \(step (\d+)\): (\w+) ([\d.]+) exceeds budget ([\d.]+) "
    r"\(baseline ([\d.]+), ([+-]\d+)%\)"
)



def stop_lines(records: list[logging.LogRecord]) -> list[str]:
    return [
        r.getMessage()
        for r in records
        if r.name == "ftcallback"
        and r.levelno == logging.WARNING
        and r.getMessage().startswith("stopping training")
    ]


def warnings_of(records: list[logging.LogRecord]) -> list[str]:
    """WARNING lines of the callback's own logger (the measurement engine's noise warnings excluded)."""
    return [r.getMessage() for r in records if r.name == "ftcallback" and r.levelno >= logging.WARNING]


def expected_stop_line(stopped: dict[str, Any]) -> str:
    """The stop line rebuilt from the report's numbers, in the issue's format."""
    value, limit, base = stopped["value"], stopped["limit"], stopped["baseline"]
    return (
        f"stopping training at epoch {round(stopped['epoch'])} (step {stopped['step']}): "
        f"{stopped['metric']} {value:.1f} exceeds budget {limit:.1f} "
        f"(baseline {base:.1f}, {(value / base - 1) * 100:+.0f}%)"
    )


def epoch_checks(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in report["checks"] if c["kind"] == "epoch"]


# ============================================================================ a fine-tune that answers longer
EPOCHS = 5
TOKENS = {"max_new_tokens": 16, "repeats": 2}
TIGHT = 0.5  # max_token_increase that the longer answers breach
LOOSE = 20.0  # baseline x 21: more than max_new_tokens, never reached


def finetune_longer(output_dir: Path, budget: Budget, **callback_kwargs: Any) -> tuple[Any, list]:
    """Fine-tune the short-answer model towards long answers for EPOCHS epochs (2 steps each)."""
    tok = tiny_tokenizer()
    cb = EfficiencyCallback(PROBE, budget=budget, **TOKENS, **callback_kwargs)
    trainer = make_trainer(
        short_answer_model(),
        training_args(output_dir, num_train_epochs=EPOCHS, per_device_train_batch_size=8),
        longer_answers_dataset(tok),
        tok,
        [cb],
    )
    with ftcallback_logs() as records:
        trainer.train()
    return trainer, records


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The fine-tune under a loose budget: trains to the end and gives the per-epoch output lengths."""
    out = tmp_path_factory.mktemp("loose")
    trainer, records = finetune_longer(out, Budget(max_token_increase=LOOSE))
    report = read_report(out)
    baseline_mean = Measurement.from_dict(report["baseline"]).output_tokens.mean
    limit = baseline_mean * (1 + TIGHT)
    epochs = epoch_checks(report)
    means = {round(c["epoch"]): c["summary"]["output_tokens_mean"] for c in epochs}
    steps = {round(c["epoch"]): c["step"] for c in epochs}
    breaching = [e for e, mean in means.items() if mean > limit]
    return {
        "report": report,
        "records": records,
        "global_step": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "baseline_mean": baseline_mean,
        "limit": limit,
        "means": means,
        "steps": steps,
        "breaching": breaching,
    }


def test_reference_fine_tune_makes_answers_longer(reference: dict[str, Any]) -> None:
    """The construction works: short answers at first, longer ones later, a breach before the last epoch."""
    means, breaching = reference["means"], reference["breaching"]
    assert sorted(means) == list(range(1, EPOCHS + 1))
    assert reference["baseline_mean"] <= 2.0  # the short-answer model ends (almost) at once
    assert max(means.values()) > reference["limit"]
    # At least one epoch within budget before the first breach, and two breaches in a row before the end:
    # the stopping tests below then tell "stops at the right epoch" from "stops at once" and "never stops".
    first = breaching[0]
    assert 1 < first and first + 1 in breaching and first + 1 < EPOCHS


def test_looser_budget_trains_to_the_end(reference: dict[str, Any]) -> None:
    report = reference["report"]
    assert reference["global_step"] == reference["max_steps"] == 2 * EPOCHS
    assert report["stopped"] is None
    assert [c["kind"] for c in report["checks"]] == ["baseline"] + ["epoch"] * EPOCHS
    assert not any(c["breached"] for c in report["checks"])
    assert stop_lines(reference["records"]) == []
    assert warnings_of(reference["records"]) == []


def test_longer_answers_stop_at_the_first_breaching_epoch(
    tmp_path: Path, reference: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    first = reference["breaching"][0]
    caplog.set_level(logging.INFO, logger="ftcallback")
    trainer, _ = finetune_longer(tmp_path, Budget(max_token_increase=TIGHT))
    report = read_report(tmp_path)

    step = reference["steps"][first]
    assert trainer.state.global_step == step < reference["max_steps"]
    assert [round(c["epoch"]) for c in epoch_checks(report)] == list(range(1, first + 1))
    # Training with the callback is deterministic and undisturbed: the same lengths as the reference run.
    assert {round(c["epoch"]): c["summary"]["output_tokens_mean"] for c in epoch_checks(report)} == {
        e: reference["means"][e] for e in range(1, first + 1)
    }
    stopped = report["stopped"]
    assert stopped["epoch"] == first and stopped["step"] == step
    assert stopped["budget"] == "max_token_increase" and stopped["metric"] == "output_tokens_mean"
    assert stopped["reason"] == "budget_breached"
    assert stopped["value"] == reference["means"][first]
    assert stopped["baseline"] == pytest.approx(reference["baseline_mean"])
    assert stopped["limit"] == pytest.approx(reference["limit"])
    assert stopped["recommended_checkpoint"] is None

    lines = stop_lines(caplog.records)
    assert lines == [expected_stop_line(stopped)] == [stopped["message"]]
    assert STOP_LINE.match(lines[0])
    assert warnings_of(caplog.records) == lines  # one WARNING: no "breached" line before the stop


def test_patience_two_stops_one_check_later(
    tmp_path: Path, reference: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    first = reference["breaching"][0]
    caplog.set_level(logging.INFO, logger="ftcallback")
    trainer, _ = finetune_longer(tmp_path, Budget(max_token_increase=TIGHT), patience=2)
    report = read_report(tmp_path)

    assert trainer.state.global_step == reference["steps"][first + 1]
    assert report["stopped"]["epoch"] == first + 1
    assert [c["consecutive_breaches"] for c in epoch_checks(report)][-2:] == [1, 2]
    breach = BudgetCheck.from_dict(epoch_checks(report)[first - 1]["verdict"][0])
    assert warnings_of(caplog.records) == [
        f"budget breached at epoch {first} (step {reference['steps'][first]}), 1 of 2 consecutive checks "
        f"before stopping: {breach.describe()}",
        expected_stop_line(report["stopped"]),
    ]


def test_stop_training_false_warns_records_and_trains_on(
    tmp_path: Path, reference: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ftcallback")
    trainer, _ = finetune_longer(tmp_path, Budget(max_token_increase=TIGHT), stop_training=False)
    report = read_report(tmp_path)

    assert trainer.state.global_step == reference["max_steps"]
    assert report["stopped"] is None
    assert [round(c["epoch"]) for c in epoch_checks(report) if c["breached"]] == reference["breaching"]
    *warned, final = warnings_of(caplog.records)
    # ... and once at the end, since nothing stopped the run: the weights left in memory are over budget.
    assert final == f"the model in memory at the end of training (step {trainer.state.global_step}) breaches the budget"
    assert [int(re.match(r"budget breached at epoch (\d+) ", w).group(1)) for w in warned] == reference[
        "breaching"
    ]
    assert all(w.endswith("(stop_training=False: training continues)") for w in warned)
    assert stop_lines(caplog.records) == []


def test_patience_counts_consecutive_breaches_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Breaches at epochs 2, 4 and 5 with patience 2: the one at 2 is forgiven, the run stops at 5."""
    caplog.set_level(logging.INFO, logger="ftcallback")
    tok = tiny_tokenizer()
    model = tiny_causal_lm("gpt2")
    length = ForcedLength(model, tok.eos_token_id, long_epochs={2, 4, 5})
    cb = EfficiencyCallback(
        PROBE, budget=Budget(max_token_increase=1.0), max_new_tokens=6, repeats=2, patience=2
    )
    trainer = make_trainer(
        model, training_args(tmp_path, num_train_epochs=6), plain_dataset(tok), tok, [cb, length]
    )
    trainer.train()
    report = read_report(tmp_path)

    assert [c["breached"] for c in epoch_checks(report)] == [False, True, False, True, True]
    assert [c["consecutive_breaches"] for c in epoch_checks(report)] == [0, 1, 0, 1, 2]
    assert trainer.state.global_step == 10 < trainer.state.max_steps
    assert report["stopped"]["epoch"] == 5
    assert len(stop_lines(caplog.records)) == 1


# ============================================================================ latency
LATENCY = {"max_new_tokens": 8, "generation_kwargs": {"min_new_tokens": 8}, "repeats": 3}


def test_simulated_slowdown_breaches_latency_budget(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """10 ms of sleep per forward pass from epoch 2 on, in eval mode only: the check at epoch 2 stops."""
    caplog.set_level(logging.INFO, logger="ftcallback")
    tok = tiny_tokenizer()
    model = tiny_causal_lm("gpt2")
    slow = SlowDown(model, seconds=0.010, from_epoch=2)
    cb = EfficiencyCallback(PROBE, budget=Budget(max_latency_increase=0.2), **LATENCY)
    trainer = make_trainer(model, training_args(tmp_path), plain_dataset(tok), tok, [cb, slow])
    trainer.train()
    report = read_report(tmp_path)

    assert trainer.state.global_step == 4 < trainer.state.max_steps
    # Fixed output length: only speed changed.
    assert {c["summary"]["output_tokens_mean"] for c in report["checks"]} == {8.0}
    assert [c["breached"] for c in report["checks"]] == [False, False, True]
    stopped = report["stopped"]
    assert (stopped["epoch"], stopped["step"]) == (2, 4)
    # The relative budget's value is the judged ratio under its own name, not a p95 posing as observed.
    assert (stopped["budget"], stopped["metric"]) == ("max_latency_increase", "latency_judged_ratio")
    assert stopped["value"] > stopped["limit"] == pytest.approx(1.2) and stopped["baseline"] is None
    slow_check = report["checks"][-1]
    ratios = slow_check["ratios"]
    assert ratios["latency_judged_ratio"] == stopped["value"] and ratios["latency_judged_ratio_low"] > 1.0
    assert ratios["latency_ratio"] > 1.2 and ratios["latency_length_ratio"] == 1.0  # same answers, slower tokens
    assert stop_lines(caplog.records) == [stopped["message"]]
    assert stopped["message"].startswith(
        f"stopping training at epoch 2 (step 4): latency_judged_ratio x{stopped['value']:.3f} ["
    )
    assert "from per-token speed" in stopped["message"] and "+0% from longer answers (exact)" in stopped["message"]


def test_unchanged_model_never_breaches_latency_budget(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """learning_rate=0, weights unchanged over 5 epochs: timing noise is never called a +20% breach."""
    caplog.set_level(logging.INFO, logger="ftcallback")
    tok = tiny_tokenizer()
    model = tiny_causal_lm("gpt2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cb = EfficiencyCallback(PROBE, budget=Budget(max_latency_increase=0.2), **LATENCY)
    trainer = make_trainer(
        model, training_args(tmp_path, num_train_epochs=5, learning_rate=0.0), plain_dataset(tok), tok, [cb]
    )
    trainer.train()
    report = read_report(tmp_path)

    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert trainer.state.global_step == trainer.state.max_steps == 10
    assert report["stopped"] is None
    assert len(epoch_checks(report)) == 5
    assert not any(c["breached"] for c in report["checks"])
    assert all(c["cost"] == {} for c in report["checks"])  # no prices, no cost figures
    assert stop_lines(caplog.records) == [] and warnings_of(caplog.records) == []


# ======================================================================= report, TensorBoard, log history
PRICED = Budget(
    max_token_increase=0.5,
    max_latency_increase=10.0,
    input_price_per_1k=0.5,
    output_price_per_1k=1.5,
    requests_per_month=100_000,
    monthly_cost=1e9,
)
# Short answers are min_new_tokens + EOS = 4 tokens, long ones 8: a +100% breach at epoch 2.
FULL = {"max_new_tokens": 8, "generation_kwargs": {"min_new_tokens": 3}, "repeats": 2}


@pytest.fixture(scope="module", params=["none", "tensorboard"])
def full_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """3 epochs of 2 steps, a checkpoint per epoch, prices set; answers get long at epoch 2 -> stop there."""
    out = tmp_path_factory.mktemp(f"full-{request.param}")
    tok = tiny_tokenizer()
    model = tiny_causal_lm("gpt2")
    length = ForcedLength(model, tok.eos_token_id, long_epochs={2})
    cb = EfficiencyCallback(PROBE, budget=PRICED, **FULL)
    args = training_args(
        out, report_to=request.param, save_strategy="epoch", logging_strategy="steps", logging_steps=1
    )
    trainer = make_trainer(model, args, plain_dataset(tok), tok, [cb, length])
    with ftcallback_logs() as records:
        trainer.train()
    return {"out": out, "report": read_report(out), "records": records, "trainer": trainer}


def test_report_json_records_budget_baseline_checks_and_stop(full_run: dict[str, Any]) -> None:
    report, out = full_run["report"], full_run["out"]
    assert report["budget"] == PRICED.to_dict()
    assert report["settings"]["max_new_tokens"] == 8 and report["settings"]["patience"] == 1
    baseline = Measurement.from_dict(report["baseline"])
    assert baseline.settings["prompts_sha256"] == prompts_sha256(PROBE, False)
    assert report["baseline_source"] == "measured at train begin"

    checks = report["checks"]
    assert [(c["index"], c["kind"], c["epoch"], c["step"]) for c in checks] == [
        (0, "baseline", 0.0, 0),
        (1, "epoch", 1.0, 2),
        (2, "epoch", 2.0, 4),
    ]
    assert [c["breached"] for c in checks] == [False, False, True]
    assert [c["summary"]["output_tokens_mean"] for c in checks] == [4.0, 4.0, 8.0]
    for check in checks:
        assert check["status"] == "ok" and check["error"] is None
        assert {"latency_ms_p50", "latency_ms_p95", "ttft_ms_p50", "tpot_ms_p50", "tokens_per_second"} <= set(
            check["summary"]
        )
        ratios, summary = check["ratios"], check["summary"]
        assert ratios["output_tokens_ratio"] == pytest.approx(summary["output_tokens_mean"] / 4.0)
        assert ratios["latency_speed_ratio_low"] <= ratios["latency_speed_ratio"] <= ratios["latency_speed_ratio_high"]
        # Cost per request = input and output tokens at their prices; the month projects it.
        cost = check["cost"]
        assert cost["cost_per_request"] == pytest.approx(
            (summary["input_tokens_mean"] * 0.5 + summary["output_tokens_mean"] * 1.5) / 1000
        )
        assert cost["monthly_cost"] == pytest.approx(cost["cost_per_request"] * 100_000)
        assert cost["cost_ratio"] == pytest.approx(
            cost["cost_per_request"] / checks[0]["cost"]["cost_per_request"]
        )
        verdict = {v["budget"]: v for v in check["verdict"]}
        if check["kind"] != "baseline":
            assert list(verdict) == ["max_latency_increase", "max_token_increase", "monthly_cost"]
        for line in verdict.values():
            assert {"metric", "value", "limit", "baseline", "passed", "margin"} <= set(line)
            assert line["margin"] == pytest.approx((line["limit"] - line["value"]) / line["limit"])
    tokens = {v["budget"]: v for v in checks[2]["verdict"]}["max_token_increase"]
    assert tokens == {
        **tokens,
        "metric": "output_tokens_mean",
        "value": 8.0,
        "limit": pytest.approx(6.0),
        "baseline": 4.0,
        "passed": False,
    }
    assert tokens["margin"] < 0

    ckpt = str(out / "checkpoint-2")
    assert report["checkpoints"] == [
        {"step": 2, "path": ckpt, "within_budget": True},
        {"step": 4, "path": str(out / "checkpoint-4"), "within_budget": False},
    ]
    assert report["last_within_budget_checkpoint"] == ckpt
    stopped = report["stopped"]
    assert {k: stopped[k] for k in ("epoch", "step", "budget", "metric", "value", "baseline", "reason")} == {
        "epoch": 2.0,
        "step": 4,
        "budget": "max_token_increase",
        "metric": "output_tokens_mean",
        "value": 8.0,
        "baseline": 4.0,
        "reason": "budget_breached",
    }
    assert stopped["limit"] == pytest.approx(6.0) and stopped["recommended_checkpoint"] == ckpt
    json.dumps(report, allow_nan=False)  # strict JSON: no NaN anywhere


def test_stop_line_recommends_the_last_checkpoint_within_budget(full_run: dict[str, Any]) -> None:
    stopped = full_run["report"]["stopped"]
    ckpt = str(full_run["out"] / "checkpoint-2")
    line = f"{expected_stop_line(stopped)}. Last checkpoint within budget: {ckpt}"
    assert (
        stop_lines(full_run["records"])
        == [line]
        == [f"{stopped['message']}. Last checkpoint within budget: {ckpt}"]
    )
    assert full_run["trainer"].state.global_step == 4 < full_run["trainer"].state.max_steps


# Keep every event: the default size guidance samples scalars and tensors down.
_ALL = {event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0}
TB_TAGS = [
    f"efficiency/{k}" if k in HEADLINE_KEYS else f"efficiency_detail/{k}"
    for k in (
        "latency_ms_p50",
        "latency_ms_p95",
        "ttft_ms_p50",
        "tpot_ms_p50",
        "output_tokens_mean",
        "tokens_per_second",
        "latency_ratio",
        "output_tokens_ratio",
        "cost_per_request",
        "monthly_cost",
        "cost_ratio",
    )
]


def tensorboard_runs(output_dir: Path) -> dict[Path, event_accumulator.EventAccumulator]:
    """Every run `tensorboard --logdir output_dir` would show, read with TensorBoard's own reader."""
    runs = {}
    for folder in {p.parent for p in output_dir.rglob("events.out.tfevents.*")}:
        acc = event_accumulator.EventAccumulator(str(folder), size_guidance=_ALL)
        acc.Reload()
        runs[folder] = acc
    return runs


def test_tensorboard_shows_loss_and_efficiency_curves_together(full_run: dict[str, Any]) -> None:
    report = full_run["report"]
    runs = tensorboard_runs(full_run["out"])
    with_loss = [folder for folder, acc in runs.items() if "train/loss" in acc.Tags()["scalars"]]
    assert len(with_loss) == 1
    acc = runs[with_loss[0]]
    # The budget limits: a sibling run (its own colour) under the tags of the metrics they bound.
    budget = runs.pop(with_loss[0] / "budget")
    limit_tags = set(budget.Tags()["scalars"])
    assert "efficiency/output_tokens_mean" in limit_tags and "efficiency_detail/monthly_cost" in limit_tags
    assert limit_tags <= set(acc.Tags()["scalars"])  # each limit next to the curve it bounds
    # One loss point per optimizer step: the loss is not written twice.
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    every_efficiency_tag = {
        t for a in runs.values() for t in a.Tags()["scalars"] if t.startswith(("efficiency/", "efficiency_detail/"))
    }
    assert set(TB_TAGS) <= every_efficiency_tag
    for tag in every_efficiency_tag:
        assert [f for f, a in runs.items() if tag in a.Tags()["scalars"]] == with_loss, tag

    # Each check at the Trainer's global_step, the baseline at step 0, the same numbers as report.json.
    steps = [c["step"] for c in report["checks"]]
    assert steps == [0, 2, 4]
    for key in ("latency_ms_p50", "latency_ms_p95", "ttft_ms_p50", "tpot_ms_p50", "output_tokens_mean"):
        events = acc.Scalars(TB_TAGS[[t.rsplit("/", 1)[1] for t in TB_TAGS].index(key)])
        assert [e.step for e in events] == steps
        assert [e.value for e in events] == pytest.approx(
            [c["summary"][key] for c in report["checks"]], rel=1e-5
        )
    assert [e.value for e in acc.Scalars("efficiency_detail/output_tokens_ratio")] == pytest.approx([1.0, 1.0, 2.0])
    assert [e.value for e in budget.Scalars("efficiency/output_tokens_mean")] == pytest.approx([6.0] * 3)
    assert [e.value for e in acc.Scalars("efficiency_detail/monthly_cost")] == pytest.approx(
        [c["cost"]["monthly_cost"] for c in report["checks"]], rel=1e-5
    )
    assert all([e.step for e in budget.Scalars(tag)] == steps for tag in limit_tags)
    samples = acc.Tensors("efficiency/samples/text_summary")
    assert [e.step for e in samples] == steps
    assert PROBE[0] in samples[0].tensor_proto.string_val[0].decode()


def test_log_history_in_checkpoint_trainer_state(full_run: dict[str, Any]) -> None:
    report, out = full_run["report"], full_run["out"]

    def efficiency_entries(checkpoint: str) -> list[dict[str, Any]]:
        state = json.loads((out / checkpoint / "trainer_state.json").read_text())
        return [e for e in state["log_history"] if any(k.startswith("efficiency/") for k in e)]

    assert [e["step"] for e in efficiency_entries("checkpoint-2")] == [0, 2]
    entries = efficiency_entries("checkpoint-4")
    assert [e["step"] for e in entries] == [0, 2, 4]
    for entry, check in zip(entries, report["checks"], strict=True):
        assert entry["efficiency/output_tokens_mean"] == check["summary"]["output_tokens_mean"]
        assert entry["efficiency/latency_ms_p50"] == pytest.approx(check["summary"]["latency_ms_p50"])
        assert entry["efficiency/monthly_cost"] == pytest.approx(check["cost"]["monthly_cost"])
        assert entry["efficiency/breached"] == int(check["breached"])


# ============================================================================ schedule
def test_every_n_steps_checks_at_the_right_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """3 steps per epoch, every_n_steps=2: steps 2, 4, 6 and the end of epoch 1 (step 3); at step 6 the
    step check and the epoch end coincide and the model is measured once."""
    calls = count_measurements(monkeypatch)
    tok = tiny_tokenizer()
    cb = EfficiencyCallback(PROBE, max_new_tokens=4, repeats=2, every_n_steps=2)
    trainer = make_trainer(
        tiny_causal_lm("gpt2"), training_args(tmp_path, num_train_epochs=2), plain_dataset(tok, 12), tok, [cb]
    )
    trainer.train()
    report = read_report(tmp_path)

    assert [(c["kind"], c["step"]) for c in report["checks"]] == [
        ("baseline", 0),
        ("step", 2),
        ("epoch", 3),
        ("step", 4),
        ("step", 6),
    ]
    assert [c["epoch"] for c in report["checks"]] == pytest.approx([0.0, 2 / 3, 1.0, 4 / 3, 2.0])
    assert len(calls) == 5


def count_measurements(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the callback's calls of measure() (each is one check's measurement)."""
    calls: list[int] = []

    def counting(*args: Any, **kwargs: Any) -> Measurement:
        calls.append(1)
        return measure(*args, **kwargs)

    monkeypatch.setattr(prober_module, "measure", counting)
    return calls


# ============================================================================ baselines
BASELINE_KW = {"max_new_tokens": 6, "repeats": 2}


@pytest.fixture(scope="module")
def saved_baseline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Measurement]:
    m = measure(tiny_causal_lm("gpt2"), tiny_tokenizer(), PROBE, **BASELINE_KW)
    path = tmp_path_factory.mktemp("baseline") / "baseline.json"
    m.save(path)
    return path, m


def test_given_baseline_skips_the_baseline_measurement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, saved_baseline: tuple[Path, Measurement]
) -> None:
    path, m = saved_baseline
    calls = count_measurements(monkeypatch)
    tok = tiny_tokenizer()
    cb = EfficiencyCallback(PROBE, budget=Budget(max_token_increase=1.0), baseline=path, **BASELINE_KW)
    trainer = make_trainer(
        tiny_causal_lm("gpt2"), training_args(tmp_path, num_train_epochs=2), plain_dataset(tok), tok, [cb]
    )
    trainer.train()
    report = read_report(tmp_path)

    assert len(calls) == 2  # the two epoch ends, no baseline
    assert [c["kind"] for c in report["checks"]] == ["epoch", "epoch"]
    assert report["baseline"] == json.loads(path.read_text())
    assert report["baseline_source"] == f"loaded from {path}"
    tokens = [v for v in report["checks"][0]["verdict"] if v["budget"] == "max_token_increase"][0]
    assert tokens["baseline"] == m.output_tokens.mean
    # TensorBoard still gets the given baseline at step 0, next to the checks.
    # One run with the curves, and its sibling with the budget lines.
    (acc,) = [a for folder, a in tensorboard_runs(tmp_path).items() if folder.name != "budget"]
    events = acc.Scalars("efficiency/output_tokens_mean")
    assert [(e.step, e.value) for e in events][0] == (0, m.output_tokens.mean)
    assert [e.step for e in events] == [0, 2, 4]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"prompts": [*PROBE, "another prompt"]}, "prompts_sha256"),
        ({"prompts": list(reversed(PROBE))}, "prompts_sha256"),
        ({"max_new_tokens": 12}, "max_new_tokens"),
        ({"generation_kwargs": {"min_new_tokens": 2}}, "generation_kwargs"),
        ({"apply_chat_template": True}, "apply_chat_template"),
    ],
)
def test_mismatching_baseline_raises_at_construction(
    saved_baseline: tuple[Path, Measurement], change: dict[str, Any], match: str
) -> None:
    path, _ = saved_baseline
    kwargs = {"prompts": PROBE, **BASELINE_KW, **change}
    with pytest.raises(BaselineError, match=match):
        EfficiencyCallback(kwargs.pop("prompts"), baseline=path, **kwargs)


# ============================================================================ tokenizers, prompts, models
class TinyProcessor:
    """What a multimodal processor looks like to the Trainer and the callback: a tokenizer inside."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.model_input_names = tokenizer.model_input_names

    def save_pretrained(self, directory: str) -> None:
        self.tokenizer.save_pretrained(directory)


def run_one_epoch(tmp_path: Path, cb: EfficiencyCallback, processing_class: Any, model: Any = None) -> dict:
    tok = getattr(processing_class, "tokenizer", processing_class)
    trainer = make_trainer(
        model if model is not None else tiny_causal_lm("gpt2"),
        training_args(tmp_path, num_train_epochs=1),
        plain_dataset(tok),
        processing_class,
        [cb],
    )
    trainer.train()
    report = read_report(tmp_path)
    assert [(c["kind"], c["status"]) for c in report["checks"]] == [("baseline", "ok"), ("epoch", "ok")]
    return report


def test_processor_with_a_tokenizer_as_processing_class(tmp_path: Path) -> None:
    tok = tiny_tokenizer()
    report = run_one_epoch(
        tmp_path, EfficiencyCallback(PROBE, max_new_tokens=4, repeats=2), TinyProcessor(tok)
    )
    ids = encode_prompts(tok, PROBE)
    assert report["checks"][0]["summary"]["input_tokens_mean"] == pytest.approx(sum(map(len, ids)) / len(ids))


def test_tokenizer_without_pad_token(tmp_path: Path) -> None:
    """GPT-2 style: no pad token; batches of prompts of different lengths are padded with EOS."""
    tok = tiny_tokenizer(pad=False)
    cb = EfficiencyCallback(PROBE, max_new_tokens=4, repeats=2, batch_size=2)
    report = run_one_epoch(tmp_path, cb, tok)
    assert tok.pad_token is None  # left as it was
    ids = encode_prompts(tok, PROBE)
    assert report["checks"][0]["summary"]["input_tokens_mean"] == pytest.approx(sum(map(len, ids)) / len(ids))


def test_chat_template(tmp_path: Path) -> None:
    tok = tiny_tokenizer(chat_template=True)
    cb = EfficiencyCallback(PROBE, max_new_tokens=4, repeats=2, apply_chat_template=True)
    report = run_one_epoch(tmp_path, cb, tok)
    assert report["settings"]["apply_chat_template"] is True
    assert report["settings"]["prompts_sha256"] == prompts_sha256(PROBE, True)
    templated = encode_prompts(tok, PROBE, apply_chat_template=True)
    plain = encode_prompts(tok, PROBE)
    mean = report["checks"][0]["summary"]["input_tokens_mean"]
    assert mean == pytest.approx(sum(map(len, templated)) / len(templated))
    assert mean > sum(map(len, plain)) / len(plain)


@pytest.mark.parametrize("source", ["dataset", "txt", "jsonl"])
def test_prompts_from_a_dataset_or_a_file(tmp_path: Path, source: str) -> None:
    if source == "dataset":
        import datasets

        prompts: Any = datasets.Dataset.from_dict({"prompt": PROBE})
    elif source == "txt":
        prompts = tmp_path / "probe.txt"
        prompts.write_text("\n".join(PROBE) + "\n", encoding="utf-8")
    else:
        prompts = tmp_path / "probe.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROBE), encoding="utf-8")
    cb = EfficiencyCallback(prompts, max_new_tokens=4, repeats=2)
    report = run_one_epoch(tmp_path / "out", cb, tiny_tokenizer())
    assert report["settings"]["num_prompts"] == len(PROBE)
    assert report["settings"]["prompts_sha256"] == prompts_sha256(PROBE, False)
    assert [s["prompt"] for s in report["baseline"]["sample_outputs"]] == PROBE[:3]


class Watch(TrainerCallback):
    """Notes the model's devices, dtypes and train/eval mode at train begin and at each epoch end."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, set[tuple[torch.device, torch.dtype]], bool]] = []

    def _look(self, event: str, model: torch.nn.Module) -> None:
        self.seen.append((event, {(p.device, p.dtype) for p in model.parameters()}, model.training))

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._look("train_begin", kwargs["model"])

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._look("epoch_end", kwargs["model"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_model_stays_on_its_training_device_and_dtype(tmp_path: Path, dtype: torch.dtype) -> None:
    """Watched just before and just after each check: same devices, dtypes and train/eval mode."""
    tok = tiny_tokenizer()
    model = tiny_causal_lm("gpt2").to(dtype)
    before, after = Watch(), Watch()
    cb = EfficiencyCallback(PROBE, max_new_tokens=4, repeats=2)
    trainer = make_trainer(
        model, training_args(tmp_path, num_train_epochs=2), plain_dataset(tok), tok, [before, cb, after]
    )
    trainer.train()
    report = read_report(tmp_path)

    assert after.seen == before.seen
    assert [event for event, _, _ in after.seen] == ["train_begin", "epoch_end", "epoch_end"]
    assert all(placed == {(torch.device("cpu"), dtype)} for _, placed, _ in after.seen)
    assert after.seen[-1][2] is True  # still training after the epoch-end check
    # Measured as trained: in the training dtype, on the training device.
    assert report["baseline"]["model"]["param_dtype"] == str(dtype).removeprefix("torch.")
    assert report["baseline"]["model"]["device"] == "cpu"


# ============================================================================ resume
@pytest.mark.parametrize("restore", [True, False], ids=["restore_callback_states", "report_json"])
def test_resume_keeps_the_baseline_and_the_patience_counter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore: bool
) -> None:
    """Long answers at epochs 2 and 3, patience 2. The first job is interrupted after epoch 2 (one breach
    counted); resumed from checkpoint-4 it stops at epoch 3 (the second breach in a row) without measuring
    a new baseline on the partly trained model."""
    tok = tiny_tokenizer()
    kwargs = {"budget": Budget(max_token_increase=1.0), "max_new_tokens": 6, "repeats": 2, "patience": 2}

    def job(extra: list[TrainerCallback]) -> Any:
        model = tiny_causal_lm("gpt2")
        args = training_args(
            tmp_path,
            num_train_epochs=4,
            save_strategy="epoch",
            restore_callback_states_from_checkpoint=restore,
        )
        callbacks = [
            EfficiencyCallback(PROBE, **kwargs),
            ForcedLength(model, tok.eos_token_id, {2, 3}),
            *extra,
        ]
        return make_trainer(model, args, plain_dataset(tok), tok, callbacks)

    job([StopAfterEpoch(2)]).train()
    first = read_report(tmp_path)
    assert [c["consecutive_breaches"] for c in first["checks"]] == [0, 0, 1]
    assert first["stopped"] is None

    calls = count_measurements(monkeypatch)
    trainer = job([])
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    report = read_report(tmp_path)

    assert len(calls) == 1  # the check at epoch 3 only: the baseline was not measured again
    assert report["baseline"]["created_at"] == first["baseline"]["created_at"]
    assert report["baseline"]["samples"] == first["baseline"]["samples"]
    assert [(c["kind"], c["step"], c["consecutive_breaches"]) for c in report["checks"]] == [
        ("baseline", 0, 0),
        ("epoch", 2, 0),
        ("epoch", 4, 1),
        ("epoch", 6, 2),
    ]
    assert trainer.state.global_step == 6 < trainer.state.max_steps
    assert (report["stopped"]["epoch"], report["stopped"]["step"]) == (3, 6)
    active = [c for c in trainer.callback_handler.callbacks if isinstance(c, EfficiencyCallback)]
    assert len(active) == 1
