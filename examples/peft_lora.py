"""LoRA fine-tuning with PEFT under EfficiencyCallback, then the adapter's cost: merged vs unmerged.

Run (offline; a tiny Llama with random weights by default, about 30 s on a 2-core CPU)::

    python examples/peft_lora.py --output-dir runs/lora
    python examples/peft_lora.py --model smollm2 --output-dir runs/lora-smollm2   # the real embedded model

The baseline is measured at train begin on the PEFT model as it will be trained: adapters in place
(LoRA B starts at zero, so outputs are the base model's, but the extra matmuls are already timed).
After training, the same probe is measured on the unmerged adapter model and on
``merge_and_unload()``, and ``ftcallback.compare`` prints what merging buys back.
Requires ``pip install peft``.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", default="runs/lora")
    p.add_argument("--model", default="tiny", help="'tiny' (random Llama, default), 'smollm2', or a model path")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rank", type=int, default=8, help="LoRA rank")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    import logging

    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from ftcallback import Budget, EfficiencyCallback, compare, measure
    from ftcallback._report import format_checks_table

    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s: %(message)s")
    for noisy in ("transformers", "datasets", "peft", "torch", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    if args.model == "tiny":
        from ftcallback.testing import tiny_causal_lm, tiny_corpus, tiny_tokenizer

        tokenizer, base = tiny_tokenizer(), tiny_causal_lm("llama")
        texts = [t + tokenizer.eos_token for t in tiny_corpus()[:96]]
        probe = ["the model returns", "a user measures the latency", "the server generates"]
        max_new_tokens, chat, lr = 16, False, 5e-3
        gen_kwargs = {"min_new_tokens": 16}  # fixed length: the comparison is about speed only
    else:
        from ftcallback.testing import load_model_and_tokenizer

        base, tokenizer = load_model_and_tokenizer(args.model)
        texts = ["Q: Name a prime number. A: 7 is a prime number."] * 16
        probe = ["Name a prime number.", "What is 2 + 2?"]
        max_new_tokens, chat, lr = 32, True, 2e-4
        gen_kwargs = {"min_new_tokens": 32}

    model = get_peft_model(
        base,
        LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    model.print_trainable_parameters()
    dataset = Dataset.from_dict({"text": texts}).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=48), batched=True, remove_columns=["text"]
    )
    cb = EfficiencyCallback(
        probe,
        budget=Budget(max_latency_increase=0.5),
        max_new_tokens=max_new_tokens,
        generation_kwargs=gen_kwargs,
        repeats=args.repeats,
        apply_chat_template=chat,
    )
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=args.output_dir,
            num_train_epochs=args.epochs,
            per_device_train_batch_size=8,
            learning_rate=lr,
            logging_steps=5,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
        ),
        train_dataset=dataset,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        processing_class=tokenizer,
        callbacks=[cb],
    )
    trainer.train()
    assert cb.report is not None
    print(format_checks_table(cb.report))

    settings = dict(
        max_new_tokens=max_new_tokens, generation_kwargs=gen_kwargs, repeats=args.repeats, apply_chat_template=chat
    )
    unmerged = measure(model, tokenizer, probe, **settings)  # type: ignore[arg-type]
    merged = measure(model.merge_and_unload(), tokenizer, probe, **settings)  # type: ignore[arg-type]
    print("\nLoRA adapters unmerged (BASE) vs merged into the weights (NEW):")
    # The two differ in their adapters on purpose (that is the comparison), so the mismatch is allowed.
    print(compare(unmerged, merged, Budget(), allow_mismatch=True).format_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
