"""The run record: what each check measured and decided, which checkpoints were within budget, why it stopped.

``<output_dir>/efficiency/report.json`` is both the human-readable record of a fine-tuning run and the
callback's resumable state: the callback appends a :class:`CheckRecord` per check, records every
checkpoint, saves the file atomically after each change, and a resumed run loads it back. The layout is
described in DESIGN.md ("report.json"); :data:`REPORT_SCHEMA_VERSION` is bumped on incompatible changes
and :meth:`RunReport.from_dict` gives defaults for missing keys, so an older report still loads.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ._errors import BaselineError, ReportError
from ._format import finite_float as _finite_float
from ._format import number
from ._json import float_from_json, jsonable, read_json, write_json_atomic
from ._measurement import Measurement
from ._pareto import ParetoPoint, pareto

__all__ = [
    "REPORT_SCHEMA_VERSION",
    "CheckRecord",
    "RunReport",
    "format_checks_table",
    "report_path",
]

logger = logging.getLogger("ftcallback.report")

#: Version of the layout written by :meth:`RunReport.to_dict`. Bumped on incompatible changes.
REPORT_SCHEMA_VERSION = 1

#: What triggered a check.
CHECK_KINDS = ("baseline", "epoch", "step")
#: Whether the measurement of a check succeeded.
CHECK_STATUSES = ("ok", "failed")


def report_path(output_dir: str | os.PathLike[str]) -> Path:
    """Where the report of a run lives: ``<output_dir>/efficiency/report.json``.

    Example:
        >>> report_path("out").as_posix()
        'out/efficiency/report.json'
    """
    return Path(output_dir) / "efficiency" / "report.json"


def _utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _float_dict(data: Any) -> dict[str, float]:
    return {str(k): float_from_json(v) for k, v in (data or {}).items()}


@dataclass(kw_only=True)
class CheckRecord:
    """One check of the run: the measurement's summary, the ratios and cost, and the budget's verdict.

    Attributes:
        index: position of the check in the run, from 0 (the baseline when there is one).
        kind: what triggered it: ``"baseline"``, ``"epoch"`` or ``"step"``.
        epoch: ``TrainerState.epoch`` at the check (None before training starts).
        step: ``TrainerState.global_step`` at the check.
        status: ``"ok"``, or ``"failed"`` when the measurement raised (``error`` says why).
        error: one line naming the failure, else None.
        summary: :meth:`Measurement.summary` of the check (empty when it failed).
        ratios: comparisons with the baseline (``latency_ratio``, ``output_tokens_ratio``, ...).
        cost: ``cost_per_request``, ``monthly_cost``, ``cost_ratio`` when prices were given.
        verdict: ``BudgetCheck.to_dict()`` per budget line.
        breached: True when the budget was breached at this check.
        consecutive_breaches: breaching checks in a row, this one included (what ``patience`` counts).
        measurement: the full :meth:`Measurement.to_dict`, or None when not kept.
        time: when the check ended, ISO-8601 UTC.
        run: which ``train()`` call of the callback the check belongs to (0 for the first; a callback reused
            for a second ``train()`` keeps its first baseline and numbers steps from 0 again).
        loss: the training loss last logged at or before the check's step, when the Trainer logged one
            (``ftcallback report`` shows it when the run left no ``trainer_state.json``).
        deployed: the same check in the deployed form, when the run measures one (``deployed_form=``):
            ``{"form", "summary", "ratios", "cost", "measurement"}``, compared with the deployed baseline.
            ``verdict`` and ``breached`` then judge this form; ``summary`` and ``ratios`` stay the training form's.

    Example:
        >>> rec = CheckRecord(index=1, kind="epoch", epoch=1.0, step=10, summary={"latency_ms_p50": 41.0})
        >>> CheckRecord.from_dict(rec.to_dict()) == rec
        True
        >>> rec.within_budget
        True
    """

    index: int
    kind: str
    epoch: float | None = None
    step: int
    status: str = "ok"
    error: str | None = None
    summary: dict[str, float] = field(default_factory=dict)
    ratios: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)
    verdict: list[dict[str, Any]] = field(default_factory=list)
    breached: bool = False
    consecutive_breaches: int = 0
    measurement: dict[str, Any] | None = None
    time: str = field(default_factory=_utcnow)
    run: int = 0
    loss: float | None = None
    deployed: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.kind not in CHECK_KINDS:
            raise ReportError(f"`kind` must be one of {CHECK_KINDS}, got {self.kind!r}")
        if self.status not in CHECK_STATUSES:
            raise ReportError(f"`status` must be one of {CHECK_STATUSES}, got {self.status!r}")

    @property
    def within_budget(self) -> bool | None:
        """True when the check measured and did not breach; None when the measurement failed."""
        if self.status != "ok":
            return None
        return not self.breached

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (NaN -> null, inf -> ``"inf"``); inverse of :meth:`from_dict`."""
        out: dict[str, Any] = jsonable(
            {
                "index": self.index,
                "kind": self.kind,
                "epoch": self.epoch,
                "step": self.step,
                "status": self.status,
                "error": self.error,
                "summary": self.summary,
                "ratios": self.ratios,
                "cost": self.cost,
                "verdict": self.verdict,
                "breached": self.breached,
                "consecutive_breaches": self.consecutive_breaches,
                "measurement": self.measurement,
                "time": self.time,
                "run": self.run,
                "loss": self.loss,
                "deployed": self.deployed,
            }
        )
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckRecord:
        """Rebuild a check from :meth:`to_dict` output; missing keys get their defaults.

        Raises:
            ReportError: ``data`` is not a mapping, or a field has a value of the wrong type.
        """
        if not isinstance(data, Mapping):
            raise ReportError(f"a check must be a JSON object, got {type(data).__name__}")
        try:
            epoch = data.get("epoch")
            measurement = data.get("measurement")
            error = data.get("error")
            return cls(
                index=int(data.get("index", 0)),
                kind=str(data.get("kind", "step")),
                epoch=None if epoch is None else float(epoch),
                step=int(data.get("step", 0)),
                status=str(data.get("status", "ok")),
                error=None if error is None else str(error),
                summary=_float_dict(data.get("summary")),
                ratios=dict(data.get("ratios") or {}),
                cost=_float_dict(data.get("cost")),
                verdict=[dict(v) for v in data.get("verdict") or []],
                breached=bool(data.get("breached", False)),
                consecutive_breaches=int(data.get("consecutive_breaches", 0)),
                measurement=None if measurement is None else dict(measurement),
                time=str(data.get("time", "")),
                run=int(data.get("run", 0)),
                loss=_finite_float(data.get("loss")),
                deployed=None if data.get("deployed") is None else dict(data["deployed"]),
            )
        except (TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, ReportError):
                raise
            raise ReportError(f"corrupt check {data.get('index', '?')}: {type(exc).__name__}: {exc}") from exc


def _without_measurement(check: dict[str, Any], keep: bool) -> dict[str, Any]:
    if keep:
        return check
    deployed = check.get("deployed")
    return {**check, "measurement": None, "deployed": None if deployed is None else {**deployed, "measurement": None}}


@dataclass
class RunReport:
    """Everything ftcallback knows about a run; saved as ``report.json`` and reloaded on resume.

    Attributes:
        budget: ``Budget.to_dict()``.
        settings: the callback's settings (probe, schedule, patience, ...).
        baseline: :meth:`Measurement.to_dict` of the baseline, or None before it exists.
        baseline_source: where the baseline came from (``"train_begin"``, a file path, ...).
        checks: one :class:`CheckRecord` per check, in order.
        checkpoints: ``{"step", "path", "within_budget"}`` per saved checkpoint, in order.
        stopped: why the run was stopped (``{epoch, step, budget, metric, value, limit, baseline, reason,
            message, recommended_checkpoint}``), or None.
        created_at: ISO-8601 UTC time the report was created.
        updated_at: ISO-8601 UTC time of the last :meth:`save` (``created_at`` until then).
        output_dir: the Trainer's ``output_dir``.
        pinned_checkpoints: ``{checkpoint path: kept copy}`` for a within-budget checkpoint kept (as hard links)
            from ``save_total_limit`` rotation.
        final_model: ``{"step", "source", "within_budget"}`` of the weights in memory when training ended
            (``source`` is the checkpoint ``load_best_model_at_end`` loaded, or ``"last step"``).
        earlier_stops: the ``stopped`` records of earlier ``train()`` calls of the same callback (a second
            call starts with ``stopped`` cleared; what stopped the first is kept here, never dropped).
        deployed_baseline: :meth:`Measurement.to_dict` of the baseline in the deployed form (its
            ``environment["form"]`` names it), when the run measures one; budgets compare with it.

    Example:
        >>> report = RunReport(output_dir="out")
        >>> report.add_check(CheckRecord(index=0, kind="baseline", step=0))
        >>> report.record_checkpoint(10, "out/checkpoint-10")["within_budget"]
        True
        >>> RunReport.from_dict(report.to_dict()) == report
        True
    """

    budget: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] | None = None
    baseline_source: str = ""
    checks: list[CheckRecord] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    stopped: dict[str, Any] | None = None
    created_at: str = field(default_factory=_utcnow)
    updated_at: str = ""
    output_dir: str = ""
    pinned_checkpoints: dict[str, str] = field(default_factory=dict)
    final_model: dict[str, Any] | None = None
    earlier_stops: list[dict[str, Any]] = field(default_factory=list)
    deployed_baseline: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.updated_at:
            self.updated_at = self.created_at

    # ----------------------------------------------------------------- bookkeeping
    def add_check(self, record: CheckRecord) -> None:
        """Append a check (the caller numbers it; :attr:`next_index` gives the next free index)."""
        self.checks.append(record)
        logger.debug("report: check %d (%s, step %d) recorded", record.index, record.kind, record.step)

    @property
    def next_index(self) -> int:
        """Index for the next check: one past the highest recorded (0 for an empty report)."""
        return max((c.index for c in self.checks), default=-1) + 1

    @property
    def last_check(self) -> CheckRecord | None:
        """The most recent check, or None: a resumed callback takes ``consecutive_breaches`` from it."""
        return self.checks[-1] if self.checks else None

    def baseline_measurement(self) -> Measurement | None:
        """The baseline as a :class:`Measurement`, or None when there is none.

        Raises:
            BaselineError: the stored baseline is corrupt or of another schema.
        """
        if self.baseline is None:
            return None
        return Measurement.from_dict(self.baseline)

    def check_at(self, step: int) -> CheckRecord | None:
        """The latest measured check at or before ``step``: the one that speaks for the weights there (a failed
        check says nothing, so it is skipped rather than counted as a breach or a pass)."""
        measured = [c for c in self.checks if c.status == "ok" and c.step <= step]
        return max(measured, key=lambda c: (c.step, c.index)) if measured else None

    def within_budget_at(self, step: int) -> bool | None:
        """Whether the weights at ``step`` were within budget (None before any measured check)."""
        check = self.check_at(step)
        return None if check is None else not check.breached

    def record_checkpoint(self, step: int, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Record a saved checkpoint and whether the model was within budget when it was saved.

        ``within_budget`` is the verdict of the most recent ok check at or before ``step`` (the
        baseline check included), or None when no check has measured yet. Saving the same path
        again (a resumed run) replaces the entry.

        Returns:
            The entry, ``{"step", "path", "within_budget"}``.
        """
        entry = {"step": int(step), "path": os.fspath(path), "within_budget": self.within_budget_at(step)}
        self.checkpoints = [c for c in self.checkpoints if c.get("path") != entry["path"]]
        self.checkpoints.append(entry)
        self.checkpoints.sort(key=lambda c: int(c.get("step", 0)))
        logger.debug(
            "report: checkpoint %s at step %d, within budget: %s", entry["path"], step, entry["within_budget"]
        )
        return entry

    @property
    def last_within_budget_checkpoint(self) -> str | None:
        """Path of the latest checkpoint saved within budget that exists on disk: the copy kept from
        ``save_total_limit`` rotation (:attr:`pinned_checkpoints`) when there is one, else the checkpoint itself.
        None when none exists: a path that rotation deleted is never named.

        The kept copy comes first: the original still exists while a stop is announced, but rotation deletes it
        at the next save, and the path the stop line names must stay valid after training.
        """
        good = sorted(
            (c for c in self.checkpoints if c.get("within_budget") is True),
            key=lambda c: int(c.get("step", 0)),
        )
        pinned = {os.path.abspath(k): v for k, v in self.pinned_checkpoints.items()}
        for entry in reversed(good):
            path = str(entry["path"])
            kept = pinned.get(os.path.abspath(path))
            if kept is not None and Path(kept).exists():
                return kept
            if Path(path).exists():
                return path
        return None

    def existing_checkpoint(self, path: str) -> str | None:
        """Where the checkpoint saved at ``path`` can be loaded from now: its kept copy, else itself, else None."""
        pinned = {os.path.abspath(k): v for k, v in self.pinned_checkpoints.items()}
        kept = pinned.get(os.path.abspath(path))
        if kept is not None and Path(kept).exists():
            return kept
        return path if Path(path).exists() else None

    def pareto_points(self) -> list[ParetoPoint]:
        """Quality, latency and cost of every measured check after the baseline (see :mod:`ftcallback._pareto`)."""
        metric = f"latency_ms_{self.budget.get('latency_stat') or 'p95'}"
        return [
            ParetoPoint.from_record(c, latency_metric=metric)
            for c in self.checks
            if c.kind != "baseline" and c.status == "ok"
        ]

    @property
    def recommended_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint to ship: among the saved checkpoints within budget that still exist (or were kept), the
        best quality (then the lower latency, then the earlier step); the latest when nothing is scored.

        Returns:
            ``{"step", "path", "reason"}``, or None when no within-budget checkpoint exists.
        """
        candidates: list[tuple[ParetoPoint, str]] = []
        metric = f"latency_ms_{self.budget.get('latency_stat') or 'p95'}"
        for entry in self.checkpoints:
            path = self.existing_checkpoint(str(entry.get("path", "")))
            check = self.check_at(int(entry.get("step", 0)))
            if entry.get("within_budget") is not True or path is None or check is None:
                continue
            point = ParetoPoint.from_record(check, latency_metric=metric)
            candidates.append((dataclasses.replace(point, step=int(entry["step"])), path))
        if not candidates:
            return None
        front = pareto([p for p, _ in candidates])
        if front.recommended is None:
            return None
        point, path = candidates[front.recommended]
        return {"step": point.step, "path": path, "reason": front.reason}

    # ----------------------------------------------------------------- JSON
    def to_dict(self, *, include_measurements: bool = True) -> dict[str, Any]:
        """The report as a JSON-safe dict with ``schema_version`` and ``ftcallback_version``.

        NaN is written as null and infinities as ``"inf"`` / ``"-inf"``, so the result passes
        ``json.dumps(..., allow_nan=False)``.

        Args:
            include_measurements: keep each check's full ``measurement``. False gives the small form
                a callback stores in ``trainer_state.json`` of every checkpoint: summaries, verdicts and
                the baseline (needed to resume) stay; the per-check raw samples go.
        """
        import ftcallback  # here, not at module level: the package's __init__ imports this module

        out: dict[str, Any] = jsonable(
            {
                "schema_version": REPORT_SCHEMA_VERSION,
                "ftcallback_version": getattr(ftcallback, "__version__", "unknown"),
                "created_at": self.created_at,
                "updated_at": self.updated_at,
                "output_dir": self.output_dir,
                "budget": self.budget,
                "settings": self.settings,
                "baseline": self.baseline,
                "baseline_source": self.baseline_source,
                "deployed_baseline": self.deployed_baseline,
                "checks": [_without_measurement(c.to_dict(), include_measurements) for c in self.checks],
                "checkpoints": self.checkpoints,
                "last_within_budget_checkpoint": self.last_within_budget_checkpoint,
                "recommended_checkpoint": self.recommended_checkpoint,
                "pareto": _pareto_rows(self.pareto_points()),
                "pinned_checkpoints": self.pinned_checkpoints,
                "final_model": self.final_model,
                "stopped": self.stopped,
                "earlier_stops": self.earlier_stops,
            }
        )
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunReport:
        """Rebuild a report from :meth:`to_dict` output; missing keys get their defaults.

        Raises:
            ReportError: ``data`` is not a mapping, has another ``schema_version``, or holds a value
                of the wrong type.
        """
        if not isinstance(data, Mapping):
            raise ReportError(f"a report must be a JSON object, got {type(data).__name__}")
        version = data.get("schema_version", REPORT_SCHEMA_VERSION)
        if version != REPORT_SCHEMA_VERSION:
            raise ReportError(
                f"report schema_version {version!r} is not supported (this ftcallback reads "
                f"{REPORT_SCHEMA_VERSION})"
            )
        try:
            checks = [
                # An old report without indices is numbered by position.
                CheckRecord.from_dict({"index": i, **c} if isinstance(c, Mapping) else c)
                for i, c in enumerate(data.get("checks") or [])
            ]
            baseline = data.get("baseline")
            stopped = data.get("stopped")
            return cls(
                budget=dict(data.get("budget") or {}),
                settings=dict(data.get("settings") or {}),
                baseline=None if baseline is None else dict(baseline),
                baseline_source=str(data.get("baseline_source") or ""),
                checks=checks,
                checkpoints=[
                    {
                        "step": int(c.get("step", 0)),
                        "path": str(c.get("path", "")),
                        "within_budget": c.get("within_budget"),
                    }
                    for c in data.get("checkpoints") or []
                ],
                stopped=None if stopped is None else dict(stopped),
                created_at=str(data.get("created_at") or ""),
                updated_at=str(data.get("updated_at") or ""),
                output_dir=str(data.get("output_dir") or ""),
                pinned_checkpoints={str(k): str(v) for k, v in (data.get("pinned_checkpoints") or {}).items()},
                final_model=None if data.get("final_model") is None else dict(data["final_model"]),
                earlier_stops=[dict(stop) for stop in data.get("earlier_stops") or []],
                deployed_baseline=None if data.get("deployed_baseline") is None else dict(data["deployed_baseline"]),
            )
        except (TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, ReportError):
                raise
            raise ReportError(f"corrupt report: {type(exc).__name__}: {exc}") from exc

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write the report atomically (temporary file, then ``os.replace``) and stamp ``updated_at``.

        A crash mid-write leaves the previous file whole, so a resumed run always finds a readable report.

        Args:
            path: where to write; default :func:`report_path` of :attr:`output_dir`.

        Returns:
            The path written.

        Raises:
            ReportError: no ``path`` and no ``output_dir``.
        """
        if path is None:
            if not self.output_dir:
                raise ReportError("RunReport.save() needs a `path` when `output_dir` is empty")
            path = report_path(self.output_dir)
        target = Path(path)
        self.updated_at = _utcnow()
        write_json_atomic(target, self.to_dict())
        logger.debug("report: saved %s (%d checks)", target, len(self.checks))
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RunReport:
        """Read a report written by :meth:`save`.

        Args:
            path: the report file, or a run's ``output_dir`` (then :func:`report_path` of it).

        Raises:
            ReportError: the file is missing or unreadable, not JSON, not a report, or of another
                schema version; the message is one line naming the file.

        Example:
            >>> RunReport.load("/nonexistent")  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ftcallback.ReportError: cannot read report '/nonexistent...': No such file or directory
        """
        target = Path(path)
        if target.is_dir():
            target = report_path(target)
        name = str(target)
        data = read_json(target, what="report", error=ReportError)
        if not isinstance(data, Mapping) or "checks" not in data or "schema_version" not in data:
            raise ReportError(
                f"{name!r} is not an ftcallback report (a JSON object with 'schema_version' and 'checks')"
            )
        version = data["schema_version"]
        if version != REPORT_SCHEMA_VERSION:
            raise ReportError(
                f"report {name!r} has schema_version {version!r}; this ftcallback reads "
                f"{REPORT_SCHEMA_VERSION} (use the ftcallback version that wrote it)"
            )
        try:
            report = cls.from_dict(data)
        except ReportError as exc:
            raise ReportError(f"report {name!r}: {exc}") from exc
        logger.debug("report: loaded %s (%d checks)", name, len(report.checks))
        return report


# --------------------------------------------------------------------- terminal table
_MIN_VERDICT_WIDTH = 24
_MAX_VERDICT_LINES = 3
_EVAL_NOISE = (
    "eval_runtime",
    "eval_samples_per_second",
    "eval_steps_per_second",
    "eval_model_preparation_time",
)


def _eval_metric_key(history: Sequence[Mapping[str, Any]]) -> str | None:
    """The eval metric to show: ``eval_loss`` when logged, else the first other eval metric by name."""
    keys = {
        k
        for entry in history
        for k, v in entry.items()
        if k.startswith("eval_") and k not in _EVAL_NOISE and _finite_float(v) is not None
    }
    if "eval_loss" in keys:
        return "eval_loss"
    return min(keys) if keys else None


def _logged_value(history: Sequence[Mapping[str, Any]], key: str, step: int) -> float | None:
    """The value of ``key`` logged at the closest step at or before ``step`` (the weights the check saw)."""
    best_step, best = -1, None
    for entry in history:
        logged_at = entry.get("step")
        number = _finite_float(entry.get(key))
        if isinstance(logged_at, int) and best_step <= logged_at <= step and number is not None:
            best_step, best = logged_at, number
    return best


def _fmt(value: Any, spec: str) -> str:
    return number(value, spec, missing="-")  # a table cell: "-" reads as "nothing here"


def _verdict_text(check: CheckRecord) -> str:
    if check.status != "ok":
        first_line = (check.error or "unknown error").strip().splitlines() or ["unknown error"]
        return f"failed: {first_line[0]}"
    failing = [v for v in check.verdict if v.get("passed") is False]
    if check.breached or failing:
        labels = []
        for v in failing:
            name = str(v.get("metric") or v.get("name") or v.get("budget") or "?")
            value = _finite_float(v.get("value"))
            limit = _finite_float(v.get("limit"))
            shown = "" if value is None else (f"{value:.4g}" if abs(value) < 1 else f"{value:.1f}")
            over = "" if limit is None else (f">{limit:.4g}" if abs(limit) < 1 else f">{limit:.1f}")
            labels.append(name if not shown else f"{name} {shown}{over}")
        return "BREACH: " + ", ".join(labels) if labels else "BREACH"
    if any(v.get("passed") is True for v in check.verdict):
        return "ok"
    return "n/a"  # nothing evaluable: no budget line, or every value non-finite


def _stopped_text(stopped: Mapping[str, Any]) -> str:
    message = stopped.get("message")
    if message:
        return f"stopped: {message}"
    where = f"step {stopped.get('step', '?')}"
    why = stopped.get("reason") or stopped.get("metric") or "budget breached"
    return f"stopped at {where}: {why}"


def _incomparable_checks(report: RunReport) -> list[str]:
    """One line per difference between a check's measurement and the baseline (see ``comparable_facts``)."""
    try:
        baseline = report.baseline_measurement()
    except BaselineError:
        return []
    if baseline is None:
        return []
    notes = []
    for check in report.checks:
        if check.kind == "baseline" or not check.measurement:
            continue
        try:
            differences = baseline.incompatibilities(Measurement.from_dict(check.measurement))
        except BaselineError:
            continue
        where = f"{check.kind} {_fmt(check.epoch, '.2f')} (step {check.step})"
        notes += [f"{where}: {d.message}" for d in differences]
    return notes


def _pareto_rows(points: list[ParetoPoint]) -> list[dict[str, Any]]:
    """One row per check for report.json: its quality, latency and cost, and whether another check dominates it."""
    front = pareto(points)
    return [
        {
            "step": p.step,
            "quality": p.quality,
            "latency_ms": p.latency_ms,
            "cost": p.cost,
            "within_budget": p.within_budget,
            "dominated": dominated,
        }
        for p, dominated in zip(points, front.dominated, strict=True)
    ]


def _recommended_text(report: RunReport) -> str:
    """The checkpoint to use, or why there is none: a path that no longer exists is never printed as one."""
    found = report.last_within_budget_checkpoint
    if found is not None:
        return found
    gone = [c["path"] for c in report.checkpoints if c.get("within_budget") is True]
    if gone:
        return f"none on disk ({gone[-1]} was within budget but has been deleted, e.g. by save_total_limit)"
    return "none"


def format_checks_table(
    report: RunReport, trainer_state: Mapping[str, Any] | None = None, *, width: int = 100
) -> str:
    """Render the checks of a run as a plain-text table for a terminal (what ``ftcallback report`` prints).

    One row per check: kind, epoch, step, train loss and eval metric (when ``trainer_state`` is given:
    the values logged at the closest step at or before the check), latency p50/p95, TTFT p50 (ms),
    mean output tokens, cost per request (when any check has one) and the verdict (on a row of its own
    below the check, naming the form, when the run measured a deployed form); then a footer with
    the stop message (or "trained to the end") and the last within-budget checkpoint. Columns are sized
    to their contents; a long verdict wraps within its column (at most three lines) to keep lines
    within ``width``.

    Args:
        report: the run report.
        trainer_state: the contents of ``trainer_state.json`` (its ``log_history`` is read), or None.
        width: the widest a line may be.

    Returns:
        The table, lines joined with ``"\\n"``, no trailing newline.

    Example:
        >>> r = RunReport()
        >>> r.add_check(CheckRecord(index=0, kind="baseline", step=0, summary={"latency_ms_p50": 40.0}))
        >>> print(format_checks_table(r).splitlines()[0])
        kind      epoch  step  p50 ms  p95 ms  ttft ms  out tok  verdict
    """
    history = list(trainer_state.get("log_history") or []) if trainer_state is not None else None
    eval_key = _eval_metric_key(history) if history else None
    show_cost = any(_finite_float(c.cost.get("cost_per_request")) is not None for c in report.checks)
    show_quality = any(_finite_float(c.summary.get("quality")) is not None for c in report.checks)
    points = report.pareto_points()
    dominated = {p.step for p, d in zip(points, pareto(points).dominated, strict=True) if d}

    headers = ["kind", "epoch", "step"]
    if history is not None:
        headers.append("loss")
        if eval_key is not None:
            headers.append(eval_key)
    headers += ["p50 ms", "p95 ms", "ttft ms", "out tok"]
    if show_quality:
        headers.append("quality")
    if show_cost:
        headers.append("cost/req")
    headers.append("verdict")

    rows: list[list[str]] = []
    for check in report.checks:
        s = check.summary
        row = [check.kind, _fmt(check.epoch, ".2f"), str(check.step)]
        if history is not None:
            row.append(_fmt(_logged_value(history, "loss", check.step), ".4f"))
            if eval_key is not None:
                row.append(_fmt(_logged_value(history, eval_key, check.step), ".4g"))
        row += [
            _fmt(s.get("latency_ms_p50"), ".1f"),
            _fmt(s.get("latency_ms_p95"), ".1f"),
            _fmt(s.get("ttft_ms_p50"), ".1f"),
            _fmt(s.get("output_tokens_mean"), ".1f"),
        ]
        if show_quality:
            row.append(_fmt(s.get("quality"), ".3f"))
        if show_cost:
            row.append(_fmt(check.cost.get("cost_per_request"), ".3g"))
        deployed = check.deployed
        verdict = _verdict_text(check)
        if check.kind != "baseline" and check.status == "ok" and check.step in dominated:
            verdict += " (dominated)"  # another check is at least as good on quality, latency and cost
        # With a deployed form the verdict judges that form: it goes on the form's own row, below.
        row.append(verdict if deployed is None else "")
        rows.append(row)
        if deployed is not None:
            d = deployed.get("summary") or {}
            served = [f" {deployed.get('form', 'deployed')}", "", ""]
            served += [""] * (len(row) - 8 - show_cost - show_quality)
            served += [_fmt(d.get(k), ".1f") for k in ("latency_ms_p50", "latency_ms_p95", "ttft_ms_p50")]
            served.append(_fmt(d.get("output_tokens_mean"), ".1f"))
            if show_quality:
                served.append(_fmt(d.get("quality"), ".3f"))
            if show_cost:
                served.append(_fmt((deployed.get("cost") or {}).get("cost_per_request"), ".3g"))
            served.append(verdict)
            rows.append(served)

    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers[:-1])]
    # Two spaces between columns read best; one when that leaves the verdict too little room.
    gap = "  " if sum(widths) + 2 * len(widths) + _MIN_VERDICT_WIDTH <= width else " "
    fixed = sum(widths) + len(gap) * len(widths)
    verdict_width = max(width - fixed, _MIN_VERDICT_WIDTH)

    def render(cells: Sequence[str]) -> list[str]:
        parts = [
            # Text columns read left to right, numbers line up on the right.
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells[:-1], widths, strict=True))
        ]
        # A long verdict wraps inside its column rather than being cut: its metric names are the point.
        verdict = textwrap.wrap(cells[-1], verdict_width, max_lines=_MAX_VERDICT_LINES, placeholder=" ...")
        verdict = verdict or [""]
        first = gap.join(parts + [verdict[0]]).rstrip()
        return [first] + [" " * fixed + more for more in verdict[1:]]

    longest_verdict = max(len(r[-1]) for r in rows + [headers])
    lines = render(headers) + ["-" * min(width, fixed + longest_verdict)]
    for row in rows:
        lines += render(row)
    if not rows:
        lines.append("(no checks recorded)")
    notes = _incomparable_checks(report)
    if notes:
        lines += ["", "not comparable with the baseline (relative budgets over these figures not evaluable):"]
        for note in notes:
            lines += textwrap.wrap(f"  - {note}", width=width, subsequent_indent="    ")
    lines.append("")
    footer = _stopped_text(report.stopped) if report.stopped else "trained to the end (no budget stop)"
    lines += textwrap.wrap(footer, width=width, subsequent_indent="  ") or [footer]
    lines.append(f"last within-budget checkpoint: {_recommended_text(report)}")
    recommended = report.recommended_checkpoint
    if recommended is not None and show_quality:
        lines += textwrap.wrap(
            f"recommended checkpoint: {recommended['path']} ({recommended['reason']})", width=width,
            subsequent_indent="  ",
        )
    return "\n".join(lines)
