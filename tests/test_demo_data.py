"""Fast checks of the demo's data files and its data pipeline (no pretrained model).

The demo (``examples/finetune_demo.py``) only works if the training responses are much longer than a
concise answer and the probe questions are held out; these tests keep the files honest.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TRAIN_FILE = EXAMPLES / "data" / "verbose_instructions.jsonl"
PROBE_FILE = EXAMPLES / "data" / "probe_prompts.txt"


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _rows() -> list[dict[str, str]]:
    with open(TRAIN_FILE, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _probes() -> list[str]:
    with open(PROBE_FILE, encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip()]


@pytest.fixture(scope="module")
def demo() -> ModuleType:
    """The demo script imported as a module (its heavy imports live inside ``main``)."""
    spec = importlib.util.spec_from_file_location("finetune_demo", EXAMPLES / "finetune_demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["finetune_demo"] = module  # dataclasses look their module up while building the class
    spec.loader.exec_module(module)
    return module


def test_training_file_has_a_few_dozen_well_formed_rows() -> None:
    rows = _rows()
    assert 30 <= len(rows) <= 80
    for row in rows:
        assert set(row) == {"prompt", "response"}
        assert isinstance(row["prompt"], str) and row["prompt"].strip() == row["prompt"] != ""
        assert isinstance(row["response"], str) and row["response"].strip() == row["response"] != ""
        assert "<|" not in row["response"]  # the EOS is added by the tokenizer, never written in the data


def test_prompts_are_short_distinct_questions() -> None:
    prompts = [row["prompt"] for row in _rows()]
    assert len({" ".join(_words(p)) for p in prompts}) == len(prompts)
    for prompt in prompts:
        assert prompt.endswith("?")
        assert len(_words(prompt)) <= 12


def test_responses_are_long_and_rambling() -> None:
    # A concise answer to these questions is under 10 words; the responses must be several times that
    # (about 80-150 SmolLM2 tokens, at ~1.2 tokens a word), in several sentences.
    rows = _rows()
    counts = [len(_words(row["response"])) for row in rows]
    assert min(counts) >= 60
    assert max(counts) <= 125
    assert sum(counts) / len(counts) >= 80
    for row in rows:
        sentences = [s for s in re.split(r"[.!?]+\s", row["response"]) if s.strip()]
        assert len(sentences) >= 4
        assert len(_words(row["response"])) >= 6 * len(_words(row["prompt"]))


def test_probe_prompts_are_a_handful_of_questions() -> None:
    probes = _probes()
    assert 6 <= len(probes) <= 8
    assert len(set(probes)) == len(probes)
    for probe in probes:
        assert probe.endswith("?")
        assert len(_words(probe)) <= 12


def test_probe_prompts_are_not_in_the_training_set() -> None:
    train = [set(_words(row["prompt"])) for row in _rows()]
    for probe in _probes():
        words = set(_words(probe))
        for seen in train:
            overlap = len(words & seen) / len(words | seen)
            assert overlap < 0.8, f"probe {probe!r} is (nearly) a training prompt"


def test_demo_readers_load_the_files(demo: ModuleType) -> None:
    dataset = demo.read_examples(limit=5)
    assert dataset.column_names == ["prompt", "response"]
    assert len(dataset) == 5
    assert len(demo.read_examples()) == len(_rows())
    assert demo.read_probe_prompts() == _probes()
    assert demo.read_probe_prompts(limit=3) == _probes()[:3]


def test_tokenize_example_learns_only_the_response_and_its_eos(demo: ModuleType) -> None:
    from ftcallback.testing import tiny_tokenizer

    tok = tiny_tokenizer(chat_template=True)
    example = {"prompt": "the model returns", "response": "a short reply."}
    out = demo.tokenize_example(example, tok, max_length=512)
    prompt_ids = tok.apply_chat_template(
        [{"role": "user", "content": example["prompt"]}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )["input_ids"]
    n_prompt = len(prompt_ids)
    assert out["input_ids"][:n_prompt] == list(prompt_ids)
    assert out["labels"][:n_prompt] == [-100] * n_prompt
    assert out["labels"][n_prompt:] == out["input_ids"][n_prompt:]
    assert out["input_ids"][-1] == out["labels"][-1] == tok.eos_token_id
    assert tok.decode(out["input_ids"][n_prompt:-1]) == example["response"]

    cut = demo.tokenize_example(example, tok, max_length=n_prompt + 2)
    assert len(cut["input_ids"]) == len(cut["labels"]) == n_prompt + 2


def test_pad_collator_masks_padding(demo: ModuleType) -> None:
    features = [
        {"input_ids": [5, 6, 7, 2], "labels": [-100, -100, 7, 2]},
        {"input_ids": [5, 8], "labels": [-100, 8]},
    ]
    batch = demo.PadCollator(pad_token_id=2)(features)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 2], [5, 8, 2, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 7, 2], [-100, 8, -100, -100]]


def test_quick_configuration_is_smaller_than_the_full_one(demo: ModuleType) -> None:
    full, quick = demo.FULL, demo.QUICK
    assert quick.num_examples is not None and quick.num_examples < len(_rows())
    assert quick.num_probe_prompts is not None and quick.num_probe_prompts < len(_probes())
    assert quick.epochs <= full.epochs
    # The probe's cap must leave room above the baseline answers, or a rise could not show.
    assert full.max_new_tokens >= 48 and quick.max_new_tokens >= 32
