"""A picture of a run: latency, output length and loss over training steps, with baseline, budget and stop.

:func:`plot_report` draws what :class:`~ftcallback._report.RunReport` recorded as stacked
panels sharing the training-step axis: latency p50 / p95 (ms), mean output tokens, quality with the recommended
checkpoint (when the probe has references), and
the training loss when ``trainer_state.json`` has one. The baseline is a dashed line,
the budget limit a red dotted line, breaching checks red crosses, a failed measurement
a grey dotted line and the stop a red vertical line.

matplotlib is optional (``pip install 'ftcallback[plot]'``); it is imported when a plot
is drawn, and only its Agg canvas is used, so no display is needed and pyplot's global
state is never touched.

Example:
    >>> from ftcallback._report import RunReport
    >>> plot_report(RunReport.load("out"), "out/efficiency/report.png")  # doctest: +SKIP
    PosixPath('out/efficiency/report.png')
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from ._budget import Budget
from ._errors import ConfigError, FTCallbackError
from ._measurement import Measurement
from ._report import CheckRecord, RunReport

__all__ = ["plot_report", "run_verdict"]

logger = logging.getLogger("ftcallback.plot")

_INSTALL_HINT = (
    "plotting needs matplotlib: run `pip install 'ftcallback[plot]'` (or `pip install matplotlib`)"
)
_TITLE_PATH_CHARS = 60
_P50, _P95, _OTHER = "tab:blue", "tab:orange", "tab:purple"
_LIMIT, _BREACH, _FAILED = "tab:red", "red", "0.5"


def run_verdict(report: RunReport) -> str:
    """One phrase for the run's outcome: stopped, breached at the last check, or within budget.

    Example:
        >>> run_verdict(RunReport())
        'no checks recorded'
    """
    if report.stopped:
        what = report.stopped.get("budget") or report.stopped.get("metric") or "budget"
        return f"STOPPED at step {report.stopped.get('step', '?')} ({what} breached)"
    measured = [c for c in report.checks if c.status == "ok"]
    if not measured:
        return "no checks recorded" if not report.checks else "no successful measurement"
    last = measured[-1]
    if last.breached:
        return f"over budget at the last check (step {last.step})"
    if any(c.breached for c in measured):
        return "within budget at the last check (breached earlier)"
    return "within budget"


def _finite(value: Any) -> float:
    """``value`` as a float, NaN when missing or not a number (matplotlib leaves a gap there)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _budget(report: RunReport) -> Budget | None:
    # A report may carry extra keys (older versions, hand edits): read what the Budget knows.
    known = {f.name for f in fields(Budget)}
    try:
        return Budget.from_dict({k: v for k, v in report.budget.items() if k in known})
    except ConfigError as exc:
        logger.warning("plot: the report's budget is invalid (%s); drawing without limits", exc)
        return None


def _baseline(report: RunReport) -> Measurement | None:
    try:
        return report.baseline_measurement()
    except FTCallbackError as exc:
        logger.warning("plot: the report's baseline is unreadable (%s); drawing without it", exc)
        return None


def _baseline_summary(report: RunReport, baseline: Measurement | None) -> Mapping[str, float]:
    if baseline is not None:
        return baseline.summary()
    first = next((c for c in report.checks if c.kind == "baseline" and c.status == "ok"), None)
    return first.summary if first is not None else {}


def _breached_metrics(check: CheckRecord) -> set[str]:
    return {str(v.get("metric", "")) for v in check.verdict if v.get("passed") is False}


def _shorten(text: str, limit: int = _TITLE_PATH_CHARS) -> str:
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]


def _loss_series(trainer_state: Mapping[str, Any] | None, key: str) -> tuple[list[int], list[float]]:
    steps: list[int] = []
    values: list[float] = []
    for entry in (trainer_state or {}).get("log_history") or []:
        if not isinstance(entry, Mapping):
            continue
        step, value = entry.get("step"), _finite(entry.get(key))
        if isinstance(step, int) and math.isfinite(value):
            steps.append(step)
            values.append(value)
    return steps, values


def plot_report(
    report: RunReport,
    out_path: str | os.PathLike[str],
    trainer_state: Mapping[str, Any] | None = None,
    *,
    run_dir: str | None = None,
) -> Path:
    """Draw the run's latency, output tokens (and loss) over training steps into an image file.

    Args:
        report: the run report (``RunReport.load(output_dir)``).
        out_path: the image to write; its suffix picks the format (``.png``, ``.svg``, ``.pdf``, ...).
            Missing parent folders are created.
        trainer_state: the contents of ``trainer_state.json``; its ``log_history`` adds a loss panel.
        run_dir: the run's name in the title; default the report's ``output_dir``.

    Returns:
        The path written.

    Raises:
        ImportError: matplotlib is not installed (the message says how to install it).
        ConfigError: the file suffix is not an image format matplotlib can write.
        OSError: the file cannot be written.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc

    out = Path(out_path)
    fig = Figure(figsize=(10, 7), layout="constrained")
    canvas = FigureCanvasAgg(fig)
    fmt = out.suffix.lstrip(".").lower()
    if fmt not in canvas.get_supported_filetypes():
        raise ConfigError(
            f"cannot write a plot as {out.suffix or 'a file without suffix'!r}; use one of "
            f"{', '.join('.' + f for f in sorted(canvas.get_supported_filetypes()))}"
        )

    budget = _budget(report)
    baseline = _baseline(report)
    base = _baseline_summary(report, baseline)
    limits = budget.limits(baseline) if budget is not None else {}
    loss_steps, losses = _loss_series(trainer_state, "loss")
    eval_steps, eval_losses = _loss_series(trainer_state, "eval_loss")
    has_quality = any(math.isfinite(_finite(c.summary.get("quality"))) for c in report.checks if c.status == "ok")
    has_loss = bool(losses or eval_losses)
    n_panels = 2 + int(has_quality) + int(has_loss)
    fig.set_size_inches(10, 2.6 * n_panels + 0.8)
    axes = fig.subplots(n_panels, 1, sharex=True, squeeze=False)[:, 0]
    ax_lat, ax_tok = axes[0], axes[1]

    ok = [c for c in report.checks if c.status == "ok"]
    # Each curve starts from the model before fine-tuning: a baseline given as a file has no check
    # of its own, so it is drawn at step 0 like a baseline measured at train begin.
    points: list[Mapping[str, float]] = [c.summary for c in ok]
    steps = [c.step for c in ok]
    if base and not any(c.kind == "baseline" for c in ok):
        points.insert(0, base)
        steps.insert(0, 0)

    # ---- latency
    latency_stat = budget.latency_stat if budget is not None else "p95"
    series = [("p50", _P50), ("p95", _P95)]
    if f"latency_ms_{latency_stat}" in limits and latency_stat not in ("p50", "p95"):
        series.append((latency_stat, _OTHER))  # show the statistic the budget is stated on
    for stat, color in series:
        values = [_finite(p.get(f"latency_ms_{stat}")) for p in points]
        ax_lat.plot(steps, values, marker="o", color=color, label=f"latency {stat}")
        base_value = _finite(base.get(f"latency_ms_{stat}"))
        if math.isfinite(base_value):
            ax_lat.axhline(base_value, color=color, linestyle="--", linewidth=1, label=f"baseline {stat}")
    latency_limit = limits.get(f"latency_ms_{latency_stat}")
    if latency_limit is not None:
        ax_lat.axhline(
            latency_limit, color=_LIMIT, linestyle=":", linewidth=2,
            label=f"budget {latency_stat} ({latency_limit:.0f} ms)",
        )  # fmt: skip
    ax_lat.set_ylabel("latency (ms)")

    # ---- output tokens
    tokens = [_finite(p.get("output_tokens_mean")) for p in points]
    ax_tok.plot(steps, tokens, marker="o", color="tab:green", label="output tokens (mean)")
    base_tokens = _finite(base.get("output_tokens_mean"))
    if math.isfinite(base_tokens):
        ax_tok.axhline(base_tokens, color="tab:green", linestyle="--", linewidth=1, label="baseline")
    token_limit = limits.get("output_tokens_mean")
    if token_limit is not None:
        ax_tok.axhline(
            token_limit, color=_LIMIT, linestyle=":", linewidth=2, label=f"budget ({token_limit:.1f})"
        )
    ax_tok.set_ylabel("output tokens")

    # ---- breaches: a red cross on the panel of the metric that breached (cost follows length)
    lat_x, lat_y, tok_x, tok_y = [], [], [], []
    for c in ok:
        if not c.breached:
            continue
        metrics = _breached_metrics(c)
        if any(m.startswith("latency") for m in metrics):
            lat_x.append(c.step)
            lat_y.append(_finite(c.summary.get(f"latency_ms_{latency_stat}")))
        if not metrics or any(not m.startswith("latency") for m in metrics):
            tok_x.append(c.step)
            tok_y.append(_finite(c.summary.get("output_tokens_mean")))
    for ax, xs, ys in ((ax_lat, lat_x, lat_y), (ax_tok, tok_x, tok_y)):
        if xs:
            ax.plot(
                xs, ys, linestyle="none", marker="X", markersize=11, color=_BREACH,
                markeredgecolor="black", zorder=5, label="breach",
            )  # fmt: skip

    # ---- quality, and the checkpoint to ship: the best quality within budget (the Pareto view)
    if has_quality:
        ax_q = axes[2]
        ax_q.plot(steps, [_finite(p.get("quality")) for p in points], marker="o", color="tab:purple", label="quality")
        minimum = budget.min_quality if budget is not None else None
        if minimum is not None:
            ax_q.axhline(minimum, color=_LIMIT, linestyle=":", linewidth=2, label=f"budget ({minimum:g})")
        recommended = report.recommended_checkpoint
        if recommended is not None:
            at = next((c for c in reversed(ok) if c.step <= recommended["step"]), None)
            if at is not None:
                ax_q.plot(
                    [recommended["step"]], [_finite(at.summary.get("quality"))], linestyle="none", marker="*",
                    markersize=16, color="gold", markeredgecolor="black", zorder=6,
                    label=f"recommended (step {recommended['step']})",
                )  # fmt: skip
        ax_q.set_ylabel("quality")

    # ---- loss
    if has_loss:
        ax_loss = axes[-1]
        if losses:
            ax_loss.plot(loss_steps, losses, color="tab:gray", label="training loss")
        if eval_losses:
            ax_loss.plot(eval_steps, eval_losses, color="black", marker="s", label="eval loss")
        ax_loss.set_ylabel("loss")

    # ---- failed measurements and the stop, on every panel
    failed = [c.step for c in report.checks if c.status != "ok"]
    stop_step = _finite((report.stopped or {}).get("step"))
    for i, ax in enumerate(axes):
        for j, step in enumerate(failed):
            ax.axvline(
                step, color=_FAILED, linestyle=":", linewidth=1.5,
                label="measurement failed" if j == 0 else None,
            )  # fmt: skip
        if math.isfinite(stop_step):
            ax.axvline(stop_step, color=_LIMIT, linewidth=2, label="stopped" if i == 0 else None)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    if math.isfinite(stop_step):
        # At the bottom of the panel: the top is where a breach (and its marker) usually is.
        ax_lat.annotate(
            f"stopped (step {int(stop_step)})", xy=(stop_step, 0.0), xycoords=("data", "axes fraction"),
            xytext=(-4, 4), textcoords="offset points", ha="right", va="bottom", color=_LIMIT,
            fontsize="small", fontweight="bold",
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1.0},
        )  # fmt: skip
    axes[-1].set_xlabel("training step")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers

    name = _shorten(run_dir or report.output_dir or "run")
    fig.suptitle(f"{name}: {run_verdict(report)}", fontsize="medium")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, format=fmt)
    return out
