"""A failing measurement never kills a healthy run; a crash never leaves a torn report.

Failures are injected into a real Trainer run: ``generate`` raising, running out of memory, a tokenizer
that starts rejecting a prompt, non-finite or impossible measurements, a disk that refuses a write, and a
training process killed with SIGKILL.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import types

import pytest
import torch
from helpers_training import make_trainer, token_rows, training_args
from transformers import TrainerCallback

from ftcallback import Budget, EfficiencyCallback
from ftcallback import _callback as callback_module
from ftcallback import _json as json_module
from ftcallback import _prober as prober_module
from ftcallback._errors import MeasurementError
from ftcallback._measurement import Measurement, RequestSample
from ftcallback._report import CheckRecord, RunReport, report_path
from ftcallback.testing import tiny_causal_lm, tiny_tokenizer

pytestmark = pytest.mark.filterwarnings("ignore:timing is noisy")

PROMPTS = ["the model returns", "a user measures the latency", "the server generates", "this request stops"]
EPOCHS = 3
STEPS_PER_EPOCH = 2  # 16 rows, batch 8


# ----------------------------------------------------------------- helpers
class Phase(TrainerCallback):
    """Tells injected faults whether training has started (``phase.epoch`` is 0 at train begin)."""

    def __init__(self) -> None:
        self.epoch = 0

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.epoch = int(round(state.epoch or 0)) + 1


def _callback(**kwargs) -> EfficiencyCallback:
    defaults = dict(max_new_tokens=4, generation_kwargs={"min_new_tokens": 4}, repeats=1, warmup=0)
    return EfficiencyCallback(PROMPTS, **{**defaults, **kwargs})


def _trainer(tmp_path, cb, *, model=None, tokenizer=None, phase=None, epochs=EPOCHS):
    tok = tokenizer if tokenizer is not None else tiny_tokenizer()
    args = training_args(
        tmp_path / "out", num_train_epochs=epochs, per_device_train_batch_size=8, logging_strategy="no"
    )
    model = model if model is not None else tiny_causal_lm()
    return make_trainer(model, args, token_rows(tok), tok, [phase or Phase(), cb])


def _patch_generate(model, fault):
    """Call ``fault(input_ids)`` before every generate; it raises to inject a failure."""
    real = model.generate
    calls = []

    def generate(*args, **kwargs):
        calls.append(int(kwargs["input_ids"].shape[0]))
        fault(kwargs["input_ids"])
        return real(*args, **kwargs)

    model.generate = generate
    return calls


@pytest.fixture
def releases(monkeypatch):
    calls = []
    real = prober_module.release_memory

    def counting():
        calls.append(1)
        real()

    # Released where a measurement is retried (the prober) and where a failed one is recorded (the callback).
    monkeypatch.setattr(prober_module, "release_memory", counting)
    monkeypatch.setattr(callback_module, "release_memory", counting)
    return calls


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "ftcallback" and r.levelno == logging.WARNING]


# ----------------------------------------------------------------- failing measurements
def test_generate_exception_is_recorded_and_training_goes_on(tmp_path, caplog, releases):
    phase, model = Phase(), tiny_causal_lm()

    def fault(input_ids):
        if phase.epoch == 2:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    _patch_generate(model, fault)
    cb = _callback(budget=Budget(max_token_increase=0.5))
    trainer = _trainer(tmp_path, cb, model=model, phase=phase)
    with caplog.at_level(logging.WARNING, logger="ftcallback"):
        trainer.train()

    assert trainer.state.global_step == EPOCHS * STEPS_PER_EPOCH  # trained to the end
    checks = RunReport.load(report_path(tmp_path / "out")).checks
    assert [(c.kind, c.status) for c in checks] == [
        ("baseline", "ok"), ("epoch", "ok"), ("epoch", "failed"), ("epoch", "ok")
    ]  # fmt: skip
    failed = checks[2]
    assert failed.error == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert failed.summary == {} and failed.measurement is None and not failed.breached
    assert (
        "epoch measurement at epoch 2 (step 4) failed and was recorded; training continues: "
        "RuntimeError: CUDA error: an illegal memory access was encountered"
    ) in _warnings(caplog)
    assert releases  # memory was released after the failure
    # The failure neither counts as a breach nor resets what came before it.
    assert [c.consecutive_breaches for c in checks] == [0, 0, 0, 0]


def test_strict_mode_raises_measurement_error(tmp_path):
    phase, model = Phase(), tiny_causal_lm()

    def fault(input_ids):
        if phase.epoch == 1:
            raise RuntimeError("generate exploded")

    _patch_generate(model, fault)
    trainer = _trainer(tmp_path, _callback(strict=True), model=model, phase=phase)
    with pytest.raises(
        MeasurementError, match=r"^epoch measurement at step 2 failed: RuntimeError: generate exploded$"
    ):
        trainer.train()
    assert trainer.state.global_step == STEPS_PER_EPOCH
    # Still recorded before raising: the report says what happened.
    checks = RunReport.load(report_path(tmp_path / "out")).checks
    assert [(c.kind, c.status) for c in checks] == [("baseline", "ok"), ("epoch", "failed")]


def test_oom_retries_once_with_half_the_batch(tmp_path, caplog, releases):
    model = tiny_causal_lm()

    def fault(input_ids):
        if input_ids.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    sizes = _patch_generate(model, fault)
    cb = _callback(batch_size=2)
    trainer = _trainer(tmp_path, cb, model=model, epochs=1)
    with caplog.at_level(logging.WARNING, logger="ftcallback"):
        trainer.train()

    assert trainer.state.global_step == STEPS_PER_EPOCH
    assert [c.status for c in cb.report.checks] == ["ok", "ok"]
    # Each check: one call with 2 prompts fails, then 4 calls with 1 prompt succeed.
    assert sizes == [2, 1, 1, 1, 1] * 2
    assert cb.report.baseline["settings"]["batch_size"] == 1  # the record says what was really measured
    assert (
        "measurement ran out of memory with batch_size=2 (CUDA out of memory. Tried to allocate 2.00 GiB); "
        "retrying once with batch_size=1: its latency will not be compared with the baseline, its tokens will"
    ) in _warnings(caplog)
    assert len(releases) >= 2


def test_oom_gives_up_after_one_retry(tmp_path, caplog, releases):
    phase, model = Phase(), tiny_causal_lm()

    def fault(input_ids):
        if phase.epoch >= 1 and input_ids.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory")

    sizes = _patch_generate(model, fault)
    cb = _callback(batch_size=4)
    trainer = _trainer(tmp_path, cb, model=model, phase=phase, epochs=1)
    with caplog.at_level(logging.WARNING, logger="ftcallback"):
        trainer.train()

    assert trainer.state.global_step == STEPS_PER_EPOCH
    assert sizes == [4, 4, 2]  # baseline in one call; at epoch 1: 4 fails, 2 fails, no third attempt
    assert [c.status for c in cb.report.checks] == ["ok", "failed"]
    assert cb.report.checks[1].error == "OutOfMemoryError: CUDA out of memory"
    warnings = _warnings(caplog)
    assert any(w.startswith("measurement ran out of memory with batch_size=4") for w in warnings)
    assert any(
        w.startswith("epoch measurement at epoch 1 (step 2) failed and was recorded") for w in warnings
    )
    assert len(releases) >= 2  # after each out-of-memory error


def test_oom_with_batch_size_one_is_recorded(tmp_path):
    phase, model = Phase(), tiny_causal_lm()

    def fault(input_ids):
        if phase.epoch >= 1:
            raise torch.OutOfMemoryError("CUDA out of memory")

    sizes = _patch_generate(model, fault)
    cb = _callback()
    trainer = _trainer(tmp_path, cb, model=model, phase=phase, epochs=1)
    trainer.train()
    assert sizes == [1, 1, 1, 1, 1]  # four for the baseline, one failed call at epoch 1: nothing to halve
    assert [c.status for c in cb.report.checks] == ["ok", "failed"]


def test_prompt_the_tokenizer_starts_rejecting(tmp_path, caplog):
    """A tokenizer that accepted the probe at train begin fails at a later check: recorded, training on."""
    phase = Phase()
    base = tiny_tokenizer()

    class FlakyTokenizer(type(base)):
        def __call__(self, text, *args, **kwargs):
            if phase.epoch == 1 and isinstance(text, str) and text == PROMPTS[1]:
                raise ValueError("text input must be of type `str` (single example)")
            return super().__call__(text, *args, **kwargs)

    tok = tiny_tokenizer()
    tok.__class__ = FlakyTokenizer
    cb = _callback(tokenizer=tok)
    trainer = _trainer(tmp_path, cb, phase=phase, epochs=2)
    with caplog.at_level(logging.WARNING, logger="ftcallback"):
        trainer.train()
    assert trainer.state.global_step == 2 * STEPS_PER_EPOCH
    assert [c.status for c in cb.report.checks] == ["ok", "failed", "ok"]
    assert cb.report.checks[1].error == "ValueError: text input must be of type `str` (single example)"


# ----------------------------------------------------------------- non-finite and impossible measurements
def _fake_measurement(cb, *, latency: float, output_tokens: int) -> Measurement:
    samples = tuple(
        RequestSample(
            prompt_index=i,
            repeat=0,
            latency_s=latency,
            ttft_s=latency,
            input_tokens=4,
            output_tokens=output_tokens,
            finished=False,
        )
        for i in range(len(PROMPTS))
    )
    return Measurement(samples=samples, settings={**cb.spec.settings(), "batch_size": 1})


BUDGET = Budget(latency_ms=1000.0, max_latency_increase=0.5, output_tokens=100.0, max_token_increase=0.5)


def _run_with_fake_measurements(tmp_path, monkeypatch, fakes):
    """The baseline is real; the epoch checks return the given measurements."""
    cb = _callback(budget=BUDGET)
    real = prober_module.measure
    queue = list(fakes)

    def fake_measure(*args, **kwargs):
        m = real(*args, **kwargs)
        return _fake_measurement(cb, **queue.pop(0)) if cb.report.baseline is not None else m

    monkeypatch.setattr(prober_module, "measure", fake_measure)
    trainer = _trainer(tmp_path, cb, epochs=len(fakes))
    trainer.train()
    return trainer, cb


def test_nan_times_are_not_evaluable_not_a_breach(tmp_path, monkeypatch):
    # NaN everywhere: even the paired latency comparison has nothing to work with.
    trainer, cb = _run_with_fake_measurements(
        tmp_path, monkeypatch, [{"latency": math.nan, "output_tokens": 4}]
    )
    assert trainer.state.global_step == STEPS_PER_EPOCH
    check = cb.report.checks[1]
    assert check.status == "ok" and not check.breached and cb.report.stopped is None
    by_budget = {v["budget"]: v for v in check.verdict}
    for name in ("latency_ms", "max_latency_increase"):
        assert by_budget[name]["passed"] is None, by_budget[name]
    assert by_budget["max_latency_increase"]["detail"] == (
        "no prompt has finite latencies in both the baseline and this measurement"
    )
    assert by_budget["output_tokens"]["passed"] is True  # the finite metrics are still judged
    # Written as null, never as a number or as invalid JSON.
    data = json.loads(report_path(tmp_path / "out").read_text(encoding="utf-8"))
    assert data["checks"][1]["summary"]["latency_ms_p50"] is None
    assert "NaN" not in report_path(tmp_path / "out").read_text(encoding="utf-8")
    # trainer_state's log history gets no NaN either.
    entry = next(
        e for e in trainer.state.log_history if "efficiency/output_tokens_mean" in e and e["step"] > 0
    )
    assert "efficiency/latency_ms_p50" not in entry


def test_zero_output_tokens_everywhere_is_reported_as_impossible(tmp_path, monkeypatch, caplog):
    with caplog.at_level(logging.WARNING, logger="ftcallback"):
        trainer, cb = _run_with_fake_measurements(
            tmp_path,
            monkeypatch,
            [{"latency": 0.01, "output_tokens": 0}, {"latency": 0.01, "output_tokens": 4}],
        )
    assert trainer.state.global_step == 2 * STEPS_PER_EPOCH
    impossible, fine = cb.report.checks[1:]
    # Not "0 tokens, well within budget": recorded as a failed check that says why.
    assert impossible.status == "failed" and not impossible.breached
    assert impossible.error.startswith(
        "MeasurementError: impossible measurement: no response has any output token"
    )
    assert fine.status == "ok"
    assert any("impossible measurement" in w for w in _warnings(caplog))


# ----------------------------------------------------------------- atomic report, crashes
def _report(n_checks: int) -> RunReport:
    report = RunReport(output_dir="out", budget={"latency_ms": 100.0})
    for i in range(n_checks):
        report.add_check(
            CheckRecord(
                index=i,
                kind="epoch",
                epoch=float(i),
                step=10 * i,
                summary={f"metric_{j}": 40.0 + i + j for j in range(100)},
            )
        )
    return report


def test_crash_mid_write_leaves_the_previous_report_whole(tmp_path, monkeypatch):
    path = tmp_path / "efficiency" / "report.json"
    _report(2).save(path)
    before = path.read_bytes()

    def dying_dump(obj, fh, **kwargs):
        fh.write(json.dumps(obj)[:100])  # half a report reaches the disk, then the process "dies"
        raise KeyboardInterrupt

    # Only ftcallback's JSON module sees the dying dump, not the rest of the process.
    monkeypatch.setattr(json_module, "json", types.SimpleNamespace(dump=dying_dump, dumps=json.dumps))
    with pytest.raises(KeyboardInterrupt):
        _report(3).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert len(RunReport.load(path).checks) == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]  # no temporary file left


def test_a_failing_disk_does_not_stop_training(tmp_path, monkeypatch, caplog):
    real = json_module.write_json_atomic
    failures = []

    def flaky(path, data):
        if len(failures) < 2:  # the first two saves hit a full disk
            failures.append(path)
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr("ftcallback._report.write_json_atomic", flaky)
    cb = _callback()
    trainer = _trainer(tmp_path, cb, epochs=2)
    with caplog.at_level(logging.WARNING, logger="ftcallback"):
        trainer.train()
    assert trainer.state.global_step == 2 * STEPS_PER_EPOCH
    assert len(failures) == 2
    assert any(w.startswith("could not write") and "No space left on device" in w for w in _warnings(caplog))
    assert len(RunReport.load(report_path(tmp_path / "out")).checks) == 3  # later saves caught up


def test_sigkill_at_random_moments_of_saving_leaves_a_readable_report(tmp_path):
    """Fork a writer that saves a growing report in a loop and kill it at random moments."""
    path = tmp_path / "efficiency" / "report.json"
    rng = random.Random(0)
    for _ in range(8):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: only pure-Python file writing here, then leave without any cleanup
            try:
                os.close(read_fd)
                report = RunReport(output_dir="out")
                for i in range(100_000):
                    report.add_check(
                        CheckRecord(
                            index=i,
                            kind="epoch",
                            epoch=float(i),
                            step=i,
                            summary={f"metric_{j}": float(j) for j in range(50)},
                        )
                    )
                    report.save(path)
                    if i == 0:
                        os.write(write_fd, b"1")
            finally:
                os._exit(0)
        os.close(write_fd)
        os.read(read_fd, 1)  # the first save is done
        os.close(read_fd)
        time.sleep(rng.uniform(0.0, 0.15))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        report = RunReport.load(path)  # whole and parseable, whatever moment the kill hit
        assert report.checks and [c.index for c in report.checks] == list(range(len(report.checks)))


KILLED_RUN = textwrap.dedent(
    """
    import os, sys
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments
    from ftcallback import EfficiencyCallback
    from ftcallback.testing import tiny_causal_lm, tiny_corpus, tiny_tokenizer

    class Announce(TrainerCallback):  # runs after EfficiencyCallback, whose report is saved by then
        def on_epoch_end(self, args, state, control, **kwargs):
            print(f"CHECKED {state.global_step}", flush=True)

    tok = tiny_tokenizer()
    rows = [{"input_ids": tok(t, truncation=True, max_length=16)["input_ids"]} for t in tiny_corpus()[:16]]
    cb = EfficiencyCallback(["the model returns", "a user"], max_new_tokens=4, repeats=2, warmup=0)
    args = TrainingArguments(output_dir=sys.argv[1], num_train_epochs=1000, per_device_train_batch_size=8,
                             save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
                             logging_strategy="no")
    Trainer(model=tiny_causal_lm(), args=args, train_dataset=rows, processing_class=tok,
            data_collator=DataCollatorForLanguageModeling(tok, mlm=False), callbacks=[cb, Announce()]).train()
    """
)


def test_sigkilled_training_run_leaves_every_finished_check(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(KILLED_RUN, encoding="utf-8")
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        seen = []
        deadline = time.monotonic() + 240
        while len(seen) < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("CHECKED"):
                seen.append(int(line.split()[1]))
        assert len(seen) == 2, f"the run did not reach two checks (exit code {proc.poll()})"
        proc.send_signal(signal.SIGKILL)  # right after the second check, in the middle of training
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    report = RunReport.load(report_path(out))
    steps = [c.step for c in report.checks if c.kind == "epoch"]
    assert report.checks[0].kind == "baseline" and report.baseline is not None
    assert steps[: len(seen)] == seen  # every check announced before the kill is on disk
    assert all(c.status == "ok" for c in report.checks)


def test_oom_retry_says_what_changed_and_judges_tokens_not_latency(tmp_path, caplog):
    """Baseline at batch_size=2; the epoch-1 check runs out of memory and is retried at 1. Its record says so,
    its latency is not compared with the full-batch baseline (not evaluable, never a breach), its tokens are."""
    phase, model = Phase(), tiny_causal_lm()

    def fault(input_ids):
        if phase.epoch == 1 and input_ids.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory")

    _patch_generate(model, fault)
    # A latency budget a batch-size change could breach by itself, and a token budget.
    budget = Budget(max_latency_increase=0.01, max_token_increase=0.5)
    cb = _callback(batch_size=2, budget=budget, generation_kwargs={"min_new_tokens": 2}, max_new_tokens=2)
    trainer = _trainer(tmp_path, cb, model=model, phase=phase, epochs=2)

    with caplog.at_level(logging.WARNING, logger="ftcallback"):
        trainer.train()

    baseline, retried, *_ = cb.report.checks
    assert baseline.measurement["settings"]["batch_size"] == 2
    assert baseline.measurement["retry"] is None
    assert retried.measurement["retry"] == {
        "reason": "out_of_memory",
        "changed": {"batch_size": [2, 1]},
    }
    assert retried.measurement["settings"]["batch_size"] == 1
    verdict = {v["budget"]: v for v in retried.verdict}
    assert verdict["max_latency_increase"]["passed"] is None  # not evaluable, not a pass or a breach
    assert "not comparable with the baseline" in verdict["max_latency_increase"]["detail"]
    assert "retry" in verdict["max_latency_increase"]["detail"]
    assert verdict["max_token_increase"]["passed"] is True  # tokens still judged: same length, within budget
    assert "latency_ratio" not in retried.ratios
    assert retried.ratios["output_tokens_ratio"] == pytest.approx(1.0)
    assert not retried.breached
    assert any(
        w.startswith("epoch 1 (step 2): latency not compared with the baseline (") for w in _warnings(caplog)
    )
    # Epoch 2 is measured at the full batch again and compared as usual.
    assert cb.report.checks[2].measurement["settings"]["batch_size"] == 2
    assert "latency_ratio" in cb.report.checks[2].ratios
