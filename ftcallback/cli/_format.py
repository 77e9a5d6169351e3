"""What the CLI prints: terminal width, wrapped fields, JSON, and the measurement table.

Numbers go through :mod:`ftcallback._format`, the package's one formatter, so the CLI and the
library's log lines agree on how a figure looks.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._format import number

if TYPE_CHECKING:
    from .._measurement import Measurement

__all__ = ["budget_text", "format_measurement", "print_json", "width", "wrap_field"]

# Tables are laid out for terminals between these widths: narrower wraps badly, wider reads badly.
MIN_WIDTH, MAX_WIDTH = 80, 100


def width() -> int:
    """The terminal's width clamped to 80..100 columns."""
    return max(MIN_WIDTH, min(MAX_WIDTH, shutil.get_terminal_size((MIN_WIDTH, 24)).columns))


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON: NaN as null, infinities as ``"inf"``, as in every ftcallback file."""
    from .._json import jsonable

    print(json.dumps(jsonable(data), indent=2, allow_nan=False))


def wrap_field(label: str, text: str) -> str:
    """``label text`` wrapped to the terminal, continuation lines under the text."""
    # Paths are never broken: they are copied and pasted.
    return textwrap.fill(
        label + text,
        width=width(),
        subsequent_indent=" " * len(label),
        break_long_words=False,
        break_on_hyphens=False,
    )


def budget_text(data: Mapping[str, Any]) -> str:
    """A budget (its ``to_dict()`` form) as one readable line."""
    from .._budget import Budget
    from .._errors import FTCallbackError

    try:
        budget = Budget.from_dict(data)
    except FTCallbackError:
        return repr(dict(data))  # extra keys from another version: show them as they are
    return repr(budget) + ("  (none set: monitored only)" if budget.is_empty else "")


def format_measurement(m: Measurement, width: int = MIN_WIDTH) -> str:
    """A measurement as a plain-text table (what ``ftcallback measure`` prints).

    Args:
        m: the measurement.
        width: the widest a line may be (sample outputs are cut to it).

    Returns:
        The table, lines joined with ``"\\n"``.

    Example:
        >>> from ftcallback._measurement import Measurement, RequestSample
        >>> m = Measurement(samples=(RequestSample(0, 0, 0.5, 0.1, 5, 9, True),))
        >>> print(format_measurement(m).splitlines()[2])
        latency p50                     500.0  ms
    """
    s = m.settings
    rows: list[tuple[str, str, str]] = [
        *(
            (f"latency {stat}", number(m.latency_ms.get(stat), ".1f"), "ms")
            for stat in ("p50", "p90", "p95", "p99")
        ),
        ("TTFT p50", number(m.ttft_ms.p50, ".1f"), "ms"),
        ("TPOT p50", number(m.tpot_ms.p50, ".2f"), "ms"),
        ("output tokens mean", number(m.output_tokens.mean, ".1f"), "tokens"),
        ("output tokens p95", number(m.output_tokens.p95, ".1f"), "tokens"),
        ("input tokens mean", number(m.input_tokens.mean, ".1f"), "tokens"),
        ("throughput", number(m.tokens_per_second, ".1f"), "tok/s"),
        ("EOS fraction", number(m.eos_fraction, ".3f"), ""),
        ("truncated fraction", number(m.truncated_fraction, ".3f"), ""),
        ("noise CV", number(m.noise_cv, ".3f"), ""),
        ("requests", str(len(m.samples)), ""),
        (
            "warm-up first call",
            number(m.warmup_latencies_s[0] * 1000.0, ".1f") if m.warmup_latencies_s else "n/a",
            "ms",
        ),
    ]
    if m.peak_memory_bytes is not None:
        rows.append(("peak memory", f"{m.peak_memory_bytes / 2**20:.1f}", "MiB"))
    if m.has_quality:
        scored = sum(1 for q in m.quality_scores if q == q)  # NaN: a prompt without a reference
        rows.append((f"quality ({s.get('scorer', '?')}, {scored} refs)", number(m.quality, ".3f"), "score"))
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
