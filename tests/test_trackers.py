"""The efficiency metrics reach real ``report_to`` trackers, offline: wandb, MLflow, Trackio.

One short real Trainer run per tracker (a tiny model, 2 epochs of 2 steps, one check per epoch); each
tracker's own files are read back with its own reader, and must hold the ``efficiency/*`` series at the
baseline (step 0) and at each epoch check, exactly once, next to the run's own loss.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers_training import PROBE, make_trainer, plain_dataset, training_args

from ftcallback import Budget, EfficiencyCallback
from ftcallback.testing import tiny_causal_lm, tiny_tokenizer

#: 8 examples, batch 4, 2 epochs: steps 2 and 4 end an epoch; the baseline is at step 0.
CHECK_STEPS = [0, 2, 4]
KEYS = ("efficiency/latency_ms_p50", "efficiency/output_tokens_mean", "efficiency/breached")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    for name in [n for n in os.environ if n.startswith(("WANDB_", "MLFLOW_"))]:
        monkeypatch.delenv(name)
    yield tmp_path


def _train(out: Path, report_to: str, **overrides: Any) -> Any:
    tok = tiny_tokenizer()
    cb = EfficiencyCallback(PROBE, budget=Budget(max_token_increase=10.0), max_new_tokens=4, repeats=1, warmup=0)
    args = training_args(
        out, report_to=[report_to], num_train_epochs=2, logging_strategy="steps", logging_steps=1, **overrides
    )
    trainer = make_trainer(tiny_causal_lm("gpt2"), args, plain_dataset(tok), tok, [cb])
    trainer.train()
    return trainer


def _assert_series(history: dict[str, list[tuple[int, float]]], loss_key: str) -> None:
    """Every key once per check, at the check's step; the loss is in the same run."""
    for key in KEYS:
        assert [step for step, _ in history[key]] == CHECK_STEPS, key
    assert [v for _, v in history["efficiency/breached"]] == [0.0, 0.0, 0.0]
    assert history[loss_key], f"the run's own {loss_key} is missing"


# ---------------------------------------------------------------------------------------------- wandb
def _wandb_records(path: Path) -> Iterator[bytes]:
    """The records of a ``.wandb`` file: a 7-byte header (``:W&B``, magic, version), then LevelDB's log
    format (32 KiB blocks; each chunk a 7-byte header of CRC, length, type FULL/FIRST/MIDDLE/LAST).

    wandb 0.31 writes and reads these files in its Go core and ships no Python reader any more.
    """
    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a wandb transaction log"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer: zero padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            yield pending
            pending = b""


def _wandb_history(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """``{key: [(train/global_step, value), ...]}`` from an offline run's history records."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("*.wandb")
    history: dict[str, list[tuple[int, float]]] = {}
    for data in _wandb_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") != "history":
            continue
        row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        step = int(row.get("train/global_step", -1))
        for key, value in row.items():
            if isinstance(value, (int, float)):
                history.setdefault(key, []).append((step, value))
    return history


@pytest.mark.slow
def test_wandb_offline_run_holds_the_efficiency_series(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(env))
    monkeypatch.setenv("WANDB_SILENT", "true")
    _train(env / "out", "wandb")
    # The Trainer leaves the run open. finish() ends it, but wandb's core process may still hold the records
    # in its buffer (seen: a 7-byte file); teardown() stops that process, which writes them all.
    wandb.finish()
    wandb.teardown()
    (run_dir,) = (env / "wandb").glob("offline-run-*")
    history = _wandb_history(run_dir)
    # wandb's Trainer callback prefixes non-eval keys with "train/".
    renamed = {k.removeprefix("train/"): v for k, v in history.items()}
    _assert_series(renamed, "loss")
    # A table is stored as nested keys (efficiency/samples/_type, .../nrows, ...): one per check, 3 rows each.
    assert history["efficiency/samples/nrows"] == [(step, 3) for step in CHECK_STEPS]


# --------------------------------------------------------------------------------------------- MLflow
@pytest.mark.slow
def test_mlflow_sqlite_run_holds_the_efficiency_series(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mlflow = pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{env / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "ftcallback-test")
    client = MlflowClient(tracking_uri=uri)
    # Artifacts (the sample table) in the test's folder, not ./mlruns.
    experiment_id = client.create_experiment("ftcallback-test", artifact_location=(env / "artifacts").as_uri())
    _train(env / "out", "mlflow")
    (run,) = client.search_runs([experiment_id])
    history = {
        key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        for key in [*KEYS, "loss"]
    }
    _assert_series(history, "loss")
    assert run.info.status == "FINISHED"
    table = mlflow.load_table("efficiency/samples.json", run_ids=[run.info.run_id])
    assert sorted(set(table["step"])) == CHECK_STEPS and len(table) == 3 * len(CHECK_STEPS)


# --------------------------------------------------------------------------------------------- Trackio
@pytest.mark.slow
def test_trackio_local_run_holds_the_efficiency_series(env: Path) -> None:
    pytest.importorskip("trackio")
    from trackio.sqlite_storage import SQLiteStorage

    project = f"ftcallback-test-{env.name}"  # TRACKIO_DIR is a temporary folder (tests/conftest.py)
    _train(env / "out", "trackio", project=project, run_name="tiny")
    logs = SQLiteStorage.get_logs(project, "tiny")
    # TrackioCallback logs on trackio's own step counter, with the Trainer's step as "train/global_step".
    history: dict[str, list[tuple[int, float]]] = {}
    for row in logs:
        for key, value in row.items():
            if isinstance(value, (int, float)) and key.startswith("train/"):
                history.setdefault(key.removeprefix("train/"), []).append((int(row["train/global_step"]), value))
    _assert_series(history, "loss")
    tables = [row for row in logs if "train/efficiency/samples" in row or "efficiency/samples" in row]
    assert len(tables) == len(CHECK_STEPS), "one sample table per check"


# ------------------------------------------------------------------------------------- after train end
def test_after_train_end_only_the_console_gets_checks() -> None:
    """MLflow and Trackio end their runs in on_train_end, before ours: a late check must not open a new run."""
    from types import SimpleNamespace

    from ftcallback._sinks import TrackerSink

    received: list[str] = []

    def fake(name: str) -> Any:
        return type(name, (), {"on_log": lambda self, *a, **k: received.append(name)})()

    callbacks = [fake("MLflowCallback"), fake("TrackioCallback"), fake("WandbCallback"), fake("PrinterCallback")]
    state = SimpleNamespace(epoch=1.0, global_step=4, log_history=[])
    trainer = SimpleNamespace(
        callback_handler=SimpleNamespace(callbacks=callbacks), state=state, args=None, control=None, model=None
    )
    sink = TrackerSink(trainer, owner=object())
    sink.send({"efficiency/latency_ms_p50": 1.0}, 4)
    assert received == ["MLflowCallback", "TrackioCallback", "WandbCallback", "PrinterCallback"]
    received.clear()
    sink.end_training()
    sink.send({"efficiency/latency_ms_p50": 1.0}, 4)
    assert received == ["PrinterCallback"]
    assert len(state.log_history) == 2  # trainer_state.json keeps both
