"""Deployed forms: each enters and leaves the model exactly as it was, and refuses what does not fit."""

from __future__ import annotations

import pytest
import torch

from ftcallback import ConfigError, MeasurementError, ModelError, serving_form
from ftcallback._forms import form_cost, measure_in_form, parse_form
from ftcallback._measure import measure
from ftcallback.testing import tiny_causal_lm


def _lora(kind: str = "llama", seed: int = 0):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(tiny_causal_lm(kind), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    # A trained adapter: B is zero at init, and a zero delta would make any restore look exact.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)
    return model


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("given", "canonical"),
    [("merged", "merged"), ("merge", "merged"), ("dtype:bf16", "bf16"), ("FP16", "fp16"), ("int8", "int8"),
     ("merge+dtype:bf16", "merged+bf16")],
)
def test_parse_form(given, canonical):
    assert parse_form(given) == canonical


@pytest.mark.parametrize(
    ("given", "match"),
    [("int4", "unknown form 'int4'"), ("", "must be a form name"), (None, "must be a form name"),
     ("bf16+fp16", "at most one dtype"), ("merged+int8", "cannot combine int8")],
)
def test_parse_form_refuses(given, match):
    with pytest.raises(ConfigError, match=match):
        parse_form(given)


def test_plain_peft_unmerge_is_not_exact_but_the_merged_form_restores_every_bit():
    model = _lora()
    before = _state(model)
    model.merge_adapter()
    model.unmerge_adapter()
    drift = [k for k in before if not torch.equal(before[k], model.state_dict()[k])]
    assert drift, "PEFT's unmerge was exact on this model: the copies would be unnecessary"

    model = _lora()
    before = _state(model)
    x = torch.randint(0, 100, (1, 6))
    with torch.no_grad():
        unmerged = model(x).logits
    with serving_form(model, "merged") as served:
        assert served is model
        assert all(layer.merged for layer in _layers(model))
        with torch.no_grad():
            merged = served(x).logits
    assert not any(layer.merged for layer in _layers(model))
    assert _same(before, _state(model))
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-4)


def _layers(model):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def _train_losses(model, steps, form=None, tokenizer=None):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    torch.manual_seed(1)
    data = torch.randint(0, 100, (steps, 2, 8))
    losses = []
    for batch in data:
        model.train()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        if form is not None:
            with serving_form(model, form) as served:
                measure(served, tokenizer, ["a user measures"], max_new_tokens=4, warmup=0, repeats=1)
    return losses


@pytest.mark.parametrize("form", ["merged", "bf16", "merged+fp16", "int8"])
def test_training_is_bit_identical_with_a_form_measured_between_steps(form, tokenizer):
    plain = _lora(seed=3)
    measured = _lora(seed=3)
    assert _train_losses(plain, 4) == _train_losses(measured, 4, form, tokenizer)
    assert _same(_state(plain), _state(measured))


def test_dtype_form_casts_params_and_buffers_and_restores_the_same_tensors(llama):
    param = next(llama.parameters())
    storage = param.data_ptr()
    with serving_form(llama, "dtype:bf16") as served:
        assert {p.dtype for p in served.parameters()} == {torch.bfloat16}
        assert all(b.dtype == torch.bfloat16 for b in served.buffers() if b.is_floating_point())
    assert next(llama.parameters()) is param and param.data_ptr() == storage
    assert {p.dtype for p in llama.parameters()} == {torch.float32}


def test_int8_quantizes_a_copy_with_the_adapters_merged():
    model = _lora()
    before = _state(model)
    x = torch.randint(0, 100, (1, 6))
    with torch.no_grad():
        reference = model(x).logits
    with serving_form(model, "int8") as served:
        assert served is not model
        quantized_linears = [m for m in served.modules() if "quantized" in type(m).__module__]
        assert quantized_linears and not any(type(m) is torch.nn.Linear for m in served.modules())
        with torch.no_grad():
            quantized = served(x).logits
    assert _same(before, _state(model))
    # int8 is close to the merged float model, not equal to it
    assert (quantized - reference).abs().max() < 0.5 * reference.abs().max()


def test_costs_are_what_each_form_allocates(llama):
    n_params = sum(p.numel() for p in llama.parameters())
    assert form_cost(llama, "bf16").extra_bytes >= 2 * n_params
    assert form_cost(llama, "int8").extra_bytes >= 4 * n_params
    model = _lora()
    adapted = sum(layer.get_base_layer().weight.numel() * 4 for layer in _layers(model))
    assert form_cost(model, "merged").extra_bytes >= adapted
    assert form_cost(model, "merged").extra_bytes < form_cost(model, "int8").extra_bytes


def test_a_form_that_does_not_fit_is_refused_before_touching_the_model(llama):
    before = _state(llama)
    with pytest.raises(MeasurementError, match=r"form 'int8' needs .* MiB on cpu \(0.0 MiB available\)"):
        with serving_form(llama, "int8", available=lambda device: 1000):
            pass
    assert _same(before, _state(llama))


def test_merged_needs_adapters(llama):
    with pytest.raises(ModelError, match="form 'merged' needs a model with unmerged PEFT adapters"):
        with serving_form(llama, "merged"):
            pass


def test_restores_after_an_exception(llama):
    before = _state(llama)
    with pytest.raises(RuntimeError, match="boom"):
        with serving_form(llama, "fp16"):
            raise RuntimeError("boom")
    assert _same(before, _state(llama))


def test_measure_in_form_says_the_form_and_its_cost(llama, tokenizer):
    m = measure_in_form(
        llama, "int8", lambda served: measure(served, tokenizer, ["a user"], max_new_tokens=4, warmup=0, repeats=1)
    )
    assert m.environment["form"] == "int8"
    assert m.environment["form_memory_bytes"] == form_cost(llama, "int8").extra_bytes
    assert m.environment["form_setup_s"] >= 0
