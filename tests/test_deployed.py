"""The deployed form through a real Trainer: both forms per check, the budget on the deployed one, training
untouched."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from helpers_training import PROBE, plain_dataset, training_args
from transformers import Trainer

from ftcallback import Budget, ConfigError, EfficiencyCallback, ModelError
from ftcallback._measurement import Measurement, RequestSample
from ftcallback._monitor import Monitor
from ftcallback._probe import ProbeSpec
from ftcallback.testing import tiny_causal_lm


def _lora_model():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear")
    return get_peft_model(tiny_causal_lm("llama"), config)


def _train(tmp_path, tokenizer, callbacks, name):
    model = _lora_model()
    args = training_args(tmp_path / name, num_train_epochs=2, logging_strategy="steps", logging_steps=1)
    trainer = Trainer(
        model=model, args=args, train_dataset=plain_dataset(tokenizer, 8), processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_lora_fine_tune_reports_both_forms_and_trains_exactly_as_without_the_callback(tmp_path, tokenizer):
    plain_losses, plain_state = _train(tmp_path, tokenizer, [], "plain")
    cb = EfficiencyCallback(PROBE[:2], max_new_tokens=4, warmup=0, repeats=1, deployed_form="merged",
                            budget=Budget(max_token_increase=10.0))
    losses, state = _train(tmp_path, tokenizer, [cb], "measured")

    assert len(losses) == 4 and losses == plain_losses
    assert all(torch.equal(plain_state[k], state[k]) for k in plain_state)

    report = json.loads((tmp_path / "measured" / "efficiency" / "report.json").read_text())
    assert report["settings"]["deployed_form"] == "merged"
    assert report["deployed_baseline"]["environment"]["form"] == "merged"
    assert [c["kind"] for c in report["checks"]] == ["baseline", "epoch", "epoch"]
    for check in report["checks"]:
        assert check["summary"]["latency_ms_p50"] > 0  # the training form (unmerged adapters)
        deployed = check["deployed"]
        assert deployed["form"] == "merged" and deployed["summary"]["latency_ms_p50"] > 0
        assert deployed["measurement"]["environment"]["form_memory_bytes"] > 0
        assert [v["budget"] for v in check["verdict"]] == ["max_token_increase"]


def test_the_budget_judges_the_deployed_form(caplog):
    spec = ProbeSpec(prompts=("hi",))

    def m(latency, form=None):
        env = {"form": form} if form else {}
        return Measurement(samples=(RequestSample(0, 0, latency, 0.01, 5, 10, True),), settings=spec.settings(),
                           environment=env)

    mon = Monitor(spec, Budget(latency_ms=300))
    mon.observe(m(0.5), kind="baseline", epoch=0.0, step=0, deployed=m(0.2, "int8"))
    with caplog.at_level(logging.INFO, logger="ftcallback"):
        ok = mon.observe(m(0.5), kind="epoch", epoch=1.0, step=5, deployed=m(0.25, "int8"))
    # The training form is over 300 ms, the served one is not: within budget.
    assert not ok.record.breached and not ok.decision.stop
    assert ok.record.deployed["form"] == "int8" and ok.record.summary["latency_ms_p50"] == 500
    assert ok.metrics()["efficiency/deployed/latency_ms_p50"] == 250
    assert ok.metrics()["efficiency/latency_ms_p50"] == 500
    assert "epoch 1 (step 5) deployed int8: latency p50 250.0 ms" in caplog.text
    assert mon.report.deployed_baseline["environment"]["form"] == "int8"
    over = mon.observe(m(0.2), kind="epoch", epoch=2.0, step=10, deployed=m(0.4, "int8"))
    assert over.record.breached and over.decision.stop


def test_deployed_form_is_validated(tokenizer, tmp_path):
    with pytest.raises(ConfigError, match="unknown form 'int4'"):
        EfficiencyCallback(["hi"], deployed_form="int4")
    with pytest.raises(ConfigError, match="`baseline` cannot be given with `deployed_form='merged'`"):
        EfficiencyCallback(["hi"], deployed_form="merged", baseline={"samples": []})
    cb = EfficiencyCallback(["hi"], max_new_tokens=2, warmup=0, repeats=1, deployed_form="merged")
    trainer = Trainer(model=tiny_causal_lm("llama"), args=training_args(tmp_path), processing_class=tokenizer,
                      train_dataset=plain_dataset(tokenizer, 4), callbacks=[cb])
    with pytest.raises(ModelError, match="form 'merged' needs a model with unmerged PEFT adapters"):
        trainer.train()


def test_tensorboard_carries_both_forms(tmp_path, tokenizer):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cb = EfficiencyCallback(PROBE[:1], max_new_tokens=3, warmup=0, repeats=1, deployed_form="bf16",
                            logging_dir=str(tmp_path / "tb"), budget=Budget(max_token_increase=10.0))
    args = training_args(tmp_path / "out", num_train_epochs=1)
    Trainer(model=tiny_causal_lm("llama"), args=args, train_dataset=plain_dataset(tokenizer, 4),
            processing_class=tokenizer, callbacks=[cb]).train()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"efficiency/latency_ms_p50", "efficiency/deployed/latency_ms_p50",
            "efficiency/deployed/output_tokens_ratio"} <= tags
    assert [e.step for e in acc.Scalars("efficiency/deployed/latency_ms_p50")] == [0, 1]


def test_report_table_shows_the_deployed_form_under_each_check():
    from ftcallback._report import CheckRecord, RunReport, format_checks_table

    report = RunReport()
    deployed = {"form": "int8", "summary": {"latency_ms_p50": 12.5, "output_tokens_mean": 9.0}}
    breach = {"budget": "output_tokens", "metric": "output_tokens_mean", "value": 9.0, "limit": 8.0, "passed": False}
    report.add_check(
        CheckRecord(index=0, kind="epoch", epoch=1.0, step=4, summary={"latency_ms_p50": 30.0}, deployed=deployed,
                    verdict=[breach], breached=True)
    )
    lines = format_checks_table(report).splitlines()
    assert lines[2].split() == ["epoch", "1.00", "4", "30.0", "-", "-", "-"]  # no verdict on the training row
    assert lines[3].split()[:2] == ["int8", "12.5"] and "BREACH: output_tokens_mean" in lines[3]
    assert RunReport.from_dict(report.to_dict()).checks[0].deployed == deployed
