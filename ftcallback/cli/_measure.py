"""``ftcallback measure``: measure one model, print the table, save it with ``--json``."""

from __future__ import annotations

import argparse
import logging
import os

from .._probe import ProbeSpec
from ._errors import EXIT_DO_NOT_SHIP, EXIT_OK, UsageError
from ._format import format_measurement, width
from ._models import (
    MEASURE_DEFAULTS,
    MeasureSettings,
    ServedSettings,
    check_model_name,
    is_measurement_file,
    load_prompts,
    measure_model,
    measure_served,
)
from ._parser import budget_from_args

__all__ = ["run"]

logger = logging.getLogger("ftcallback.cli")


def run(args: argparse.Namespace) -> int:
    """Measure ``args.model``; exit 1 when a budget was given and the measurement exceeds it."""
    budget = budget_from_args(args)
    probe = load_prompts(args.prompts)
    spec = ProbeSpec(
        prompts=probe.prompts,
        max_new_tokens=args.max_new_tokens,
        apply_chat_template=args.chat,
        repeats=args.repeats,
        warmup=args.warmup,
        batch_size=args.batch_size,
        references=probe.references,
        scorer=args.scorer,
    )
    settings = MeasureSettings(spec=spec, dtype=args.dtype, device=args.device)
    if args.json is not None and not is_measurement_file(args.json):
        raise UsageError(f"--json {args.json!r}: the file name must end with .json (compare relies on it)")
    if args.endpoint is not None:
        m = measure_served(_served(args), settings)
    else:
        if args.model is None:
            raise UsageError("MODEL is required, unless --endpoint URL measures a running server")
        _refuse_endpoint_flags(args)
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
    goodput = budget.slo_attainment_of(m)
    if goodput is not None:
        concurrency = m.environment.get("concurrency", 1)
        print(f"  goodput: {goodput:.0%} of requests within every per-request limit at concurrency {concurrency}")
    print("within budget" if verdict.passed else "OVER BUDGET")
    return EXIT_OK if verdict.passed else EXIT_DO_NOT_SHIP


# Flags that only mean something for a server, with their defaults.
_ENDPOINT_FLAGS = {"api": "chat", "served_model": None, "concurrency": 1, "api_key": None, "timeout": 60.0}


def _refuse_endpoint_flags(args: argparse.Namespace) -> None:
    given = [name for name, default in _ENDPOINT_FLAGS.items() if getattr(args, name) != default]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise UsageError(f"{flag} needs --endpoint URL (it configures requests to a running server)")


def _served(args: argparse.Namespace) -> ServedSettings:
    """The endpoint flags; model-loading flags that cannot apply to a server are refused, not ignored."""
    if args.batch_size != MEASURE_DEFAULTS["batch_size"]:
        raise UsageError("--batch-size does not apply to --endpoint; use --concurrency N (requests in flight)")
    if args.dtype != "float32" or args.device is not None:
        raise UsageError("--dtype and --device do not apply to --endpoint: the server decides them")
    if args.chat:
        raise UsageError("--chat does not apply to --endpoint: --api chat (the default) uses the server's template")
    if not args.timeout > 0:
        raise UsageError(f"--timeout must be > 0 seconds, got {args.timeout:g}")
    return ServedSettings(
        url=args.endpoint,
        api=args.api,
        served_model=args.served_model,
        concurrency=args.concurrency,
        api_key=args.api_key if args.api_key is not None else os.environ.get("OPENAI_API_KEY") or None,
        timeout_s=args.timeout,
        tokenizer=args.model,
    )
