"""Bad input fails early: at construction, or at ``on_train_begin`` before any optimizer step.

Every error names the argument and says how to fix it. Errors that need the model or the Trainer's
tokenizer go through a real ``Trainer`` and leave ``state.global_step == 0``.
"""

from __future__ import annotations

import json
import math

import pytest
from helpers_training import make_trainer, token_rows, training_args
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
)

from ftcallback import Budget, EfficiencyCallback
from ftcallback._errors import BaselineError, ConfigError, ModelError, PromptError
from ftcallback._measurement import Measurement, RequestSample
from ftcallback.testing import tiny_causal_lm, tiny_tokenizer

pytestmark = pytest.mark.filterwarnings("ignore:timing is noisy")

PROMPTS = ["the model returns", "a user measures the latency"]


# ----------------------------------------------------------------- helpers

def _trainer(tmp_path, callback, *, model=None, tokenizer=None, processing_class="same", train_dataset=None):
    """A tiny Trainer; ``processing_class=None`` gives the Trainer no tokenizer at all."""
    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    args = training_args(tmp_path / "out", num_train_epochs=1, logging_strategy="steps")
    return make_trainer(
        model if model is not None else tiny_causal_lm(),
        args,
        train_dataset if train_dataset is not None else token_rows(tokenizer, n=8),
        tokenizer if processing_class == "same" else processing_class,
        [callback],
        collator_tokenizer=tokenizer,
    )


def _raises_before_any_step(trainer, error, match):
    with pytest.raises(error, match=match):
        trainer.train()
    assert trainer.state.global_step == 0, "an optimizer step happened before the error"


def _baseline_for(cb: EfficiencyCallback, **settings_override) -> Measurement:
    samples = tuple(
        RequestSample(
            prompt_index=i,
            repeat=r,
            latency_s=0.05,
            ttft_s=0.01,
            input_tokens=4,
            output_tokens=8,
            finished=False,
        )
        for i in range(len(cb.prompts))
        for r in range(2)
    )
    return Measurement(samples=samples, settings={**cb.spec.settings(), **settings_override})


# ----------------------------------------------------------------- prompts (construction)
@pytest.mark.parametrize(
    ("prompts", "match"),
    [
        ([], r"`prompts` must contain at least one prompt.*pass a non-empty list"),
        ((), r"`prompts` must contain at least one prompt"),
        (["fine", 3], r"`prompts\[1\]` must be a str, got int.*text prompts only"),
        (["fine", None], r"`prompts\[1\]` must be a str, got NoneType"),
        ([b"bytes"], r"`prompts\[0\]` must be a str, got bytes"),
        (["fine", "   "], r"`prompts\[1\]` is empty or whitespace-only; remove it"),
        ([""], r"`prompts\[0\]` is empty"),
        ({"prompt": "a dict"}, r"`prompts` must be a list of strings, a datasets.Dataset or a path"),
        (42, r"`prompts` must be a list of strings"),
    ],
)
def test_bad_prompts_fail_at_construction(prompts, match):
    with pytest.raises(PromptError, match=match):
        EfficiencyCallback(prompts)


def test_dataset_without_a_usable_column():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"question": ["q1", "q2"]})
    with pytest.raises(
        PromptError, match=r"no 'prompt' or 'text' column \(columns: \['question'\]\).*rename_column"
    ):
        EfficiencyCallback(ds)
    with pytest.raises(PromptError, match=r"DatasetDict; pass one split"):
        EfficiencyCallback(datasets.DatasetDict({"train": datasets.Dataset.from_dict({"prompt": ["p"]})}))


def test_dataset_with_non_string_rows():
    datasets = pytest.importorskip("datasets")
    with pytest.raises(PromptError, match=r"`prompts\[0\]` must be a str, got int"):
        EfficiencyCallback(datasets.Dataset.from_dict({"prompt": [1, 2]}))


def test_missing_prompt_file(tmp_path):
    with pytest.raises(PromptError, match=r"`prompts` file .*nope\.txt' does not exist; pass an existing"):
        EfficiencyCallback(tmp_path / "nope.txt")
    with pytest.raises(PromptError, match=r"does not exist"):
        EfficiencyCallback(str(tmp_path / "nope.csv"))


def test_unreadable_prompt_files(tmp_path):
    binary = tmp_path / "latin1.txt"
    binary.write_bytes(b"caf\xe9 au lait\n")
    with pytest.raises(PromptError, match=r"latin1\.txt' cannot be read .*UTF-8 encoding"):
        EfficiencyCallback(binary)
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    with pytest.raises(PromptError, match=r"folder\.jsonl' cannot be read"):
        EfficiencyCallback(folder)
    wrong = tmp_path / "probe.csv"
    wrong.write_text("a,b\n", encoding="utf-8")
    with pytest.raises(PromptError, match=r"unsupported extension '\.csv'; use \.txt"):
        EfficiencyCallback(wrong)


def test_malformed_and_empty_prompt_files(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{not json\n', encoding="utf-8")
    with pytest.raises(PromptError, match=r"line 2 is not valid JSON"):
        EfficiencyCallback(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(PromptError, match=r"at least one prompt"):
        EfficiencyCallback(empty)


# ----------------------------------------------------------------- budget and arguments (construction)
@pytest.mark.parametrize(
    ("budget", "match"),
    [
        ({"latency_ms": -5}, r"`latency_ms` must be > 0, got -5\.0 \(an SLA"),
        ({"latency_ms": 0}, r"`latency_ms` must be > 0, got 0\.0"),
        ({"output_tokens": 0}, r"`output_tokens` must be > 0"),
        ({"max_latency_increase": 0}, r"`max_latency_increase` must be > 0.*0\.25 means \+25%"),
        ({"max_token_increase": -0.1}, r"`max_token_increase` must be > 0, got -0\.1"),
        ({"requests_per_month": 0, "output_price_per_1k": 1.0}, r"`requests_per_month` must be > 0"),
        ({"input_price_per_1k": -1.0}, r"`input_price_per_1k` must be >= 0"),
        ({"latency_ms": math.nan}, r"`latency_ms` must be a finite number"),
        ({"latency_ms": "fast"}, r"`latency_ms` must be a number"),
        (
            {"latency_ms": 400, "latency_stat": "p42"},
            r"`latency_stat` must be one of 'mean', 'p50'.*got 'p42'",
        ),
        ({"latency_ms": 400, "latency_stat": "median"}, r"`latency_stat` must be one of"),
        (
            {"cost_per_request": 0.01, "input_price_per_1k": 0.0, "output_price_per_1k": 0.0},
            r"needs a non-zero price",
        ),
        ({"confidence": 1.5, "latency_ms": 400}, r"`confidence` must be in \(0, 1\)"),
        ({"max_latency": 0.2}, r"unknown budget field\(s\) max_latency; known fields: latency_ms"),
    ],
)
def test_bad_budget_fails_at_construction(budget, match):
    # Both through the dict form the callback accepts and through Budget itself.
    with pytest.raises(ConfigError, match=match):
        EfficiencyCallback(PROMPTS, budget=budget)
    with pytest.raises(ConfigError, match=match):
        Budget.from_dict(budget)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"patience": 0},
            r"`patience` must be an integer >= 1, got 0 \(1 stops at the first breaching check\)",
        ),
        ({"patience": -2}, r"`patience` must be an integer >= 1, got -2"),
        ({"patience": 1.5}, r"`patience` must be an integer >= 1, got 1\.5"),
        ({"patience": True}, r"`patience` must be an integer >= 1, got True"),
        ({"max_new_tokens": 0}, r"`max_new_tokens` must be an integer >= 1"),
        ({"repeats": 0}, r"`repeats` must be an integer >= 1"),
        ({"batch_size": 0}, r"`batch_size` must be an integer >= 1"),
        ({"warmup": -1}, r"`warmup` must be an integer >= 0"),
        (
            {"every_n_steps": 0},
            r"`every_n_steps` must be an integer >= 1, got 0 \(None measures at epoch ends",
        ),
        ({"num_sample_outputs": -1}, r"`num_sample_outputs` must be an integer >= 0"),
        ({"stop_training": "yes"}, r"`stop_training` must be True or False, got 'yes'"),
        (
            {"budget": 42},
            r"`budget` must be an ftcallback.Budget, a dict of its fields, a .toml/.json file path, "
            r"or None, got int",
        ),
        ({"budget": "tight"}, r"budget file 'tight' must end with \.toml or \.json"),
        (
            {"generation_kwargs": ["do_sample"]},
            r"`generation_kwargs` must be a dict of generate\(\) arguments",
        ),
        (
            {"baseline": 42},
            r"`baseline` must be a path to a saved measurement, a Measurement, or None, got int",
        ),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        EfficiencyCallback(PROMPTS, **kwargs)


# ----------------------------------------------------------------- baseline (construction)
def test_matching_baseline_is_accepted(tmp_path):
    cb = EfficiencyCallback(PROMPTS, max_new_tokens=8)
    path = _baseline_for(cb).save(tmp_path / "base.json")
    assert EfficiencyCallback(PROMPTS, max_new_tokens=8, baseline=path)._baseline_source.startswith(
        "loaded from"
    )


def test_missing_baseline_file(tmp_path):
    with pytest.raises(BaselineError, match=r"cannot read baseline file .*missing\.json': No such file"):
        EfficiencyCallback(PROMPTS, baseline=tmp_path / "missing.json")


def test_corrupt_baseline_files(tmp_path):
    cb = EfficiencyCallback(PROMPTS)
    truncated = tmp_path / "truncated.json"
    truncated.write_text(json.dumps(_baseline_for(cb).to_dict())[:-40], encoding="utf-8")
    with pytest.raises(BaselineError, match=r"baseline file .*truncated\.json' is not valid JSON"):
        EfficiencyCallback(PROMPTS, baseline=truncated)

    not_a_measurement = tmp_path / "other.json"
    not_a_measurement.write_text(json.dumps({"hello": "world"}), encoding="utf-8")
    with pytest.raises(
        BaselineError, match=r"other\.json': not an ftcallback measurement: no 'samples' field"
    ):
        EfficiencyCallback(PROMPTS, baseline=not_a_measurement)

    broken = _baseline_for(cb).to_dict()
    del broken["samples"]["latency_s"]
    broken_path = tmp_path / "broken.json"
    broken_path.write_text(json.dumps(broken), encoding="utf-8")
    with pytest.raises(BaselineError, match=r"broken\.json': corrupt measurement: KeyError"):
        EfficiencyCallback(PROMPTS, baseline=broken_path)


def test_baseline_of_another_schema_version(tmp_path):
    cb = EfficiencyCallback(PROMPTS)
    data = _baseline_for(cb).to_dict()
    data["schema_version"] = 99
    path = tmp_path / "future.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(
        BaselineError, match=r"schema_version 99 is not supported.*measure the baseline again"
    ):
        EfficiencyCallback(PROMPTS, baseline=path)
    with pytest.raises(BaselineError, match=r"schema_version 99"):
        EfficiencyCallback(PROMPTS, baseline=data)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        (
            {"prompts_sha256": "0" * 64, "num_prompts": 5},
            r"prompts_sha256 is '0000.*num_prompts is 5 in the baseline but 2",
        ),
        ({"max_new_tokens": 64}, r"max_new_tokens is 64 in the baseline but 8 here"),
        (
            {"generation_kwargs": {"do_sample": True}},
            r"generation_kwargs is \{'do_sample': True\} in the baseline",
        ),
        ({"apply_chat_template": True}, r"apply_chat_template is True in the baseline but False here"),
    ],
)
def test_baseline_measured_with_other_prompts_or_settings(tmp_path, override, match):
    cb = EfficiencyCallback(PROMPTS, max_new_tokens=8)
    path = _baseline_for(cb, **override).save(tmp_path / "base.json")
    with pytest.raises(
        BaselineError, match=r"measured with other prompts or settings than this run.*" + match
    ):
        EfficiencyCallback(PROMPTS, max_new_tokens=8, baseline=path)
    with pytest.raises(BaselineError, match=r"drop `baseline=`"):
        EfficiencyCallback(PROMPTS, max_new_tokens=8, baseline=_baseline_for(cb, **override))


# ----------------------------------------------------------------- on_train_begin, through a real Trainer
def test_encoder_only_sequence_classifier_is_rejected(tmp_path):
    tok = tiny_tokenizer()
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
    )
    rows = [{**r, "labels": 0} for r in token_rows(tok, n=8)]
    trainer = make_trainer(
        BertForSequenceClassification(config),
        training_args(tmp_path / "out", num_train_epochs=1),
        rows,
        tok,
        [EfficiencyCallback(PROMPTS, max_new_tokens=4)],
    )
    _raises_before_any_step(
        trainer, ModelError, r"BertForSequenceClassification cannot generate text; .*AutoModelForCausalLM"
    )


def test_encoder_only_base_model_is_rejected(tmp_path):
    tok = tiny_tokenizer()
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )

    class BertWithLoss(BertModel):  # the Trainer needs a loss; the probe must still refuse it
        def forward(self, input_ids=None, labels=None, **kwargs):
            out = super().forward(input_ids=input_ids, **kwargs)
            return {"loss": out.last_hidden_state.float().pow(2).mean()}

    trainer = _trainer(
        tmp_path, EfficiencyCallback(PROMPTS, max_new_tokens=4), model=BertWithLoss(config), tokenizer=tok
    )
    _raises_before_any_step(trainer, ModelError, r"BertWithLoss cannot generate text; .*AutoModelForCausalLM")


def test_no_tokenizer_anywhere(tmp_path):
    trainer = _trainer(tmp_path, EfficiencyCallback(PROMPTS, max_new_tokens=4), processing_class=None)
    assert trainer.processing_class is None
    _raises_before_any_step(
        trainer,
        ModelError,
        r"a tokenizer is needed to encode the probe prompts, got None; "
        r"pass tokenizer=\.\.\. to EfficiencyCallback or processing_class=\.\.\. to Trainer",
    )


def test_tokenizer_given_to_the_callback_is_enough(tmp_path):
    tok = tiny_tokenizer()
    cb = EfficiencyCallback(PROMPTS, max_new_tokens=2, repeats=1, warmup=0, tokenizer=tok)
    trainer = _trainer(tmp_path, cb, processing_class=None, tokenizer=tok)
    trainer.train()
    assert trainer.state.global_step > 0
    assert [c.kind for c in cb.report.checks] == ["baseline", "epoch"]


def test_tokenizer_without_pad_or_eos(tmp_path):
    tok = tiny_tokenizer(pad=False)
    bare = tiny_tokenizer(pad=False)
    bare.eos_token = None
    cb = EfficiencyCallback(PROMPTS, max_new_tokens=4, tokenizer=bare)
    _raises_before_any_step(
        _trainer(tmp_path, cb, tokenizer=tok),
        ModelError,
        r"neither a pad token nor an EOS token.*set tokenizer.eos_token",
    )


def test_chat_template_without_template(tmp_path):
    cb = EfficiencyCallback(PROMPTS, max_new_tokens=4, apply_chat_template=True)
    _raises_before_any_step(
        _trainer(tmp_path, cb),
        ConfigError,
        r"`apply_chat_template` is True but the tokenizer .* has no chat template",
    )


def test_prompt_longer_than_the_context(tmp_path):
    long_prompt = " ".join(["the model returns a short reply"] * 40)
    cb = EfficiencyCallback([*PROMPTS, long_prompt], max_new_tokens=8)
    _raises_before_any_step(
        _trainer(tmp_path, cb),
        PromptError,
        r"`prompts\[2\]` has \d+ tokens; .*context of 128 positions; shorten",
    )


def test_prompt_longer_than_the_context_with_a_given_baseline(tmp_path):
    # No baseline measurement at train begin: the probe must still be checked there, not at the first epoch
    # end.
    long_prompt = " ".join(["the model returns a short reply"] * 40)
    prompts = [*PROMPTS, long_prompt]
    probe = EfficiencyCallback(prompts, max_new_tokens=8)
    cb = EfficiencyCallback(prompts, max_new_tokens=8, baseline=_baseline_for(probe))
    _raises_before_any_step(_trainer(tmp_path, cb), PromptError, r"`prompts\[2\]` has \d+ tokens")


@pytest.mark.parametrize(
    ("generation_kwargs", "match"),
    [
        (
            {"max_length": 40},
            r"`generation_kwargs` must not set 'max_length': use the `max_new_tokens` argument",
        ),
        ({"max_new_tokens": 40}, r"`generation_kwargs` must not set 'max_new_tokens'"),
        ({"use_cache": False}, r"`generation_kwargs` must not set use_cache=False"),
        ({"num_return_sequences": 2}, r"num_return_sequences must be 1"),
    ],
)
def test_bad_generation_kwargs_fail_at_construction(generation_kwargs, match):
    # Not at the first measurement: with a given baseline that is the first epoch end, after training.
    with pytest.raises(ConfigError, match=match):
        EfficiencyCallback(PROMPTS, max_new_tokens=4, generation_kwargs=generation_kwargs)


def test_prompt_the_tokenizer_rejects_at_train_begin(tmp_path):
    tok = tiny_tokenizer()

    class PickyTokenizer(type(tok)):
        def __call__(self, text, *args, **kwargs):
            if isinstance(text, str) and "latency" in text:
                raise ValueError("unsupported character sequence")
            return super().__call__(text, *args, **kwargs)

    picky = tiny_tokenizer()
    picky.__class__ = PickyTokenizer
    cb = EfficiencyCallback(PROMPTS, max_new_tokens=4, tokenizer=picky)
    _raises_before_any_step(
        _trainer(tmp_path, cb, tokenizer=tok),
        PromptError,
        r"the tokenizer rejected `prompts\[1\]` \(ValueError: unsupported character sequence\)",
    )


def test_errors_are_also_builtin_exceptions():
    # Callers that do not know ftcallback can still catch the builtin they mean.
    with pytest.raises(ValueError):
        EfficiencyCallback([])
    with pytest.raises(ValueError):
        EfficiencyCallback(PROMPTS, patience=0)
    assert issubclass(ModelError, TypeError)


def test_budget_may_be_a_file_path(tmp_path):
    path = tmp_path / "budget.toml"
    path.write_text("max_token_increase = 0.25\n", encoding="utf-8")
    assert EfficiencyCallback(["a prompt"], budget=path).budget == Budget(max_token_increase=0.25)
    assert EfficiencyCallback(["a prompt"], budget=str(path)).budget == Budget(max_token_increase=0.25)
