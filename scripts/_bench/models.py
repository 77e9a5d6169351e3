"""The benchmark models, and the inputs a bare ``generate`` loop gives them, built independently of ftcallback.

The encoding, padding and output-token count here are deliberately not ftcallback's: the benchmarks
check ftcallback's figures against this bare reference (``bench_agreement.py`` compares the counts
token for token), so the reference must not call the code it checks. Only the set of EOS ids is
ftcallback's: it is what ``generate`` stops on, a fact about the model's configuration, not a
measurement.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from _bench.catalog import MODELS, SMOL_PROMPTS, TINY_MODELS, TINY_POSITIONS, TINY_PROMPTS
from ftcallback._measure import _eos_ids


@dataclass
class LoadedModel:
    """A benchmark model with what is needed to prompt it the way ftcallback does."""

    name: str
    model: Any
    tokenizer: Any
    chat: bool  # prompts go through the chat template (instruct model)
    prompts: list[str]
    device: torch.device
    load_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def probe(self, n: int) -> list[str]:
        """The first ``n`` probe prompts (cycled if more are asked for than exist)."""
        return [self.prompts[i % len(self.prompts)] for i in range(n)]

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)

    @property
    def eos_ids(self) -> frozenset[int]:
        """EOS ids as generate sees them: the generation config's plus the tokenizer's."""
        return _eos_ids(self.model.generation_config, self.tokenizer)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def load(name: str, device: torch.device) -> LoadedModel:
    """Load one of :data:`~_bench.catalog.MODELS` on ``device``, in eval mode."""
    start = time.perf_counter()
    if name in TINY_MODELS:
        from ftcallback.testing import tiny_causal_lm, tiny_tokenizer

        tokenizer = tiny_tokenizer()
        model = tiny_causal_lm("gpt2" if name == "tiny-gpt2" else "llama", positions=TINY_POSITIONS)
        chat, prompts = False, list(TINY_PROMPTS)
    elif name == "smollm2":
        from ftcallback.testing import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer("smollm2")
        chat, prompts = True, list(SMOL_PROMPTS)
    else:
        raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    model.to(device)
    model.eval()
    return LoadedModel(name, model, tokenizer, chat, prompts, device, time.perf_counter() - start)


def encode(lm: LoadedModel, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids per prompt, built here (not by ftcallback) the way a user would prompt the model."""
    tok = lm.tokenizer
    out = []
    for prompt in prompts:
        if lm.chat:
            text = tok.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
            ids = tok(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tok(prompt)["input_ids"]
        out.append([int(i) for i in ids])
    return out


def left_padded_batches(
    lm: LoadedModel, prompts: Sequence[str], batch_size: int
) -> list[dict[str, torch.Tensor]]:
    """Consecutive groups of ``batch_size`` prompts, left-padded, as ``generate`` keyword arguments."""
    encoded = encode(lm, prompts)
    batches = []
    for first in range(0, len(encoded), batch_size):
        group = encoded[first : first + batch_size]
        width = max(len(g) for g in group)
        ids = torch.full((len(group), width), lm.pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, tokens in enumerate(group):
            ids[row, width - len(tokens) :] = torch.tensor(tokens, dtype=torch.long)
            mask[row, width - len(tokens) :] = 1
        batches.append({"input_ids": ids.to(lm.device), "attention_mask": mask.to(lm.device)})
    return batches


def generate_kwargs(lm: LoadedModel, max_new_tokens: int, *, fixed_length: bool = False) -> dict[str, Any]:
    """What a user passes to ``generate`` for greedy decoding with the KV cache: ftcallback's settings."""
    kw: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "pad_token_id": lm.pad_id,
        "use_cache": True,
    }
    if fixed_length:
        kw["min_new_tokens"] = max_new_tokens
    return kw


def count_output_tokens(new_ids: Sequence[int], eos_ids: Iterable[int]) -> int:
    """Generated tokens up to and including the first EOS: the reference count, done by hand.

    The same rule as ftcallback's own count, written again on purpose: bench_agreement.py checks
    ftcallback's count against this one, which a shared function would make a tautology.
    """
    eos = set(eos_ids)
    for k, token in enumerate(new_ids):
        if int(token) in eos:
            return k + 1
    return len(new_ids)
