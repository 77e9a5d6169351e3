"""ftcallback: latency and token-efficiency budgets for fine-tuning with transformers.

Example:
    >>> from ftcallback import Budget, EfficiencyCallback
    >>> cb = EfficiencyCallback(["Explain KV caching."], budget=Budget(max_token_increase=0.25))
"""

from __future__ import annotations

__version__ = "0.1.0"

from .budget import Budget, BudgetCheck, Verdict, evaluate
from .callback import EfficiencyCallback
from .compare import Comparison, compare
from .errors import (
    BaselineError,
    ConfigError,
    FTCallbackError,
    MeasurementError,
    ModelError,
    PromptError,
    ReportError,
)
from .measure import measure
from .measurement import SCHEMA_VERSION, Measurement, RequestSample
from .report import CheckRecord, RunReport
from .stats import RatioEstimate, Stats

__all__ = [
    "SCHEMA_VERSION",
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
    "PromptError",
    "RatioEstimate",
    "ReportError",
    "RequestSample",
    "RunReport",
    "Stats",
    "Verdict",
    "__version__",
    "compare",
    "evaluate",
    "measure",
]
