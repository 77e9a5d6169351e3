"""``ftcallback report``: the checks of a run as a table or JSON, with the loss, and a plot.

The loss and eval metric come from the run's ``trainer_state.json`` (or its latest checkpoint's);
a run that left none still shows the training loss each check recorded (``CheckRecord.loss``).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import EXIT_OK, UsageError, one_line
from ._format import budget_text, print_json, width, wrap_field

if TYPE_CHECKING:
    from .._report import CheckRecord, RunReport

__all__ = ["report_summary", "run"]

logger = logging.getLogger("ftcallback.cli")


def _locate_report(arg: str) -> tuple[Path, Path]:
    """``(report file, run dir)`` for RUN_DIR, RUN_DIR/efficiency or the report file itself."""
    from .._report import report_path

    target = Path(arg)
    if not target.exists():
        raise UsageError(f"{arg!r} does not exist; pass a run's output_dir or its efficiency/report.json")
    if target.is_dir():
        if not report_path(target).exists() and (target / "report.json").exists():
            # RUN_DIR/efficiency given: the report is right here and the run is one level up.
            return target / "report.json", target.parent
        return report_path(target), target
    run_dir = target.parent.parent if target.parent.name == "efficiency" else target.parent
    return target, run_dir


def _checkpoint_step(path: Path) -> int:
    match = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(match.group(1)) if match else -1


def _find_trainer_state(run_dir: Path) -> Path | None:
    """``RUN_DIR/trainer_state.json``, else that of the latest checkpoint (it holds the whole log history)."""
    direct = run_dir / "trainer_state.json"
    if direct.is_file():
        return direct
    candidates = [p for p in run_dir.glob("checkpoint-*/trainer_state.json") if p.is_file()]
    if not candidates:
        return None
    return max(candidates, key=lambda p: (_checkpoint_step(p.parent), p.stat().st_mtime))


def _load_trainer_state(run_dir: Path) -> tuple[dict[str, Any] | None, Path | None]:
    path = _find_trainer_state(run_dir)
    if path is None:
        logger.info("no trainer_state.json in %s", run_dir)
        return None, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        # The loss is context, not the point: a damaged trainer_state.json must not hide the report.
        logger.warning("ignoring %s (%s): showing the checks without loss", path, one_line(exc))
        return None, None
    if not isinstance(data, dict) or not isinstance(data.get("log_history", []), list):
        logger.warning("ignoring %s: not a trainer_state.json (no log_history list)", path)
        return None, None
    return data, path


def recorded_history(report: RunReport) -> list[dict[str, Any]] | None:
    """A ``log_history`` made of the losses the checks recorded; None when none recorded one."""
    history = [{"loss": c.loss, "step": c.step} for c in report.checks if c.loss is not None]
    return history or None


def _check_summary(
    check: CheckRecord, history: Sequence[Mapping[str, Any]] | None, eval_key: str | None
) -> dict[str, Any]:
    from .._report import _logged_value

    s = check.summary
    out: dict[str, Any] = {
        "index": check.index,
        "kind": check.kind,
        "epoch": check.epoch,
        "step": check.step,
        "status": check.status,
        "error": check.error,
    }
    if history is not None:
        out["loss"] = _logged_value(history, "loss", check.step)
        if eval_key is not None:
            out[eval_key] = _logged_value(history, eval_key, check.step)
    for key in (
        "latency_ms_p50",
        "latency_ms_p95",
        "latency_ms_p99",
        "ttft_ms_p50",
        "tpot_ms_p50",
        "output_tokens_mean",
        "eos_fraction",
        "noise_cv",
    ):
        out[key] = s.get(key)
    for key in (
        "latency_ratio",
        "latency_judged_ratio",
        "latency_judged_ratio_low",
        "latency_judged_ratio_high",
        "machine_factor",
        "output_tokens_ratio",
    ):
        value = check.ratios.get(key)
        out[key] = value if isinstance(value, (int, float)) else None
    for key in ("cost_per_request", "monthly_cost"):
        out[key] = check.cost.get(key)
    out["breached"] = check.breached
    out["consecutive_breaches"] = check.consecutive_breaches
    out["within_budget"] = check.within_budget
    out["breaches"] = [v for v in check.verdict if v.get("passed") is False]
    return out


def report_summary(
    report: RunReport, trainer_state: Mapping[str, Any] | None = None, *, report_file: str | None = None
) -> dict[str, Any]:
    """The machine-readable summary ``ftcallback report --json`` prints (NaN as None).

    Args:
        report: a :class:`~ftcallback._report.RunReport`.
        trainer_state: the contents of ``trainer_state.json``, for the loss and eval metric per check;
            without it, the loss each check recorded (when any did).
        report_file: where the report was read from.

    Returns:
        ``{"report", "output_dir", "budget", "baseline_source", "baseline", "checks", "checkpoints",
        "stopped", "last_within_budget_checkpoint"}``; each check holds its key numbers.
    """
    from .._json import jsonable
    from .._report import _eval_metric_key

    if trainer_state is not None:
        history: list[Any] | None = list(trainer_state.get("log_history") or [])
    else:
        history = recorded_history(report)
    eval_key = _eval_metric_key(history) if history else None
    baseline = report.baseline or {}
    base_summary = baseline.get("summary") if isinstance(baseline, Mapping) else None
    summary: dict[str, Any] = jsonable(
        {
            "report": report_file,
            "output_dir": report.output_dir,
            "budget": report.budget,
            "baseline_source": report.baseline_source,
            "baseline": None
            if not isinstance(base_summary, Mapping)
            else {
                k: base_summary.get(k)
                for k in ("latency_ms_p50", "latency_ms_p95", "ttft_ms_p50", "output_tokens_mean")
            },
            "checks": [_check_summary(c, history, eval_key) for c in report.checks],
            "checkpoints": report.checkpoints,
            "stopped": report.stopped,
            "last_within_budget_checkpoint": report.last_within_budget_checkpoint,
        }
    )
    return summary


def run(args: argparse.Namespace) -> int:
    """Print the run's checks as a table (or JSON), and plot them with ``--plot``."""
    from .._report import RunReport, format_checks_table

    report_file, run_dir = _locate_report(args.run_dir)
    report = RunReport.load(report_file)
    trainer_state, state_path = _load_trainer_state(run_dir)
    # Without a trainer_state.json, the losses the checks recorded stand in for its log history.
    recorded = recorded_history(report) if trainer_state is None else None
    shown_state = trainer_state if recorded is None else {"log_history": recorded}
    if args.json:
        print_json(report_summary(report, trainer_state, report_file=str(report_file)))
    else:
        if state_path is not None:
            loss_source = str(state_path)
        elif recorded is not None:
            loss_source = "recorded in the report (no trainer_state.json found)"
        else:
            loss_source = "no trainer_state.json found"
        print(f"run:      {run_dir}")
        print(f"report:   {report_file}")
        print(f"loss:     {loss_source}")
        print(wrap_field("budget:   ", budget_text(report.budget)))
        print(f"baseline: {report.baseline_source or '?'}")
        print()
        print(format_checks_table(report, shown_state, width=width()))
    if args.plot is not None:
        from .._plot import plot_report

        try:
            written = plot_report(report, args.plot, shown_state, run_dir=str(run_dir))
        except ImportError as exc:
            raise UsageError(one_line(exc)) from exc
        except OSError as exc:
            raise UsageError(f"cannot write the plot to {args.plot!r}: {exc.strerror or exc}") from exc
        logger.info("wrote the plot to %s", written)
    return EXIT_OK
