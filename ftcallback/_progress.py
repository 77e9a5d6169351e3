"""Progress of a long measurement: requests done, total and time left.

A measurement of a few hundred prompts can take minutes during which the Trainer's own bar stands still.
On a terminal :class:`Progress` shows a tqdm bar (transformers' ``tqdm``, so
``transformers.utils.logging.disable_progress_bar()`` hides it too) that disappears when done; where
stderr is not a terminal (a job's log file, CI) a bar would write a line per refresh, so it logs one
INFO line per tenth of the work instead. Either way, after the first timed request it announces the
expected duration ("baseline: 500 requests, about 4 min").
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Progress", "format_duration"]

logger = logging.getLogger("ftcallback.measure")

#: Non-interactive output: one line per this fraction of the requests.
_LINE_EVERY = 0.1


def format_duration(seconds: float) -> str:
    """A duration as a person says it: ``"40 s"``, ``"4 min"``, ``"1 h 05 min"``.

    Example:
        >>> format_duration(42.4), format_duration(230), format_duration(3900)
        ('42 s', '4 min', '1 h 05 min')
    """
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _is_tty(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class Progress:
    """Requests done of ``total``: a bar on a terminal, an INFO line per tenth elsewhere, nothing when off.

    Args:
        total: timed requests the measurement will make.
        label: what is measured, in front of every line ("baseline", "epoch 2 check", "measure").
        enabled: False shows nothing at all (the Trainer's ``disable_tqdm``, a non-main process).
        clock: seconds, monotonic (injected by tests).
        stream: where the bar goes; its ``isatty()`` decides bar or lines (default ``sys.stderr``).

    Example:
        >>> p = Progress(4, "measure", enabled=False)
        >>> p.update(4); p.close()
    """

    def __init__(
        self,
        total: int,
        label: str,
        *,
        enabled: bool,
        clock: Callable[[], float] = time.perf_counter,
        stream: Any = None,
    ) -> None:
        self.total = max(0, int(total))
        self.label = label
        self.enabled = enabled and self.total > 0
        self.clock = clock
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self._start: float | None = None
        self._announced = False
        self._next_line = _LINE_EVERY
        self._bar: Any = None
        if self.enabled and _is_tty(self.stream):
            from transformers.utils.logging import tqdm

            self._bar = tqdm(
                total=self.total, desc=label, unit="req", leave=False, dynamic_ncols=True, file=self.stream
            )

    def start(self) -> None:
        """Mark the start of the timed requests (warm-up excluded): the ETA counts from here."""
        self._start = self.clock()

    def update(self, n: int) -> None:
        """Count ``n`` more requests done."""
        if not self.enabled or n <= 0:
            return
        if self._start is None:
            self.start()
        self.done = min(self.total, self.done + n)
        elapsed = self.clock() - (self._start or 0.0)
        if self._bar is not None:
            self._bar.update(n)
        if not self._announced and self.done < self.total:
            self._announced = True
            expected = elapsed / self.done * self.total
            self._say(f"{self.label}: {self.total} requests, about {format_duration(expected)}")
        if self._bar is None and self.done / self.total >= self._next_line - 1e-9 and self.done < self.total:
            left = elapsed / self.done * (self.total - self.done)
            self._say(
                f"{self.label}: {self.done}/{self.total} requests ({self.done / self.total:.0%}), "
                f"{format_duration(elapsed)} elapsed, about {format_duration(left)} left"
            )
            while self._next_line <= self.done / self.total + 1e-9:
                self._next_line += _LINE_EVERY

    def extend(self, n: int) -> None:
        """Plan ``n`` more requests (an adaptive measurement that looks again)."""
        if not self.enabled or n <= 0:
            return
        self.total += n
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def _say(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=self.stream)  # above the bar, which stays whole
        else:
            logger.info(line)

    def close(self) -> None:
        """Remove the bar (a finished measurement leaves no trace of it)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
