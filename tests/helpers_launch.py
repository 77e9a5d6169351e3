"""Launching real multi-process jobs from tests: ``torchrun`` or ``accelerate launch``, two ranks on CPU (gloo)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Not anchored at line starts: two ranks share one stdout, and a rank's line can land right after the other
# rank's unterminated output (seen in CI: "...'epoch': '2'}rank 1/2: stopped at step 8 of 12, exit ok").
STOP_LINE = re.compile(r"rank (\d+)/(\d+): stopped at step (\d+) of (\d+), exit ok")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_command(launcher: str, port: int) -> list[str]:
    """The command that starts two local ranks: ``launcher`` is ``"torchrun"`` or ``"accelerate"``."""
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"]
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(port),
    ]  # fmt: skip


def launch(
    launcher: str,
    script: Path,
    *args: str,
    timeout: float = 300,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` on two ranks, offline and single-threaded; ``TimeoutExpired`` past ``timeout`` seconds."""
    full_env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
        "CUDA_VISIBLE_DEVICES": "",
        **(env or {}),
    }
    cmd = [*launcher_command(launcher, free_port()), str(script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=ROOT)
