"""``ftcallback measure``: measure one model, print the table, save it with ``--json``."""

from __future__ import annotations

import argparse
import logging

from .._probe import ProbeSpec
from ._errors import EXIT_DO_NOT_SHIP, EXIT_OK, UsageError
from ._format import format_measurement, width
from ._models import MeasureSettings, check_model_name, is_measurement_file, load_prompts, measure_model
from ._parser import budget_from_args

__all__ = ["run"]

logger = logging.getLogger("ftcallback.cli")


def run(args: argparse.Namespace) -> int:
    """Measure ``args.model``; exit 1 when a budget was given and the measurement exceeds it."""
    budget = budget_from_args(args)
    spec = ProbeSpec(
        prompts=tuple(load_prompts(args.prompts)),
        max_new_tokens=args.max_new_tokens,
        apply_chat_template=args.chat,
        repeats=args.repeats,
        warmup=args.warmup,
        batch_size=args.batch_size,
    )
    settings = MeasureSettings(spec=spec, dtype=args.dtype, device=args.device)
    if args.json is not None and not is_measurement_file(args.json):
        raise UsageError(f"--json {args.json!r}: the file name must end with .json (compare relies on it)")
    check_model_name(args.model)
    m = measure_model(args.model, settings)
    print(format_measurement(m, width()))
    if args.json is not None:
        try:
            path = m.save(args.json)
        except OSError as exc:
            raise UsageError(f"cannot write {args.json!r}: {exc.strerror or exc}") from exc
        logger.info("saved the measurement to %s (use it as EfficiencyCallback(baseline=...))", path)
    if budget.is_empty:
        return EXIT_OK
    from .._budget import evaluate

    verdict = evaluate(budget, m)
    print()
    print(f"budget: {budget!r}")
    for check in verdict.checks:
        print(f"  {check.describe()}")
    print("within budget" if verdict.passed else "OVER BUDGET")
    return EXIT_OK if verdict.passed else EXIT_DO_NOT_SHIP
