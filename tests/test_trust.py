"""A user's run is never broken or silently overwritten: SIGTERM with JIT checkpointing, a reused callback,
several callbacks in one Trainer, unsupported parallelism, a model without weights, failure tracebacks.

Everything goes through a real ``transformers.Trainer`` with a tiny GPT-2 (see tests/helpers_training.py).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers_training import PROBE, ForcedLength, make_trainer, plain_dataset, read_report, training_args
from tensorboard.backend.event_processing import event_accumulator
from transformers import Trainer, TrainerCallback, default_data_collator

from ftcallback import Budget, ConfigError, EfficiencyCallback, ModelError
from ftcallback import _trainer_facts as trainer_facts
from ftcallback.testing import tiny_causal_lm, tiny_tokenizer

pytestmark = pytest.mark.filterwarnings("ignore:timing is noisy")

REPO = Path(__file__).resolve().parents[1]
FAST: dict[str, Any] = {"max_new_tokens": 6, "repeats": 1, "warmup": 0}


def _messages(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ftcallback" and r.levelno == level]


# ============================================================================ SIGTERM + JIT checkpointing
SIGTERMED_RUN = textwrap.dedent(
    """
    import sys, time
    import torch
    torch.set_num_threads(1)
    from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator
    sys.path.insert(0, sys.argv[2])
    from helpers_training import PROBE, plain_dataset
    from ftcallback import Budget, EfficiencyCallback
    from ftcallback.testing import tiny_causal_lm, tiny_tokenizer

    class Slow(TrainerCallback):  # steps long enough for a SIGTERM to land mid-epoch
        def on_step_end(self, args, state, control, **kwargs):
            print("STEP", state.global_step, flush=True)
            time.sleep(0.25)

    tok = tiny_tokenizer()
    cb = EfficiencyCallback(PROBE[:2], budget=Budget(max_token_increase=1.0), max_new_tokens=4, repeats=1, warmup=0)
    args = TrainingArguments(
        output_dir=sys.argv[1], use_cpu=True, report_to="none", disable_tqdm=True, save_strategy="epoch",
        logging_strategy="no", per_device_train_batch_size=1, num_train_epochs=2, seed=0,
        enable_jit_checkpoint=True,
    )
    trainer = Trainer(model=tiny_causal_lm(), args=args, train_dataset=plain_dataset(tok, 40),
                      data_collator=default_data_collator, processing_class=tok, callbacks=[cb, Slow()])
    trainer.train()
    print("EXITED step", trainer.state.global_step, flush=True)
    """
)


def test_sigterm_with_jit_checkpointing_skips_the_check_and_the_job_saves(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(SIGTERMED_RUN, encoding="utf-8")
    out = tmp_path / "out"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out), str(REPO / "tests")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline() if proc.stdout else ""
            if not line or line.startswith("STEP 2"):
                break
        assert proc.poll() is None, "the run ended before the SIGTERM"
        proc.send_signal(signal.SIGTERM)  # what a scheduler does before it kills a job
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == 0, stderr[-3000:]
    exited = int(stdout.split("EXITED step")[-1].split()[0])
    assert 2 < exited < 40  # stopped mid-epoch 1 (40 steps per epoch), 3 s after the signal
    skipped = [line for line in stderr.splitlines() if "SIGTERM received" in line]  # logging.lastResort
    assert len(skipped) == 1, stderr[-3000:]
    assert f"training is stopping at step {exited} to save a checkpoint; skipping the epoch check" in skipped[0]
    # The JIT checkpoint is complete, and no check ran after the signal: only the baseline was measured.
    checkpoint = out / f"checkpoint-{exited}"
    assert (checkpoint / "trainer_state.json").is_file()
    assert not (checkpoint / "checkpoint-is-incomplete.txt").exists()
    report = read_report(out)
    assert [c["kind"] for c in report["checks"]] == ["baseline"]


# ============================================================================ reuse
def test_a_second_train_keeps_the_baseline_appends_and_stops_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tok = tiny_tokenizer()
    model = tiny_causal_lm("gpt2")
    length = ForcedLength(model, tok.eos_token_id, long_epochs={2})
    cb = EfficiencyCallback(PROBE[:2], budget=Budget(max_token_increase=1.0), **FAST)
    trainer = make_trainer(model, training_args(tmp_path, num_train_epochs=3), plain_dataset(tok), tok, [cb, length])
    with caplog.at_level(logging.INFO, logger="ftcallback"):
        trainer.train()
        first = read_report(tmp_path)
        assert first["stopped"]["step"] == 4 and first["stopped"]["run"] == 0
        length.long_epochs = {1, 2, 3}  # the trained model is over budget from the start of the second run
        caplog.clear()
        trainer.train()
    report = read_report(tmp_path)
    assert report["baseline"] == first["baseline"]  # kept, not re-measured on the trained model
    assert [(c["kind"], c["run"], c["step"], c["breached"]) for c in report["checks"]] == [
        ("baseline", 0, 0, False),
        ("epoch", 0, 2, False),
        ("epoch", 0, 4, True),
        ("epoch", 1, 2, True),
    ]
    assert report["stopped"]["run"] == 1 and report["stopped"]["step"] == 2
    assert report["earlier_stops"] == [first["stopped"]]  # the first call's stop is kept, not overwritten
    assert trainer.state.global_step == 2
    warnings = _messages(caplog)
    assert warnings[0] == (
        "EfficiencyCallback reused for train() call 2: keeping the baseline measured at the first train() and "
        "appending checks to the same record (create a new EfficiencyCallback for a fresh baseline)"
    )
    assert sum(m.startswith("stopping training at epoch 1 (step 2)") for m in warnings) == 1


class EvalMetrics(TrainerCallback):
    """What ``metric_for_best_model`` sees: the metrics dict after every callback's ``on_evaluate``."""

    def __init__(self) -> None:
        self.seen: list[dict[str, float]] = []

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any) -> None:
        self.seen.append(dict(metrics or {}))


def _two_callbacks(
    tmp_path: Path, a: EfficiencyCallback, b: EfficiencyCallback, *extra: TrainerCallback, **overrides: Any
) -> Trainer:
    tok = tiny_tokenizer()
    model = tiny_causal_lm("gpt2")
    length = ForcedLength(model, tok.eos_token_id, long_epochs={2, 3})
    args = training_args(tmp_path, num_train_epochs=3, **overrides)
    return Trainer(
        model=model,
        args=args,
        train_dataset=plain_dataset(tok),
        eval_dataset=plain_dataset(tok, 4),
        processing_class=tok,
        data_collator=default_data_collator,
        callbacks=[a, b, length, *extra],
    )


def test_two_unnamed_callbacks_are_refused_at_train_begin(tmp_path: Path) -> None:
    a = EfficiencyCallback(PROBE[:2], **FAST)
    b = EfficiencyCallback(PROBE[:2], **FAST)
    trainer = _two_callbacks(tmp_path, a, b)
    with pytest.raises(ConfigError, match=r"2 EfficiencyCallbacks named None: .* give each a distinct `name=`"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_named_callbacks_keep_separate_reports_tags_metrics_and_decisions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # "loose" never breaches; "tight" breaches at epoch 2 but only warns (stop_training=False), so both see 3 epochs.
    loose = EfficiencyCallback(PROBE[:2], budget=Budget(max_token_increase=100.0), name="loose", **FAST)
    tight = EfficiencyCallback(
        PROBE[:2], budget=Budget(max_token_increase=1.0), name="tight", stop_training=False, **FAST
    )
    evals = EvalMetrics()
    trainer = _two_callbacks(tmp_path, loose, tight, evals, eval_strategy="epoch", report_to="tensorboard")
    with caplog.at_level(logging.INFO, logger="ftcallback"):
        trainer.train()
    assert trainer.state.global_step == 6
    reports = {n: json.loads((tmp_path / "efficiency" / n / "report.json").read_text()) for n in ("loose", "tight")}
    assert not (tmp_path / "efficiency" / "report.json").exists()
    assert [c["breached"] for c in reports["loose"]["checks"]] == [False, False, False, False]
    assert [c["breached"] for c in reports["tight"]["checks"]] == [False, False, True, True]
    assert reports["loose"]["budget"] != reports["tight"]["budget"]
    assert reports["loose"]["stopped"] is None and reports["tight"]["stopped"] is None
    assert any(m.startswith("[tight] budget breached at epoch 2 (step 4)") for m in _messages(caplog))
    assert not any(m.startswith("[loose]") for m in _messages(caplog))

    keys = ("eval_efficiency_within_budget_loose", "eval_efficiency_within_budget_tight")
    assert [tuple(e[k] for k in keys) for e in evals.seen] == [
        (1.0, 1.0),
        (1.0, 0.0),
        (1.0, 0.0),
    ]

    tags: set[str] = set()
    for events in tmp_path.glob("runs/**/events.out.tfevents.*"):
        acc = event_accumulator.EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert "efficiency/loose/output_tokens_mean" in tags and "efficiency/tight/output_tokens_mean" in tags
    assert "efficiency/output_tokens_mean" not in tags


# ============================================================================ refusals
@pytest.mark.parametrize(
    ("sizes", "named"),
    [
        ({"tp_size": 2}, "tensor parallelism of size 2"),
        ({"cp_size": 2}, "context parallelism of size 2"),
        ({"sp_size": 4}, "sequence parallelism of size 4"),
    ],
)
def test_model_parallel_configs_are_refused_at_train_begin(tmp_path: Path, sizes: dict[str, int], named: str) -> None:
    """Real ``TrainingArguments(parallelism_config=ParallelismConfig(...))``. A Trainer cannot be built with it in
    one process (accelerate wants the torchrun environment), so ``on_train_begin`` gets the real arguments."""
    from accelerate.parallelism_config import ParallelismConfig

    tok = tiny_tokenizer()
    cb = EfficiencyCallback(PROBE[:2], **FAST)
    args = training_args(tmp_path, parallelism_config=ParallelismConfig(**sizes))
    model = tiny_causal_lm("gpt2")
    with pytest.raises(ConfigError, match=rf"does not support `parallelism_config` with {named}: the model is split"):
        cb.on_train_begin(args, None, None, model=model, processing_class=tok)  # type: ignore[arg-type]
    assert cb.monitor is None  # refused before anything was measured or written
    assert not (tmp_path / "efficiency").exists()


def test_data_parallel_only_config_is_accepted() -> None:
    from accelerate.parallelism_config import ParallelismConfig

    args = type("Args", (), {"parallelism_config": ParallelismConfig()})()
    trainer_facts.check_parallelism(args)  # dp sizes only: every rank holds the whole model


def test_a_model_on_the_meta_device_is_refused_with_the_fix(tmp_path: Path) -> None:
    tok = tiny_tokenizer()
    with torch.device("meta"):
        model = tiny_causal_lm("gpt2")
    cb = EfficiencyCallback(PROBE[:2], **FAST)
    args = training_args(tmp_path)
    with pytest.raises(ModelError, match=r"meta device .* load real weights before training"):
        cb.on_train_begin(args, None, None, model=model, processing_class=tok)  # type: ignore[arg-type]


def test_a_failed_measurement_logs_its_traceback_at_debug(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tok = tiny_tokenizer()
    model = tiny_causal_lm("gpt2")
    real = model.generate
    calls = []

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) > 1:  # the baseline works, the epoch check hits a bug
            raise KeyError("a bug somewhere inside generate")
        return real(*args, **kwargs)

    model.generate = failing  # type: ignore[method-assign]
    cb = EfficiencyCallback(PROBE[:1], **FAST)
    trainer = make_trainer(model, training_args(tmp_path, num_train_epochs=1), plain_dataset(tok), tok, [cb])
    with caplog.at_level(logging.DEBUG, logger="ftcallback"):
        trainer.train()
    debug = [r for r in caplog.records if r.name == "ftcallback" and r.levelno == logging.DEBUG and r.exc_info]
    assert len(debug) == 1
    assert debug[0].getMessage() == "traceback of the failed epoch measurement"
    assert debug[0].exc_info is not None and debug[0].exc_info[0] is KeyError
    assert "in failing" in caplog.text  # the formatted traceback reaches the handler
    assert [c["status"] for c in read_report(tmp_path)["checks"]] == ["ok", "failed"]
