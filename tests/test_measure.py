"""The measurement engine: what it records, how it times, and that it leaves training exactly as it was.

Timing is asserted through relations, or exactly with an injected clock (``measure(..., clock=...)``);
token counts are made exact by a logits processor that scripts each response.
"""

from __future__ import annotations

import copy
import datetime
import importlib
import json
import logging
import math
import random
import warnings

import numpy as np
import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from ftcallback._errors import ConfigError, ModelError, NoisyMeasurementWarning, PromptError
from ftcallback._measure import measure, unwrap_model
from ftcallback._measurement import Measurement
from ftcallback._prompts import encode_prompts, prompts_sha256
from ftcallback.testing import tiny_causal_lm, tiny_tokenizer

# `ftcallback.measure` the attribute may become the function once the package re-exports it.
engine = importlib.import_module("ftcallback._measure")

EOS, PAD, FILLER = 2, 0, 999
FAST = dict(max_new_tokens=6, warmup=0, repeats=2)


class ScriptedResponses(LogitsProcessor):
    """Makes every response ``FILLER x k`` then ``eos``, with ``k`` chosen by the prompt's last token.

    Stateless: ``k`` is read back from the row itself (trailing fillers), so the script gives the same
    responses whatever the batching. Prompts whose last token is not in ``stops`` never end.
    """

    def __init__(self, stops: dict[int, int], eos: int = EOS) -> None:
        self.stops = stops
        self.eos = eos

    def __call__(self, input_ids, scores):
        forced = torch.full_like(scores, -math.inf)
        for row, ids in enumerate(input_ids.tolist()):
            n = 0
            while ids[-1 - n] == FILLER:
                n += 1
            k = self.stops.get(ids[-1 - n])
            forced[row, self.eos if k is not None and n >= k else FILLER] = 0.0
        return forced


def scripted(tokenizer, prompts, fillers, eos=EOS):
    """generation_kwargs making prompt i answer ``fillers[i]`` fillers then EOS (None: never ends)."""
    last = [ids[-1] for ids in encode_prompts(tokenizer, prompts)]
    assert len(set(last)) == len(last), "the script keys on distinct last prompt tokens"
    assert all(FILLER not in ids for ids in encode_prompts(tokenizer, prompts))
    stops = {tok: k for tok, k in zip(last, fillers, strict=True) if k is not None}
    return {"logits_processor": LogitsProcessorList([ScriptedResponses(stops, eos)])}


class FakeClock:
    """Advances by ``step`` on every read."""

    def __init__(self, step: float = 1.0) -> None:
        self.t = 0.0
        self.step = step

    def __call__(self) -> float:
        self.t += self.step
        return self.t



@pytest.fixture
def clock():
    return FakeClock()


def rng_states():
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def assert_same_rng(a, b):
    assert a[0] == b[0]
    assert a[1][0] == b[1][0] and np.array_equal(a[1][1], b[1][1]) and a[1][2:] == b[1][2:]
    assert torch.equal(a[2], b[2])


# ----------------------------------------------------------------- what a measurement holds


def test_relations_and_counts(model, tokenizer, prompts):
    m = measure(model, tokenizer, prompts, max_new_tokens=6, warmup=2, repeats=3, batch_size=2)
    assert len(m.samples) == len(prompts) * 3
    assert sorted((s.prompt_index, s.repeat) for s in m.samples) == [
        (i, r) for i in range(4) for r in range(3)
    ]
    lengths = [len(ids) for ids in encode_prompts(tokenizer, prompts)]
    for s in m.samples:
        assert 0 < s.ttft_s <= s.latency_s
        if s.output_tokens >= 2:
            assert s.tpot_s >= 0
        assert 1 <= s.output_tokens <= 6
        assert s.input_tokens == lengths[s.prompt_index]
        if not s.finished:
            assert s.output_tokens == 6
    assert len(m.warmup_latencies_s) == 2 and all(w > 0 for w in m.warmup_latencies_s)
    assert m.wall_time_s >= max(s.latency_s for s in m.samples)
    assert m.peak_memory_bytes is None  # CPU
    assert datetime.datetime.fromisoformat(m.created_at).utcoffset() == datetime.timedelta(0)
    assert m.settings == {
        "max_new_tokens": 6,
        "generation_kwargs": {},
        "warmup": 2,
        "repeats": 3,
        "batch_size": 2,
        "apply_chat_template": False,
        "num_prompts": 4,
        "prompts_sha256": prompts_sha256(prompts, False),
        "seed": 0,
    }
    assert m.model["class"] == type(model).__name__
    assert m.model["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert m.model["param_dtype"] == m.model["compute_dtype"] == "float32" and m.model["device"] == "cpu"
    assert m.model["compile"] == {"trained_module_compiled": False, "measured_compiled": False}
    assert m.model["adapters"] == [] and m.retry is None
    assert m.decoding == {"mode": "greedy", "parameters": m.decoding["parameters"], "ignored": {}}
    env = m.environment
    assert env["torch"] == torch.__version__ and env["transformers"] and env["ftcallback"]
    assert env["device_type"] == "cpu" and env["cpu_threads"] == torch.get_num_threads()
    assert env["generation_mode"] == "single" and env["autocast"] == {"enabled": False, "dtype": None, "source": None}


def test_sample_outputs_are_the_first_prompts_of_the_last_repeat(gpt2, tokenizer, prompts):
    m = measure(gpt2, tokenizer, prompts, num_sample_outputs=3, **FAST)
    assert [o["prompt_index"] for o in m.sample_outputs] == [0, 1, 2]
    assert [o["prompt"] for o in m.sample_outputs] == prompts[:3]
    assert all(isinstance(o["output"], str) for o in m.sample_outputs)
    assert measure(gpt2, tokenizer, prompts, num_sample_outputs=0, **FAST).sample_outputs == ()


def test_timing_is_exact_with_an_injected_clock(llama, tokenizer, prompts, clock):
    # batch 0 = prompts 0, 1: 2 and 6 (cut) tokens -> the call runs 6 steps
    # batch 1 = prompts 2, 3: 1 and 4 tokens -> the call stops after 4 steps
    kwargs = scripted(tokenizer, prompts, [1, None, 0, 3])

    def on_batch_end():
        clock.t += 1000.0  # work here is outside the timed region

    m = measure(
        llama,
        tokenizer,
        prompts,
        batch_size=2,
        generation_kwargs=kwargs,
        on_batch_end=on_batch_end,
        clock=clock,
        **FAST,
    )
    # The clock ticks once at the start of each call, once per decoding step, once when generate returns:
    # a request ends at its last token's step, or at the return for the requests that end the call.
    expected = {0: (2, 2.0), 1: (6, 7.0), 2: (1, 1.0), 3: (4, 5.0)}
    for s in m.samples:
        assert (s.output_tokens, s.latency_s) == expected[s.prompt_index]
        assert s.ttft_s == 1.0
    tpot = {s.prompt_index: s.tpot_s for s in m.samples}
    assert tpot[0] == 1.0 and tpot[1] == 1.2 and math.isnan(tpot[2]) and tpot[3] == 4.0 / 3.0
    # Each token's own step: the last token of a request that ends the call existed before generate returned.
    times = {s.prompt_index: s.token_times_s for s in m.samples}
    assert times == {0: (1.0, 2.0), 1: (1.0, 2.0, 3.0, 4.0, 5.0, 6.0), 2: (1.0,), 3: (1.0, 2.0, 3.0, 4.0)}
    assert m.itl_ms.max == 1000.0 and m.summary()["itl_ms_p50"] == 1000.0


def test_output_tokens_count_up_to_the_first_eos_and_truncation(gpt2, tokenizer, prompts):
    kwargs = scripted(tokenizer, prompts, [0, 2, None, 4])
    for batch_size in (1, 4):
        m = measure(gpt2, tokenizer, prompts, batch_size=batch_size, generation_kwargs=kwargs, **FAST)
        got = {s.prompt_index: (s.output_tokens, s.finished) for s in m.samples}
        assert got == {0: (1, True), 1: (3, True), 2: (6, False), 3: (5, True)}
        assert m.eos_fraction == 0.75 and m.truncated_fraction == 0.25


def test_eos_ids_are_the_union_of_generation_config_and_tokenizer(gpt2, tokenizer, prompts):
    # generate stops on the generation config's EOS ids (a list here) ...
    gpt2.generation_config.eos_token_id = [7, EOS]
    m = measure(
        gpt2, tokenizer, prompts, generation_kwargs=scripted(tokenizer, prompts, [1, 1, 1, 1], eos=7), **FAST
    )
    assert {(s.output_tokens, s.finished) for s in m.samples} == {(2, True)}
    # ... and the tokenizer's EOS ends a response too, even when generate does not stop on it.
    gpt2.generation_config.eos_token_id = 7
    m = measure(
        gpt2, tokenizer, prompts, generation_kwargs=scripted(tokenizer, prompts, [2, 2, 2, 2]), **FAST
    )
    assert {(s.output_tokens, s.finished) for s in m.samples} == {(3, True)}


def test_batching_gives_the_same_tokens_and_outputs(model, tokenizer, prompts):
    one = measure(model, tokenizer, prompts, batch_size=1, num_sample_outputs=4, **FAST)
    many = measure(model, tokenizer, prompts, batch_size=3, num_sample_outputs=4, **FAST)
    key = lambda m: sorted((s.prompt_index, s.repeat, s.input_tokens, s.output_tokens) for s in m.samples)  # noqa: E731
    assert key(one) == key(many)
    assert one.sample_outputs == many.sample_outputs
    # input_tokens excludes the padding of the longer batch
    assert [s.input_tokens for s in many.samples if s.repeat == 0] == [
        len(ids) for ids in encode_prompts(tokenizer, prompts)
    ]


def test_batches_are_left_padded_with_an_attention_mask(gpt2, tokenizer, prompts):
    seen = []

    def hook(module, args, kwargs):
        seen.append((kwargs["input_ids"].clone(), kwargs.get("attention_mask")))

    gpt2.register_forward_pre_hook(hook, with_kwargs=True)
    measure(gpt2, tokenizer, prompts, max_new_tokens=2, warmup=0, repeats=1, batch_size=4)
    ids, mask = seen[0]  # the prefill
    lengths = [len(t) for t in encode_prompts(tokenizer, prompts)]
    assert ids.shape == (4, max(lengths))
    for row, n in enumerate(lengths):
        pad = ids.shape[1] - n
        assert mask[row].tolist() == [0] * pad + [1] * n
        assert ids[row, :pad].tolist() == [tokenizer.pad_token_id] * pad


def test_tokenizer_without_pad_token_pads_with_eos_and_is_left_untouched(gpt2, prompts):
    tok = tiny_tokenizer(pad=False)
    before = (tok.padding_side, tok.pad_token, tok.pad_token_id, tok.eos_token, tok.truncation_side, len(tok))
    m = measure(gpt2, tok, prompts, batch_size=4, **FAST)
    assert len(m.samples) == 8
    assert (
        tok.padding_side,
        tok.pad_token,
        tok.pad_token_id,
        tok.eos_token,
        tok.truncation_side,
        len(tok),
    ) == before


def test_chat_template_is_applied_and_fingerprinted(gpt2, prompts):
    tok = tiny_tokenizer(chat_template=True)
    m = measure(gpt2, tok, prompts, apply_chat_template=True, **FAST)
    chat_lengths = [len(ids) for ids in encode_prompts(tok, prompts, apply_chat_template=True)]
    assert [s.input_tokens for s in m.samples if s.repeat == 0] == chat_lengths
    assert m.settings["apply_chat_template"] is True
    assert m.settings["prompts_sha256"] == prompts_sha256(prompts, True)


def test_user_stopping_criteria_run_next_to_the_timer(gpt2, tokenizer, prompts):
    class StopAtThree(StoppingCriteria):
        def __init__(self):
            self.calls = 0

        def __call__(self, input_ids, scores, **kwargs):
            self.calls += 1  # one call per step; generate calls it three times per response
            return torch.full((input_ids.shape[0],), self.calls % 3 == 0, dtype=torch.bool)

    kwargs = {"stopping_criteria": StoppingCriteriaList([StopAtThree()])}
    m = measure(gpt2, tokenizer, prompts[:1], generation_kwargs=kwargs, **FAST)
    assert [s.output_tokens for s in m.samples] == [3, 3]
    assert all(0 < s.ttft_s <= s.latency_s for s in m.samples)
    recorded = m.settings["generation_kwargs"]["stopping_criteria"]
    # the user's criterion, by repr without its address; the engine's own timer is not a setting
    assert len(recorded) == 1 and "StopAtThree object" in recorded[0] and "0x" not in recorded[0]


# ----------------------------------------------------------------- non-disturbance


def test_configs_are_unchanged(model, tokenizer, prompts):
    model.generation_config.temperature = 0.6  # an instruct-style config, sampled by default
    model.generation_config.do_sample = True
    config, gen_config = model.config.to_dict(), model.generation_config.to_dict()
    measure(model, tokenizer, prompts, **FAST)
    measure(model, tokenizer, prompts, generation_kwargs={"do_sample": True, "top_k": 5}, **FAST)
    assert model.config.to_dict() == config
    assert model.generation_config.to_dict() == gen_config


@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_training_flags_are_restored_per_module(gpt2, tokenizer, prompts, mode):
    gpt2.train(mode != "eval")
    if mode == "mixed":
        gpt2.transformer.h[0].eval()  # e.g. a frozen block
    before = {name: m.training for name, m in gpt2.named_modules()}
    during = []
    gpt2.register_forward_pre_hook(
        lambda mod, args: during.append((mod.training, torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
    )
    measure(gpt2, tokenizer, prompts[:1], **FAST)
    # eval mode, no autograd, and not inference mode (see the lazily-created-buffer test below)
    assert during and set(during) == {(False, False, False)}
    assert torch.is_grad_enabled()
    assert {name: m.training for name, m in gpt2.named_modules()} == before


@pytest.mark.parametrize("do_sample", [False, True])
def test_rng_states_are_restored(gpt2, tokenizer, prompts, do_sample):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    before = rng_states()

    class DrawsFromEveryRng(LogitsProcessor):  # a user's processor may, and generate samples from torch's
        def __call__(self, input_ids, scores):
            random.random(), np.random.rand(), torch.rand(1)
            return scores

    kwargs = {"do_sample": do_sample, "logits_processor": LogitsProcessorList([DrawsFromEveryRng()])}
    measure(gpt2, tokenizer, prompts, generation_kwargs=kwargs, **FAST)
    assert_same_rng(rng_states(), before)


def test_sampling_is_seeded_and_repeats_see_the_same_tokens(gpt2, tokenizer, prompts):
    class LastIds(StoppingCriteria):
        ids = None

        def __call__(self, input_ids, scores, **kwargs):
            self.ids = input_ids.clone()
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    last, per_call = LastIds(), []
    kwargs = {"do_sample": True, "stopping_criteria": [last]}
    measure(
        gpt2,
        tokenizer,
        prompts,
        generation_kwargs=kwargs,
        batch_size=4,
        on_batch_end=lambda: per_call.append(last.ids),
        **{**FAST, "repeats": 3},
    )
    assert len(per_call) == 3 and all(torch.equal(ids, per_call[0]) for ids in per_call)

    kwargs = {"do_sample": True}
    a = measure(gpt2, tokenizer, prompts, generation_kwargs=kwargs, num_sample_outputs=4, seed=5, **FAST)
    b = measure(gpt2, tokenizer, prompts, generation_kwargs=kwargs, num_sample_outputs=4, seed=5, **FAST)
    c = measure(gpt2, tokenizer, prompts, generation_kwargs=kwargs, num_sample_outputs=4, seed=6, **FAST)
    greedy = measure(gpt2, tokenizer, prompts, num_sample_outputs=4, **FAST)
    assert a.sample_outputs == b.sample_outputs
    assert a.sample_outputs != c.sample_outputs
    assert a.sample_outputs != greedy.sample_outputs


def test_greedy_by_default_without_sampling_warnings(model, tokenizer, prompts, caplog):
    import transformers.utils.logging as hf_logging

    reference = measure(model, tokenizer, prompts, num_sample_outputs=4, **FAST)
    hf_logger = logging.getLogger("transformers")
    hf_logger.addHandler(caplog.handler)  # transformers does not propagate to the root logger
    try:
        for do_sample in (True, False):  # typical instruct config, and an inconsistent one
            model.generation_config.update(do_sample=do_sample, temperature=0.6, top_p=0.9, top_k=20)
            model.generation_config.max_length = 20  # a checkpoint default that must not cap max_new_tokens
            hf_logging.warning_once.cache_clear()
            caplog.clear()
            with caplog.at_level(logging.WARNING):
                m = measure(model, tokenizer, prompts, num_sample_outputs=4, **FAST)
            assert [r.getMessage() for r in caplog.records if r.name.startswith("transformers")] == []
            assert m.sample_outputs == reference.sample_outputs  # greedy, not sampled
        # The capture works: a copied config with do_sample=False alone does warn.
        config = copy.deepcopy(model.generation_config)
        config.do_sample = False
        hf_logging.warning_once.cache_clear()
        with caplog.at_level(logging.WARNING):
            model.generate(
                torch.tensor([[5, 6, 7]]),
                attention_mask=torch.ones(1, 3, dtype=torch.long),
                generation_config=config,
            )
        assert any("temperature" in r.getMessage() for r in caplog.records)
    finally:
        hf_logger.removeHandler(caplog.handler)


def test_max_new_tokens_is_not_capped_by_a_max_length_default(gpt2, tokenizer, prompts):
    gpt2.generation_config.max_length = 20
    kwargs = scripted(tokenizer, prompts, [None] * 4)
    m = measure(
        gpt2,
        tokenizer,
        prompts,
        max_new_tokens=30,
        warmup=0,
        repeats=1,
        batch_size=2,
        generation_kwargs=kwargs,
    )
    assert {s.output_tokens for s in m.samples} == {30}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_kv_cache_is_used_despite_use_cache_false_and_checkpointing(arch, tokenizer, prompts):
    model = tiny_causal_lm(arch)
    model.config.use_cache = False  # what the Trainer does
    model.generation_config.use_cache = False  # what generate would follow
    model.activation_checkpointing_enable()
    model.train()
    lengths = []
    model.register_forward_pre_hook(
        lambda mod, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    measure(model, tokenizer, prompts[:1], max_new_tokens=5, warmup=0, repeats=1)
    n = len(encode_prompts(tokenizer, prompts[:1])[0])
    assert lengths == [n, 1, 1, 1, 1]  # prefill, then one new token per decoding step
    assert model.config.use_cache is False and model.generation_config.use_cache is False
    assert model.is_activation_checkpointing and model.training


# ----------------------------------------------------------------- the key property: training is undisturbed


def _train(model, tokenizer, prompts, steps=6, measure_at=None, measure_kwargs=None, disturb=False):
    torch.manual_seed(1234)
    random.seed(1234)
    np.random.seed(1234)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for step in range(steps):
        if step == measure_at:
            if disturb:
                torch.rand(1)  # what an unguarded measurement would do to the RNG
            else:
                measure(model, tokenizer, prompts, **(measure_kwargs or {}))
        # python, numpy and torch RNGs all feed the batch; dropout draws from torch's.
        start = random.randrange(100) + int(np.random.randint(100))
        ids = (torch.randint(0, 200, (2, 12)) + start) % 1000
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("do_sample", [False, True])
def test_training_losses_are_bit_identical_with_a_measurement_in_the_middle(tokenizer, prompts, do_sample):
    assert tiny_causal_lm("gpt2").config.resid_pdrop > 0  # dropout makes the losses depend on the RNG
    plain = _train(tiny_causal_lm("gpt2"), tokenizer, prompts)
    kwargs = dict(generation_kwargs={"do_sample": do_sample}, batch_size=2, **FAST)
    measured = _train(tiny_causal_lm("gpt2"), tokenizer, prompts, measure_at=3, measure_kwargs=kwargs)
    assert measured == plain
    # The check has teeth: one stray draw from the RNG changes the losses.
    assert _train(tiny_causal_lm("gpt2"), tokenizer, prompts, measure_at=3, disturb=True) != plain


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_backward_works_after_measuring_a_fresh_model(arch, tokenizer, prompts):
    model = tiny_causal_lm(arch)
    measure(model, tokenizer, prompts, **FAST)  # inference_mode must leave no inference tensors behind
    model.train()
    ids = torch.randint(0, 1000, (2, 10))
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_peak_memory_synchronised_timing_and_rng(tokenizer, prompts):
    model = tiny_causal_lm("llama").cuda()
    torch.cuda.manual_seed_all(7)
    before = torch.cuda.get_rng_state_all()
    m = measure(model, tokenizer, prompts, generation_kwargs={"do_sample": True}, batch_size=2, **FAST)
    after = torch.cuda.get_rng_state_all()
    assert len(after) == len(before) and all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert m.peak_memory_bytes is not None and m.peak_memory_bytes > 0
    assert m.environment["device_type"] == "cuda" and m.model["device"].startswith("cuda")
    assert all(0 < s.ttft_s <= s.latency_s for s in m.samples)


# ----------------------------------------------------------------- wrappers


@pytest.fixture
def process_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_ddp_is_unwrapped_and_synced_gpus_recorded(gpt2, tokenizer, prompts, process_group):
    ddp = torch.nn.parallel.DistributedDataParallel(gpt2)
    assert unwrap_model(ddp) is gpt2
    passed = []
    loop_check = gpt2._has_unfinished_sequences

    def spy(this_peer_finished, synced_gpus, device):
        passed.append(synced_gpus)
        return loop_check(this_peer_finished, synced_gpus, device)

    gpt2._has_unfinished_sequences = spy  # generate's decoding loop asks this with the synced_gpus it got
    single = measure(ddp, tokenizer, prompts, num_sample_outputs=4, **FAST)
    assert set(passed) == {False}
    passed.clear()
    synced = measure(ddp, tokenizer, prompts, num_sample_outputs=4, synced_gpus=True, **FAST)
    assert set(passed) == {True}
    assert single.model["class"] == "GPT2LMHeadModel"
    assert single.environment["generation_mode"] == "single"
    assert synced.environment["generation_mode"] == "synced"
    assert synced.environment["world_size"] == 1
    assert synced.sample_outputs == single.sample_outputs


@pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)  # dynamo import
def test_compiled_module_is_unwrapped(gpt2, tokenizer, prompts):
    compiled = torch.compile(gpt2)  # not run: generate is called on the original module
    assert unwrap_model(compiled) is gpt2
    assert unwrap_model(torch.nn.DataParallel(compiled)) is gpt2
    m = measure(compiled, tokenizer, prompts, **FAST)
    assert m.model["class"] == "GPT2LMHeadModel" and len(m.samples) == 8


class DeepSpeedEngine(torch.nn.Module):
    """Stands in for deepspeed's engine: recognised by class name, wraps the model as ``.module``."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module


def test_deepspeed_engine_is_unwrapped(gpt2):
    assert unwrap_model(DeepSpeedEngine(gpt2)) is gpt2
    assert unwrap_model(gpt2) is gpt2


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_peft_model_keeps_its_own_generate(gpt2, tokenizer, prompts):
    peft = pytest.importorskip("peft")
    base = measure(gpt2, tokenizer, prompts, num_sample_outputs=4, **FAST)
    config = peft.LoraConfig(
        r=4, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False, task_type="CAUSAL_LM"
    )
    lora = peft.get_peft_model(gpt2, config)
    assert unwrap_model(lora) is lora
    assert unwrap_model(DeepSpeedEngine(lora)) is lora
    m = measure(lora, tokenizer, prompts, num_sample_outputs=4, **FAST)
    assert m.model["class"] == "PeftModelForCausalLM"
    assert m.sample_outputs != base.sample_outputs  # the (non-zero) adapters took part
    assert m.model["num_parameters"] == sum(p.numel() for p in lora.parameters())


def test_encoder_only_model_is_rejected(tokenizer, prompts):
    from transformers import BertConfig, BertModel

    bert = BertModel(
        BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    )
    with pytest.raises(ModelError, match=r"BertModel cannot generate.*AutoModelForCausalLM"):
        measure(bert, tokenizer, prompts)


def test_model_that_says_it_cannot_generate_is_rejected(gpt2, tokenizer, prompts):
    gpt2.can_generate = lambda: False
    with pytest.raises(ModelError, match=r"GPT2LMHeadModel cannot generate.*AutoModelForCausalLM"):
        measure(gpt2, tokenizer, prompts, max_new_tokens=2)


# ----------------------------------------------------------------- input errors


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"max_new_tokens": 0}, ConfigError, r"`max_new_tokens` must be >= 1, got 0"),
        ({"repeats": 0}, ConfigError, r"`repeats` must be >= 1, got 0"),
        ({"batch_size": 0}, ConfigError, r"`batch_size` must be >= 1, got 0"),
        ({"warmup": -1}, ConfigError, r"`warmup` must be >= 0, got -1"),
        ({"repeats": 2.0}, ConfigError, r"`repeats` must be an int, got float"),
        (
            {"max_new_tokens": 120},
            PromptError,
            r"`prompts\[3\]` has 12 tokens.*max_new_tokens=120.*128 positions",
        ),
        ({"prompts": []}, PromptError, r"`prompts` must contain at least one prompt"),
        ({"prompts": ["ok", ""]}, PromptError, r"`prompts\[1\]` is empty"),
        (
            {"generation_kwargs": {"max_new_tokens": 5}},
            ConfigError,
            r"must not set 'max_new_tokens'.*argument",
        ),
        ({"generation_kwargs": {"use_cache": False}}, ConfigError, r"must not set use_cache=False"),
        ({"generation_kwargs": {"num_return_sequences": 2}}, ConfigError, r"num_return_sequences must be 1"),
        ({"generation_kwargs": [("do_sample", True)]}, ConfigError, r"`generation_kwargs` must be a dict"),
        ({"on_batch_end": 3}, ConfigError, r"`on_batch_end` must be callable"),
        ({"tokenizer": None}, ModelError, r"processing_class=\.\.\. to Trainer"),
    ],
)
def test_input_errors(gpt2, tokenizer, prompts, kwargs, error, pattern):
    args = {"model": gpt2, "tokenizer": tokenizer, "prompts": prompts, **kwargs}
    with pytest.raises(error, match=pattern):
        measure(**args)


def test_tokenizer_without_pad_or_eos_is_a_model_error(gpt2, prompts):
    tok = tiny_tokenizer(pad=False)
    tok.eos_token = None
    with pytest.raises(ModelError, match=r"neither a pad token nor an EOS token"):
        measure(gpt2, tok, prompts)


# ----------------------------------------------------------------- records, logs, hooks


def test_json_round_trip_of_a_real_measurement(llama, tokenizer, prompts, tmp_path):
    kwargs = {**scripted(tokenizer, prompts, [0, 1, None, 2]), "repetition_penalty": 1.0}
    m = measure(llama, tokenizer, prompts, generation_kwargs=kwargs, warmup=1, batch_size=2, max_new_tokens=6)
    data = json.loads(json.dumps(m.to_dict(), allow_nan=False))
    back = Measurement.from_dict(data)
    assert json.dumps(back.summary()) == json.dumps(m.summary())  # NaN-aware equality
    assert back.samples == m.samples and back.settings == m.settings and back.environment == m.environment
    assert back.sample_outputs == m.sample_outputs and back.warmup_latencies_s == m.warmup_latencies_s
    assert Measurement.load(m.save(tmp_path / "m.json")).samples == m.samples
    assert m.settings["generation_kwargs"]["logits_processor"][0].startswith("<")
    assert "0x" not in json.dumps(m.settings)  # repr without addresses: the same settings read the same


def test_noisy_timing_warns_once(gpt2, tokenizer, prompts, clock, caplog):
    def alternate():
        clock.step = 3.0 if clock.step == 1.0 else 1.0  # every other call runs three times slower

    with caplog.at_level(logging.DEBUG, logger="ftcallback.measure"):
        with pytest.warns(NoisyMeasurementWarning) as record:
            m = measure(gpt2, tokenizer, prompts, batch_size=4, on_batch_end=alternate, clock=clock, **FAST)
    assert m.noise_cv > 0.10
    assert len(record) == 1
    assert "noisy" in str(record[0].message) and "repeats" in str(record[0].message)
    # A warning, not a log record: the callback's stop line stays the only WARNING record.
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    infos = [r for r in caplog.records if r.name == "ftcallback.measure" and r.levelno == logging.INFO]
    assert len(infos) == 1 and "measured 8 requests" in infos[0].getMessage()


def test_steady_timing_logs_no_warning(gpt2, tokenizer, prompts, clock, caplog):
    with caplog.at_level(logging.INFO, logger="ftcallback.measure"), warnings.catch_warnings():
        warnings.simplefilter("error", NoisyMeasurementWarning)
        m = measure(gpt2, tokenizer, prompts, batch_size=4, clock=clock, **FAST)
    assert m.noise_cv == 0.0
    assert [r.levelname for r in caplog.records if r.name == "ftcallback.measure"] == ["INFO"]


def test_on_batch_end_after_every_generate_call(gpt2, tokenizer, prompts):
    calls = []
    measure(
        gpt2,
        tokenizer,
        prompts,
        batch_size=3,
        max_new_tokens=2,
        warmup=3,
        repeats=2,
        on_batch_end=lambda: calls.append(1),
    )
    assert len(calls) == 3 + 2 * 2  # warm-up calls, then repeats x batches (4 prompts in batches of 3)


def test_autocast_state_is_recorded(gpt2, tokenizer, prompts):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m = measure(gpt2, tokenizer, prompts[:1], max_new_tokens=2, warmup=0, repeats=1)
    assert m.environment["autocast"] == {"enabled": True, "dtype": "bfloat16", "source": "autocast context"}
    assert m.model["param_dtype"] == "float32" and m.model["compute_dtype"] == "bfloat16"


def test_a_lazily_created_buffer_can_be_trained_through_after_a_measurement(gpt2, tokenizer, prompts):
    """Whatever a first forward creates (ZeRO-3's resident parameters, a rotary cache) must stay usable in
    autograd: under `torch.inference_mode` it would become an inference tensor and the next training step
    would fail with "Inference tensors cannot be saved for backward"."""

    class LazyScale(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale: torch.Tensor | None = None

        def forward(self, hidden: torch.Tensor) -> torch.Tensor:
            if self.scale is None:  # built on the first forward, like a rotary cache
                self.scale = torch.ones(hidden.shape[-1], dtype=hidden.dtype, device=hidden.device)
            return hidden * self.scale

    lazy = LazyScale()
    gpt2.transformer.ln_f.register_forward_hook(lambda _m, _i, out: lazy(out))
    measure(gpt2, tokenizer, prompts[:1], max_new_tokens=3, warmup=0, repeats=1)
    assert lazy.scale is not None and not lazy.scale.is_inference()
    gpt2.train()
    ids = tokenizer(prompts[0], return_tensors="pt").input_ids
    loss = gpt2(input_ids=ids, labels=ids).loss
    loss.backward()  # raised RuntimeError under inference_mode
    assert all(p.grad is not None for p in gpt2.parameters() if p.requires_grad)
