"""The argument parser: subcommands, probe flags, and budget flags generated from :class:`Budget`.

Building the parser imports neither torch, transformers nor numpy, so ``ftcallback --help`` is
instant; each subcommand's module (and what it needs) is imported only when it runs.

The budget flags are made from :func:`dataclasses.fields` of :class:`~ftcallback._budget.Budget`:
the flag is the field name with dashes, its help the field's line under ``Attributes:`` in the
class docstring. A new ``Budget`` field gets its flag (and its place in ``--budget FILE``) without
a CLI edit.
"""

from __future__ import annotations

import argparse
import inspect
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, Field, fields
from typing import Any, NoReturn

from .. import __version__
from .._budget import LATENCY_STATS, Budget
from .._embedded import EMBEDDED_MODEL
from .._quality import SCORERS
from ._errors import UsageError
from ._models import MEASURE_DEFAULTS

__all__ = ["BUDGET_FLAGS", "budget_from_args", "build_parser"]

_DTYPES = ("float32", "bfloat16", "float16")
# Budget fields whose values are a closed set; argparse then lists them in --help and errors.
_CHOICES: Mapping[str, Sequence[str]] = {"latency_stat": LATENCY_STATS}


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


def _forms(text: str) -> tuple[str, ...]:
    """``--what-if merge,int8`` -> the canonical forms, in order, each once."""
    from .._errors import ConfigError
    from .._forms import parse_form

    forms: list[str] = []
    for part in text.split(","):
        try:
            form = parse_form(part, argument="--what-if")
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc).replace("`--what-if` ", "")) from None
        if form not in forms:
            forms.append(form)
    return tuple(forms)


# --------------------------------------------------------------------------- budget flags
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _attribute_docs(cls: type) -> dict[str, str]:
    """``{field: description}`` from the ``Attributes:`` section of a Google-style class docstring."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    section = re.search(r"^Attributes:\n((?:[ \t]+.*\n?|\n)*)", doc, re.MULTILINE)
    out: dict[str, str] = {}
    current = None
    for line in (section.group(1) if section else "").splitlines():
        entry = re.match(r"^    (\w+): (.*)$", line)
        if entry:
            current = entry.group(1)
            out[current] = entry.group(2).strip()
        elif current is not None and line.startswith("        "):
            out[current] += " " + line.strip()
        elif line.strip():
            current = None
    return {k: " ".join(v.replace("``", "").split()) for k, v in out.items()}


def _metavar(name: str) -> str:
    if name.endswith("_ms"):
        return "MS"
    if "increase" in name:
        return "FRAC"
    if "price" in name:
        return "PRICE"
    if "cost" in name:
        return "COST"
    if "confidence" in name:
        return "LEVEL"
    if "quality" in name:
        return "SCORE"
    return "N"


def _budget_type(f: Field[Any]) -> Callable[[str], Any]:
    annotation = str(f.type)
    if "float" in annotation:
        return _finite_float
    if "int" in annotation:
        return _int_at_least(0)
    return str


#: ``(flag, Budget field)`` for every budget flag, in the order of the fields.
BUDGET_FLAGS: tuple[tuple[str, str], ...] = tuple((_flag(f.name), f.name) for f in fields(Budget))


def _add_budget_options(parser: argparse.ArgumentParser, *, title: str) -> None:
    group = parser.add_argument_group(title)
    group.add_argument(
        "--budget",
        metavar="FILE",
        dest="budget_file",
        help="a .toml or .json file of budget fields (the names below with underscores, e.g. "
        "max_token_increase = 0.2); flags given as well override the file's values",
    )
    docs = _attribute_docs(Budget)
    for f in fields(Budget):
        text = docs.get(f.name, f.name.replace("_", " ")).rstrip(".")
        if f.default is not MISSING and f.default is not None:
            text += f" (default: {f.default})"
        choices = _CHOICES.get(f.name)
        group.add_argument(
            _flag(f.name),
            dest=f.name,
            type=_budget_type(f),
            choices=choices,
            default=None,  # unset: the file's value, else the field's default
            metavar=None if choices else _metavar(f.name),
            help=text.replace("%", "%%"),  # argparse formats help with %
        )


def name_flags(text: str, names: Any = None) -> str:
    """``text`` with backticked budget field names (```requests_per_month```) written as their flags
    (``--requests-per-month``), or only those in ``names`` when given: the library names fields, a
    command line user types flags.

    Example:
        >>> name_flags("needs `requests_per_month` and `foo`")
        'needs --requests-per-month and `foo`'
    """
    known = {name for _, name in BUDGET_FLAGS} if names is None else set(names)
    return re.sub(r"`(\w+)`", lambda m: _flag(m.group(1)) if m.group(1) in known else m.group(0), text)


def budget_from_args(args: argparse.Namespace) -> Budget:
    """The budget of ``--budget FILE`` overridden by the budget flags given.

    A :class:`ConfigError` about a value from a flag names the flag (``--latency-ms``); one from the
    file names the file and the field.
    """
    from .._errors import ConfigError

    file_values: dict[str, Any] = {}
    if args.budget_file is not None:
        try:
            file_values = Budget.from_file(args.budget_file).to_dict()
        except ConfigError as exc:
            raise UsageError(str(exc)) from exc
    flags = {name: getattr(args, name) for _, name in BUDGET_FLAGS if getattr(args, name) is not None}
    try:
        return Budget.from_dict({**file_values, **flags})
    except ConfigError as exc:
        message = name_flags(str(exc), flags)
        if file_values:
            message = f"{message} (with budget file {args.budget_file!r})"
        raise UsageError(message) from exc


# --------------------------------------------------------------------------- shared groups
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
        help='probe prompts: a .txt file (one per line) or a .jsonl file ({"prompt": ...} per line, with an '
        'optional "reference" answer to score quality)',
    )

    def default(key: str) -> Any:
        return None if for_compare else MEASURE_DEFAULTS[key]

    inherit = " (default: the saved measurement's, else %s)" if for_compare else " (default: %s)"
    group.add_argument(
        "--max-new-tokens",
        type=_int_at_least(1),
        default=default("max_new_tokens"),
        metavar="N",
        help="generation cap per response" + inherit % MEASURE_DEFAULTS["max_new_tokens"],
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
        help="timed passes over the probe" + inherit % MEASURE_DEFAULTS["repeats"],
    )
    group.add_argument(
        "--warmup",
        type=_int_at_least(0),
        default=default("warmup"),
        metavar="N",
        help="untimed warm-up calls" + inherit % MEASURE_DEFAULTS["warmup"],
    )
    group.add_argument(
        "--batch-size",
        type=_int_at_least(1),
        default=default("batch_size"),
        metavar="N",
        help="prompts per generate call" + inherit % MEASURE_DEFAULTS["batch_size"],
    )
    group.add_argument(
        "--scorer",
        choices=sorted(SCORERS),
        default=None,
        help="how a response is scored against its prompt's reference (a .jsonl line's \"reference\"); "
        "quality needs references (default with references: exact)",
    )
    group.add_argument("--dtype", choices=_DTYPES, default="float32", help="weights dtype (default: float32)")
    group.add_argument(
        "--device",
        default=None,
        help="torch device, e.g. cpu, cuda, cuda:1, mps (default: cuda when available, else cpu)",
    )


def _add_endpoint_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "serving endpoint (measure a running OpenAI-compatible server instead of loading MODEL)"
    )
    group.add_argument(
        "--endpoint",
        metavar="URL",
        help="the server's base URL, e.g. http://127.0.0.1:8000 (vLLM, llama.cpp server, TGI, Ollama); "
        "requests are streamed, greedy, max_tokens = --max-new-tokens",
    )
    group.add_argument(
        "--api",
        choices=("chat", "completions"),
        default="chat",
        help="/v1/chat/completions (the server applies its chat template) or /v1/completions "
        "(raw prompts) (default: chat)",
    )
    group.add_argument(
        "--served-model", metavar="NAME", help="model name sent to the server (default: the first it lists)"
    )
    group.add_argument(
        "--concurrency",
        type=_int_at_least(1),
        default=1,
        metavar="N",
        help="requests in flight at once (default: 1); with --latency-ms, goodput is printed",
    )
    group.add_argument(
        "--api-key",
        metavar="KEY",
        default=None,
        help="bearer token for the server (default: $OPENAI_API_KEY when set)",
    )
    group.add_argument(
        "--timeout",
        type=_finite_float,
        default=60.0,
        metavar="S",
        help="seconds allowed for connecting, each wait for data, and each request (default: 60)",
    )


# --------------------------------------------------------------------------- the parser
def build_parser() -> argparse.ArgumentParser:
    """The ``ftcallback`` parser; ``args.command`` names the subcommand module that runs it."""
    parser = _Parser(
        prog="ftcallback",
        description="Measure inference latency and output length of causal LMs; compare a fine-tuned "
        "model with its base against a budget; read the report of a fine-tuning run.",
        epilog="Exit codes: 0 success (compare: ship), 1 compare: do not ship (measure: over budget), "
        "2 usage or input error.",
    )
    parser.add_argument("--version", action="version", version=f"ftcallback {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser(
        "measure",
        help="measure a model on a probe (and save the measurement)",
        description="Measure latency (end-to-end, TTFT, TPOT) and output length of a causal LM on a "
        "probe of prompts. Save it with --json to use it as `EfficiencyCallback(baseline=PATH)`. "
        "With a budget, its absolute limits are checked too (exit code 1 when one is exceeded).",
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        nargs="?",
        help=f"'{EMBEDDED_MODEL}' (the embedded SmolLM2-135M-Instruct, offline), a hub id, or a local "
        "folder saved with save_pretrained; with --endpoint optional: only its tokenizer is loaded, to "
        "count and check the server's tokens",
    )
    _add_measure_options(p, for_compare=False)
    _add_endpoint_options(p)
    p.add_argument("--json", metavar="OUT", help="save the measurement as JSON to OUT")
    _add_budget_options(p, title="budget (all optional; relative limits need `compare`)")
    _add_common(p)

    p = sub.add_parser(
        "compare",
        help="ship or do not ship: a fine-tuned model against its base and a budget",
        description="Compare a fine-tuned model with its base model against a budget. BASE and FINETUNED "
        "are saved measurements (files ending .json), models (then both are measured with the same "
        "--prompts and settings) or figures. Exit code 0: ship; 1: do not ship; 2: usage or input error.",
    )
    p.add_argument(
        "base",
        metavar="BASE",
        help="measurement .json, a model (name, hub id or folder), or figures: latency_ms=200,output_tokens=150 "
        "(also input_tokens, ttft_ms, quality)",
    )
    p.add_argument("finetuned", metavar="FINETUNED", help="measurement .json, a model, or figures")
    _add_budget_options(p, title="budget (all optional; none set = monitor only, always ship)")
    p.add_argument(
        "--accuracy",
        nargs=2,
        type=_finite_float,
        metavar=("BEFORE", "AFTER"),
        help="task accuracy of BASE and FINETUNED (fractions or percentages), to state the trade-off "
        "(default: their measured quality, when both were scored on references)",
    )
    p.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="compare measurements taken with different prompts or settings anyway (a warning on stderr "
        "and in --json); without it they are refused (exit code 2)",
    )
    p.add_argument("--json", action="store_true", help="print the comparison as JSON instead of a table")
    p.add_argument(
        "--what-if",
        metavar="FORMS",
        type=_forms,
        help="also measure FINETUNED (a model, not a .json) in each deployed form, comma-separated: merged "
        "(LoRA adapters merged), bf16, fp16, int8 (dynamic int8 quantization, CPU), or steps joined by + "
        "(merged+bf16); says which bring it within budget",
    )
    _add_measure_options(p, for_compare=True)
    _add_common(p)

    p = sub.add_parser(
        "report",
        help="show what the callback recorded during a fine-tuning run",
        description="Print the checks of a fine-tuning run (RUN_DIR/efficiency/report.json) with the loss "
        "and eval metric from trainer_state.json (or, without one, the loss the report recorded), "
        "and optionally plot them.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run's output_dir, or the report.json file itself")
    p.add_argument(
        "--plot", metavar="OUT.png", help="draw latency, output tokens and loss over training steps"
    )
    p.add_argument(
        "--json", action="store_true", help="print a machine-readable summary instead of the table"
    )
    _add_common(p)
    return parser
