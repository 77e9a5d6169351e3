"""Regenerate the README's TensorBoard screenshots from a real training run, a real server, a real browser.

1. A short real ``Trainer`` run (a tiny GPT-2, 4 epochs of 2 steps, ``report_to=["tensorboard"]``) with an
   ``EfficiencyCallback`` that only monitors (``stop_training=False``); a forward hook makes the answers
   longer from epoch to epoch, as a fine-tune on verbose data does, so the output-token curve crosses its
   budget line.
2. ``tensorboard --logdir <run>`` on 127.0.0.1 (a free port).
3. Headless Chromium screenshots of the Custom Scalars and Time Series tabs into ``docs/``.

Needs ``chromium`` (``apt-get install -y chromium``) and ``tensorboard``. Run from the repository root::

    HF_HUB_OFFLINE=1 python scripts/screenshots.py [--out docs] [--keep RUN_DIR]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

SHOTS = {"tensorboard_custom_scalars.png": "#custom_scalars", "tensorboard_time_series.png": "#timeseries"}


def train(out: Path) -> None:
    """The short real run whose TensorBoard files the screenshots show."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

    from ftcallback import Budget, EfficiencyCallback
    from ftcallback.testing import tiny_causal_lm, tiny_tokenizer

    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    model = tiny_causal_lm("gpt2")
    eos = tok.eos_token_id
    # Answer length per check in eval mode (what the probe runs in): EOS forced after this many tokens, as a
    # fine-tune on verbose data lengthens answers. Index 0 is the baseline, then one per epoch.
    lengths = [6, 6, 7, 10, 13]
    now = {"check": 0, "token": 0}

    def hook(module: Any, args: Any, kwargs: Any, output: Any) -> Any:
        if module.training:
            return output
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[1] > 1:  # the prompt: a new request starts
            now["token"] = 0
        now["token"] += 1
        output.logits[..., eos] = 1e4 if now["token"] >= lengths[now["check"]] else -1e4
        return output

    model.register_forward_hook(hook, with_kwargs=True)

    class Epochs(TrainerCallback):
        def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            now["check"] = round(state.epoch or 0) + 1

    texts = [f"the model {v} a short reply." for v in ("returns", "measures", "predicts", "stops")] * 2
    rows = []
    for text in texts:
        ids = tok(text)["input_ids"] + [eos]
        rows.append(
            {"input_ids": torch.tensor(ids), "attention_mask": torch.ones(len(ids)), "labels": torch.tensor(ids)}
        )
    width = max(len(r["input_ids"]) for r in rows)
    for r in rows:
        pad = width - len(r["input_ids"])
        r["input_ids"] = torch.cat([r["input_ids"], torch.full((pad,), eos)])
        r["attention_mask"] = torch.cat([r["attention_mask"], torch.zeros(pad)]).long()
        r["labels"] = torch.cat([r["labels"], torch.full((pad,), -100)])
    callback = EfficiencyCallback(
        ["the model returns", "a user measures", "the server predicts", "this request stops"],
        budget=Budget(max_token_increase=0.5, max_latency_increase=0.5),
        max_new_tokens=16,
        repeats=2,
        stop_training=False,
    )
    args = TrainingArguments(
        output_dir=str(out),
        use_cpu=True,
        report_to=["tensorboard"],
        disable_tqdm=True,
        save_strategy="no",
        logging_strategy="steps",
        logging_steps=1,
        per_device_train_batch_size=4,
        num_train_epochs=4,
        learning_rate=1e-3,
        seed=0,
    )
    Trainer(
        model=model,
        args=args,
        train_dataset=rows,
        processing_class=tok,
        data_collator=default_data_collator,
        callbacks=[callback, Epochs()],
    ).train()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def screenshots(logdir: Path, out: Path) -> list[Path]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(120):
            try:
                urllib.request.urlopen(url + "data/runs", timeout=2).read()
                break
            except OSError:
                time.sleep(1)
        time.sleep(3)  # let it load the event files
        written = []
        for name, fragment in SHOTS.items():
            path = out / name
            subprocess.run(
                [
                    shutil.which("chromium") or "chromium",
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--hide-scrollbars",
                    "--window-size=1600,1000",
                    "--virtual-time-budget=20000",
                    f"--screenshot={path}",
                    url + fragment,
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=180,
            )
            written.append(path)
        return written
    finally:
        server.terminate()
        server.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs", help="folder for the PNG files (default: docs)")
    parser.add_argument("--keep", default=None, help="keep the training run in this folder")
    parser.add_argument("--logdir", default=None, help="screenshot an existing run folder instead of training")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.logdir:
        logdir = Path(args.logdir)
    else:
        logdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ftcallback-shots-"))
        train(logdir)
        logdir = logdir / "runs"
    for path in screenshots(logdir, out):
        print(f"{path} ({path.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
