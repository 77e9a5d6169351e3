"""Two-process (DDP) training with EfficiencyCallback, runnable on a CPU-only machine.

Launch with either of::

    torchrun --nproc_per_node=2 examples/multiprocess_train.py --output-dir runs/ddp
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \
        --dynamo_backend no examples/multiprocess_train.py --output-dir runs/ddp

(on a CPU-only machine ``accelerate launch --cpu --num_processes 2`` silently runs ONE process; the
``--multi_gpu`` form above gives two gloo ranks). Only the main process measures, logs and writes;
the other rank waits for it, and both stop at the same step. ``--slowdown-from-epoch N`` injects a
generation slowdown from epoch N on, to show a latency-budget stop; without it the run trains to
the end. Each rank prints one line ``rank R/W: stopped at step S of M, exit ok`` at the end, then leaves
the process group with ``ftcallback.shutdown_distributed()`` so that the job exits with code 0 every time.
Everything is offline: a tiny GPT-2 with random weights and a tokenizer trained on the spot.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", default="runs/ddp", help="Trainer output_dir (report and TensorBoard go here)")
    p.add_argument("--epochs", type=int, default=4, help="training epochs")
    p.add_argument(
        "--slowdown-from-epoch",
        type=int,
        default=None,
        metavar="N",
        help="from epoch N on (1-based), make generation slower to breach the latency budget",
    )
    p.add_argument(
        "--slowdown-ms",
        type=float,
        default=2.0,
        help="sleep added to every forward pass in eval mode once the slowdown is on (ms)",
    )
    p.add_argument("--max-latency-increase", type=float, default=0.2, help="allowed latency increase (0.2 = +20%%)")
    p.add_argument("--every-n-steps", type=int, default=None, help="also measure every N optimizer steps")
    return p.parse_args(argv)


class SlowGeneration:
    """A forward hook that sleeps in eval mode only, from a given epoch on (a stand-in for a slower model)."""

    def __init__(self, from_epoch: int, seconds: float = 0.002) -> None:
        self.from_epoch, self.seconds, self.epoch = from_epoch, seconds, 0

    def __call__(self, module, args, output):  # noqa: ANN001, ANN204
        if not module.training and self.epoch >= self.from_epoch:
            time.sleep(self.seconds)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

    from ftcallback import Budget, EfficiencyCallback
    from ftcallback import shutdown_distributed as shutdown
    from ftcallback.testing import tiny_causal_lm, tiny_corpus, tiny_tokenizer

    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s: %(message)s")
    tokenizer = tiny_tokenizer()
    model = tiny_causal_lm("gpt2")
    texts = tiny_corpus()[:64]
    dataset = Dataset.from_dict({"text": texts}).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=32), batched=True, remove_columns=["text"]
    )

    callbacks: list[TrainerCallback] = []
    if args.slowdown_from_epoch is not None:
        slow = SlowGeneration(args.slowdown_from_epoch, seconds=args.slowdown_ms / 1000.0)
        model.register_forward_hook(slow)

        class EpochCounter(TrainerCallback):
            def on_epoch_begin(self, a, state, control, **kw):  # noqa: ANN001, ANN201
                slow.epoch = int(state.epoch or 0) + 1

        callbacks.append(EpochCounter())

    cb = EfficiencyCallback(
        ["the model returns", "a user measures the latency", "the server generates", "this request stops"],
        budget=Budget(max_latency_increase=args.max_latency_increase),
        max_new_tokens=16,
        generation_kwargs={"min_new_tokens": 16},  # fixed length: latency changes only if the model is slower
        repeats=3,
        every_n_steps=args.every_n_steps,
    )
    training_args = TrainingArguments(
        output_dir=args.output_dir,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        logging_steps=2,
        save_strategy="no",
        report_to="none",
        ddp_backend="gloo",
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        processing_class=tokenizer,
        callbacks=[*callbacks, cb],
    )
    trainer.train()
    state = trainer.state
    rank = trainer.args.process_index
    world = trainer.args.world_size
    print(f"rank {rank}/{world}: stopped at step {state.global_step} of {state.max_steps}, exit ok", flush=True)
    # Leave the process group before exiting: barrier, wait until gloo's worker threads are idle, destroy.
    # A bare destroy_process_group() leaves a race at exit ("terminate called without an active
    # exception", exit code 1, or a hang); see ftcallback.shutdown_distributed.
    shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
