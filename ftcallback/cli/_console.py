"""The CLI's stderr: our progress lines, nobody else's progress bars or warning source lines.

The library never configures logging or silences other packages; the CLI owns its process, so
for the duration of one ``main()`` call it may. Everything is put back afterwards, so calling
``main()`` from tests or a notebook leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from typing import Any

__all__ = ["cli_console", "no_foreign_progress_bars"]

logger = logging.getLogger("ftcallback.cli")


class _Formatter(logging.Formatter):
    """``ftcallback: message``, with ``warning:`` / ``error:`` for those levels (like the error lines)."""

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"ftcallback: {level}{record.getMessage()}"


def _format_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    # Python's default prints the file name and the offending source line: noise to a CLI user.
    return f"ftcallback: warning: {' '.join(str(message).split())} ({category.__name__})\n"


@contextlib.contextmanager
def cli_console(verbose: int, quiet: bool) -> Iterator[None]:
    """Progress lines and the library's warnings on stderr, one line each, for one ``main()`` call."""
    package = logging.getLogger("ftcallback")
    handler = logging.StreamHandler(sys.stderr)  # the current stderr: pytest's capsys swaps it
    handler.setFormatter(_Formatter())
    saved = (package.level, logger.level)
    package_level = logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else logging.WARNING
    package.setLevel(logging.ERROR if quiet else package_level)
    logger.setLevel(logging.ERROR if quiet else min(package_level, logging.INFO))
    package.addHandler(handler)
    saved_format = warnings.formatwarning
    warnings.formatwarning = _format_warning
    try:
        with warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore")
            yield
    finally:
        warnings.formatwarning = saved_format
        package.removeHandler(handler)
        package.setLevel(saved[0])
        logger.setLevel(saved[1])


@contextlib.contextmanager
def no_foreign_progress_bars() -> Iterator[None]:
    """Hide transformers' and huggingface_hub's bars ("Loading weights", GGUF de-quantizing).

    Our own progress lines say what is happening. transformers' GGUF loader uses a bare
    ``tqdm.auto.tqdm`` that no switch reaches, so that module's name is pointed at a silent one
    for the duration.
    """
    from transformers.utils import logging as hf_logging

    restore: list[Any] = []
    if hf_logging.is_progress_bar_enabled():
        hf_logging.disable_progress_bar()
        restore.append(hf_logging.enable_progress_bar)
    with contextlib.suppress(ImportError):
        import huggingface_hub.utils as hub_utils

        if not hub_utils.are_progress_bars_disabled():
            hub_utils.disable_progress_bars()
            restore.append(hub_utils.enable_progress_bars)
    gguf_utils = sys.modules.get("transformers.modeling_gguf_pytorch_utils")
    if gguf_utils is None:
        with contextlib.suppress(ImportError):
            import transformers.modeling_gguf_pytorch_utils as gguf_utils
    original_tqdm = getattr(gguf_utils, "tqdm", None)
    if gguf_utils is not None and original_tqdm is not None:
        gguf_utils.tqdm = _silent_tqdm(original_tqdm)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if gguf_utils is not None and original_tqdm is not None:
            gguf_utils.tqdm = original_tqdm  # type: ignore[attr-defined]
        for undo in reversed(restore):
            undo()


def _silent_tqdm(tqdm: Any) -> Any:
    def silent(*args: Any, **kwargs: Any) -> Any:
        kwargs["disable"] = True
        return tqdm(*args, **kwargs)

    return silent
