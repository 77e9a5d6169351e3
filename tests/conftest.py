"""Shared fixtures: tiny offline models and tokenizers, and an offline hub."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from ftcallback.testing import tiny_causal_lm, tiny_tokenizer  # noqa: E402

PROMPTS = [
    "the model returns a short reply.",
    "a user measures the latency",
    "the server generates",
    "this request stops the budget and explains its cost to a user",
]


@pytest.fixture
def tokenizer():
    """A fresh tiny byte-level BPE tokenizer with pad, BOS and EOS tokens."""
    return tiny_tokenizer()


@pytest.fixture(params=["gpt2", "llama"])
def model(request):
    """A tiny random causal LM, once as GPT-2 and once as Llama."""
    return tiny_causal_lm(request.param)


@pytest.fixture
def gpt2():
    return tiny_causal_lm("gpt2")


@pytest.fixture
def llama():
    return tiny_causal_lm("llama")


@pytest.fixture
def prompts():
    return list(PROMPTS)
