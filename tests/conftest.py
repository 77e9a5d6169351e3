"""Shared fixtures: tiny offline models and tokenizers, and an offline hub."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Trackio reads its folder once, at import: keep test runs out of the user's HF_HOME.
os.environ.setdefault("TRACKIO_DIR", tempfile.mkdtemp(prefix="ftcallback-trackio-"))

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


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread for the whole suite.

    On a 2-core machine that is also running other work, torch's default of one thread per core makes
    OpenMP threads spin against each other: a tiny model's step gets ~10x slower and timings turn to
    noise. Tests assert relations, not durations, but a slowdown test needs a steady machine.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
