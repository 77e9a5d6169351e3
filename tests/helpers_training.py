"""Training tiny models through a real ``transformers.Trainer`` for the callback's end-to-end tests.

Two ways to change what the probe sees, both through real training runs:

* :func:`short_answer_model` + :func:`longer_answers_dataset`: a tiny GPT-2 first taught (a plain torch
  loop, cached for the session) to answer probe-like prompts with EOS right away, then fine-tuned by the
  test's Trainer on the same kind of prompts followed by a long continuation: its answers get longer.
* :class:`ForcedLength` and :class:`SlowDown`: forward hooks switched per epoch by a ``TrainerCallback``,
  active in eval mode only (what the probe runs in), that make answers long or generation slow
  exactly when a test wants, independent of what training does to the weights.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    DataCollatorForLanguageModeling,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
    default_data_collator,
)

from ftcallback.testing import tiny_causal_lm, tiny_tokenizer

_SUBJECTS = ["the model", "a user", "the server", "this request", "the answer", "a token", "the batch"]
_VERBS = ["returns", "measures", "predicts", "generates", "stops", "explains", "repeats"]

#: "subject verb" prompts; the probe is a few of them, the fine-tune data others.
ALL_PROMPTS = [f"{s} {v}" for s in _SUBJECTS for v in _VERBS]
PROBE = ALL_PROMPTS[::6][:4]
TRAIN_PROMPTS = [p for p in ALL_PROMPTS if p not in PROBE][:16]
#: What the fine-tune appends to each prompt: longer than any max_new_tokens used in the tests.
CONTINUATION = (
    " and then the server explains the latency of a long answer to a user, the budget and its cost."
)


def lm_examples(tokenizer: Any, texts: Sequence[str], *, eos: bool = True) -> list[dict[str, torch.Tensor]]:
    """Causal-LM examples padded to one length (pad = pad token, else EOS), padding masked in the labels."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [tokenizer(t)["input_ids"] + ([tokenizer.eos_token_id] if eos else []) for t in texts]
    width = max(len(e) for e in encoded)
    examples = []
    for ids in encoded:
        pad = width - len(ids)
        examples.append(
            {
                "input_ids": torch.tensor(ids + [pad_id] * pad),
                "attention_mask": torch.tensor([1] * len(ids) + [0] * pad),
                "labels": torch.tensor(ids + [-100] * pad),
            }
        )
    return examples


@functools.lru_cache(maxsize=2)
def _short_answer_state(arch: str) -> dict[str, torch.Tensor]:
    tok = tiny_tokenizer()
    model = tiny_causal_lm(arch)
    batch = default_data_collator(lm_examples(tok, ALL_PROMPTS))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(60):
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def short_answer_model(arch: str = "gpt2") -> torch.nn.Module:
    """A fresh tiny model that answers the probe with EOS at once (trained once per session, ~1 s)."""
    model = tiny_causal_lm(arch)
    model.load_state_dict(_short_answer_state(arch))
    return model


def longer_answers_dataset(tokenizer: Any) -> list[dict[str, torch.Tensor]]:
    """Probe-like prompts followed by a long continuation and EOS: fine-tuning on it lengthens answers."""
    return lm_examples(tokenizer, [p + CONTINUATION for p in TRAIN_PROMPTS])


def plain_dataset(tokenizer: Any, n: int = 8) -> list[dict[str, torch.Tensor]]:
    """``n`` short examples: with batch size 4, ``n // 4`` optimizer steps per epoch."""
    return lm_examples(
        tokenizer, [TRAIN_PROMPTS[i % len(TRAIN_PROMPTS)] + " a short reply." for i in range(n)]
    )


def training_args(output_dir: str | Path, **overrides: Any) -> TrainingArguments:
    """Small, quiet, CPU-only, deterministic arguments; ``overrides`` win."""
    kwargs: dict[str, Any] = {
        "output_dir": str(output_dir),
        "use_cpu": True,
        "report_to": "none",
        "disable_tqdm": True,
        "save_strategy": "no",
        "logging_strategy": "epoch",
        "per_device_train_batch_size": 4,
        "num_train_epochs": 3,
        "learning_rate": 1e-3,
        "lr_scheduler_type": "constant",
        "seed": 0,
    }
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def make_trainer(
    model: torch.nn.Module,
    args: TrainingArguments,
    train_dataset: Any,
    processing_class: Any,
    callbacks: Iterable[TrainerCallback],
    *,
    collator_tokenizer: Any = None,
    **trainer_kwargs: Any,
) -> Trainer:
    """The one Trainer builder of the suite.

    Rows that carry ``labels`` are batched as they are; rows of bare ``input_ids`` are padded and labelled by a
    causal-LM collator built on ``collator_tokenizer`` (default: ``processing_class``), so that a test can give
    the Trainer no tokenizer at all (``processing_class=None``) and still train.
    """
    rows_have_labels = bool(train_dataset) and "labels" in train_dataset[0]
    if rows_have_labels:
        collator: Any = default_data_collator
    else:
        collator = DataCollatorForLanguageModeling(collator_tokenizer or processing_class, mlm=False)
    return Trainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        processing_class=processing_class,
        data_collator=collator,
        callbacks=list(callbacks),
        **trainer_kwargs,
    )


def token_rows(tokenizer: Any, n: int = 16, max_length: int = 16) -> list[dict[str, list[int]]]:
    """``n`` rows of bare ``input_ids`` from the tiny corpus (the collator pads and labels them)."""
    from ftcallback.testing import tiny_corpus

    return [{"input_ids": tokenizer(t, truncation=True, max_length=max_length)["input_ids"]} for t in tiny_corpus()[:n]]


def _epoch_starting(state: TrainerState) -> int:
    """1-based number of the epoch that ``on_epoch_begin`` is starting (also right after a resume)."""
    return int(round(state.epoch or 0.0)) + 1


class ForcedLength(TrainerCallback):
    """In eval mode, answers end at once (EOS forced) except in ``long_epochs``, where EOS is forbidden.

    The baseline (before epoch 1) is short; a check at the end of a long epoch sees answers of exactly
    ``max_new_tokens`` tokens. Training is unaffected (train mode is left alone).
    """

    def __init__(
        self, model: torch.nn.Module, eos_token_id: int, long_epochs: Iterable[int], *, long_at_start: bool = False
    ) -> None:
        self.eos_token_id = eos_token_id
        self.long_epochs = set(long_epochs)
        self.long = long_at_start  # the baseline's answers (before any epoch begins)
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: Any, output: Any) -> Any:
        if module.training:
            return None
        output.logits[..., self.eos_token_id] = -1e4 if self.long else 1e4
        return output

    def on_epoch_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.long = _epoch_starting(state) in self.long_epochs


class SlowDown(TrainerCallback):
    """From epoch ``from_epoch`` on, every forward pass in eval mode sleeps ``seconds`` (a slower model)."""

    def __init__(self, model: torch.nn.Module, seconds: float, from_epoch: int) -> None:
        self.seconds = seconds
        self.from_epoch = from_epoch
        self.active = False
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self.active and not module.training:
            time.sleep(self.seconds)

    def on_epoch_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.active = _epoch_starting(state) >= self.from_epoch


class StopAfterEpoch(TrainerCallback):
    """Stops the run after epoch ``epoch``: an interrupted job, to resume from its last checkpoint."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if int(round(state.epoch or 0.0)) >= self.epoch:
            control.should_training_stop = True


def read_report(output_dir: str | Path) -> dict[str, Any]:
    """``<output_dir>/efficiency/report.json`` as plain JSON."""
    return json.loads((Path(output_dir) / "efficiency" / "report.json").read_text(encoding="utf-8"))


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def ftcallback_logs() -> Iterator[list[logging.LogRecord]]:
    """Records of the ``ftcallback`` loggers (INFO and up), for fixtures where ``caplog`` is not available."""
    logger = logging.getLogger("ftcallback")
    handler, level = _Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
