"""Tiny, offline causal language models and tokenizers for tests, benchmarks and examples.

Nothing here touches the network: models are built from a config with random
weights and the tokenizer is a byte-level BPE trained on the spot on text that
ships with Python itself.

Example:
    >>> from ftcallback.testing import tiny_causal_lm, tiny_tokenizer
    >>> tok = tiny_tokenizer()
    >>> model = tiny_causal_lm("llama", vocab_size=len(tok))
"""

from __future__ import annotations

import functools
from typing import Any, Literal

from ._embedded import EMBEDDED_MODEL, embedded_model_path, load_model_and_tokenizer

__all__ = [
    "BOS",
    "EMBEDDED_MODEL",
    "EOS",
    "PAD",
    "embedded_model_path",
    "load_model_and_tokenizer",
    "tiny_causal_lm",
    "tiny_corpus",
    "tiny_tokenizer",
]

BOS, EOS, PAD = "<s>", "</s>", "<pad>"

_SUBJECTS = ["the model", "a user", "the server", "this request", "the answer", "a token", "the batch"]
_VERBS = ["returns", "measures", "predicts", "generates", "stops", "explains", "repeats"]
_OBJECTS = ["a short reply", "the latency", "ten tokens", "a long answer", "the budget", "its cost"]


def tiny_corpus() -> list[str]:
    """Template sentences plus standard-library docstrings: enough variety for ~1000 BPE merges."""
    import collections
    import json as json_mod
    import os
    import re
    import string

    lines = [f"{s} {v} {o}." for s in _SUBJECTS for v in _VERBS for o in _OBJECTS]
    for mod in (collections, json_mod, os, re, string, functools):
        for name in dir(mod):
            doc = getattr(getattr(mod, name, None), "__doc__", None)
            if isinstance(doc, str):
                lines.extend(line.strip() for line in doc.splitlines() if line.strip())
    return lines


@functools.lru_cache(maxsize=4)
def _trained_tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tiny_corpus(), trainer=trainer)
    return tok.to_str()


def tiny_tokenizer(vocab_size: int = 1000, *, pad: bool = True, chat_template: bool = False) -> Any:
    """A fresh ``PreTrainedTokenizerFast`` (byte-level BPE) trained offline on :func:`tiny_corpus`.

    Args:
        vocab_size: target vocabulary size.
        pad: give it a pad token; ``False`` mimics GPT-2 style tokenizers without one.
        chat_template: attach a minimal chat template, for ``apply_chat_template`` paths.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_tokenizer_json(vocab_size)),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD if pad else None,
    )
    if chat_template:
        tok.chat_template = (
            "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant:{% endif %}"
        )
    return tok


def tiny_causal_lm(
    arch: Literal["gpt2", "llama"] = "gpt2",
    *,
    vocab_size: int = 1000,
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 2,
    positions: int = 128,
    eos_token_id: int = 2,
    pad_token_id: int = 0,
) -> Any:
    """A randomly initialised causal LM of about 150k parameters (GPT-2 or Llama architecture).

    The global torch RNG is left as it was: the weights come from a private seed.
    """
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PretrainedConfig

    common: dict[str, Any] = dict(
        vocab_size=vocab_size, eos_token_id=eos_token_id, pad_token_id=pad_token_id, bos_token_id=1
    )
    config: PretrainedConfig
    if arch == "gpt2":
        config = GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=positions, **common)
    elif arch == "llama":
        config = LlamaConfig(
            hidden_size=hidden,
            intermediate_size=hidden * 2,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=positions,
            **common,
        )
    else:
        raise ValueError(f"`arch` must be 'gpt2' or 'llama', got {arch!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = pad_token_id
    model.generation_config.eos_token_id = eos_token_id
    return model
