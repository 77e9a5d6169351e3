"""The ``ftcallback`` command line: ``measure``, ``compare`` and ``report``.

``ftcallback measure MODEL --prompts FILE`` measures a model on a probe and can save the
measurement as a baseline for :class:`~ftcallback._callback.EfficiencyCallback`.
``ftcallback compare BASE FINETUNED`` puts two models (or two saved measurements) side by
side against a budget and exits 0 to ship, 1 not to ship. ``ftcallback report RUN_DIR``
prints (and plots) what the callback recorded during a fine-tuning run.

Every error a user can cause (a bad flag, an invalid budget, a missing or corrupt file, a
model that cannot be loaded) is one line ``ftcallback: error: ...`` on stderr and exit
code 2; tracebacks are kept for bugs.

Example:
    >>> from ftcallback.cli import main
    >>> main(["compare", "base.json", "tuned.json", "--max-token-increase", "0.2"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import re
import shutil
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

from . import __version__
from ._budget import LATENCY_STATS, Budget
from ._compare import _validate_accuracy, compare
from ._embedded import EMBEDDED_MODEL
from ._errors import FTCallbackError
from ._measurement import Measurement
from ._prompts import load_prompts
from ._report import (
    CheckRecord,
    RunReport,
    _eval_metric_key,
    _logged_value,
    format_checks_table,
    report_path,
)

__all__ = ["format_measurement", "main", "report_summary"]

logger = logging.getLogger("ftcallback.cli")

#: Exit codes: 0 ship / success, 1 do not ship (``compare``), 2 a usage or input error.
EXIT_OK, EXIT_DO_NOT_SHIP, EXIT_USAGE = 0, 1, 2
#: 128 + SIGINT, what shells report for Ctrl-C.
EXIT_INTERRUPTED = 130

_DTYPES = ("float32", "bfloat16", "float16")
# Tables are laid out for terminals between these widths: narrower wraps badly, wider reads badly.
_MIN_WIDTH, _MAX_WIDTH = 80, 100

# Measurement defaults when nothing else decides them (same as measure() and EfficiencyCallback).
_MEASURE_DEFAULTS: dict[str, Any] = {
    "max_new_tokens": 128,
    "apply_chat_template": False,
    "repeats": 3,
    "warmup": 1,
    "batch_size": 1,
}


class UsageError(Exception):
    """A user error the CLI reports as one line on stderr with exit code 2 (never a traceback)."""


# --------------------------------------------------------------------------- argparse
class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors become :class:`UsageError` instead of usage text and ``sys.exit``.

    argparse prints the whole usage block and exits; the CLI wants one line and a return code
    so that ``main()`` can be tested without catching ``SystemExit``.
    """

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"  # argparse names the type in some messages
    return parse


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _add_common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("-v", "--verbose", action="count", default=0, help="more log lines (-vv: debug)")
    group.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")


def _add_measure_options(parser: argparse.ArgumentParser, *, for_compare: bool) -> None:
    """The probe and generation flags shared by ``measure`` and ``compare``.

    For ``compare`` every default is None, so that a value left unset can come from the saved
    measurement on the other side (the two sides must be measured the same way).
    """
    group = parser.add_argument_group(
        "measuring" + (" (when BASE or FINETUNED is a model)" if for_compare else "")
    )
    group.add_argument(
        "--prompts",
        metavar="FILE",
        required=not for_compare,
        help='probe prompts: a .txt file (one per line) or a .jsonl file ({"prompt": ...} per line)',
    )

    def default(key: str) -> Any:
        return None if for_compare else _MEASURE_DEFAULTS[key]

    inherit = " (default: the saved measurement's, else %s)" if for_compare else " (default: %s)"
    group.add_argument(
        "--max-new-tokens",
        type=_int_at_least(1),
        default=default("max_new_tokens"),
        metavar="N",
        help="generation cap per response" + inherit % _MEASURE_DEFAULTS["max_new_tokens"],
    )
    group.add_argument(
        "--chat",
        # compare: --no-chat overrides a saved measurement that was taken with the chat template.
        action=argparse.BooleanOptionalAction if for_compare else "store_true",
        default=None if for_compare else False,
        help="wrap each prompt in the tokenizer's chat template (instruct models)"
        + (" (default: the saved measurement's, else off)" if for_compare else ""),
    )
    group.add_argument(
        "--repeats",
        type=_int_at_least(1),
        default=default("repeats"),
        metavar="N",
        help="timed passes over the probe" + inherit % _MEASURE_DEFAULTS["repeats"],
    )
    group.add_argument(
        "--warmup",
        type=_int_at_least(0),
        default=default("warmup"),
        metavar="N",
        help="untimed warm-up calls" + inherit % _MEASURE_DEFAULTS["warmup"],
    )
    group.add_argument(
        "--batch-size",
        type=_int_at_least(1),
        default=default("batch_size"),
        metavar="N",
        help="prompts per generate call" + inherit % _MEASURE_DEFAULTS["batch_size"],
    )
    group.add_argument("--dtype", choices=_DTYPES, default="float32", help="weights dtype (default: float32)")
    group.add_argument(
        "--device",
        default=None,
        help="torch device, e.g. cpu, cuda, cuda:1, mps (default: cuda when available, else cpu)",
    )


def _build_parser() -> _Parser:
    parser = _Parser(
        prog="ftcallback",
        description="Measure inference latency and output length of causal LMs; compare a fine-tuned "
        "model with its base against a budget; read the report of a fine-tuning run.",
        epilog="Exit codes: 0 success (compare: ship), 1 compare: do not ship, 2 usage or input error.",
    )
    parser.add_argument("--version", action="version", version=f"ftcallback {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser(
        "measure",
        help="measure a model on a probe (and save the measurement)",
        description="Measure latency (end-to-end, TTFT, TPOT) and output length of a causal LM on a "
        "probe of prompts. Save it with --json to use it as `EfficiencyCallback(baseline=PATH)`.",
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help=f"'{EMBEDDED_MODEL}' (the embedded SmolLM2-135M-Instruct, offline), a hub id, or a local "
        "folder saved with save_pretrained",
    )
    _add_measure_options(p, for_compare=False)
    p.add_argument("--json", metavar="OUT", help="save the measurement as JSON to OUT")
    _add_common(p)
    p.set_defaults(handler=cmd_measure)

    p = sub.add_parser(
        "compare",
        help="ship or do not ship: a fine-tuned model against its base and a budget",
        description="Compare a fine-tuned model with its base model against a budget. BASE and FINETUNED "
        "are saved measurements (files ending .json) or models (then both are measured with the same "
        "--prompts and settings). Exit code 0: ship; 1: do not ship; 2: usage or input error.",
    )
    p.add_argument("base", metavar="BASE", help="measurement .json, or a model (name, hub id or folder)")
    p.add_argument("finetuned", metavar="FINETUNED", help="measurement .json, or a model")
    budget = p.add_argument_group("budget (all optional; none set = monitor only, always ship)")
    budget.add_argument("--latency-ms", type=_finite_float, metavar="MS", help="SLA on latency per request")
    budget.add_argument(
        "--latency-stat", choices=LATENCY_STATS, help="latency statistic budgets apply to (default: p95)"
    )
    budget.add_argument(
        "--max-latency-increase",
        type=_finite_float,
        metavar="FRAC",
        help="allowed latency increase over BASE, 0.25 = +25%% (judged prompt by prompt, significant only)",
    )
    budget.add_argument("--output-tokens", type=_finite_float, metavar="N", help="cap on mean output tokens")
    budget.add_argument(
        "--max-token-increase", type=_finite_float, metavar="FRAC", help="allowed mean output tokens increase"
    )
    budget.add_argument(
        "--input-price-per-1k", type=_finite_float, metavar="PRICE", help="price of 1000 input tokens"
    )
    budget.add_argument(
        "--output-price-per-1k", type=_finite_float, metavar="PRICE", help="price of 1000 output tokens"
    )
    budget.add_argument("--requests-per-month", type=_finite_float, metavar="N", help="expected traffic")
    budget.add_argument(
        "--monthly-cost", type=_finite_float, metavar="COST", help="cap on projected monthly cost"
    )
    budget.add_argument(
        "--cost-per-request", type=_finite_float, metavar="COST", help="cap on cost per request"
    )
    budget.add_argument(
        "--max-cost-increase", type=_finite_float, metavar="FRAC", help="allowed cost per request increase"
    )
    p.add_argument(
        "--accuracy",
        nargs=2,
        type=_finite_float,
        metavar=("BEFORE", "AFTER"),
        help="task accuracy of BASE and FINETUNED (fractions or percentages), to state the trade-off",
    )
    p.add_argument("--json", action="store_true", help="print the comparison as JSON instead of a table")
    _add_measure_options(p, for_compare=True)
    _add_common(p)
    p.set_defaults(handler=cmd_compare)

    p = sub.add_parser(
        "report",
        help="show what the callback recorded during a fine-tuning run",
        description="Print the checks of a fine-tuning run (RUN_DIR/efficiency/report.json) with the loss "
        "and eval metric from trainer_state.json, and optionally plot them.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run's output_dir, or the report.json file itself")
    p.add_argument(
        "--plot", metavar="OUT.png", help="draw latency, output tokens and loss over training steps"
    )
    p.add_argument(
        "--json", action="store_true", help="print a machine-readable summary instead of the table"
    )
    _add_common(p)
    p.set_defaults(handler=cmd_report)
    return parser


# --------------------------------------------------------------------------- helpers
def _one_line(exc: BaseException) -> str:
    """An exception's message on one line: library messages sometimes span several."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _width() -> int:
    return max(_MIN_WIDTH, min(_MAX_WIDTH, shutil.get_terminal_size((_MIN_WIDTH, 24)).columns))


def _json_safe(value: Any) -> Any:
    """NaN -> null and infinities -> "inf"/"-inf", recursively, so ``json.dumps(allow_nan=False)`` holds."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _print_json(data: Any) -> None:
    print(json.dumps(_json_safe(data), indent=2, allow_nan=False))


class _Formatter(logging.Formatter):
    """``ftcallback: message``, with ``warning:`` / ``error:`` for those levels (like the error lines)."""

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"ftcallback: {level}{record.getMessage()}"


@contextlib.contextmanager
def _stderr_logging(verbose: int, quiet: bool) -> Iterator[None]:
    """Progress lines and the library's warnings on stderr for the duration of one ``main()`` call.

    The library never configures logging; the CLI owns its process, so it may. Everything is
    put back afterwards so that calling ``main()`` from tests or a notebook leaves no handler behind.
    """
    package = logging.getLogger("ftcallback")
    handler = logging.StreamHandler(sys.stderr)  # the current stderr: pytest's capsys swaps it
    handler.setFormatter(_Formatter())
    saved = (package.level, logger.level)
    package_level = logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else logging.WARNING
    package.setLevel(logging.ERROR if quiet else package_level)
    logger.setLevel(logging.ERROR if quiet else min(package_level, logging.INFO))
    package.addHandler(handler)
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(saved[0])
        logger.setLevel(saved[1])


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Hide transformers' "Loading weights" bars: our own progress lines say what is happening."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


# --------------------------------------------------------------------------- loading and measuring
@dataclass(frozen=True)
class _MeasureSettings:
    """How a model is measured from the CLI (the arguments of :func:`ftcallback._measure.measure`)."""

    prompts: list[str]
    max_new_tokens: int
    apply_chat_template: bool
    repeats: int
    warmup: int
    batch_size: int
    dtype: str
    device: str | None


def _resolve_device(device: str | None) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(
            f"--device {device!r} is not a torch device; use e.g. cpu, cuda, cuda:1 or mps"
        ) from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device!r}: CUDA is not available on this machine; use --device cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise UsageError(f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {device!r}: MPS is not available on this machine; use --device cpu")
    return device


def _check_model_name(name: str) -> None:
    """Catch a mistyped local path before transformers turns it into a confusing hub error."""
    if name == EMBEDDED_MODEL:
        return
    path = Path(name).expanduser()
    # A hub id is "name" or "org/name"; anything else with a slash can only be a local folder.
    looks_local = name.startswith((".", "/", "~")) or name.rstrip("/").count("/") > 1
    if path.exists():
        if path.is_dir() and not (path / "config.json").is_file():
            raise UsageError(
                f"model folder {name!r} has no config.json; pass a folder written by save_pretrained, "
                f"a hub id, or '{EMBEDDED_MODEL}'"
            )
        if path.is_file():
            raise UsageError(
                f"model {name!r} is a file; pass the folder written by save_pretrained (a saved "
                "measurement must end with .json)"
            )
    elif looks_local:
        raise UsageError(f"model folder {name!r} does not exist")


def _load_model(name: str, dtype: str, device: str) -> tuple[Any, Any]:
    from ._embedded import load_model_and_tokenizer

    _check_model_name(name)
    logger.info("loading %s (%s) on %s", name, dtype, device)
    try:
        with _no_progress_bars():
            model, tokenizer = load_model_and_tokenizer(name, dtype=dtype)
    except FTCallbackError:
        raise
    except (OSError, ValueError, ImportError, KeyError) as exc:
        # transformers reports a missing hub id, an offline cache miss or a broken folder this way.
        raise UsageError(f"cannot load model {name!r}: {_one_line(exc)}") from exc
    try:
        model.to(device)
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise UsageError(f"cannot move model {name!r} to {device}: {_one_line(exc)}") from exc
    return model, tokenizer


def _measure_model(name: str, settings: _MeasureSettings) -> Measurement:
    """Load a model, measure it on the probe, and free it again (compare loads two in turn)."""
    from ._measure import measure

    device = _resolve_device(settings.device)
    model, tokenizer = _load_model(name, settings.dtype, device)
    logger.info(
        "measuring %s: %d prompts x %d repeats (+%d warm-up), max_new_tokens %d",
        name,
        len(settings.prompts),
        settings.repeats,
        settings.warmup,
        settings.max_new_tokens,
    )
    try:
        m = measure(
            model,
            tokenizer,
            settings.prompts,
            max_new_tokens=settings.max_new_tokens,
            warmup=settings.warmup,
            repeats=settings.repeats,
            batch_size=settings.batch_size,
            apply_chat_template=settings.apply_chat_template,
        )
    finally:
        # The second model of a compare must not share memory (or the allocator's cache) with the first.
        del model, tokenizer
        gc.collect()
        if device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
    # Record the model as the user named it: for the embedded model transformers only knows a
    # site-packages folder, and the name is what reproduces the measurement from the command line.
    return replace(m, model={**m.model, "name_or_path": name})


def _load_prompts(path: str | None) -> list[str]:
    if path is None:
        raise UsageError("--prompts FILE is required to measure a model")
    return load_prompts(path)


def _is_measurement_file(arg: str) -> bool:
    return arg.lower().endswith(".json")


def _load_measurement(path: str, role: str) -> Measurement:
    """Read a saved measurement, with errors that name its role (BASE / FINETUNED), not "baseline"."""
    try:
        return Measurement.load(path, what=f"{role} measurement")
    except FTCallbackError as exc:
        raise UsageError(_one_line(exc)) from exc

def _fmt(value: float, spec: str) -> str:
    return format(value, spec) if math.isfinite(value) else "n/a"


def format_measurement(m: Measurement, width: int = _MIN_WIDTH) -> str:
    """A measurement as a plain-text table (what ``ftcallback measure`` prints).

    Args:
        m: the measurement.
        width: the widest a line may be (sample outputs are cut to it).

    Returns:
        The table, lines joined with ``"\\n"``.

    Example:
        >>> from ftcallback._measurement import RequestSample
        >>> m = Measurement(samples=(RequestSample(0, 0, 0.5, 0.1, 5, 9, True),))
        >>> print(format_measurement(m).splitlines()[2])
        latency p50                     500.0  ms
    """
    s = m.settings
    rows: list[tuple[str, str, str]] = [
        *(
            (f"latency {stat}", _fmt(m.latency_ms.get(stat), ".1f"), "ms")
            for stat in ("p50", "p90", "p95", "p99")
        ),
        ("TTFT p50", _fmt(m.ttft_ms.p50, ".1f"), "ms"),
        ("TPOT p50", _fmt(m.tpot_ms.p50, ".2f"), "ms"),
        ("output tokens mean", _fmt(m.output_tokens.mean, ".1f"), "tokens"),
        ("output tokens p95", _fmt(m.output_tokens.p95, ".1f"), "tokens"),
        ("input tokens mean", _fmt(m.input_tokens.mean, ".1f"), "tokens"),
        ("throughput", _fmt(m.tokens_per_second, ".1f"), "tok/s"),
        ("EOS fraction", _fmt(m.eos_fraction, ".3f"), ""),
        ("truncated fraction", _fmt(m.truncated_fraction, ".3f"), ""),
        ("noise CV", _fmt(m.noise_cv, ".3f"), ""),
        ("requests", str(len(m.samples)), ""),
        (
            "warm-up first call",
            _fmt(m.warmup_latencies_s[0] * 1000.0, ".1f") if m.warmup_latencies_s else "n/a",
            "ms",
        ),
    ]
    if m.peak_memory_bytes is not None:
        rows.append(("peak memory", f"{m.peak_memory_bytes / 2**20:.1f}", "MiB"))
    lines = [_model_line(m), f"{'metric':<26}{'value':>11}  unit"]
    lines += [f"{name:<26}{value:>11}  {unit}".rstrip() for name, value, unit in rows]
    lines.append("")
    lines.append(
        f"probe: {s.get('num_prompts', '?')} prompts x {s.get('repeats', '?')} repeats "
        f"(+{s.get('warmup', '?')} warm-up), max_new_tokens {s.get('max_new_tokens', '?')}, "
        f"batch size {s.get('batch_size', '?')}, "
        f"chat template {'on' if s.get('apply_chat_template') else 'off'}"
    )
    for sample in m.sample_outputs:
        text = " ".join(str(sample.get("output", "")).split())
        line = f"sample {sample.get('prompt_index', '?')}: {text!r}"
        lines.append(line if len(line) <= width else line[: width - 3] + "...")
    return "\n".join(lines)


def _model_line(m: Measurement) -> str:
    model = m.model
    params = model.get("num_parameters")
    size = f"{params / 1e6:.2f}M params" if isinstance(params, (int, float)) else "? params"
    return (
        f"model: {model.get('name_or_path') or '?'} ({model.get('class', '?')}, {size}, "
        f"{model.get('dtype', '?')}, {model.get('device', '?')})"
    )


def cmd_measure(args: argparse.Namespace) -> int:
    """``ftcallback measure``: measure one model, print the table, save the JSON with ``--json``."""
    settings = _MeasureSettings(
        prompts=_load_prompts(args.prompts),
        max_new_tokens=args.max_new_tokens,
        apply_chat_template=args.chat,
        repeats=args.repeats,
        warmup=args.warmup,
        batch_size=args.batch_size,
        dtype=args.dtype,
        device=args.device,
    )
    if args.json is not None and not _is_measurement_file(args.json):
        raise UsageError(f"--json {args.json!r}: the file name must end with .json (compare relies on it)")
    m = _measure_model(args.model, settings)
    print(format_measurement(m, _width()))
    if args.json is not None:
        try:
            path = m.save(args.json)
        except OSError as exc:
            raise UsageError(f"cannot write {args.json!r}: {exc.strerror or exc}") from exc
        logger.info("saved the measurement to %s (use it as EfficiencyCallback(baseline=...))", path)
    return EXIT_OK


# --------------------------------------------------------------------------- compare
# CLI flag -> Budget field; argparse's dest is the field name already.
_BUDGET_FIELDS = (
    "latency_ms",
    "latency_stat",
    "max_latency_increase",
    "output_tokens",
    "max_token_increase",
    "input_price_per_1k",
    "output_price_per_1k",
    "requests_per_month",
    "monthly_cost",
    "cost_per_request",
    "max_cost_increase",
)
_MEASURE_FLAGS = ("prompts", "max_new_tokens", "chat", "repeats", "warmup", "batch_size")


def _budget_from_args(args: argparse.Namespace) -> Budget:
    """The budget the flags describe; a ConfigError names the flag (``--latency-ms``), not the field."""
    from ._errors import ConfigError

    values = {name: getattr(args, name) for name in _BUDGET_FIELDS if getattr(args, name) is not None}
    try:
        return Budget(**values)
    except ConfigError as exc:
        message = re.sub(
            r"`(\w+)`",
            lambda match: (
                "--" + match.group(1).replace("_", "-")
                if match.group(1) in _BUDGET_FIELDS
                else match.group(0)
            ),
            str(exc),
        )
        raise UsageError(message) from exc


def _setting(reference: Measurement | None, key: str, kind: type) -> Any:
    """A probe setting of the saved measurement on the other side, or the default when it has none."""
    value = reference.settings.get(key) if reference is not None else None
    # bool is an int: a corrupt `repeats: true` must not pass for 1.
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    return _MEASURE_DEFAULTS[key]


def _pick(flag: Any, reference: Measurement | None, key: str, kind: type) -> Any:
    return flag if flag is not None else _setting(reference, key, kind)


def _describe(path: str, m: Measurement, measured_now: bool) -> str:
    name = str(m.model.get("name_or_path") or "?")
    parts = Path(name).parts
    if len(name) > 40 and len(parts) > 2:  # a long folder: its last two parts say which model it is
        name = str(Path("...", *parts[-2:]))
    how = "measured now" if measured_now else f"saved {m.created_at or '?'}"
    return f"{path} ({name}, {len(m.samples)} requests, {how})"


def cmd_compare(args: argparse.Namespace) -> int:
    """``ftcallback compare``: exit 0 to ship, 1 not to ship; measures BASE / FINETUNED if they are models."""
    budget = _budget_from_args(args)
    # Fail on a bad --accuracy now, not after minutes of measuring.
    try:
        accuracy = _validate_accuracy(tuple(args.accuracy)) if args.accuracy is not None else None
    except FTCallbackError as exc:
        raise UsageError(str(exc).replace("`accuracy`", "--accuracy")) from exc

    sides = {"BASE": args.base, "FINETUNED": args.finetuned}
    measurements: dict[str, Measurement] = {}
    for role, path in sides.items():
        if _is_measurement_file(path):
            measurements[role] = _load_measurement(path, role)
    to_measure = [role for role in sides if role not in measurements]
    given = [f"--{f.replace('_', '-')}" for f in _MEASURE_FLAGS if getattr(args, f) is not None]
    if not to_measure and given:
        logger.warning("%s ignored: BASE and FINETUNED are both saved measurements", ", ".join(given))
    if to_measure:
        # A model compared with a saved measurement is measured the way that one was, unless told otherwise.
        reference = next(iter(measurements.values()), None)
        settings = _MeasureSettings(
            prompts=_load_prompts(args.prompts),
            max_new_tokens=_pick(args.max_new_tokens, reference, "max_new_tokens", int),
            apply_chat_template=_pick(args.chat, reference, "apply_chat_template", bool),
            repeats=_pick(args.repeats, reference, "repeats", int),
            warmup=_pick(args.warmup, reference, "warmup", int),
            batch_size=_pick(args.batch_size, reference, "batch_size", int),
            dtype=args.dtype,
            device=_resolve_device(args.device),
        )
        for role in to_measure:
            measurements[role] = _measure_model(sides[role], settings)

    base, new = measurements["BASE"], measurements["FINETUNED"]
    comparison = compare(base, new, budget, accuracy=accuracy)
    if args.json:
        _print_json(
            {
                "base": sides["BASE"],
                "finetuned": sides["FINETUNED"],
                "budget": budget.to_dict(),
                **comparison.to_dict(),
            }
        )
    else:
        print(_wrap_field("base:      ", _describe(sides["BASE"], base, "BASE" in to_measure)))
        print(_wrap_field("finetuned: ", _describe(sides["FINETUNED"], new, "FINETUNED" in to_measure)))
        print(_wrap_field("budget:    ", _budget_text(budget.to_dict())))
        print()
        print(comparison.format_table(width=_width()))
    return EXIT_OK if comparison.ship else EXIT_DO_NOT_SHIP


# --------------------------------------------------------------------------- report
def _locate_report(arg: str) -> tuple[Path, Path]:
    """``(report file, run dir)`` for RUN_DIR, RUN_DIR/efficiency or the report file itself."""
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
        logger.info("no trainer_state.json in %s: showing the checks without loss", run_dir)
        return None, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        # The loss is context, not the point: a damaged trainer_state.json must not hide the report.
        logger.warning("ignoring %s (%s): showing the checks without loss", path, _one_line(exc))
        return None, None
    if not isinstance(data, dict) or not isinstance(data.get("log_history", []), list):
        logger.warning("ignoring %s: not a trainer_state.json (no log_history list)", path)
        return None, None
    return data, path


def _check_summary(
    check: CheckRecord, history: Sequence[Mapping[str, Any]] | None, eval_key: str | None
) -> dict[str, Any]:
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
    for key in ("latency_ratio", "output_tokens_ratio"):
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
        trainer_state: the contents of ``trainer_state.json``, for the loss and eval metric per check.
        report_file: where the report was read from.

    Returns:
        ``{"report", "output_dir", "budget", "baseline_source", "baseline", "checks", "checkpoints",
        "stopped", "last_within_budget_checkpoint"}``; each check holds its key numbers.
    """
    history = list(trainer_state.get("log_history") or []) if trainer_state is not None else None
    eval_key = _eval_metric_key(history) if history else None
    baseline = report.baseline or {}
    base_summary = baseline.get("summary") if isinstance(baseline, Mapping) else None
    return _json_safe(
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


def cmd_report(args: argparse.Namespace) -> int:
    """``ftcallback report``: the run's checks as a table (or JSON), and a plot with ``--plot``."""
    report_file, run_dir = _locate_report(args.run_dir)
    report = RunReport.load(report_file)
    trainer_state, state_path = _load_trainer_state(run_dir)
    if args.json:
        _print_json(report_summary(report, trainer_state, report_file=str(report_file)))
    else:
        print(f"run:      {run_dir}")
        print(f"report:   {report_file}")
        print(f"loss:     {state_path or 'no trainer_state.json found'}")
        print(_wrap_field("budget:   ", _budget_text(report.budget)))
        print(f"baseline: {report.baseline_source or '?'}")
        print()
        print(format_checks_table(report, trainer_state, width=_width()))
    if args.plot is not None:
        from ._plot import plot_report

        try:
            written = plot_report(report, args.plot, trainer_state, run_dir=str(run_dir))
        except ImportError as exc:
            raise UsageError(_one_line(exc)) from exc
        except OSError as exc:
            raise UsageError(f"cannot write the plot to {args.plot!r}: {exc.strerror or exc}") from exc
        logger.info("wrote the plot to %s", written)
    return EXIT_OK


def _wrap_field(label: str, text: str) -> str:
    """``label text`` wrapped to the terminal, continuation lines under the text."""
    # Paths are never broken: they are copied and pasted.
    return textwrap.fill(
        label + text,
        width=_width(),
        subsequent_indent=" " * len(label),
        break_long_words=False,
        break_on_hyphens=False,
    )


def _budget_text(data: Mapping[str, Any]) -> str:
    try:
        budget = Budget.from_dict(data)
    except FTCallbackError:
        return repr(dict(data))  # extra keys from another version: show them as they are
    return repr(budget) + ("  (none set: monitored only)" if budget.is_empty else "")


# --------------------------------------------------------------------------- main
def _fail(message: str) -> int:
    print(f"ftcallback: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ftcallback`` command line.

    Args:
        argv: the arguments after the program name; ``None`` reads ``sys.argv[1:]``.

    Returns:
        The exit code: 0 success (``compare``: ship), 1 ``compare``: do not ship, 2 a usage or
        input error (reported as one ``ftcallback: error: ...`` line on stderr), 130 interrupted.

    Example:
        >>> main(["--version"])  # doctest: +SKIP
        ftcallback 0.1.0
        0
    """
    parser = _build_parser()
    try:
        args, extras = parser.parse_known_args(argv)
    except UsageError as exc:
        return _fail(str(exc))
    except SystemExit as exc:  # --help and --version print and exit; a return code is easier to test
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    if extras:  # named here rather than by the top parser, so the hint points at the subcommand's help
        return _fail(f"unrecognized arguments: {' '.join(extras)} (see `ftcallback {args.command} --help`)")
    with _stderr_logging(args.verbose, args.quiet):
        try:
            code: int = args.handler(args)
        except UsageError as exc:
            return _fail(str(exc))
        except FTCallbackError as exc:  # ConfigError, PromptError, ModelError, BaselineError, ReportError
            return _fail(_one_line(exc))
        except KeyboardInterrupt:
            print("ftcallback: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            # `ftcallback report RUN | head`: the reader left; Python would complain again at exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return EXIT_OK
    return code
