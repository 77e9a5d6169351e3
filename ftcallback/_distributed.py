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

:func:`shutdown` leaves the process group at the end of a script so that a gloo
job exits with code 0 every time (see its docstring for the exit race it avoids).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

__all__ = [
    "broadcast_from_main",
    "generation_context",
    "is_distributed",
    "run_on_main",
    "sharding_mode",
    "shutdown",
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

        def heartbeat() -> None:
            _beat(_WORKING)

        try:
            return work(heartbeat)
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
    return box[0]


def sharding_mode(model: torch.nn.Module) -> str | None:
    """Name the parameter-sharding engine that makes every rank take part in generation.

    Returns:
        ``"zero3"`` (DeepSpeed ZeRO-3), ``"fsdp1"`` (``FullyShardedDataParallel`` wrapper),
        ``"fsdp2"`` (``fully_shard``ed modules or DTensor parameters), or ``None`` (replicated or single
        process).
    """
    for module in model.modules():  # the model itself first
        names = {cls.__name__ for cls in type(module).__mro__}
        if "FullyShardedDataParallel" in names:
            return "fsdp1"
        # fully_shard swaps each sharded module's class for a subclass of FSDPModule. Asked by class, not by
        # parameter: after a forward without backward (a measurement) the root's parameters stay unsharded,
        # plain tensors, until the next backward reshards them.
        if "FSDPModule" in names:
            return "fsdp2"
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


def _gloo_worker_states() -> list[str] | None:
    """``/proc`` syscall lines of this process's gloo worker threads; None where that cannot be read."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    states = []
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/comm") as fh:
                if fh.read().strip() != "pt_gloo_runloop":
                    continue
            with open(f"/proc/self/task/{tid}/syscall") as fh:
                states.append(fh.read().strip())
        except OSError:
            continue  # the thread ended, or /proc refuses: treat it as gone
    return states


def _is_idle(state: str) -> bool:
    # An idle gloo worker sleeps in futex(2) (syscall 202 on x86-64, 98 on arm64) with no timeout
    # (waiting for work); a worker waiting for the GIL sleeps with a timeout (CPython's 5 ms interval).
    fields = state.split()
    return len(fields) >= 5 and fields[0] in ("202", "98") and int(fields[4], 16) == 0


def _wait_for_idle_gloo_workers(timeout_s: float = 5.0, poll_s: float = 0.005) -> bool:
    """Sleep (GIL released) until every gloo worker thread waits for work; True when they all do."""
    deadline = time.monotonic() + timeout_s
    idle_polls = 0
    while time.monotonic() < deadline:
        states = _gloo_worker_states()
        if states is None:  # not Linux: no way to look, give the workers a moment instead
            time.sleep(0.2)
            return False
        idle_polls = idle_polls + 1 if all(_is_idle(s) for s in states) else 0
        if idle_polls >= 2:
            return True
        time.sleep(poll_s)
    logger.debug("gloo worker threads still busy after %.1f s; leaving the process group anyway", timeout_s)
    return False


def shutdown() -> None:
    """Leave the process group at the end of a multi-process script, so that every rank exits with code 0.

    Call it once per process after the last collective (after ``trainer.train()`` and anything that
    follows). A no-op outside an initialised process group.

    Why not just ``destroy_process_group()``: a gloo worker thread drops the last reference to the
    tensors of a finished collective itself. When Python has already let go of such a tensor, that
    drop needs the GIL. If it is still pending when the interpreter finalises, CPython ends the
    waiting thread inside a C++ destructor and the process aborts with ``terminate called without
    an active exception`` (exit code 1); if it is pending when the group's destructor runs from a
    GIL-holding deallocation (DDP keeps the group alive past ``destroy_process_group()`` and frees
    it when the Trainer goes away), the destructor's join waits for that thread forever. So:
    a barrier (every rank is past its last collective), then a wait with the GIL released until the
    gloo worker threads are idle (read from ``/proc`` on Linux; a short sleep elsewhere), then
    ``destroy_process_group()``.

    Example:
        >>> shutdown()  # outside a process group: nothing to do
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()
    if torch.distributed.get_backend() == "gloo":
        _wait_for_idle_gloo_workers()
    torch.distributed.destroy_process_group()
