"""The exceptions ftcallback raises.

Every exception derives from :class:`FTCallbackError`, and each subclass also
derives from the builtin exception it means, so ``except ValueError`` keeps
working for callers who do not know this library.
"""

from __future__ import annotations

__all__ = [
    "BaselineError",
    "ConfigError",
    "FTCallbackError",
    "MeasurementError",
    "ModelError",
    "NoisyMeasurementWarning",
    "PromptError",
    "ReportError",
]


class FTCallbackError(Exception):
    """Base class of every error raised by ftcallback."""


class ConfigError(FTCallbackError, ValueError):
    """An argument or a budget field has an invalid value."""


class PromptError(ConfigError):
    """The probe prompts are missing, empty, unreadable or do not fit the model."""


class ModelError(FTCallbackError, TypeError):
    """The model or tokenizer cannot be used for generation."""


class BaselineError(FTCallbackError, ValueError):
    """A saved baseline is missing, corrupt, of another schema, or does not match the run."""


class MeasurementError(FTCallbackError, RuntimeError):
    """A measurement failed (raised only in strict mode; otherwise recorded and logged)."""


class ReportError(FTCallbackError, ValueError):
    """A run report (``report.json``) is missing, not JSON, of another schema, or not a report."""


class NoisyMeasurementWarning(UserWarning):
    """A measurement's timing noise (median per-prompt CV across repeats) exceeded 10%.

    Emitted with :func:`warnings.warn`; silence it with
    ``warnings.filterwarnings("ignore", category=NoisyMeasurementWarning)``.
    """


# Public under `ftcallback`: tracebacks and reprs name `ftcallback.ConfigError`, not the private module.
for _cls in (
    FTCallbackError,
    ConfigError,
    PromptError,
    ModelError,
    BaselineError,
    MeasurementError,
    ReportError,
    NoisyMeasurementWarning,
):
    _cls.__module__ = "ftcallback"
del _cls
