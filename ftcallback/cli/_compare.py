"""``ftcallback compare``: a fine-tuned model against its base and a budget; exit 0 ship, 1 do not."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import BaselineError, FTCallbackError
from .._probe import ProbeSpec
from ._errors import EXIT_DO_NOT_SHIP, EXIT_OK, UsageError
from ._format import budget_text, print_json, width, wrap_field
from ._models import (
    MEASURE_DEFAULTS,
    MeasureSettings,
    check_model_name,
    figures_measurement,
    is_figures,
    is_measurement_file,
    load_measurement,
    load_prompts,
    measure_model,
    measure_model_forms,
)
from ._parser import budget_from_args, name_flags

if TYPE_CHECKING:
    from .._measurement import Measurement

__all__ = ["run"]

logger = logging.getLogger("ftcallback.cli")

_MEASURE_FLAGS = ("prompts", "max_new_tokens", "chat", "repeats", "warmup", "batch_size")


def _setting(reference: Measurement | None, key: str, kind: type) -> Any:
    """A probe setting of the saved measurement on the other side, or the default when it has none."""
    value = reference.settings.get(key) if reference is not None else None
    # bool is an int: a corrupt `repeats: true` must not pass for 1.
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    return MEASURE_DEFAULTS[key]


def _pick(flag: Any, reference: Measurement | None, key: str, kind: type) -> Any:
    return flag if flag is not None else _setting(reference, key, kind)


def _describe(path: str, m: Measurement, measured_now: bool) -> str:
    name = str(m.model.get("name_or_path") or "?")
    parts = Path(name).parts
    if len(name) > 40 and len(parts) > 2:  # a long folder: its last two parts say which model it is
        name = str(Path("...", *parts[-2:]))
    how = "measured now" if measured_now else f"saved {m.created_at or '?'}"
    return f"{path} ({name}, {len(m.samples)} requests, {how})"


def run(args: argparse.Namespace) -> int:
    """Compare BASE with FINETUNED, measuring either when it is a model; exit 0 to ship, 1 not to."""
    from .._compare import _validate_accuracy, compare

    budget = budget_from_args(args)
    # Fail on a bad --accuracy now, not after minutes of measuring.
    try:
        accuracy = _validate_accuracy(tuple(args.accuracy)) if args.accuracy is not None else None
    except FTCallbackError as exc:
        raise UsageError(str(exc).replace("`accuracy`", "--accuracy")) from exc

    sides = {"BASE": args.base, "FINETUNED": args.finetuned}
    forms: tuple[str, ...] = args.what_if or ()
    if forms and is_measurement_file(args.finetuned):
        raise UsageError(
            f"--what-if measures FINETUNED in each form, so FINETUNED must be a model (a name or a folder), "
            f"not the saved measurement {args.finetuned!r}"
        )
    measurements: dict[str, Measurement] = {}
    by_form: dict[str, Measurement | str] = {}
    for role, path in sides.items():
        if is_figures(path):
            measurements[role] = figures_measurement(path, role)
        elif is_measurement_file(path):
            measurements[role] = load_measurement(path, role)
    to_measure = [role for role in sides if role not in measurements]
    given = [f"--{f.replace('_', '-')}" for f in _MEASURE_FLAGS if getattr(args, f) is not None]
    if not to_measure and given:
        logger.warning("%s ignored: BASE and FINETUNED are both saved measurements", ", ".join(given))
    if to_measure:
        prompts = load_prompts(args.prompts)
        for role in to_measure:  # every typo before minutes of measuring the other side
            check_model_name(sides[role])
        # A model compared with a saved measurement is measured the way that one was, unless told otherwise.
        reference = next(iter(measurements.values()), None)
        spec = ProbeSpec(
            prompts=prompts.prompts,
            max_new_tokens=_pick(args.max_new_tokens, reference, "max_new_tokens", int),
            apply_chat_template=_pick(args.chat, reference, "apply_chat_template", bool),
            repeats=_pick(args.repeats, reference, "repeats", int),
            warmup=_pick(args.warmup, reference, "warmup", int),
            batch_size=_pick(args.batch_size, reference, "batch_size", int),
            references=prompts.references,
            scorer=args.scorer,
        )
        settings = MeasureSettings(spec=spec, dtype=args.dtype, device=args.device)
        for role in to_measure:
            if role == "FINETUNED" and forms:
                measurements[role], by_form = measure_model_forms(sides[role], settings, forms)
            else:
                measurements[role] = measure_model(sides[role], settings)

    base, new = measurements["BASE"], measurements["FINETUNED"]
    try:
        comparison = compare(base, new, budget, accuracy=accuracy, allow_mismatch=args.allow_mismatch)
    except BaselineError as exc:
        raise UsageError(name_flags(str(exc))) from exc
    warnings = [f"compared anyway (--allow-mismatch): {p}" for p in comparison.incompatible]
    for line in warnings:  # on stderr, so that stdout stays the table (or the JSON) a script reads
        print(f"ftcallback: warning: {line}", file=sys.stderr)
    remedies = None
    if forms:
        from .._whatif import what_if

        remedies = what_if(base, new, by_form, budget)
    if args.json:
        print_json(
            {
                "base": sides["BASE"],
                "finetuned": sides["FINETUNED"],
                "budget": budget.to_dict(),
                "warnings": warnings,
                **comparison.to_dict(),
                **({"what_if": remedies.to_dict()} if remedies is not None else {}),
            }
        )
    else:
        print(wrap_field("base:      ", _describe(sides["BASE"], base, "BASE" in to_measure)))
        print(wrap_field("finetuned: ", _describe(sides["FINETUNED"], new, "FINETUNED" in to_measure)))
        print(wrap_field("budget:    ", budget_text(budget.to_dict())))
        for line in budget.unevaluable:
            logger.warning("%s", name_flags(line))
        print()
        print(name_flags(comparison.format_table(width=width(), warnings=False)))
        if remedies is not None:
            print()
            print("what if FINETUNED were served as:")
            print(remedies.format_table())
    return EXIT_OK if comparison.ship else EXIT_DO_NOT_SHIP
