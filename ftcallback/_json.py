"""The one JSON encoding of ftcallback's records: what a value becomes on disk and how it is read back.

JSON has no NaN or infinity, and settings may hold objects (a logits processor, a generation config).
Every record (measurement, report, settings, trainer_state) goes through :func:`jsonable`, so that a value
written by one module compares equal to the same value written by another: two encoders that disagreed
once made a baseline unmatchable with its own settings.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def jsonable(value: Any) -> Any:
    """A deep copy of ``value`` that ``json.dumps(..., allow_nan=False)`` accepts, the same on every run.

    NaN becomes ``null``, infinities ``"inf"`` / ``"-inf"``; numpy and torch scalars and arrays become
    Python numbers and lists; objects with ``to_diff_dict`` (a ``GenerationConfig``) or ``to_dict``
    become dicts; anything else its ``repr`` with memory addresses removed (so two runs with the same
    settings write the same text).

    Example:
        >>> jsonable({"a": float("nan"), "b": (1, float("inf"))})
        {'a': None, 'b': [1, 'inf']}
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return json_float(float(value))
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if callable(getattr(value, "tolist", None)):
        return jsonable(value.tolist())  # numpy / torch scalars and arrays, numpy bool included
    for method in ("to_diff_dict", "to_dict"):
        to_dict = getattr(value, method, None)
        if callable(to_dict):
            return jsonable(to_dict())
    return _ADDRESS.sub("", repr(value))


def json_float(value: float | None) -> Any:
    """A float as JSON holds it: NaN (or None) -> None, infinities -> ``"inf"`` / ``"-inf"``."""
    if value is None or math.isnan(value):
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def float_from_json(value: Any) -> float:
    """Inverse of :func:`json_float`: ``None`` -> NaN, ``"inf"`` -> inf, a number -> float."""
    if value is None:
        return math.nan
    return float(value)


def read_json(path: Path, *, what: str, error: type[Exception]) -> Any:
    """Parse the JSON file at ``path``; a missing, unreadable or invalid file raises ``error`` in one line
    that names ``what`` and the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{what} {str(path)!r} is not valid JSON: {exc}") from exc


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` (already :func:`jsonable`) to ``path`` via a temporary file and a rename in the same
    folder: a crash mid-write leaves the previous file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, allow_nan=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
