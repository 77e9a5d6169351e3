"""One rank of a real two-rank DeepSpeed ZeRO job on CPU, launched by ``tests/test_deepspeed.py`` with torchrun.

Usage: ``torchrun --nproc_per_node=2 tests/deepspeed_worker.py OUT_DIR CONFIG...`` (CONFIG: ``zero2``,
``zero3``, ``zero3-offload``), with ``DS_ACCELERATOR=cpu OMP_NUM_THREADS=1``. In one process (DeepSpeed,
transformers and the shared-memory comm op loaded once) it trains the same tiny Llama three times per config:

* ``reference``: no callback, the losses to compare with;
* ``stop``: EfficiencyCallback with a token budget; from epoch 2 on the probe's answers are forced long
  (a forward hook active in eval mode only), so the check at the end of epoch 2 breaches and stops;
* ``within``: the same budget, answers stay short: no stop.

Each rank writes ``OUT_DIR/<config>-<run>.rank<R>.json`` (its stop step, its logged losses, the ZeRO settings
its DeepSpeedEngine ran with) and prints ``<config>-<run> rank R/W: stopped at step S of M, exit ok``. Rank 0
starts each run with ``--- <config>-<run>`` on stderr, where ftcallback's log lines go as
``ftcallback... WARNING: ...``, for the test to count them per run.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from helpers_training import PROBE, ForcedLength, make_trainer, plain_dataset, training_args  # noqa: E402

EPOCHS = 3
LONG_FROM_EPOCH = 2
RUNS = ("reference", "stop", "within")


CONFIGS = {"zero2": (2, False), "zero3": (3, False), "zero3-offload": (3, True)}


def deepspeed_config(config: str) -> dict:
    """The CPU recipe: the Trainer's "auto" values, and its own AdamW rather than DeepSpeed's compiled one."""
    stage, offload = CONFIGS[config]
    zero: dict = {"stage": stage}
    if offload:
        zero.update(offload_param={"device": "cpu"}, offload_optimizer={"device": "cpu"})
    return {
        "zero_optimization": zero,
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
    }


def _device(offload: Any) -> str | None:
    """``"cpu"`` for a ZeRO offload config that offloads to the CPU, None for none."""
    device = getattr(offload, "device", None)
    return None if device is None else str(getattr(device, "value", device))


def train(config: str, run: str, out: Path) -> None:
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from ftcallback import Budget, EfficiencyCallback
    from ftcallback.testing import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer()
    # Every run builds its model outside DeepSpeed's zero.Init (as the first run does, before any
    # TrainingArguments exist), so that all three start from the very same weights. (Inside zero.Init
    # before the process group exists, DeepSpeed's batch-size check sees a world size of 1 and fails.)
    unset_hf_deepspeed_config()
    model = tiny_causal_lm("llama")
    args = training_args(
        out / f"{config}-{run}",
        num_train_epochs=EPOCHS,
        per_device_train_batch_size=4,
        logging_strategy="steps",
        logging_steps=1,
        ddp_backend="gloo",
        deepspeed=deepspeed_config(config),
    )
    callbacks = []
    if run != "reference":
        long_epochs = range(LONG_FROM_EPOCH, EPOCHS + 1) if run == "stop" else ()
        callbacks.append(ForcedLength(model, tok.eos_token_id, long_epochs))
        callbacks.append(
            EfficiencyCallback(
                PROBE[:2],
                # The latency budget is loose (never breached here) but on: sharded, it makes the baseline measure
                # a fixed 3 x repeats and every later check `repeats`, on every rank alike, or ZeRO-3's collectives
                # hang; measured by the main process alone (ZeRO-2), the baseline goes on to a precision.
                budget=Budget(max_token_increase=0.5, max_latency_increase=10.0),
                max_new_tokens=4,
                repeats=1,
                warmup=0,
            )
        )
    # 16 examples, 4 per device, 2 ranks: 2 optimizer steps per epoch.
    trainer = make_trainer(model, args, plain_dataset(tok, 16), tok, callbacks)
    rank, world = trainer.args.process_index, trainer.args.world_size
    if rank == 0:  # the test splits stderr into runs at these lines
        print(f"--- {config}-{run}", file=sys.stderr, flush=True)
    trainer.train()
    state = trainer.state  # train() starts a new one
    engine = trainer.model_wrapped  # the DeepSpeedEngine: what it really ran with
    offload_param, offload_optimizer = engine.zero_offload_param(), engine.zero_offload_optimizer()
    result = {
        "step": state.global_step,
        "max_steps": state.max_steps,
        "losses": [(e["step"], e["loss"]) for e in state.log_history if "loss" in e],
        "engine": type(engine).__name__,
        "zero_stage": int(engine.zero_optimization_stage()),
        "offload_param": _device(offload_param),
        "offload_optimizer": _device(offload_optimizer),
    }
    (out / f"{config}-{run}.rank{rank}.json").write_text(json.dumps(result), encoding="utf-8")
    print(
        f"{config}-{run} rank {rank}/{world}: stopped at step {state.global_step} of {state.max_steps}, exit ok",
        flush=True,
    )


def main(argv: list[str]) -> int:
    out, configs = Path(argv[0]), argv[1:]
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s: %(message)s")
    from ftcallback import NoisyMeasurementWarning, shutdown_distributed

    # Two ranks generating in lockstep on two cores time noisily by nature; the test reads stderr for what
    # ftcallback says about the run, so the documented switch turns that one Python warning off.
    warnings.filterwarnings("ignore", category=NoisyMeasurementWarning)

    for config in configs:
        for run in RUNS:
            train(config, run, out)
    shutdown_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
