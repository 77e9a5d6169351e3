"""Launching real multi-process jobs from tests: ``torchrun`` or ``accelerate launch``, two ranks on CPU (gloo)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
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


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid``, children first (read from ``/proc``; empty where it cannot be read)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")".
                parents[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found.extend(children)
        frontier = children
    return found


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
    """Run ``script`` on two ranks, offline and single-threaded.

    Past ``timeout`` seconds the launcher and every rank it started are killed, so that none is left behind
    holding the CPUs and the output pipes, and ``TimeoutError`` says so with the output's tails.
    """
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
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env, cwd=ROOT
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # torchrun starts each rank in a session of its own: kill them by pid, not by process group.
            for pid in [*_descendants(proc.pid), proc.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            stdout, stderr = proc.communicate(timeout=60)
            raise TimeoutError(
                f"{launcher} job still running after {timeout:.0f} s (a hang?); killed it and its ranks"
                f"\n--- stdout ---\n{stdout[-3000:]}\n--- stderr ---\n{stderr[-6000:]}"
            ) from None
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
