"""ftcallback: latency and token-efficiency budgets for fine-tuning with transformers.

Example:
    >>> from ftcallback import Budget, EfficiencyCallback
    >>> cb = EfficiencyCallback(["Explain KV caching."], budget=Budget(max_token_increase=0.25))
"""

from __future__ import annotations

__version__ = "0.1.0"

# Eager on purpose: a lazy loader would let `import ftcallback.measure` (the module) shadow
# `ftcallback.measure` (the function) depending on import order.
from .budget import Budget, BudgetCheck, Verdict, evaluate  # noqa: E402
from .callback import EfficiencyCallback  # noqa: E402
from .compare import Comparison, compare  # noqa: E402
from .errors import (  # noqa: E402
    BaselineError,
    ConfigError,
    FTCallbackError,
    MeasurementError,
    ModelError,
    NoisyMeasurementWarning,
    PromptError,
    ReportError,
)
from .measure import measure  # noqa: E402
from .measurement import SCHEMA_VERSION, Measurement, RequestSample  # noqa: E402
from .report import CheckRecord, RunReport  # noqa: E402
from .stats import RatioEstimate, Stats  # noqa: E402

__all__ = [
    "BaselineError",
    "Budget",
    "BudgetCheck",
    "CheckRecord",
    "Comparison",
    "ConfigError",
    "EfficiencyCallback",
    "FTCallbackError",
    "Measurement",
    "MeasurementError",
    "ModelError",
    "NoisyMeasurementWarning",
    "PromptError",
    "RatioEstimate",
    "ReportError",
    "RequestSample",
    "RunReport",
    "SCHEMA_VERSION",
    "Stats",
    "Verdict",
    "__version__",
    "compare",
    "evaluate",
    "measure",
]
