"""plot_report: the picture of a run, drawn from a synthetic report.json."""

from __future__ import annotations

import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from ftcallback._errors import ConfigError
from ftcallback._measurement import Measurement, RequestSample
from ftcallback._plot import plot_report, run_verdict
from ftcallback._report import CheckRecord, RunReport
from ftcallback.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_height(path: Path) -> int:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return int(struct.unpack(">I", data[20:24])[0])  # IHDR: width, then height


def _summary(p50: float, tokens: float) -> dict[str, float]:
    return {
        "latency_ms_p50": p50,
        "latency_ms_p95": p50 * 1.2,
        "latency_ms_p99": p50 * 1.3,
        "output_tokens_mean": tokens,
    }


def _verdict(metric: str, value: float, limit: float, passed: bool) -> dict[str, Any]:
    return {"metric": metric, "value": value, "limit": limit, "passed": passed}


def _report(tmp_path: Path, *, stopped: bool = True, budget: dict[str, Any] | None = None) -> RunReport:
    """Baseline, a check within budget, a failed measurement, a latency breach, a token breach and a stop."""
    samples = tuple(
        RequestSample(p, r, 0.1 + 0.01 * p, 0.02, 6, 10, True) for p in range(3) for r in range(2)
    )
    base = Measurement(samples=samples)
    report = RunReport(
        budget={"latency_ms": 150.0, "latency_stat": "p99", "max_token_increase": 0.5}
        if budget is None
        else budget,
        baseline=base.to_dict(),
        output_dir=str(tmp_path / "run"),
    )
    report.add_check(CheckRecord(index=0, kind="baseline", epoch=0.0, step=0, summary=base.summary()))
    report.add_check(
        CheckRecord(
            index=1, kind="epoch", epoch=1.0, step=10, summary=_summary(105.0, 12.0),
            verdict=[_verdict("latency_ms_p99", 136.5, 150.0, True)],
        )
    )  # fmt: skip
    report.add_check(
        CheckRecord(index=2, kind="step", epoch=1.5, step=15, status="failed", error="RuntimeError: OOM")
    )
    report.add_check(
        CheckRecord(
            index=3, kind="epoch", epoch=2.0, step=20, summary=_summary(125.0, 13.0), breached=True,
            verdict=[_verdict("latency_ms_p99", 162.5, 150.0, False)], consecutive_breaches=1,
        )
    )  # fmt: skip
    report.add_check(
        CheckRecord(
            index=4, kind="epoch", epoch=3.0, step=30, summary=_summary(110.0, 18.0), breached=True,
            verdict=[_verdict("output_tokens_mean", 18.0, 15.0, False)], consecutive_breaches=2,
        )
    )  # fmt: skip
    if stopped:
        report.stopped = {
            "step": 30,
            "epoch": 3.0,
            "budget": "max_token_increase",
            "reason": "budget_breached",
        }
    return report


TRAINER_STATE = {
    "log_history": [
        *({"loss": 3.0 - 0.05 * step, "step": step} for step in range(5, 31, 5)),
        {"eval_loss": 2.6, "eval_runtime": 0.3, "step": 10},
        {"eval_loss": 2.2, "eval_runtime": 0.3, "step": 20},
        {"train_runtime": 12.0, "step": 30},  # the final summary entry has no loss
    ]
}


def test_plot_writes_a_png_with_a_loss_panel(tmp_path: Path) -> None:
    out = tmp_path / "plots" / "sub" / "run.png"  # missing folders are created
    written = plot_report(_report(tmp_path), out, TRAINER_STATE)
    assert written == out
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert out.stat().st_size > 30_000

    two_panels = plot_report(_report(tmp_path), tmp_path / "no_loss.png")
    assert _png_height(two_panels) < _png_height(out)  # the loss panel only comes with a loss


def test_plot_tolerates_a_report_it_cannot_fully_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    report = _report(tmp_path, stopped=False, budget={"latency_ms": -5.0, "patience": 2})
    report.baseline = {"schema_version": 99, "samples": {}}
    out = plot_report(report, tmp_path / "run.svg")
    assert out.read_text().lstrip().startswith("<?xml")
    messages = [r.getMessage() for r in caplog.records if r.name == "ftcallback.plot"]
    assert any("budget is invalid" in m for m in messages)
    assert any("baseline is unreadable" in m for m in messages)


def test_plot_rejects_an_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot write a plot as '\.docx'; use one of .*\.png"):
        plot_report(_report(tmp_path), tmp_path / "run.docx")


def test_missing_matplotlib_gives_an_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg", "matplotlib.ticker"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules makes the import fail
    with pytest.raises(ImportError, match=r"pip install 'ftcallback\[plot\]'"):
        plot_report(_report(tmp_path), tmp_path / "run.png")

    _report(tmp_path).save(tmp_path / "run" / "efficiency" / "report.json")
    assert main(["report", str(tmp_path / "run"), "--plot", str(tmp_path / "run.png"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ftcallback: error: plotting needs matplotlib") and err.count("\n") == 1
    assert not (tmp_path / "run.png").exists()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, "STOPPED at step 30 (max_token_increase breached)"),
        ({"stopped": None}, "over budget at the last check (step 30)"),
        ({"stopped": None, "drop_last": True}, "over budget at the last check (step 20)"),
        ({"stopped": None, "fix_last": True}, "within budget at the last check (breached earlier)"),
        ({"stopped": None, "only_ok": True}, "within budget"),
        ({"stopped": None, "no_checks": True}, "no checks recorded"),
    ],
)
def test_run_verdict(tmp_path: Path, change: dict[str, Any], expected: str) -> None:
    report = _report(tmp_path)
    if "stopped" in change:
        report.stopped = change["stopped"]
    if change.get("drop_last"):
        report.checks.pop()
    if change.get("fix_last"):
        report.checks[-1].breached = False
    if change.get("only_ok"):
        report.checks = [c for c in report.checks if not c.breached]
    if change.get("no_checks"):
        report.checks = []
    assert run_verdict(report) == expected
