"""What a user sees on the console with logging left as Python sets it up (not configured): one line per check
and the stop reason. Run in a fresh process, as a user's script runs, since pytest installs log handlers."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import torch
torch.set_num_threads(1)
from helpers_training import PROBE, ForcedLength, make_trainer, plain_dataset, training_args
from ftcallback import Budget, EfficiencyCallback
from ftcallback.testing import tiny_causal_lm, tiny_tokenizer

tok = tiny_tokenizer()
model = tiny_causal_lm("gpt2")
length = ForcedLength(model, tok.eos_token_id, long_epochs={2})
cb = EfficiencyCallback(PROBE, budget=Budget(max_token_increase=0.2), max_new_tokens=8, repeats=1, warmup=0)
args = training_args(OUT, disable_tqdm=DISABLE_TQDM, num_train_epochs=3)
make_trainer(model, args, plain_dataset(tok), tok, [cb, length]).train()
"""


def _run(tmp_path: Path, disable_tqdm: bool) -> subprocess.CompletedProcess[str]:
    tests = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests)]), "HF_HUB_OFFLINE": "1"}
    code = SCRIPT.replace("OUT", repr(str(tmp_path / "out"))).replace("DISABLE_TQDM", str(disable_tqdm))
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _check_lines(stdout: str) -> list[dict[str, str]]:
    """The dicts the Trainer printed that carry efficiency figures (one line each)."""
    lines = [line[line.index("{") :] for line in stdout.splitlines() if "'efficiency/" in line]
    return [ast.literal_eval(line) for line in lines]


@pytest.mark.slow
def test_default_console_shows_one_line_per_check_and_the_stop_reason(tmp_path: Path) -> None:
    proc = _run(tmp_path, disable_tqdm=False)  # the default: a progress bar, which prints each logged dict
    checks = _check_lines(proc.stdout)
    assert len(checks) == 3  # baseline, epoch 1, epoch 2 (stopped there)
    for line in checks:
        # The key figures first: latency p50/p95, output tokens, ratios, the verdict; and not 30 keys.
        order = [
            "efficiency/latency_ms_p50",
            "efficiency/latency_ms_p95",
            "efficiency/output_tokens_mean",
            "efficiency/latency_ratio",  # when the latencies are comparable
            "efficiency/latency_judged_ratio",  # with a relative latency budget (not this one)
            "efficiency/output_tokens_ratio",
            "efficiency/machine_factor",  # with the machine's timings
            "efficiency/breached",
        ]
        present = [k for k in order if k in line]
        assert list(line)[: len(present)] == present
        assert {order[0], order[1], order[2], order[-1]} <= set(present)
        assert len(line) <= 16
    assert [c["efficiency/breached"] for c in checks] == ["0", "0", "1"]
    assert [c["efficiency/output_tokens_mean"] for c in checks][-1] == "8"
    # The stop WARNING reaches stderr through Python's last-resort handler (no logging configured).
    assert "stopping training at epoch 2 (step 4): output_tokens_mean" in proc.stderr
