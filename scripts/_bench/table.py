"""Table cells and GitHub markdown tables.

Numbers go through :mod:`ftcallback._format` (its finiteness rule and ``number``). The cells differ
from the library's text on purpose: a missing value is ``-`` (an empty-looking cell, where log text
says ``n/a``), percentages keep one decimal (``percent_change`` rounds to whole percent, too coarse
for overheads of a few tenths of a percent), and tiny values switch to an exponent so a table column
never reads ``0.000``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ftcallback._format import finite_float, number

MISSING = "-"


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats with ``digits`` decimals (tiny ones as an exponent), NaN as ``-``."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        finite = finite_float(value)
        if finite is not None and digits > 1 and finite != 0 and abs(finite) < 10 ** -(digits - 1):
            return f"{finite:.{digits - 1}e}"
        return number(value, f".{digits}f", missing=MISSING)
    return str(value)


def pct(value: float, digits: int = 1, *, signed: bool = True) -> str:
    """``0.034`` -> ``+3.4%`` (``3.4%`` when not ``signed``)."""
    fraction = finite_float(value)
    if fraction is None:
        return MISSING
    return number(fraction * 100, f"+.{digits}f" if signed else f".{digits}f") + "%"


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells are formatted with :func:`fmt` unless they are already strings."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in row) + " |")
    return "\n".join(lines)
