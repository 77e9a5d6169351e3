"""One warning per event in a two-rank run, also when every rank measures (FSDP2: sharded generation).

Two real gloo ranks on CPU (spawned like the workers in tests/test_distributed.py), a ``fully_shard``ed tiny
Llama, the callback driven through its Trainer events on both ranks. The timing is made "noisy" and the epoch
check's ``generate`` fails on both ranks: each rank counts the ``NoisyMeasurementWarning``s and the
``ftcallback`` WARNING records it emitted. Only the main process speaks.
"""

from __future__ import annotations

import json
import logging
import traceback
import warnings
from pathlib import Path
from typing import Any

import pytest
from helpers_launch import free_port
from test_distributed import _init, _spawn, _write

from ftcallback import _distributed as fd
from ftcallback.testing import tiny_causal_lm, tiny_tokenizer

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:timing is noisy")]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _worker(rank: int, port: int, out: str) -> None:
    out_dir, result = Path(out), {}
    try:
        _init(rank, port, 120.0)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        from transformers import TrainerControl, TrainerState, TrainingArguments

        import ftcallback._measure as measure_module
        from ftcallback import Budget, EfficiencyCallback, NoisyMeasurementWarning

        measure_module._NOISE_CV_LIMIT = -1.0  # every measurement with 2 repeats is "noisy"
        tok = tiny_tokenizer()
        model = tiny_causal_lm("llama")
        mesh = init_device_mesh("cpu", (2,))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)

        real_generate = model.generate
        failing = {"on": False}

        def generate(*args: Any, **kwargs: Any) -> Any:
            if failing["on"]:
                raise RuntimeError("generate exploded on every rank")
            return real_generate(*args, **kwargs)

        model.generate = generate

        records = _Records()
        logging.getLogger("ftcallback").addHandler(records)
        cb = EfficiencyCallback(
            ["the model returns", "a user measures the latency"],
            budget=Budget(max_token_increase=0.5),
            max_new_tokens=4,
            generation_kwargs={"min_new_tokens": 4},
            repeats=2,
            warmup=0,
        )
        args = TrainingArguments(output_dir=str(out_dir / "run"), report_to="none", use_cpu=True)
        state, control = TrainerState(), TrainerControl()
        state.is_world_process_zero = state.is_local_process_zero = rank == 0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cb.on_train_begin(args, state, control, model=model, processing_class=tok)
            failing["on"] = True
            state.global_step, state.epoch = 3, 1.0
            cb.on_epoch_end(args, state, control, model=model, processing_class=tok)
        result["noisy"] = sum(issubclass(w.category, NoisyMeasurementWarning) for w in caught)
        result["warnings"] = records.messages
        result["mode"] = cb.report.baseline_measurement().environment["sharding_mode"] if rank == 0 else None
        result["checks"] = [(c.kind, c.status) for c in cb.report.checks] if rank == 0 else None
        fd.shutdown()
    except BaseException:
        result["error"] = traceback.format_exc()
        raise
    finally:
        _write(out_dir, rank, result)


def test_sharded_two_rank_run_warns_once_per_event(tmp_path: Path) -> None:
    _spawn(_worker, free_port(), str(tmp_path), timeout=240)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert "error" not in r0 and "error" not in r1, (r0.get("error"), r1.get("error"))
    assert r0["mode"] == "fsdp2"  # every rank took part in the measurement
    assert r0["checks"] == [["baseline", "ok"], ["epoch", "failed"]]
    assert r0["noisy"] == 1 and r1["noisy"] == 0  # the baseline's noisy timing, said once
    failed = [m for m in r0["warnings"] if "measurement at epoch 1 (step 3) failed" in m]
    assert len(failed) == 1, r0["warnings"]
    assert r1["warnings"] == []
