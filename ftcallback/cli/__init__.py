"""The ``ftcallback`` command line: ``measure``, ``compare`` and ``report``.

``ftcallback measure MODEL --prompts FILE`` measures a model on a probe and can save the
measurement as a baseline for :class:`~ftcallback._callback.EfficiencyCallback`.
``ftcallback compare BASE FINETUNED`` puts two models (or two saved measurements) side by
side against a budget and exits 0 to ship, 1 not to ship. ``ftcallback report RUN_DIR``
prints (and plots) what the callback recorded during a fine-tuning run.

Every error a user can cause (a bad flag, an invalid budget, a missing or corrupt file, a
model that cannot be loaded) is one line ``ftcallback: error: ...`` on stderr and exit
code 2; tracebacks are kept for bugs.

One module per part: ``_parser`` (argparse; budget flags generated from ``Budget``),
``_measure`` / ``_compare`` / ``_report`` (one ``run(args) -> int`` per subcommand),
``_models`` (model names, devices, prompts files), ``_format`` (what is printed),
``_console`` (stderr: our lines, no foreign progress bars), ``_errors`` (exit codes).
Only the parser is imported to read the command line, so ``--help`` does not import torch.

Example:
    >>> from ftcallback.cli import main
    >>> main(["compare", "base.json", "tuned.json", "--max-token-increase", "0.2"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._errors import FTCallbackError
from ._console import cli_console
from ._errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UsageError, one_line
from ._parser import build_parser

if TYPE_CHECKING:
    from ._format import format_measurement
    from ._report import report_summary

__all__ = ["format_measurement", "main", "report_summary"]

# Public helpers, imported on first use like the package's own names.
_LAZY = {"format_measurement": "._format", "report_summary": "._report"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ftcallback.cli' has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)


def _fail(message: str) -> int:
    print(f"ftcallback: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ftcallback`` command line.

    Args:
        argv: the arguments after the program name; ``None`` reads ``sys.argv[1:]``.

    Returns:
        The exit code: 0 success (``compare``: ship), 1 ``compare``: do not ship (``measure``: over
        budget), 2 a usage or input error (reported as one ``ftcallback: error: ...`` line on
        stderr), 130 interrupted.

    Example:
        >>> main(["--version"])  # doctest: +SKIP
        ftcallback 0.1.0
        0
    """
    parser = build_parser()
    try:
        args, extras = parser.parse_known_args(argv)
    except UsageError as exc:
        return _fail(str(exc))
    except SystemExit as exc:  # --help and --version print and exit; a return code is easier to test
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    if extras:  # named here rather than by the top parser, so the hint points at the subcommand's help
        return _fail(f"unrecognized arguments: {' '.join(extras)} (see `ftcallback {args.command} --help`)")
    with cli_console(args.verbose, args.quiet):
        try:
            command = importlib.import_module(f"._{args.command}", __name__)
            code: int = command.run(args)
        except UsageError as exc:
            return _fail(str(exc))
        except FTCallbackError as exc:  # ConfigError, PromptError, ModelError, BaselineError, ReportError
            return _fail(one_line(exc))
        except KeyboardInterrupt:
            print("ftcallback: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            # `ftcallback report RUN | head`: the reader left; Python would complain again at exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return EXIT_OK
    return code
