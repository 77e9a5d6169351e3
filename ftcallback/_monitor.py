"""The run-level core: measurements in, typed outcomes out. No Trainer, no clock, no process group.

:class:`Monitor` owns one fine-tuning run's efficiency record: the baseline, every check, patience, the
stop decision and its reason, the checkpoints and which one to recommend. The callback feeds it
measurements at Trainer events and acts on the :class:`Decision` it returns; sinks write the
:class:`CheckOutcome`. Everything here is testable in milliseconds with hand-made measurements.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._budget import Budget, BudgetCheck, Verdict, evaluate
from ._format import finite_float
from ._measurement import Measurement
from ._probe import ProbeSpec
from ._report import CheckRecord, RunReport

__all__ = ["CheckOutcome", "Decision", "Monitor", "StopReason", "fmt_epoch"]

logger = logging.getLogger("ftcallback")

#: The ratios every tracker gets, first on the console line: the observed latency change, the ratio a relative
#: latency budget judged (the machine taken out; absent without that budget) and the machine's own factor.
_TRACKED_RATIOS = ("latency_ratio", "latency_judged_ratio", "output_tokens_ratio", "machine_factor")

#: Summary keys every tracker receives (``efficiency/<key>``), besides the ratios, cost and verdict flags.
TRACKED_SUMMARY_KEYS = (
    "latency_ms_p50",
    "latency_ms_p95",
    "ttft_ms_p50",
    "tpot_ms_p50",
    "output_tokens_mean",
    "tokens_per_second",
    "eos_fraction",
    "truncated_fraction",
    "quality",
)


class StopReason(str, enum.Enum):
    """Why the monitor asked the run to stop."""

    BUDGET_BREACHED = "budget_breached"


def fmt_epoch(epoch: float | None) -> str:
    """An epoch as users read it: ``2`` at an epoch end, ``1.50`` mid-epoch, ``?`` unknown."""
    if epoch is None:
        return "?"
    return str(int(round(epoch))) if abs(epoch - round(epoch)) < 1e-6 else f"{epoch:.2f}"


@dataclass(frozen=True)
class Decision:
    """What the run should do after a check.

    Attributes:
        stop: True when training must stop now.
        reason: why (None when not stopping).
        message: the stop line, exactly as logged and written into the report.
    """

    stop: bool = False
    reason: StopReason | None = None
    message: str = ""


@dataclass(frozen=True)
class CheckOutcome:
    """One check, computed once: the record the report keeps, the verdict and the decision.

    Attributes:
        record: the report's record of the check.
        measurement: the measurement (None when it failed).
        verdict: the budget's verdict (None when the measurement failed).
        decision: stop or go on, and why.
        limits: the limit of each budgeted metric, in the metric's unit (for limit lines in plots); with a
            deployed form, the limits of that form's metrics.
        deployed: the measurement in the deployed form, when the run measures one (the one judged).
    """

    record: CheckRecord
    measurement: Measurement | None
    verdict: Verdict | None
    decision: Decision
    limits: dict[str, float] = field(default_factory=dict)
    deployed: Measurement | None = None

    @property
    def failed(self) -> bool:
        return self.record.status != "ok"

    def metrics(self, prefix: str = "efficiency/") -> dict[str, float]:
        """The check as flat, finite numbers for trackers: the headline summary, ratios, cost and flags.

        A deployed form's figures come as ``<prefix>deployed/<key>`` beside the training form's.
        """
        rec = self.record
        # The Trainer prints this dict on the console as one line: the key figures and the verdict come first.
        values: dict[str, Any] = {
            k: rec.summary.get(k) for k in ("latency_ms_p50", "latency_ms_p95", "output_tokens_mean")
        }
        for key in _TRACKED_RATIOS:
            values[key] = rec.ratios.get(key)
        if rec.status == "ok":
            values["breached"] = int(rec.breached)
        else:
            values["check_failed"] = 1
        values.update({k: rec.summary.get(k) for k in TRACKED_SUMMARY_KEYS if k not in values})
        values.update(rec.cost)
        if rec.deployed is not None:
            deployed = rec.deployed
            served = _tracked(deployed.get("summary", {}), deployed.get("ratios", {}), deployed.get("cost", {}))
            values.update({f"deployed/{k}": v for k, v in served.items()})
        out: dict[str, float] = {}
        for key, value in values.items():
            if value is None:
                continue
            number = float(value)
            if math.isfinite(number):
                out[f"{prefix}{key}"] = number
        return out


def _tracked(summary: Mapping[str, Any], ratios: Mapping[str, Any], cost: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {k: summary.get(k) for k in TRACKED_SUMMARY_KEYS}
    for key in _TRACKED_RATIOS:
        values[key] = ratios.get(key)
    values.update(cost)
    return values


class Monitor:
    """Judge each measurement of a run against its baseline and budget; decide when to stop.

    Args:
        spec: the probe every measurement of the run uses.
        budget: the budget; an empty one only monitors.
        patience: consecutive breaching checks before stopping.
        stop_training: False records and warns about breaches but never stops.
        baseline: a baseline measured beforehand (else the first :meth:`observe` with ``kind="baseline"``).
        baseline_source: where the given baseline came from, for the report.
        output_dir: the run's output folder, for the report.
        name: the callback's name, when a Trainer holds several (logged in front of every line).

    Example:
        >>> from ftcallback._measurement import Measurement, RequestSample
        >>> spec = ProbeSpec(prompts=("hi",))
        >>> mon = Monitor(spec, Budget(max_token_increase=0.2))
        >>> base = Measurement(samples=(RequestSample(0, 0, 0.5, 0.1, 5, 10, True),), settings=spec.settings())
        >>> _ = mon.observe(base, kind="baseline", epoch=0.0, step=0)
        >>> longer = Measurement(samples=(RequestSample(0, 0, 0.7, 0.1, 5, 15, True),), settings=spec.settings())
        >>> outcome = mon.observe(longer, kind="epoch", epoch=1.0, step=10)
        >>> outcome.decision.stop, outcome.decision.reason.value
        (True, 'budget_breached')
    """

    def __init__(
        self,
        spec: ProbeSpec,
        budget: Budget,
        *,
        patience: int = 1,
        stop_training: bool = True,
        baseline: Measurement | None = None,
        baseline_source: str = "measured at train begin",
        output_dir: str = "",
        name: str | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        self.spec = spec
        self.budget = budget
        self.patience = patience
        self.stop_training = stop_training
        self.name = name
        self.report = RunReport(
            budget=budget.to_dict(),
            settings=dict(settings or spec.settings()),
            baseline=None if baseline is None else baseline.to_dict(),
            baseline_source=baseline_source,
            output_dir=output_dir,
        )
        self._baseline = baseline
        self._deployed_baseline: Measurement | None = None

    # ----------------------------------------------------------------- state
    @property
    def baseline(self) -> Measurement | None:
        """The baseline, typed; parsed from the report once when restored."""
        if self._baseline is None and self.report.baseline is not None:
            self._baseline = Measurement.from_dict(self.report.baseline)
        return self._baseline

    @property
    def deployed_baseline(self) -> Measurement | None:
        """The baseline in the deployed form (None when the run measures none), typed."""
        if self._deployed_baseline is None and self.report.deployed_baseline is not None:
            self._deployed_baseline = Measurement.from_dict(self.report.deployed_baseline)
        return self._deployed_baseline

    @property
    def consecutive_breaches(self) -> int:
        """Breaching checks in a row at the end of the record (failed checks neither count nor reset)."""
        last = self.report.last_check
        return last.consecutive_breaches if last is not None else 0

    @property
    def stopped(self) -> bool:
        return self.report.stopped is not None

    def adopt_report(self, report: RunReport) -> None:
        """Continue from a saved record (resume): its baseline, checks and checkpoints become this run's."""
        self.report = report
        self._baseline = None
        self._deployed_baseline = None

    def _prefix(self) -> str:
        return f"[{self.name}] " if self.name else ""

    # ----------------------------------------------------------------- checks
    def observe(
        self,
        measurement: Measurement,
        *,
        kind: str,
        epoch: float | None,
        step: int,
        run: int = 0,
        record: bool = True,
        deployed: Measurement | None = None,
    ) -> CheckOutcome:
        """Judge one measurement and record it.

        ``deployed`` is the same model measured in its deployed form (``environment["form"]`` names it): the
        budget then judges it against the deployed baseline (the first ``kind="baseline"`` one), and the
        training-form ``measurement`` is recorded and compared with its own baseline beside it.

        ``kind="baseline"`` makes it the baseline (when none is set yet). A baseline that already breaches
        an absolute budget is reported once at WARNING and never counted: nothing was trained yet.
        ``record=False`` computes the outcome without adding it to the record, logging or deciding (a baseline
        given from a file, shown at step 0 without being a check of this run).
        """
        if kind == "baseline" and self.report.baseline is None:
            self.report.baseline = measurement.to_dict()
            self._baseline = measurement
        if kind == "baseline" and deployed is not None and self.report.deployed_baseline is None:
            self.report.deployed_baseline = deployed.to_dict()
            self._deployed_baseline = deployed
        baseline = self.baseline
        judged, judged_baseline = (measurement, baseline) if deployed is None else (deployed, self.deployed_baseline)
        # Decided once, with the run's seed: the verdict carries the estimates and the decomposition it used.
        # With a deployed form, that form is judged against the baseline in the same form.
        verdict = evaluate(self.budget, judged, judged_baseline, seed=self.spec.seed)
        # What makes latency incomparable (a retry, another batch size, dtype, compile, adapters, ...) is decided
        # by Measurement.incompatibilities alone; evaluate() already left relative budgets over it unjudged.
        unlike = _latency_unlike(judged_baseline, judged)
        if kind == "baseline" and record:
            for check in verdict.breaches:
                logger.warning("%sthe baseline already breaches the budget: %s", self._prefix(), check.describe())
            verdict = dataclasses.replace(verdict, checks=tuple(c for c in verdict.checks if not c.breached))
        breached = bool(verdict.breaches)
        consecutive = self.consecutive_breaches + 1 if breached else 0
        ratios, cost = self._ratios_and_cost(judged, judged_baseline, verdict, comparable_latency=not unlike)
        deployed_entry: dict[str, Any] | None = None
        if deployed is not None:
            deployed_entry = {
                "form": deployed.environment.get("form"),
                "summary": deployed.summary(),
                "ratios": ratios,
                "cost": cost,
                "measurement": deployed.to_dict(),
            }
            # The training form beside it, against its own baseline: shown, never deciding.
            trained = evaluate(self.budget, measurement, baseline, seed=self.spec.seed)
            comparable = not _latency_unlike(baseline, measurement)
            ratios, cost = self._ratios_and_cost(measurement, baseline, trained, comparable_latency=comparable)
        entry = CheckRecord(
            index=self.report.next_index,
            kind=kind,
            epoch=epoch,
            step=step,
            run=run,
            status="ok",
            summary=measurement.summary(),
            ratios=ratios,
            cost=cost,
            verdict=[_verdict_entry(c) for c in verdict.checks],
            breached=breached,
            consecutive_breaches=consecutive,
            measurement=measurement.to_dict(),
            deployed=deployed_entry,
        )
        limits = self.budget.limits(judged_baseline)
        if not record:
            return CheckOutcome(entry, measurement, verdict, Decision(), limits, deployed)
        self.report.add_check(entry)
        self._log_check(entry, measurement, unlike, verdict, deployed)
        decision = self._decide(entry, verdict)
        return CheckOutcome(entry, measurement, verdict, decision, limits, deployed)

    def observe_failure(
        self, error: str, *, kind: str, epoch: float | None, step: int, run: int = 0
    ) -> CheckOutcome:
        """Record a measurement that failed: it neither counts as a breach nor resets patience."""
        record = CheckRecord(
            index=self.report.next_index,
            kind=kind,
            epoch=epoch,
            step=step,
            run=run,
            status="failed",
            error=error,
            consecutive_breaches=self.consecutive_breaches,
        )
        self.report.add_check(record)
        judged_baseline = self.deployed_baseline if self.report.deployed_baseline is not None else self.baseline
        return CheckOutcome(record, None, None, Decision(), self.budget.limits(judged_baseline))

    def _ratios_and_cost(
        self, m: Measurement, baseline: Measurement | None, verdict: Verdict, *, comparable_latency: bool
    ) -> tuple[dict[str, Any], dict[str, float]]:
        ratios: dict[str, Any] = {}
        if baseline is not None:
            parts = verdict.decomposition
            if comparable_latency and parts is not None:
                # Every figure here is one the verdict computed: nothing is estimated a second time.
                ratios["latency_ratio"] = parts.total  # observed: geometric mean of per-prompt median ratios
                ratios["latency_length_ratio"] = parts.length  # from longer or shorter answers (exact)
                ratios["latency_speed_ratio"] = parts.speed  # per-token speed at equal length, machine divided out
                ratios["latency_speed_ratio_low"] = parts.speed_low
                ratios["latency_speed_ratio_high"] = parts.speed_high
                if parts.machine is not None:
                    ratios["machine_factor"] = parts.machine.estimate.ratio
                deciding = next((c for c in verdict.checks if c.budget == "max_latency_increase"), None)
                if deciding is not None and deciding.estimate is not None:
                    ratios["latency_judged_ratio"] = deciding.estimate.ratio  # the ratio that decided
                    ratios["latency_judged_ratio_low"] = deciding.estimate.low
                    ratios["latency_judged_ratio_high"] = deciding.estimate.high
            b_out = baseline.output_tokens.mean
            ratios["output_tokens_ratio"] = m.output_tokens.mean / b_out if b_out > 0 else math.nan
        cost: dict[str, float] = {}
        per_request = self.budget.cost_per_request_of(m)
        if per_request is not None:
            cost["cost_per_request"] = per_request
            if self.budget.requests_per_month is not None:
                cost["monthly_cost"] = per_request * self.budget.requests_per_month
            if baseline is not None:
                b_cost = self.budget.cost_per_request_of(baseline)
                if b_cost:
                    cost["cost_ratio"] = per_request / b_cost
        return ratios, cost

    def _decide(self, record: CheckRecord, verdict: Verdict) -> Decision:
        if not record.breached:
            return Decision()
        where = f"epoch {fmt_epoch(record.epoch)} (step {record.step})"
        first, others = verdict.breaches[0], verdict.breaches[1:]
        message = first.describe() + ("; also " + "; ".join(c.describe() for c in others) if others else "")
        recommended = self.recommended_checkpoint()
        # No full stop after the path: it is copied from the terminal as it is.
        hint = f". Last checkpoint within budget: {recommended}" if recommended else ""
        if record.consecutive_breaches < self.patience:
            logger.warning(
                "%sbudget breached at %s, %d of %d consecutive checks before stopping: %s",
                self._prefix(),
                where,
                record.consecutive_breaches,
                self.patience,
                message,
            )
            return Decision()
        if not self.stop_training:
            logger.warning(
                "%sbudget breached at %s: %s (stop_training=False: training continues)%s",
                self._prefix(),
                where,
                message,
                hint,
            )
            return Decision()
        line = f"stopping training at {where}: {message}"
        # Exactly `stopped["message"]` (plus the hint): the line users grep for and the report agree.
        logger.warning("%s%s%s", self._prefix(), line, hint)
        self.report.stopped = {
            "epoch": record.epoch,
            "step": record.step,
            "run": record.run,
            "budget": first.budget,
            "metric": first.metric,
            "value": first.value,
            "limit": first.limit,
            "baseline": first.baseline,
            "reason": StopReason.BUDGET_BREACHED.value,
            "message": line,
            "breaches": [c.to_dict() for c in verdict.breaches],
            "recommended_checkpoint": recommended,
        }
        return Decision(True, StopReason.BUDGET_BREACHED, line)

    def _log_check(
        self,
        record: CheckRecord,
        m: Measurement,
        unlike: list[str],
        verdict: Verdict,
        deployed: Measurement | None = None,
    ) -> None:
        where = "baseline" if record.kind == "baseline" else f"epoch {fmt_epoch(record.epoch)} (step {record.step})"
        status = "" if record.kind == "baseline" else (" - BUDGET BREACHED" if record.breached else " - within budget")
        judged = record.kind != "baseline"  # the baseline against itself judges nothing
        if deployed is not None and record.deployed is not None:
            # The training form first, without a verdict: the deployed line below carries it.
            self._log_line(where, m, record.ratios, "", judged=False)
            form = record.deployed["form"]
            self._log_line(f"{where} deployed {form}", deployed, record.deployed["ratios"], status, judged=judged)
        else:
            self._log_line(where, m, record.ratios, status, judged=judged)
        parts = verdict.decomposition
        if parts is not None and record.kind != "baseline" and not unlike:
            # Why latency moved: longer answers (exact) vs per-token speed (statistical) vs the machine.
            logger.info("%s%s: %s", self._prefix(), where, parts.describe())
        if verdict.environment_changed and record.kind != "baseline":
            logger.info(
                "%s%s: the machine ran a fixed reference workload at another speed than at the baseline (%s); "
                "latency is judged with that factor divided out, never as a model change",
                self._prefix(),
                where,
                verdict.machine.describe() if verdict.machine is not None else "",
            )
        if unlike:
            logger.warning(
                "%s%s: latency not compared with the baseline (%s); token budgets still apply",
                self._prefix(),
                where,
                "; ".join(unlike),
            )

    def _log_line(self, where: str, m: Measurement, ratios: Mapping[str, Any], status: str, *, judged: bool) -> None:
        ratio_text = ""
        ratio = finite_float(ratios.get("latency_ratio"))
        judged_ratio = finite_float(ratios.get("latency_judged_ratio")) if judged else None
        if ratio is not None:
            # Observed and judged side by side: under load the first can be x3 while the second, which the
            # budget decides on, is x1.0.
            ratio_text = f", latency x{ratio:.2f}"
            if judged_ratio is not None:
                ratio_text += f" (judged x{judged_ratio:.2f})"
        tokens_ratio = ratios.get("output_tokens_ratio")
        tokens_text = (
            f" (x{tokens_ratio:.2f})" if isinstance(tokens_ratio, float) and math.isfinite(tokens_ratio) else ""
        )
        logger.info(
            "%s%s: latency p50 %.1f ms p95 %.1f ms%s, ttft p50 %.1f ms, tpot p50 %.2f ms, output tokens %.1f%s%s",
            self._prefix(),
            where,
            m.latency_ms.p50,
            m.latency_ms.p95,
            ratio_text,
            m.ttft_ms.p50,
            m.tpot_ms.p50,
            m.output_tokens.mean,
            tokens_text,
            status,
        )

    # ----------------------------------------------------------------- checkpoints
    def record_checkpoint(self, step: int, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Record a saved checkpoint with the verdict of the latest check at or before its step."""
        return self.report.record_checkpoint(step, path)

    def check_at(self, step: int) -> CheckRecord | None:
        """The latest measured check at or before ``step``: the one that speaks for the weights there."""
        return self.report.check_at(step)

    def within_budget_at(self, step: int) -> bool | None:
        """The verdict that speaks for the weights at ``step`` (None before any measured check)."""
        return self.report.within_budget_at(step)

    def recommended_checkpoint(self) -> str | None:
        """The checkpoint to ship, as a path that exists: best quality within budget (the latest within budget when
        nothing is scored); see :attr:`RunReport.recommended_checkpoint`."""
        found = self.report.recommended_checkpoint
        return None if found is None else str(found["path"])


def _latency_unlike(baseline: Measurement | None, m: Measurement) -> list[str]:
    """Why ``m``'s latency cannot be compared with ``baseline``'s (empty when it can)."""
    differences = baseline.incompatibilities(m) if baseline else []
    return [d.message for d in differences if "latency" in d.affects]


def _verdict_entry(check: BudgetCheck) -> dict[str, Any]:
    """A budget line as the report keeps it: the check's own fields plus its headroom (``margin``)."""
    margin = check.margin
    return {**check.to_dict(), "margin": margin if math.isfinite(margin) else None}
