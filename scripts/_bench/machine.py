"""Where the numbers come from: CPU model, cores, memory, load, threads, versions, GPU."""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


def machine_info(device: torch.device) -> dict[str, Any]:
    """The machine and software a benchmark ran on, as its JSON result records them."""
    import numpy
    import transformers

    import ftcallback

    cpu = platform.processor() or platform.machine()
    mem_gib = math.nan
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable,
        "memory_gib": mem_gib,
        "load_average_1m": _loadavg(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "ftcallback": ftcallback.__version__,
        "device": str(device),
        "gpu": None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    return info


def _loadavg() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return math.nan


def machine_line(info: Mapping[str, Any]) -> str:
    gpu = f"; GPU {info['gpu']}" if info.get("gpu") else ""
    return (
        f"{info['cpu']}, {info['cpu_cores_usable']} usable cores, {info['memory_gib']} GiB, "
        f"torch {info['torch']} ({info['torch_threads']} threads), transformers {info['transformers']}, "
        f"Python {info['python']}; device {info['device']}{gpu}; load average {info['load_average_1m']}"
    )
