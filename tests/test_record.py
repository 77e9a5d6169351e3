"""What a measurement records about how the model really ran, and when two records are not comparable.

Through a real Trainer: bf16 autocast on CPU, ``torch_compile``, PEFT LoRA merged and not, sampling flags
that have no effect (and the one WARNING), and a check retried after out of memory. Then the rules that
decide which figures two records can compare, unit by unit.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers_record import OutOfMemoryOnce, lora_gpt2
from helpers_training import PROBE, ftcallback_logs, make_trainer, plain_dataset, read_report, training_args
from transformers import GenerationConfig, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ftcallback import BaselineError, Budget, EfficiencyCallback, compare, evaluate, measure
from ftcallback._execution import describe_decoding
from ftcallback._measurement import Incompatibility, Measurement, RequestSample, comparable_facts
from ftcallback._report import RunReport, format_checks_table
from ftcallback.testing import tiny_causal_lm, tiny_tokenizer

FAST: dict[str, Any] = {"max_new_tokens": 3, "warmup": 0, "repeats": 2}


def train(tmp_path: Path, model: torch.nn.Module, *before: TrainerCallback, **overrides: Any) -> dict[str, Any]:
    """One-epoch run (unless overridden) with the callback after ``before``; returns report.json."""
    tok = tiny_tokenizer()
    callback = overrides.pop("callback", None) or EfficiencyCallback(PROBE[:2], **FAST)
    args = training_args(tmp_path, **{"num_train_epochs": 1, **overrides})
    make_trainer(model, args, plain_dataset(tok, 4), tok, [*before, callback]).train()
    return read_report(tmp_path)


def records(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The baseline and every check's measurement."""
    return [report["baseline"], *(c["measurement"] for c in report["checks"][1:])]


# ----------------------------------------------------------------- through a real Trainer
def test_bf16_on_cpu_is_recorded_as_autocast_by_the_accelerate_forward_patch(tmp_path):
    report = train(tmp_path, tiny_causal_lm("gpt2"), bf16=True)
    for m in records(report):
        assert m["environment"]["autocast"] == {
            "enabled": True,
            "dtype": "bfloat16",
            "source": "accelerate forward patch",
        }
        assert m["model"]["param_dtype"] == "float32" and m["model"]["compute_dtype"] == "bfloat16"
    # The same model measured outside training computes in float32: not comparable, both figures spoiled.
    plain = measure(tiny_causal_lm("gpt2"), tiny_tokenizer(), PROBE[:2], **FAST)
    assert plain.environment["autocast"]["enabled"] is False and plain.model["compute_dtype"] == "float32"
    differences = Measurement.from_dict(report["baseline"]).incompatibilities(plain)
    assert {d.fact for d in differences} == {"compute_dtype", "autocast"}
    assert all(d.affects == {"latency", "tokens"} for d in differences)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
def test_torch_compile_records_a_compiled_trained_module_and_an_uncompiled_measured_one(tmp_path):
    report = train(tmp_path, tiny_causal_lm("gpt2"), torch_compile=True, torch_compile_backend="eager")
    for m in records(report):
        assert m["model"]["compile"] == {"trained_module_compiled": True, "measured_compiled": False}


class MergeAdapters(TrainerCallback):
    """Merges the LoRA weights into the base layers at the end of training's last epoch, before the check."""

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        kwargs["model"].merge_adapter()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_peft_lora_adapters_merged_and_not(tmp_path):
    callback = EfficiencyCallback(PROBE[:2], budget=Budget(max_latency_increase=0.5, max_token_increase=0.5), **FAST)
    report = train(tmp_path, lora_gpt2(r=4), MergeAdapters(), callback=callback)
    base, merged = records(report)
    expected = {"name": "default", "type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["c_attn"]}
    assert base["model"]["adapters"] == [{**expected, "merged": False}]
    assert merged["model"]["adapters"] == [{**expected, "merged": True}]
    # Merged and unmerged adapters differ in structure: latency is not comparable, greedy tokens are.
    verdict = {v["budget"]: v for v in report["checks"][1]["verdict"]}
    assert verdict["max_latency_increase"]["passed"] is None
    assert "adapters" in verdict["max_latency_increase"]["detail"]
    assert "merged here" in verdict["max_latency_increase"]["detail"]
    assert verdict["max_token_increase"]["passed"] is True


def test_ignored_sampling_flags_are_recorded_and_warned_once(tmp_path):
    hf_logger = logging.getLogger("transformers")
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    hf_logger.addHandler(handler)  # transformers does not propagate to the root logger
    try:
        with ftcallback_logs() as logs:
            callback = EfficiencyCallback(PROBE[:2], generation_kwargs={"temperature": 0.7}, **FAST)
            report = train(tmp_path, tiny_causal_lm("gpt2"), callback=callback, num_train_epochs=2)
    finally:
        hf_logger.removeHandler(handler)
    warnings = [r.getMessage() for r in logs if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "temperature=0.7" in warnings[0] and "do_sample=True" in warnings[0] and "greedy" in warnings[0]
    assert not [r for r in seen if "temperature" in r.getMessage()]  # no second warning from transformers
    assert len(report["checks"]) == 3
    for m in records(report):
        assert m["settings"]["generation_kwargs"] == {"temperature": 0.7}  # what was asked
        assert m["decoding"]["mode"] == "greedy" and m["decoding"]["ignored"] == {"temperature": 0.7}
        assert "temperature" not in m["decoding"]["parameters"]


def test_measure_warns_about_ignored_flags_once_per_call(caplog):
    model, tok = tiny_causal_lm("gpt2"), tiny_tokenizer()
    greedy = measure(model, tok, PROBE[:2], **FAST)
    with caplog.at_level(logging.WARNING, logger="ftcallback"):
        m = measure(model, tok, PROBE[:2], generation_kwargs={"temperature": 0.7, "top_p": 0.5}, **FAST)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("ftcallback")]
    assert len(warnings) == 1 and "temperature=0.7, top_p=0.5" in warnings[0].getMessage()
    assert m.decoding["ignored"] == {"temperature": 0.7, "top_p": 0.5}
    assert m.sample_outputs == greedy.sample_outputs  # really greedy
    # A different decoding request is a different measurement even though the decoding is the same.
    assert [d.fact for d in greedy.incompatibilities(m)] == ["generation_kwargs"]


def test_a_check_retried_after_out_of_memory_says_so_and_its_latency_is_not_judged(tmp_path):
    model = tiny_causal_lm("gpt2")
    oom = OutOfMemoryOnce(model, epochs={1})
    callback = EfficiencyCallback(
        PROBE[:4],
        budget=Budget(max_latency_increase=0.5, max_token_increase=0.5),
        batch_size=4,
        max_new_tokens=3,
        warmup=0,
        repeats=2,
    )
    report = train(tmp_path, model, oom, callback=callback)
    assert oom.raised == 1
    base, retried = records(report)
    assert base["retry"] is None and base["settings"]["batch_size"] == 4
    assert retried["retry"] == {"reason": "out_of_memory", "changed": {"batch_size": [4, 2]}}
    assert retried["settings"]["batch_size"] == 2
    verdict = {v["budget"]: v for v in report["checks"][1]["verdict"]}
    assert verdict["max_latency_increase"]["passed"] is None
    assert "out_of_memory" in verdict["max_latency_increase"]["detail"]
    assert verdict["max_token_increase"]["passed"] is True  # greedy tokens do not depend on the batch
    # `ftcallback report` says so under its table.
    table = format_checks_table(RunReport.from_dict(report), width=100)
    assert "not comparable with the baseline (relative budgets over these figures not evaluable):" in table
    assert "  - epoch 1.00 (step 1): retry is none in the baseline but retried after out_of_memory" in table


# ----------------------------------------------------------------- decoding, unit by unit
def test_describe_decoding_resolves_like_transformers():
    sampling = describe_decoding(None, {"do_sample": True, "temperature": 0.7})
    assert sampling.mode == "sampling" and sampling.ignored == {}
    assert sampling.parameters["temperature"] == 0.7 and sampling.parameters["top_k"] == 50  # global default
    assert sampling.parameters["top_p"] == 1.0

    beams = describe_decoding(None, {"num_beams": 3, "length_penalty": 0.5})
    assert beams.mode == "beam" and beams.parameters["num_beams"] == 3 and beams.ignored == {}
    assert beams.parameters["length_penalty"] == 0.5

    no_beams = describe_decoding(None, {"length_penalty": 0.5, "top_k": 50})  # top_k=50 is inert: not ignored
    assert no_beams.mode == "greedy" and no_beams.ignored == {"length_penalty": 0.5}


def test_describe_decoding_reads_the_model_generation_config():
    model = tiny_causal_lm("gpt2")
    model.generation_config.update(do_sample=True, temperature=0.6, top_p=0.9)  # an instruct checkpoint
    # measure decodes greedily unless asked: the checkpoint's sampling flags are not the user's mistake.
    assert describe_decoding(model, None) == describe_decoding(None, None)
    asked = describe_decoding(model, {"do_sample": True})
    assert asked.mode == "sampling" and asked.parameters["temperature"] == 0.6 and asked.parameters["top_p"] == 0.9
    given = describe_decoding(model.generation_config, {"generation_config": GenerationConfig(temperature=0.3)})
    assert given.mode == "greedy" and given.ignored == {"temperature": 0.3}


def test_decoding_warning_names_the_flags_and_the_fix():
    assert describe_decoding(None, {"do_sample": True, "temperature": 0.7}).warning() is None
    message = describe_decoding(None, {"temperature": 0.7}).warning()
    assert message is not None and message.startswith("generation_kwargs temperature=0.7 have no effect")
    assert "add do_sample=True" in message


# ----------------------------------------------------------------- comparability
def make(**overrides: Any) -> Measurement:
    """A measurement with a full record; ``overrides`` replace whole sections or fields."""
    data: dict[str, Any] = {
        "samples": (RequestSample(0, 0, 0.5, 0.1, 5, 9, True), RequestSample(0, 1, 0.5, 0.1, 5, 9, True)),
        "settings": {"prompts_sha256": "x", "num_prompts": 1, "max_new_tokens": 16, "batch_size": 4},
        "model": {
            "param_dtype": "float32",
            "compute_dtype": "float32",
            "compile": {"trained_module_compiled": False, "measured_compiled": False},
            "adapters": [],
        },
        "environment": {
            "device_type": "cpu",
            "device_name": "x86_64",
            "autocast": {"enabled": False, "dtype": None, "source": None},
            "sharding_mode": None,
        },
        "decoding": {"mode": "greedy", "parameters": {}, "ignored": {}},
    }
    for key, value in overrides.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    return Measurement(**data)


@pytest.mark.parametrize(
    ("change", "fact", "affects"),
    [
        ({"decoding": {"mode": "sampling", "parameters": {"temperature": 0.7}}}, "decoding", {"latency", "tokens"}),
        ({"model": {"compute_dtype": "bfloat16"}}, "compute_dtype", {"latency", "tokens"}),
        (
            {"environment": {"autocast": {"enabled": True, "dtype": "bfloat16", "source": "autocast context"}}},
            "autocast",
            {"latency", "tokens"},
        ),
        ({"model": {"compile": {"trained_module_compiled": True, "measured_compiled": True}}}, "compile", {"latency"}),
        ({"model": {"adapters": [{"name": "default", "type": "LORA", "merged": True}]}}, "adapters", {"latency"}),
        ({"environment": {"device_type": "cuda"}}, "device", {"latency"}),
        ({"environment": {"sharding_mode": "zero3"}}, "sharding_mode", {"latency"}),
        ({"settings": {"max_new_tokens": 32}}, "max_new_tokens", {"latency", "tokens"}),
    ],
)
def test_each_difference_is_named_with_the_figures_it_spoils(change, fact, affects):
    differences = make().incompatibilities(make(**change))
    assert [d.fact for d in differences] == [fact]
    assert differences[0].affects == affects
    assert differences[0].message.startswith(f"{fact} is ") and "in the baseline" in differences[0].message
    assert make(**change).incompatibilities(make(**change)) == []


def test_a_trained_module_compiled_elsewhere_does_not_spoil_the_comparison():
    other = make(model={"compile": {"trained_module_compiled": True, "measured_compiled": False}})
    assert make().incompatibilities(other) == []


def test_retry_spoils_latency_and_under_sampling_tokens_too():
    retried = make(settings={"batch_size": 2}).with_retry("out_of_memory", batch_size=(4, 2))
    (difference,) = make().incompatibilities(retried)  # reported once, as the retry
    assert isinstance(difference, Incompatibility) and difference.fact == "retry"
    assert difference.affects == {"latency"}
    assert "out_of_memory (batch_size 4 -> 2)" in str(difference)
    sampled = {"decoding": {"mode": "sampling", "parameters": {"temperature": 0.7}}}
    retried_sampling = make(settings={"batch_size": 2}, **sampled).with_retry("out_of_memory", batch_size=(4, 2))
    (difference,) = make(**sampled).incompatibilities(retried_sampling)
    assert difference.affects == {"latency", "tokens"}


def test_relative_budgets_over_a_spoiled_figure_are_not_evaluable_absolute_ones_still_judge():
    budget = Budget(latency_ms=100, max_latency_increase=0.2, max_token_increase=0.2)
    retried = make(settings={"batch_size": 2}).with_retry("out_of_memory", batch_size=(4, 2))
    verdict = {c.budget: c for c in evaluate(budget, retried, make()).checks}
    assert verdict["max_latency_increase"].passed is None
    assert verdict["max_latency_increase"].detail.startswith(
        "not comparable with the baseline: retry is none in the baseline but retried after out_of_memory"
    )
    assert verdict["max_token_increase"].passed is True
    assert verdict["latency_ms"].passed is False  # 500 ms > 100 ms: the SLA judges the measurement itself
    with pytest.raises(BaselineError, match="retry is none in the baseline"):
        compare(make(), retried, budget)  # compare refuses what cannot be compared, unless told
    comparison = compare(make(), retried, budget, allow_mismatch=True)
    assert comparison.incompatible == [make().incompatibilities(retried)[0].message]
    assert "max_latency_increase" not in [c.budget for c in comparison.verdict.breaches]


def test_older_files_without_the_new_record_compare_without_false_differences():
    old = make().to_dict()
    for key in ("decoding", "retry"):
        del old[key]
    old["model"] = {"dtype": "float32"}
    old["environment"] = {"device_type": "cpu", "device_name": "x86_64"}
    loaded = Measurement.from_dict(old)
    assert loaded.model == {"param_dtype": "float32"} and loaded.retry is None and loaded.decoding == {}
    assert loaded.incompatibilities(make()) == [] and make().incompatibilities(loaded) == []


def test_record_round_trips_through_json():
    m = make().with_retry("out_of_memory", batch_size=(4, 2))
    back = Measurement.from_dict(m.to_dict())
    assert back.retry == m.retry and back.decoding == m.decoding and back.model == m.model
    assert back.incompatibilities(m) == []
    assert math.isclose(back.latency_ms.p50, 500.0)


def test_comparable_facts_are_one_list_with_unique_names():
    from ftcallback._probe import COMPARABLE_SETTINGS, LATENCY_SETTINGS

    names = [f.name for f in comparable_facts()]
    assert len(names) == len(set(names))
    assert {"decoding", "compute_dtype", "autocast", "compile", "adapters", "device", "sharding_mode", "retry"} <= set(
        names
    )
    assert {*COMPARABLE_SETTINGS, *LATENCY_SETTINGS} <= set(names)  # the probe's settings, from _probe


def test_a_served_measurement_is_not_comparable_with_one_of_generate():
    from ftcallback import Measurement, RequestSample

    sample = (RequestSample(0, 0, 0.5, 0.1, 5, 9, True),)
    generate = Measurement(samples=sample)
    served = Measurement(samples=sample, environment={"backend": "openai-endpoint"})
    (difference,) = generate.incompatibilities(served)
    assert difference.fact == "backend" and difference.affects == {"latency", "tokens"}
    assert generate.incompatibilities(Measurement(samples=sample)) == []
