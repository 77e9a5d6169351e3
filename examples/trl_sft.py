"""EfficiencyCallback with TRL's ``SFTTrainer``: the callback is a plain TrainerCallback, so it just works.

Run (offline, a tiny GPT-2 and a tokenizer trained on the spot; about 20 s on a 2-core CPU)::

    python examples/trl_sft.py --output-dir runs/trl

``--model smollm2`` fine-tunes the embedded SmolLM2-135M-Instruct instead (slower, real numbers).
The callback measures a baseline before the first optimizer step and re-measures after each
epoch; the budget here only warns (``--stop`` makes it stop), so the whole trajectory is printed.
Requires ``pip install trl``.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", default="runs/trl")
    p.add_argument("--model", default="tiny", help="'tiny' (random GPT-2, default), 'smollm2', or a model path")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--stop", action="store_true", help="stop when the budget is breached (default: warn only)")
    args = p.parse_args(argv)

    import logging

    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from ftcallback import Budget, EfficiencyCallback
    from ftcallback._report import format_checks_table

    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s: %(message)s")
    for noisy in ("transformers", "datasets", "trl", "torch", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    if args.model == "tiny":
        from ftcallback.testing import tiny_causal_lm, tiny_corpus, tiny_tokenizer

        tokenizer, model = tiny_tokenizer(), tiny_causal_lm("gpt2")
        texts = [t + tokenizer.eos_token for t in tiny_corpus()[:96]]
        probe = ["the model returns", "a user measures the latency", "the server generates"]
        max_new_tokens, chat = 16, False
    else:
        from ftcallback.testing import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(args.model)
        texts = [
            "Q: What is a KV cache? A: It stores attention keys and values so that each new token reuses them."
        ] * 16
        probe = ["What is a KV cache?", "Why does batching raise throughput?"]
        max_new_tokens, chat = 48, True

    cb = EfficiencyCallback(
        probe,
        budget=Budget(max_token_increase=0.25, max_latency_increase=0.25),
        max_new_tokens=max_new_tokens,
        repeats=2,
        stop_training=args.stop,
        apply_chat_template=chat,
    )
    config = SFTConfig(
        output_dir=args.output_dir,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=8,
        learning_rate=1e-3 if args.model == "tiny" else 5e-5,
        max_length=64,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_dict({"text": texts}),
        processing_class=tokenizer,
        callbacks=[cb],
    )
    trainer.train()
    assert cb.report is not None
    print(format_checks_table(cb.report))
    print(f"report: {cb.report_path}\ntensorboard --logdir {args.output_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
