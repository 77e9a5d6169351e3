"""Exit codes and the one error type every subcommand raises for a user's mistake."""

from __future__ import annotations

#: Exit codes: 0 ship / success, 1 do not ship (``compare``) or over budget (``measure``), 2 a usage or
#: input error.
EXIT_OK, EXIT_DO_NOT_SHIP, EXIT_USAGE = 0, 1, 2
#: 128 + SIGINT, what shells report for Ctrl-C.
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """A user error the CLI reports as one line on stderr with exit code 2 (never a traceback)."""


def one_line(exc: BaseException) -> str:
    """An exception's message on one line: library messages sometimes span several."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
