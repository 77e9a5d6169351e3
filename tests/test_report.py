"""report.json: the run record that is also the callback's resumable state."""

from __future__ import annotations

import json
import math
import types
from pathlib import Path

import numpy as np
import pytest

import ftcallback._json as json_module
from ftcallback._errors import FTCallbackError, ReportError
from ftcallback._measurement import Measurement, RequestSample
from ftcallback._report import (
    REPORT_SCHEMA_VERSION,
    CheckRecord,
    RunReport,
    format_checks_table,
    report_path,
)


def _measurement() -> Measurement:
    samples = tuple(
        RequestSample(
            prompt_index=p,
            repeat=r,
            latency_s=0.04 + 0.01 * p,
            ttft_s=0.01,
            input_tokens=5,
            output_tokens=9 + p,
            finished=p % 2 == 0,
        )
        for p in range(3)
        for r in range(2)
    )
    return Measurement(
        samples=samples, settings={"max_new_tokens": 16}, created_at="2025-01-01T00:00:00+00:00"
    )


def _verdict(metric: str, value: float, limit: float, passed: bool | None) -> dict:
    return {"metric": metric, "value": value, "limit": limit, "passed": passed}


def _check(index: int, step: int, *, kind: str = "epoch", breached: bool = False, **kw) -> CheckRecord:
    passed = not breached
    kw.setdefault("verdict", [_verdict("latency_ratio", 1.5 if breached else 1.05, 1.2, passed)])
    kw.setdefault(
        "summary",
        {
            "latency_ms_p50": 40.0 + index,
            "latency_ms_p95": 55.5,
            "ttft_ms_p50": 9.0,
            "output_tokens_mean": 12.25,
        },
    )
    return CheckRecord(index=index, kind=kind, epoch=float(index), step=step, breached=breached, **kw)


@pytest.fixture
def report(tmp_path: Path) -> RunReport:
    m = _measurement()
    r = RunReport(
        budget={"max_latency_increase": 0.2, "patience": 2},
        settings={"every": "epoch", "prompts": 3},
        baseline=m.to_dict(),
        baseline_source="train_begin",
        output_dir=str(tmp_path),
    )
    r.add_check(_check(0, 0, kind="baseline", verdict=[], summary=m.summary(), measurement=m.to_dict()))
    r.add_check(_check(1, 10, cost={"cost_per_request": 1.25e-4, "monthly_cost": float("nan")}))
    r.add_check(
        _check(2, 20, breached=True, consecutive_breaches=1, ratios={"latency_ratio": {"ratio": 1.5}})
    )
    return r


# ----------------------------------------------------------------------------- JSON
def test_report_path() -> None:
    assert report_path("out") == Path("out") / "efficiency" / "report.json"


def test_round_trip_is_json_safe(report: RunReport) -> None:
    report.checks[1].summary["noise_cv"] = float("nan")
    report.checks[1].summary["tpot_ms_p50"] = float("inf")
    report.checks[1].ratios["numpy"] = np.float32(1.5)
    report.checks[1].ratios["flag"] = np.bool_(True)
    report.checks[1].ratios["interval"] = np.array([0.9, np.nan])
    report.stopped = {"step": 20, "value": float("inf"), "message": "latency up"}

    data = report.to_dict()
    text = json.dumps(data, allow_nan=False)  # must not raise
    back = RunReport.from_dict(json.loads(text))

    assert data["schema_version"] == REPORT_SCHEMA_VERSION
    assert "ftcallback_version" in data
    assert data["checks"][1]["summary"]["noise_cv"] is None
    assert data["checks"][1]["summary"]["tpot_ms_p50"] == "inf"
    assert data["checks"][1]["ratios"] == {"numpy": 1.5, "flag": True, "interval": [0.9, None]}
    assert data["stopped"]["value"] == "inf"
    assert math.isnan(back.checks[1].summary["noise_cv"])
    assert back.checks[1].summary["tpot_ms_p50"] == math.inf
    assert math.isnan(back.checks[1].cost["monthly_cost"])
    assert back.checks[2] == report.checks[2]
    baseline = back.baseline_measurement()
    assert baseline is not None and baseline.samples == _measurement().samples
    assert RunReport().baseline_measurement() is None
    assert back.checks[0].measurement == report.checks[0].measurement


def test_round_trip_equal_without_nan(report: RunReport) -> None:
    report.checks[0].summary = {"latency_ms_p50": 41.0}
    report.checks[1].cost = {"cost_per_request": 1e-4}
    report.record_checkpoint(10, "ckpt-10")
    assert RunReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report


def test_small_form_for_trainer_state(report: RunReport) -> None:
    small = report.to_dict(include_measurements=False)
    assert all(c["measurement"] is None for c in small["checks"])
    assert small["baseline"] == report.baseline  # a resumed run needs it
    assert len(json.dumps(small)) < len(json.dumps(report.to_dict()))
    assert RunReport.from_dict(small).checks[2].breached


def test_from_dict_gives_defaults_for_missing_keys() -> None:
    old = {"schema_version": 1, "checks": [{"kind": "epoch", "step": 5}, {"step": 9, "breached": True}]}
    r = RunReport.from_dict(old)
    assert [c.index for c in r.checks] == [0, 1]  # numbered by position
    first = r.checks[0]
    assert (first.status, first.error, first.summary, first.verdict, first.measurement) == (
        "ok",
        None,
        {},
        [],
        None,
    )
    assert first.epoch is None and first.consecutive_breaches == 0
    assert r.checks[1].kind == "step" and r.checks[1].breached
    assert (r.budget, r.baseline, r.checkpoints, r.stopped) == ({}, None, [], None)
    assert RunReport.from_dict({}).checks == []


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"schema_version": 2, "checks": []}, r"schema_version 2 is not supported"),
        ([1, 2], r"must be a JSON object, got list"),
        ({"checks": [{"kind": "minute", "step": 1}]}, r"`kind` must be one of .*got 'minute'"),
        ({"checks": [{"step": "ten"}]}, r"corrupt check 0: ValueError"),
        ({"checks": [3]}, r"a check must be a JSON object, got int"),
    ],
)
def test_from_dict_rejects_bad_data(data: object, match: str) -> None:
    with pytest.raises(ReportError, match=match):
        RunReport.from_dict(data)  # type: ignore[arg-type]


def test_check_record_validates_kind_and_status() -> None:
    with pytest.raises(ReportError, match=r"`status` must be one of \('ok', 'failed'\), got 'bad'"):
        CheckRecord(index=0, kind="step", step=1, status="bad")
    assert issubclass(ReportError, FTCallbackError) and issubclass(ReportError, ValueError)


# ----------------------------------------------------------------------------- files
def test_save_and_load(report: RunReport, tmp_path: Path) -> None:
    written = report.save()
    assert written == report_path(tmp_path)
    assert RunReport.load(written).to_dict() == report.to_dict()  # (NaN != NaN: compare the JSON form)
    assert RunReport.load(tmp_path).to_dict() == report.to_dict()  # an output_dir works too
    assert report.updated_at >= report.created_at


def test_save_without_path_or_output_dir() -> None:
    with pytest.raises(ReportError, match="needs a `path`"):
        RunReport().save()


def test_save_is_atomic(report: RunReport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = report.save()
    before = path.read_text()
    report.add_check(_check(3, 30))

    def dump_then_crash(obj, fh, **kwargs):  # writes half a file, then dies
        fh.write('{"schema_version": 1, "checks": [')
        raise OSError("disk full")

    monkeypatch.setattr(json_module, "json", types.SimpleNamespace(dump=dump_then_crash))
    with pytest.raises(OSError, match="disk full"):
        report.save(path)
    monkeypatch.undo()

    assert path.read_text() == before
    assert len(RunReport.load(path).checks) == 3
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]  # no temp file left behind


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, r"^cannot read report '.*report\.json': No such file or directory$"),
        ("{not json", r"^report '.*report\.json' is not valid JSON: Expecting property name"),
        (
            '{"schema_version": 7, "checks": []}',
            r"^report '.*' has schema_version 7; this ftcallback reads 1",
        ),
        ('{"schema_version": 1, "samples": {}}', r"^'.*report\.json' is not an ftcallback report"),
        ("[]", r"is not an ftcallback report"),
        ('{"schema_version": 1, "checks": [{"step": []}]}', r"^report '.*': corrupt check 0: TypeError"),
    ],
)
def test_load_errors(tmp_path: Path, content: str | None, match: str) -> None:
    path = tmp_path / "report.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ReportError, match=match) as info:
        RunReport.load(path)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_bookkeeping(tmp_path: Path) -> None:
    r = RunReport(output_dir=str(tmp_path))
    assert r.record_checkpoint(5, tmp_path / "checkpoint-5")["within_budget"] is None  # nothing measured yet
    r.add_check(_check(0, 0, kind="baseline"))
    r.add_check(_check(1, 10))
    r.add_check(_check(2, 20, breached=True))
    r.add_check(_check(3, 30, status="failed", error="CUDA OOM", summary={}, verdict=[]))
    assert r.record_checkpoint(10, tmp_path / "checkpoint-10")["within_budget"] is True
    assert r.record_checkpoint(15, tmp_path / "checkpoint-15")["within_budget"] is True  # check at 10 holds
    assert r.record_checkpoint(20, tmp_path / "checkpoint-20")["within_budget"] is False
    # A failed check says nothing: the breach at step 20 still speaks for step 30.
    assert r.record_checkpoint(30, tmp_path / "checkpoint-30")["within_budget"] is False
    assert [c["step"] for c in r.checkpoints] == [5, 10, 15, 20, 30]

    # None of them exist on disk: none is named (a path that is gone is no recommendation).
    assert r.last_within_budget_checkpoint is None
    (tmp_path / "checkpoint-10").mkdir()  # save_total_limit removed checkpoint-15
    assert r.last_within_budget_checkpoint == str(tmp_path / "checkpoint-10")
    assert r.to_dict()["last_within_budget_checkpoint"] == str(tmp_path / "checkpoint-10")

    # A resumed run saving the same path again replaces its entry.
    r.record_checkpoint(10, tmp_path / "checkpoint-10")
    assert [c["step"] for c in r.checkpoints] == [5, 10, 15, 20, 30]


def test_no_within_budget_checkpoint() -> None:
    r = RunReport()
    r.add_check(_check(0, 10, breached=True))
    r.record_checkpoint(10, "checkpoint-10")
    assert r.last_within_budget_checkpoint is None
    assert r.next_index == 1 and r.last_check is r.checks[0]
    assert RunReport().next_index == 0 and RunReport().last_check is None


# ----------------------------------------------------------------------------- table
def test_table_rows_verdicts_and_footer(report: RunReport) -> None:
    report.add_check(
        _check(3, 30, status="failed", error="generate raised\ntraceback...", summary={}, verdict=[])
    )
    report.add_check(
        _check(4, 40, verdict=[_verdict("output_tokens_ratio", float("nan"), 1.5, None)], summary={})
    )  # not evaluable
    report.record_checkpoint(10, "out/checkpoint-10")
    text = format_checks_table(report)
    lines = text.splitlines()

    assert lines[0].split()[:3] == ["kind", "epoch", "step"] and "loss" not in lines[0]
    rows = lines[2 : 2 + len(report.checks)]
    assert [row.split()[0] for row in rows] == ["baseline", "epoch", "epoch", "epoch", "epoch"]
    assert rows[0].endswith("n/a")
    assert rows[1].endswith("ok") and "41.0" in rows[1] and "55.5" in rows[1] and "12.2" in rows[1]
    assert "0.000125" in rows[1] and "cost/req" in lines[0]
    assert rows[2].endswith("BREACH: latency_ratio 1.5>1.2")
    assert rows[3].endswith("failed: generate raised")
    assert rows[4].endswith("n/a")
    assert "trained to the end" in text
    assert lines[-1] == (
        "last within-budget checkpoint: none on disk (out/checkpoint-10 was within budget but has been deleted, "
        "e.g. by save_total_limit)"
    )


def test_table_stopped_footer_and_long_verdicts() -> None:
    r = RunReport()
    many = [_verdict(f"metric_with_a_long_name_{i}", 2.0, 1.0, False) for i in range(8)]
    r.add_check(_check(0, 7, breached=True, consecutive_breaches=3, verdict=many))
    r.stopped = {"step": 7, "message": "stopped at step 7: latency p50 1.50x the baseline, limit 1.20x " * 3}
    lines = format_checks_table(r).splitlines()
    # The verdict wraps inside its column, three lines at most.
    column = lines[0].index("verdict")
    assert lines[2].startswith("epoch") and lines[2][column:].startswith(
        "BREACH: metric_with_a_long_name_0 2.0>1.0"
    )
    assert lines[3].strip().startswith("metric_with") and lines[3][:column].strip() == ""
    assert lines[4].endswith(" ...") and lines[5] == ""
    assert lines[6].startswith("stopped: stopped at step 7: latency p50")
    assert lines[7].startswith("  ")  # the stop message wraps too
    assert lines[-1] == "last within-budget checkpoint: none"
    assert max(len(line) for line in lines) <= 100


def test_table_reads_trainer_state(report: RunReport) -> None:
    state = {
        "log_history": [
            {"step": 5, "loss": 2.5, "epoch": 0.5},
            {"step": 10, "loss": 2.0, "epoch": 1.0},
            {"step": 10, "eval_loss": 2.25, "eval_runtime": 0.1, "epoch": 1.0},
            {"step": 15, "loss": 1.5, "epoch": 1.5},
            {"step": 20, "loss": 1.125, "epoch": 2.0},
        ]
    }
    lines = format_checks_table(report, state).splitlines()
    assert lines[0].split()[3:5] == ["loss", "eval_loss"]
    baseline, at_10, at_20 = (line.split() for line in lines[2:5])
    assert baseline[3:5] == ["-", "-"]  # nothing logged at step 0
    assert at_10[3:5] == ["2.0000", "2.25"]
    assert at_20[3:5] == ["1.1250", "2.25"]  # closest eval at or before step 20
    assert max(len(line) for line in lines) <= 100


def test_table_without_checks() -> None:
    text = format_checks_table(RunReport(), {"log_history": []})
    assert "(no checks recorded)" in text and "trained to the end" in text
