"""A short real training run whose files (report.json, a measurement JSON, TensorBoard events) hold every key.

Used by the README reference test and the record tests: a tiny GPT-2 with a LoRA adapter, trained two
epochs through a real ``Trainer`` with :class:`EfficiencyCallback`, prices and a token budget it breaches
at the first epoch (so ``stopped`` is filled), checkpoints, and an out-of-memory error injected into the
first ``generate`` call of that epoch's check (so a ``retry`` is recorded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from helpers_training import PROBE, make_trainer, plain_dataset, training_args
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ftcallback import Budget, EfficiencyCallback
from ftcallback.testing import tiny_causal_lm, tiny_tokenizer


class OutOfMemoryOnce(TrainerCallback):
    """Arms at each listed epoch end; the next eval-mode forward pass then raises one out-of-memory error.

    Put it before :class:`EfficiencyCallback` in the callback list: it arms, then the check runs.
    """

    def __init__(self, model: torch.nn.Module, epochs: set[int]) -> None:
        self.epochs = epochs
        self.armed = False
        self.raised = 0
        get_base = getattr(model, "get_base_model", None)  # PEFT's generate calls the base model
        (get_base() if callable(get_base) else model).register_forward_pre_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: Any) -> None:
        if self.armed and not module.training:
            self.armed = False
            self.raised += 1
            raise torch.OutOfMemoryError("injected: out of memory at the first generate call of the check")

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.armed = round(state.epoch or 0) in self.epochs


def lora_gpt2(r: int = 4) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["c_attn"], task_type="CAUSAL_LM")
    return get_peft_model(tiny_causal_lm("gpt2"), config)


def full_run(output_dir: Path) -> tuple[EfficiencyCallback, OutOfMemoryOnce]:
    """The run whose files the README documents; returns the callback (its report) and the OOM injector."""
    tokenizer = tiny_tokenizer()
    model = lora_gpt2()
    oom = OutOfMemoryOnce(model, epochs={1})
    callback = EfficiencyCallback(
        prompts=PROBE,
        budget=Budget(
            max_latency_increase=5.0,
            output_tokens=0.5,  # breached at once: the first epoch check stops the run
            input_price_per_1k=0.1,
            output_price_per_1k=0.2,
            requests_per_month=1000,
            max_cost_increase=10.0,
        ),
        max_new_tokens=4,
        warmup=0,
        repeats=2,
        batch_size=2,
        num_sample_outputs=2,
    )
    args = training_args(
        output_dir, num_train_epochs=2, save_strategy="epoch", report_to="tensorboard", learning_rate=1e-4
    )
    make_trainer(model, args, plain_dataset(tokenizer, 4), tokenizer, [oom, callback]).train()
    return callback, oom
