"""Multi-process coordination: the main process measures, every rank decides the same.

Under DDP every rank holds a full replica, so only the main process measures and
the others wait. A plain barrier would time out on a long measurement (the
process group's timeout, 30 minutes by default, covers one collective), so the
waiting ranks instead take part in a heartbeat: the main process joins one tiny
``all_reduce`` after every ``generate`` call, each finishing well inside the
timeout, and a final one that says "done". The decision is then broadcast from
the main process, so every rank sets ``should_training_stop`` at the same step
(a stop on one rank alone aborts the job with a collective size mismatch).

Under DeepSpeed ZeRO-3 and FSDP the parameters are sharded and every rank must
take part in each forward pass, so every rank generates (``synced_gpus=True``,
or with gathered parameters for FSDP1) and the main process's numbers are used.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

__all__ = [
    "broadcast_from_main",
    "generation_context",
    "is_distributed",
    "run_on_main",
    "sharding_mode",
]

logger = logging.getLogger("ftcallback.distributed")

T = TypeVar("T")

_WORKING, _DONE = 0, 1


def is_distributed() -> bool:
    """True inside an initialised ``torch.distributed`` group of more than one process."""
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def _collective_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo and the others take CPU tensors.
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _beat(value: int) -> int:
    flag = torch.tensor([value], dtype=torch.int32, device=_collective_device())
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return int(flag.item())


def run_on_main(work: Callable[[Callable[[], None]], T], *, is_main: bool) -> T | None:
    """Run ``work`` on the main process while the other ranks wait without timing out.

    ``work`` receives a ``heartbeat`` function and must call it every so often (the
    measurement calls it after each ``generate``); each call is one small collective
    that the waiting ranks answer. Outside a distributed group, ``work`` simply runs.

    Args:
        work: the function to run on the main process; its argument is the heartbeat.
        is_main: whether this process is the main one (``state.is_world_process_zero``).

    Returns:
        ``work``'s result on the main process, ``None`` on the others.
    """
    if not is_distributed():
        return work(lambda: None)
    if is_main:
        try:
            return work(lambda: _beat(_WORKING))
        finally:
            # Release the waiting ranks even when the work failed, or they would hang.
            _beat(_DONE)
    beats = 0
    while _beat(_WORKING) != _DONE:
        beats += 1
    logger.debug("waited for the main process through %d heartbeats", beats)
    return None


def broadcast_from_main(obj: T) -> T:
    """Return the main process's ``obj`` on every rank (a no-op outside a distributed group).

    ``obj`` must be picklable; keep it small (a decision, not a measurement).
    """
    if not is_distributed():
        return obj
    box: list[Any] = [obj]
    device = _collective_device() if torch.distributed.get_backend() == "nccl" else None
    torch.distributed.broadcast_object_list(box, src=0, device=device)
    return box[0]  # type: ignore[no-any-return]


def sharding_mode(model: torch.nn.Module) -> str | None:
    """Name the parameter-sharding engine that makes every rank take part in generation.

    Returns:
        ``"zero3"`` (DeepSpeed ZeRO-3), ``"fsdp1"`` (``FullyShardedDataParallel`` wrapper),
        ``"fsdp2"`` (``fully_shard`` with DTensor parameters), or ``None`` (replicated or single process).
    """
    if type(model).__name__ == "FullyShardedDataParallel":
        return "fsdp1"
    for module in model.modules():
        if type(module).__name__ == "FullyShardedDataParallel":
            return "fsdp1"
    for param in model.parameters():
        if hasattr(param, "ds_id"):
            return "zero3"
        if type(param).__name__ == "DTensor" or type(getattr(param, "data", None)).__name__ == "DTensor":
            return "fsdp2"
        break  # every parameter is sharded the same way; the first one tells
    return None


@contextlib.contextmanager
def generation_context(model: torch.nn.Module, mode: str | None) -> Iterator[None]:
    """Make a sharded model's full parameters available to ``generate`` where the engine needs it.

    FSDP1 needs its flat parameters gathered (``summon_full_params``); ZeRO-3 and FSDP2
    gather layer by layer in their forward hooks, so ``synced_gpus=True`` suffices there.
    """
    if mode == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        with FSDP.summon_full_params(model, writeback=False, recurse=True):
            yield
    else:
        yield
