"""The TensorBoard sink: efficiency scalars, their budget limits, a custom-scalars layout, sample outputs.

The aim: ``tensorboard --logdir <output_dir>`` shows the loss curve and the efficiency curves together,
without duplicated curves, whether or not ``report_to`` includes tensorboard. :func:`resolve_log_dir`
picks the folder (the TensorBoardCallback's own run folder when it is active; else a run folder of our
own into which :class:`TensorBoardSink` also mirrors the Trainer's logs). Only the main process writes:
the sink creates nothing until its first write, so building it on every rank is harmless, but the
callback calls it on ``state.is_world_process_zero`` only.

Tags written: ``efficiency/<key>`` for the headline (see :data:`HEADLINE_KEYS`), ``efficiency_detail/<key>``
for the other summary keys (see :data:`SUMMARY_KEYS`), ratios and costs (see :data:`EXTRA_KEYS`),
``efficiency/deployed/<key>`` for the deployed form of a run that measures one, the budget
limit of a metric under the metric's own tag in the sibling run ``<log_dir>/budget`` (see :data:`BUDGET_RUN`)
at the same steps,
``efficiency/samples/text_summary`` (markdown; torch's ``add_text`` appends the suffix), and, when
mirroring, ``train/<key>``, ``eval/<key>``, ``test/<key>`` as transformers' TensorBoardCallback names them.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._monitor import CheckOutcome

__all__ = [
    "EXTRA_KEYS",
    "BUDGET_RUN",
    "DETAIL_PREFIX",
    "HEADLINE_KEYS",
    "SUMMARY_KEYS",
    "TAG_PREFIX",
    "TensorBoardSink",
    "resolve_log_dir",
]

logger = logging.getLogger("ftcallback.tensorboard")

#: Prefix of the headline tags: what to look at first.
TAG_PREFIX = "efficiency/"
#: Prefix of every other efficiency tag. TensorBoard's Time Series tab groups cards by the tag's first
#: component and sorts them by name; a group of their own keeps percentiles, ratios, costs and fractions
#: from filling its first page before latency and output tokens.
DETAIL_PREFIX = "efficiency_detail/"
#: Keys written under :data:`TAG_PREFIX`.
HEADLINE_KEYS = ("latency_ms_p50", "latency_ms_p95", "output_tokens_mean", "quality")
#: The budget limits are a run of their own, ``<log_dir>/budget``, under the very tag of the metric they bound:
#: TensorBoard colours lines by run, so every chart of a metric (Time Series card, custom-scalars chart) shows
#: the measured line and its limit together, in two colours.
BUDGET_RUN = "budget"

#: Keys of :meth:`Measurement.summary` written as ``efficiency/<key>`` (the rest would only clutter).
SUMMARY_KEYS = (
    "latency_ms_p50",
    "latency_ms_p90",
    "latency_ms_p95",
    "latency_ms_p99",
    "latency_ms_mean",
    "ttft_ms_p50",
    "ttft_ms_p95",
    "tpot_ms_p50",
    "output_tokens_mean",
    "output_tokens_p95",
    "input_tokens_mean",
    "tokens_per_second",
    "eos_fraction",
    "truncated_fraction",
    "noise_cv",
    "peak_memory_mb",
    "quality",
)

#: The comparisons with the baseline and the cost figures a check usually passes as ``extra``.
EXTRA_KEYS = (
    "latency_ratio",
    "latency_judged_ratio",
    "output_tokens_ratio",
    "cost_per_request",
    "monthly_cost",
    "cost_ratio",
)

_LATENCY_PERCENTILES = ("latency_ms_p50", "latency_ms_p90", "latency_ms_p95", "latency_ms_p99")
_RATIOS = ("latency_ratio", "latency_judged_ratio", "output_tokens_ratio", "cost_ratio")

#: Appended to our event files' names: tells them apart from the TensorBoardCallback's
#: (TensorBoard reads any file whose name contains "tfevents").
_FILENAME_SUFFIX = ".ftcallback"
#: The TensorBoardCallback creates its event file in its on_train_begin, just before ours runs;
#: a file older than the run's start by more than this belongs to an earlier run.
_START_SLACK_S = 5.0
#: Longest sample text kept per prompt or output, in characters.
_MAX_SAMPLE_CHARS = 2000


def _tensorboard_reporting(args: Any) -> bool:
    """True when the Trainer's ``report_to`` makes it add a TensorBoardCallback."""
    report_to = getattr(args, "report_to", None)
    if report_to is None:
        return False
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    if "all" in names:
        # transformers v5 expands "all" in TrainingArguments.__post_init__; a value set afterwards is not.
        from transformers.integrations import get_available_reporting_integrations

        names = list(get_available_reporting_integrations())
    return "tensorboard" in names


def _find_tensorboard_callback_dir(runs_dir: Path, not_before: float) -> str | None:
    """The folder under ``runs_dir`` with the newest foreign event file modified at or after ``not_before``.

    Looks one level down (``runs/<date>_<host>/``) and two (``runs/<date>_<host>/<trial>/`` in a
    hyper-parameter search).
    """
    if not runs_dir.is_dir():
        return None
    newest: tuple[float, Path] | None = None
    for pattern in ("*/events.out.tfevents.*", "*/*/events.out.tfevents.*"):
        for event_file in runs_dir.glob(pattern):
            if event_file.name.endswith(_FILENAME_SUFFIX):
                continue  # ours, from an earlier run
            try:
                mtime = event_file.stat().st_mtime
            except OSError:
                continue  # removed while we looked
            if mtime >= not_before and (newest is None or mtime > newest[0]):
                newest = (mtime, event_file.parent)
    return str(newest[1]) if newest is not None else None


def resolve_log_dir(args: Any, *, started_at: float, override: str | None = None) -> tuple[str, bool]:
    """Choose the folder the efficiency curves go to, and whether the sink must mirror the Trainer's logs.

    Rules, first match wins:

    1. ``override`` given: ``(override, not tensorboard_reporting)``.
    2. TensorBoard reporting active (``"tensorboard"`` in ``args.report_to``, ``"all"`` expanded) and
       ``TENSORBOARD_LOGGING_DIR`` set: ``(that dir, False)``, the TensorBoardCallback's own folder.
    3. TensorBoard reporting active: the TensorBoardCallback's run folder, found as the folder under
       ``<output_dir>/runs/`` holding the newest event file modified at or after ``started_at - 5``
       s (that callback creates it in its ``on_train_begin``, which runs before user callbacks):
       ``(that folder, False)``. Not found (resolved before the Trainer's ``on_train_begin``, or the
       callback was given its own writer): ``(<output_dir>/runs/<date>_<host>, False)`` with
       transformers' ``default_logdir()``, a sibling run under the same ``--logdir``: the loss is then
       in the other run, nothing is duplicated.
    4. Otherwise: ``(<output_dir>/runs/<date>_<host>, True)``: no one else writes TensorBoard, so the
       sink also writes the Trainer's logs (loss, learning rate, eval metrics).

    Only reads the file system; creates nothing.

    Args:
        args: the run's ``TrainingArguments`` (``output_dir`` and ``report_to`` are read).
        started_at: ``time.time()`` taken when training began (at the start of the callback's
            ``on_train_begin``).
        override: a folder the user chose for the efficiency curves.

    Returns:
        ``(log_dir, mirror_trainer_logs)``.

    Example:
        >>> from transformers import TrainingArguments
        >>> args = TrainingArguments(output_dir="out", report_to="none")
        >>> log_dir, mirror = resolve_log_dir(args, started_at=0.0)
        >>> log_dir.startswith(os.path.join("out", "runs")), mirror
        (True, True)
    """
    from transformers.integrations.integration_utils import default_logdir

    output_dir = os.fspath(args.output_dir)
    reporting = _tensorboard_reporting(args)
    if override is not None:
        return os.path.expanduser(os.fspath(override)), not reporting
    env_dir = os.environ.get("TENSORBOARD_LOGGING_DIR")
    if reporting and env_dir:
        return os.path.expanduser(env_dir), False
    if reporting:
        found = _find_tensorboard_callback_dir(Path(output_dir) / "runs", started_at - _START_SLACK_S)
        if found is not None:
            logger.debug("tensorboard: writing into the TensorBoardCallback's run folder %s", found)
            return found, False
        fallback = os.path.join(output_dir, default_logdir())
        logger.info(
            "tensorboard: the TensorBoardCallback's run folder was not found under %s; efficiency "
            "curves go to %s, a separate run under the same --logdir",
            os.path.join(output_dir, "runs"),
            fallback,
        )
        return fallback, False
    return os.path.join(output_dir, default_logdir()), True


def _finite_number(value: Any) -> float | None:
    """``float(value)`` when it is a finite real number (bools excluded), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _trainer_tag(key: str) -> str:
    """The tag transformers' ``rewrite_logs`` gives a Trainer log key: eval_x -> eval/x, test_x -> test/x."""
    for prefix in ("eval", "test"):
        if key.startswith(prefix + "_"):
            return f"{prefix}/{key[len(prefix) + 1 :]}"
    return f"train/{key}"


def _glance_order(metric: str) -> tuple[int, str]:
    """Latency first, then output tokens, then the rest (cost), each group alphabetically."""
    for rank, head in enumerate(("latency", "output_tokens")):
        if metric.startswith(head):
            return rank, metric
    return 2, metric


def _exact(tag: str) -> str:
    # Custom-scalars chart tags are regular expressions matched at the start of a tag name;
    # anchor both ends so "efficiency/x" does not also pick up "efficiency/x_y".
    return f"^{re.escape(tag)}$"


def _code_block(text: str) -> str:
    if len(text) > _MAX_SAMPLE_CHARS:
        text = text[:_MAX_SAMPLE_CHARS] + " [...]"
    # An indented block shows the text verbatim: no markdown inside a model's output is interpreted.
    return "\n".join("    " + line for line in (text.splitlines() or [""]))


class TensorBoardSink:
    """Writes the efficiency curves of a run to TensorBoard.

    The ``SummaryWriter`` is created on the first write, so a sink that is never written to
    leaves no folder behind. Non-finite values are skipped, never written as NaN.

    Args:
        log_dir: the folder to write to (see :func:`resolve_log_dir`).
        mirror_trainer_logs: also write the Trainer's logs (:meth:`log_trainer_logs`); True only when
            no TensorBoardCallback does.

    Example:
        >>> import tempfile
        >>> with TensorBoardSink(tempfile.mkdtemp(), mirror_trainer_logs=False) as sink:
        ...     written = sink.log_check(10, {"latency_ms_p50": 41.5}, {"output_tokens_ratio": 1.1},
        ...                              {"output_tokens_mean": 44.4})
        >>> written
        ['efficiency/latency_ms_p50', 'efficiency_detail/output_tokens_ratio', 'budget:efficiency/output_tokens_mean']
    """

    def __init__(
        self, log_dir: str | os.PathLike[str], *, mirror_trainer_logs: bool, name: str | None = None
    ) -> None:
        self.log_dir = os.fspath(log_dir)
        # Several callbacks in one Trainer write to one run: each under its own `efficiency/<name>/` tags.
        self.prefix = TAG_PREFIX if not name else f"{TAG_PREFIX}{name}/"
        self.detail_prefix = DETAIL_PREFIX if not name else f"{DETAIL_PREFIX}{name}/"
        self.mirror_trainer_logs = mirror_trainer_logs
        self._writer: Any = None
        self._budget_writer: Any = None
        self._layout_written = False

    def __repr__(self) -> str:
        return f"TensorBoardSink(log_dir={self.log_dir!r}, mirror_trainer_logs={self.mirror_trainer_logs})"

    @property
    def writer(self) -> Any:
        """The ``torch.utils.tensorboard.SummaryWriter``, created on first use.

        Raises:
            ImportError: the ``tensorboard`` package is not installed.
        """
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ImportError(
                    "ftcallback's TensorBoard logging needs the tensorboard package: pip install tensorboard"
                ) from exc
            self._writer = SummaryWriter(log_dir=self.log_dir, filename_suffix=_FILENAME_SUFFIX)
            logger.debug("tensorboard: writing to %s", self.log_dir)
        return self._writer

    @property
    def budget_writer(self) -> Any:
        """The writer of the ``budget`` run (the limit lines), created on first use."""
        if self._budget_writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._budget_writer = SummaryWriter(
                log_dir=os.path.join(self.log_dir, BUDGET_RUN), filename_suffix=_FILENAME_SUFFIX
            )
        return self._budget_writer

    def tag(self, key: str) -> str:
        """The tag of a summary, ratio or cost key: ``efficiency/<key>`` for :data:`HEADLINE_KEYS`, else
        ``efficiency_detail/<key>`` (a group of its own, after the headline, in the Time Series tab)."""
        return (self.prefix if key in HEADLINE_KEYS else self.detail_prefix) + key

    def _scalar(self, tag: str, value: Any, step: int, *, limit: bool = False) -> bool:
        number = _finite_number(value)
        if number is None:
            return False
        (self.budget_writer if limit else self.writer).add_scalar(tag, number, global_step=int(step))
        return True

    def log_check(
        self,
        step: int,
        summary: Mapping[str, float],
        extra: Mapping[str, float] | None = None,
        limits: Mapping[str, float] | None = None,
    ) -> list[str]:
        """Write one check: summary statistics, ratios and costs, and the budget limits at ``step``.

        Args:
            step: the Trainer's ``global_step``, the x axis shared with the loss curve.
            summary: :meth:`Measurement.summary`; the keys in :data:`SUMMARY_KEYS` are written.
            extra: ratios to the baseline and costs (:data:`EXTRA_KEYS`); every numeric key is written.
            limits: budget limit per metric, written as ``efficiency/<metric>`` in the ``budget`` run, so
                each metric's chart shows its limit as a line of another colour.

        Returns:
            The tags written, ``budget:<tag>`` for the limits (non-finite and missing values are skipped).
        """
        written = [self.tag(k) for k in SUMMARY_KEYS if self._scalar(self.tag(k), summary.get(k), step)]
        written += [self.tag(k) for k, v in (extra or {}).items() if self._scalar(self.tag(k), v, step)]
        written += [
            f"{BUDGET_RUN}:{self.tag(k)}"
            for k, v in (limits or {}).items()
            if self._scalar(self.tag(k), v, step, limit=True)
        ]
        # Checks are rare and each one cost seconds of generation: flush so a crash loses none.
        self.flush()
        return written

    def write_layout(self, metrics: Iterable[str]) -> bool:
        """Write the custom-scalars layout once: what to watch first, then ratios, then detail.

        The first category, "efficiency at a glance", holds one "Multiline" chart per budget metric showing
        ``efficiency/<metric>`` in this run and its limit in the ``budget`` run (latency first, then output tokens,
        then cost), a latency and an output-token chart when no budget covers them, and the Trainer's
        ``train/loss`` (in the same run: the TensorBoardCallback's, or mirrored by this sink). Ratios to the
        baseline (all near 1) get a category of their own, so that their scale is not squeezed by the others.

        Args:
            metrics: the budget metrics (``latency_ms_p95``, ``output_tokens_mean``, ...).

        Returns:
            True when written, False when this sink had already written it.
        """
        if self._layout_written:
            return False
        budgeted = sorted(dict.fromkeys(metrics), key=_glance_order)
        glance: dict[str, list[Any]] = {
            f"{m} and its budget": ["Multiline", [_exact(self.tag(m))]]  # both runs: measured and limit
            for m in budgeted
        }
        for metric in ("latency_ms_p50", "output_tokens_mean"):
            if not any(m.split("_")[0] == metric.split("_")[0] for m in budgeted):
                glance[metric] = ["Multiline", [_exact(self.tag(metric))]]
        glance["train/loss"] = ["Multiline", [_exact("train/loss")]]
        layout: dict[str, dict[str, list[Any]]] = {
            "efficiency at a glance": glance,
            "efficiency: ratios to baseline": {
                "latency and output-token ratios": ["Multiline", [_exact(self.tag(k)) for k in _RATIOS]],
            },
            "efficiency: latency detail": {
                "latency percentiles (ms)": ["Multiline", [_exact(self.tag(k)) for k in _LATENCY_PERCENTILES]],
            },
        }
        self.writer.add_custom_scalars(layout)
        self._layout_written = True
        self.flush()
        return True

    def log_samples(self, step: int, samples: Sequence[Mapping[str, Any]]) -> None:
        """Write a few prompts and the model's responses as markdown text under ``efficiency/samples``.

        (The tag on disk is ``efficiency/samples/text_summary``: torch's ``add_text`` appends the suffix.)

        Args:
            step: the Trainer's ``global_step``.
            samples: ``{"prompt_index", "prompt", "output"}`` mappings (``Measurement.sample_outputs``).
        """
        if not samples:
            return
        parts = []
        for i, sample in enumerate(samples):
            index = sample.get("prompt_index", i)
            parts.append(f"**prompt {index}**\n\n{_code_block(str(sample.get('prompt', '')))}")
            parts.append(f"**output**\n\n{_code_block(str(sample.get('output', '')))}")
        self.writer.add_text(self.prefix + "samples", "\n\n".join(parts), global_step=int(step))
        self.flush()

    def log_trainer_logs(self, logs: Mapping[str, Any], step: int) -> list[str]:
        """Mirror the Trainer's ``on_log`` logs as transformers' TensorBoardCallback would.

        A no-op unless ``mirror_trainer_logs``: when the TensorBoardCallback is active, writing them
        again would duplicate every curve. Tags follow ``rewrite_logs`` (``eval_x`` -> ``eval/x``,
        ``test_x`` -> ``test/x``, else ``train/x``); only finite numbers are written.

        Returns:
            The tags written.
        """
        if not self.mirror_trainer_logs:
            return []
        written = [_trainer_tag(k) for k, v in logs.items() if self._scalar(_trainer_tag(k), v, step)]
        if written:
            self.flush()
        return written

    def write(self, outcome: CheckOutcome, step: int) -> None:
        """Write one check of the monitor: its scalars, the budget limits, the layout and the sample outputs."""
        rec = outcome.record
        if outcome.failed:
            return
        self.write_layout(list(outcome.limits))
        self.log_check(step, rec.summary, {**rec.ratios, **rec.cost}, outcome.limits)
        if rec.deployed is not None:
            # The served form beside the training one (the record's verdict judges it): efficiency/deployed/<key>.
            served = self.prefix + "deployed/"
            summary = rec.deployed.get("summary") or {}
            extra = {**(rec.deployed.get("ratios") or {}), **(rec.deployed.get("cost") or {})}
            for key in SUMMARY_KEYS:
                self._scalar(served + key, summary.get(key), step)
            for key, value in extra.items():
                self._scalar(served + key, value, step)
            self.flush()
        if outcome.measurement is not None:
            self.log_samples(step, list(outcome.measurement.sample_outputs))

    def flush(self) -> None:
        """Push pending events to disk (nothing to do before the first write)."""
        for writer in (self._writer, self._budget_writer):
            if writer is not None:
                writer.flush()

    def close(self) -> None:
        """Flush and close the writer; a later write opens a new event file in the same folder."""
        if self._budget_writer is not None:
            self._budget_writer.close()
            self._budget_writer = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            logger.debug("tensorboard: closed %s", self.log_dir)

    def __enter__(self) -> TensorBoardSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
