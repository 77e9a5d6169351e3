"""The benchmark models' names and the probe prompts each kind is asked (no torch import)."""

from __future__ import annotations

MODELS = ("tiny-gpt2", "tiny-llama", "smollm2")
TINY_MODELS = ("tiny-gpt2", "tiny-llama")

#: Probe prompts for the tiny models: the vocabulary their tokenizer was trained on.
TINY_PROMPTS = [
    "the model returns a short reply.",
    "a user measures the latency",
    "the server generates ten tokens",
    "this request stops the budget and explains its cost to a user",
    "the answer predicts a long answer.",
    "a token repeats the budget",
    "the batch explains the latency to the server",
    "the model measures its cost.",
    "a user generates a short reply and the server returns it",
    "the server stops",
    "this request repeats ten tokens.",
    "the answer explains the budget to a user",
    "a token predicts the latency of the batch",
    "the batch returns a long answer",
    "the model stops the request",
    "a user explains its cost",
]

#: Probe prompts for SmolLM2-135M-Instruct (the first eight are examples/data/probe_prompts.txt).
SMOL_PROMPTS = [
    "What is the capital of Germany?",
    "What is the capital of Japan?",
    "How many days are in a week?",
    "What is 2 plus 2?",
    "What is the capital of Canada?",
    "How many hours are in a day?",
    "Which ocean is the largest?",
    "What is the boiling point of water in Celsius?",
    "What colour is the sky on a clear day?",
    "How many legs does a spider have?",
    "What is the capital of Italy?",
    "Name the largest planet in the solar system.",
    "What is the freezing point of water in Celsius?",
    "How many continents are there?",
    "What is the capital of Spain?",
    "Which animal is known as the king of the jungle?",
]

#: Context length given to the tiny models, so that the callback's default max_new_tokens=128 fits.
TINY_POSITIONS = 512
