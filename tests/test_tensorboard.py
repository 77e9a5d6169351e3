"""The TensorBoard sink, read back with TensorBoard's own event reader, and the log-dir rules."""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from helpers_training import make_trainer, training_args
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.integrations.integration_utils import TensorBoardCallback, rewrite_logs

from ftcallback._tensorboard import HEADLINE_KEYS, SUMMARY_KEYS, TensorBoardSink, resolve_log_dir

# Keep every event: the default size guidance samples scalars down to 1000 and tensors to 10.
_ALL = {event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0}


def read(log_dir: str | Path) -> event_accumulator.EventAccumulator:
    acc = event_accumulator.EventAccumulator(str(log_dir), size_guidance=_ALL)
    acc.Reload()
    return acc


def series(acc: event_accumulator.EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def text_of(acc: event_accumulator.EventAccumulator, tag: str) -> list[str]:
    return [e.tensor_proto.string_val[0].decode() for e in acc.Tensors(tag)]


SUMMARY = {
    "latency_ms_p50": 40.0,
    "latency_ms_p95": 52.5,
    "latency_ms_std": 3.0,  # not a curve worth drawing: left out
    "ttft_ms_p50": 8.0,
    "output_tokens_mean": 12.0,
    "noise_cv": math.nan,  # skipped, never written as NaN
    "tpot_ms_p50": math.inf,
}


# ----------------------------------------------------------------------------- sink
def test_log_check_writes_summary_extra_and_limits(tmp_path: Path) -> None:
    sink = TensorBoardSink(tmp_path, mirror_trainer_logs=False)
    written = sink.log_check(
        10,
        SUMMARY,
        {"latency_ratio": 1.6, "latency_judged_ratio": 1.1, "cost_per_request": 2e-4, "cost_ratio": math.nan},
        {"latency_judged_ratio": 1.2, "output_tokens_mean": 20.0, "latency_ms_p95": math.nan},
    )
    sink.log_check(
        20, {**SUMMARY, "latency_ms_p50": 45.0}, {"latency_ratio": 1.3, "latency_judged_ratio": 1.3},
        {"latency_judged_ratio": 1.2},
    )
    sink.close()

    acc = read(tmp_path)
    scalars = set(acc.Tags()["scalars"])
    assert set(written) == {
        "efficiency/latency_ms_p50",
        "efficiency/latency_ms_p95",
        "efficiency_detail/ttft_ms_p50",
        "efficiency/output_tokens_mean",
        "efficiency_detail/latency_ratio",
        "efficiency_detail/latency_judged_ratio",
        "efficiency_detail/cost_per_request",
        "budget:efficiency_detail/latency_judged_ratio",
        "budget:efficiency/output_tokens_mean",
    }
    assert scalars == {t for t in written if not t.startswith("budget:")}
    assert series(acc, "efficiency/latency_ms_p50") == [(10, 40.0), (20, 45.0)]
    judged = "efficiency_detail/latency_judged_ratio"
    assert series(acc, judged) == [(10, pytest.approx(1.1)), (20, pytest.approx(1.3))]
    # The limits: a run of their own (TensorBoard colours by run), under the metric's own tag: the relative latency
    # limit beside the judged ratio it decides on, not beside the observed one.
    budget = read(tmp_path / "budget")
    assert set(budget.Tags()["scalars"]) == {judged, "efficiency/output_tokens_mean"}
    assert series(budget, judged) == [(10, pytest.approx(1.2)), (20, pytest.approx(1.2))]
    assert series(budget, "efficiency/output_tokens_mean") == [(10, 20.0)]
    # NaN and inf were skipped, not written.
    assert not {"efficiency_detail/noise_cv", "efficiency_detail/tpot_ms_p50", "efficiency_detail/cost_ratio"} & scalars
    assert all(math.isfinite(e.value) for tag in scalars for e in acc.Scalars(tag))


def test_every_summary_key_is_written(tmp_path: Path) -> None:
    with TensorBoardSink(tmp_path, mirror_trainer_logs=False) as sink:
        sink.log_check(3, dict.fromkeys(SUMMARY_KEYS, 1.5))
    # The headline under efficiency/, the rest out of the way under efficiency_detail/.
    assert set(read(tmp_path).Tags()["scalars"]) == {
        f"efficiency/{k}" if k in HEADLINE_KEYS else f"efficiency_detail/{k}" for k in SUMMARY_KEYS
    }


def test_layout_pairs_each_metric_with_its_limit(tmp_path: Path) -> None:
    sink = TensorBoardSink(tmp_path, mirror_trainer_logs=False)
    assert sink.write_layout(["latency_judged_ratio", "output_tokens_mean"]) is True
    assert sink.write_layout(["latency_judged_ratio"]) is False  # once per sink
    sink.log_check(
        1,
        {"latency_ms_p50": 1.0, "output_tokens_mean": 9.0},
        {"latency_ratio": 1.0, "latency_judged_ratio": 1.0},
        {"latency_judged_ratio": 1.2, "output_tokens_mean": 16.0},
    )
    sink.close()

    acc = read(tmp_path)
    configs = acc.Tensors("custom_scalars__config__")
    assert len(configs) == 1
    layout = layout_pb2.Layout.FromString(configs[0].tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for cat in layout.category for chart in cat.chart}
    # What to watch first: each budget metric with its limit (latency first), then the loss; ratios apart.
    assert [cat.title for cat in layout.category] == [
        "efficiency at a glance",
        "efficiency: ratios to baseline",
        "efficiency: latency detail",
    ]
    assert [chart.title for chart in layout.category[0].chart] == [
        "latency_judged_ratio and its budget",
        "output_tokens_mean and its budget",
        "train/loss",
    ]
    assert set(charts) == {
        "latency_judged_ratio and its budget",
        "output_tokens_mean and its budget",
        "train/loss",
        "latency percentiles (ms)",
        "latency and output-token ratios",
    }
    # Chart tags are regular expressions (matched from the start): each must pick exactly its tag, which the
    # measured run and the budget run both hold.
    tags = acc.Tags()["scalars"]
    limits = read(tmp_path / "budget").Tags()["scalars"]
    for metric in ("latency_judged_ratio", "output_tokens_mean"):
        title = f"{metric} and its budget"
        matched = sorted(t for t in tags for pattern in charts[title] if re.match(pattern, t))
        tag = sink.tag(metric)
        assert matched == [tag] and tag.startswith(("efficiency/", "efficiency_detail/"))
        assert [t for t in limits for pattern in charts[title] if re.match(pattern, t)] == [tag]
    assert charts["train/loss"] == ["^train/loss$"]
    assert [p for p in charts["latency percentiles (ms)"] if re.match(p, "efficiency/latency_ms_p50")]
    assert [p for p in charts["latency percentiles (ms)"] if re.match(p, "efficiency_detail/latency_ms_p99")]


def test_log_samples_as_markdown_text(tmp_path: Path) -> None:
    with TensorBoardSink(tmp_path, mirror_trainer_logs=False) as sink:
        sink.log_samples(5, [{"prompt_index": 3, "prompt": "the server", "output": "generates\n| a *reply*"}])
        sink.log_samples(6, [])  # nothing to write
    acc = read(tmp_path)
    # torch's SummaryWriter.add_text appends "/text_summary" to the tag.
    [text] = text_of(acc, "efficiency/samples/text_summary")
    assert [e.step for e in acc.Tensors("efficiency/samples/text_summary")] == [5]
    assert "**prompt 3**" in text and "    the server" in text
    assert "    generates\n    | a *reply*" in text  # verbatim, in an indented code block


def test_mirror_trainer_logs_like_transformers(tmp_path: Path) -> None:
    logs = {
        "loss": 2.5,
        "learning_rate": 5e-5,
        "grad_norm": math.nan,
        "epoch": 0.5,
        "eval_loss": 2.75,
        "test_accuracy": 0.5,
        "note": "text is not a number",
        "flag": True,
    }
    with TensorBoardSink(tmp_path, mirror_trainer_logs=True) as sink:
        written = sink.log_trainer_logs(logs, 7)
    expected = {k for k, v in rewrite_logs(logs).items() if isinstance(v, float) and math.isfinite(v)}
    assert (
        set(written)
        == expected
        == {"train/loss", "train/learning_rate", "train/epoch", "eval/loss", "test/accuracy"}
    )
    acc = read(tmp_path)
    assert set(acc.Tags()["scalars"]) == expected
    assert series(acc, "train/loss") == [(7, 2.5)]


def test_no_mirroring_when_the_tensorboard_callback_writes(tmp_path: Path) -> None:
    sink = TensorBoardSink(tmp_path / "tb", mirror_trainer_logs=False)
    assert sink.log_trainer_logs({"loss": 1.0}, 1) == []
    sink.flush()
    sink.close()
    assert not (tmp_path / "tb").exists()  # nothing written, nothing created


def test_writes_again_after_close(tmp_path: Path) -> None:
    sink = TensorBoardSink(tmp_path, mirror_trainer_logs=False)
    sink.log_check(1, {"latency_ms_p50": 1.0})
    sink.close()
    sink.log_check(2, {"latency_ms_p50": 2.0})
    sink.close()
    assert series(read(tmp_path), "efficiency/latency_ms_p50") == [(1, 1.0), (2, 2.0)]
    assert all(name.endswith(".ftcallback") for name in os.listdir(tmp_path))


# ----------------------------------------------------------------------------- log dir
def _args(tmp_path: Path, report_to: str | list[str]) -> TrainingArguments:
    return TrainingArguments(output_dir=str(tmp_path), report_to=report_to, use_cpu=True)


def _events_file(
    folder: Path, *, mtime: float | None = None, name: str = "events.out.tfevents.1.host.1.0"
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(b"")
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


@pytest.fixture(autouse=True)
def _no_env_log_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)


def test_report_to_none_mirrors_into_a_new_run(tmp_path: Path) -> None:
    log_dir, mirror = resolve_log_dir(_args(tmp_path, "none"), started_at=time.time())
    assert mirror is True
    assert Path(log_dir).parent == tmp_path / "runs"
    assert not (tmp_path / "runs").exists()  # resolving creates nothing


def test_report_to_tensorboard_finds_the_callbacks_run(tmp_path: Path) -> None:
    now = time.time()
    _events_file(tmp_path / "runs" / "old_run", mtime=now - 3600)  # an earlier run
    _events_file(tmp_path / "runs" / "this_run", mtime=now - 1)  # created just before our on_train_begin
    # Our own file from an earlier run in this output_dir does not count, however new.
    _events_file(tmp_path / "runs" / "ours", name="events.out.tfevents.2.host.1.0.ftcallback")
    log_dir, mirror = resolve_log_dir(_args(tmp_path, ["tensorboard"]), started_at=now)
    assert (log_dir, mirror) == (str(tmp_path / "runs" / "this_run"), False)


def test_report_to_tensorboard_trial_folder(tmp_path: Path) -> None:
    _events_file(tmp_path / "runs" / "date_host" / "trial-3")
    log_dir, _ = resolve_log_dir(_args(tmp_path, ["tensorboard"]), started_at=time.time())
    assert log_dir == str(tmp_path / "runs" / "date_host" / "trial-3")


def test_report_to_tensorboard_without_its_folder_falls_back(tmp_path: Path) -> None:
    _events_file(tmp_path / "runs" / "old_run", mtime=time.time() - 3600)
    log_dir, mirror = resolve_log_dir(_args(tmp_path, ["tensorboard"]), started_at=time.time())
    assert mirror is False  # the TensorBoardCallback writes the loss: never duplicate it
    assert Path(log_dir).parent == tmp_path / "runs" and Path(log_dir).name != "old_run"


def test_env_log_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    assert resolve_log_dir(_args(tmp_path, ["tensorboard"]), started_at=0.0) == (str(tmp_path / "tb"), False)
    # Without TensorBoard reporting nobody writes there; mirror into a run of our own.
    log_dir, mirror = resolve_log_dir(_args(tmp_path, "none"), started_at=0.0)
    assert Path(log_dir).parent == tmp_path / "runs" and mirror is True


@pytest.mark.parametrize(("report_to", "mirror"), [("none", True), (["tensorboard"], False)])
def test_override(tmp_path: Path, report_to: str | list[str], mirror: bool) -> None:
    override = str(tmp_path / "mine")
    assert resolve_log_dir(_args(tmp_path, report_to), started_at=0.0, override=override) == (
        override,
        mirror,
    )


def test_report_to_all(tmp_path: Path) -> None:
    # TrainingArguments expands "all" itself; a plain object keeps it, and is expanded here.
    for args in (_args(tmp_path, "all"), SimpleNamespace(output_dir=str(tmp_path), report_to="all")):
        # Made after the arguments: with every tracker installed, expanding "all" imports them (seconds).
        _events_file(tmp_path / "runs" / "x")
        assert resolve_log_dir(args, started_at=time.time()) == (str(tmp_path / "runs" / "x"), False)


def test_with_the_real_tensorboard_callback(tmp_path: Path) -> None:
    """The TensorBoardCallback's on_train_begin runs before ours: its folder is found and shared."""
    args = _args(tmp_path, ["tensorboard"])
    state, control = TrainerState(), TrainerControl()
    started_at = time.time()
    tb_callback = TensorBoardCallback()
    tb_callback.on_train_begin(args, state, control)
    tb_callback.on_log(args, state, control, logs={"loss": 2.0})

    log_dir, mirror = resolve_log_dir(args, started_at=started_at)
    assert (log_dir, mirror) == (tb_callback.logging_dir, False)
    with TensorBoardSink(log_dir, mirror_trainer_logs=mirror) as sink:
        sink.log_check(0, {"latency_ms_p50": 30.0})
        sink.log_trainer_logs({"loss": 2.0}, 0)  # mirroring is off: no second loss curve
    tb_callback.on_train_end(args, state, control)

    acc = read(log_dir)
    assert {"train/loss", "efficiency/latency_ms_p50"} <= set(acc.Tags()["scalars"])
    assert len(acc.Scalars("train/loss")) == 1
    assert "args/text_summary" in acc.Tags()["tensors"]


# ----------------------------------------------------------------------------- through a real Trainer
class _EfficiencyToTensorBoard(TrainerCallback):
    """The sink's part of the callback, alone: resolve the folder at train begin, log a check per step."""

    def __init__(self) -> None:
        self.sink: TensorBoardSink | None = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.is_world_process_zero:
            log_dir, mirror = resolve_log_dir(args, started_at=time.time())
            self.sink = TensorBoardSink(log_dir, mirror_trainer_logs=mirror)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.sink is not None:
            self.sink.log_check(state.global_step, {"latency_ms_p50": 10.0 + state.global_step})

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if self.sink is not None and logs:
            self.sink.log_trainer_logs(logs, state.global_step)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.sink is not None:
            self.sink.close()


@pytest.mark.parametrize("report_to", [["tensorboard"], "none"])
def test_loss_and_efficiency_curves_share_one_run(tmp_path: Path, report_to: str | list[str]) -> None:
    """`tensorboard --logdir <output_dir>`: the loss and the efficiency curves in one run, none twice."""
    from ftcallback.testing import tiny_causal_lm

    args = training_args(
        tmp_path,
        report_to=report_to,
        max_steps=3,
        logging_strategy="steps",
        logging_steps=1,
        per_device_train_batch_size=2,
    )
    data = [{"input_ids": [5 + i, 6, 7, 8, 9, 10], "labels": [5 + i, 6, 7, 8, 9, 10]} for i in range(6)]
    trainer = make_trainer(tiny_causal_lm("gpt2"), args, data, None, [_EfficiencyToTensorBoard()])
    trainer.train()

    runs = {
        folder: set(read(folder).Tags()["scalars"])
        for folder in {p.parent for p in tmp_path.glob("runs/**/events.out.tfevents.*")}
    }
    with_loss = [folder for folder, tags in runs.items() if "train/loss" in tags]
    assert len(with_loss) == 1
    assert "efficiency/latency_ms_p50" in runs[with_loss[0]]
    assert [s for s, _ in series(read(with_loss[0]), "train/loss")] == [1, 2, 3]  # written once per step
    assert series(read(with_loss[0]), "efficiency/latency_ms_p50") == [(1, 11.0), (2, 12.0), (3, 13.0)]
