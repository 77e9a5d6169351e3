"""ftcallback: latency and token-efficiency budgets for fine-tuning with transformers.

The public surface is this package, :mod:`ftcallback.testing` and :mod:`ftcallback.cli`; the modules with a
leading underscore are the implementation. Names are imported on first use, so that ``import ftcallback``
(and ``ftcallback --help``) does not pay for torch and transformers until something needs them.

Example:
    >>> from ftcallback import Budget, EfficiencyCallback
    >>> cb = EfficiencyCallback(["Explain KV caching."], budget=Budget(max_token_increase=0.25))
"""

from __future__ import annotations

import importlib as _importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> private module that defines it. One table, read by __getattr__ and by the test that keeps
# `__all__` honest.
_EXPORTS: dict[str, str] = {
    "BaselineError": "_errors",
    "Budget": "_budget",
    "BudgetCheck": "_budget",
    "CheckRecord": "_report",
    "Comparison": "_compare",
    "ConfigError": "_errors",
    "EfficiencyCallback": "_callback",
    "FTCallbackError": "_errors",
    "LatencyCause": "_compare",
    "LatencyDecomposition": "_decompose",
    "MachineFactor": "_drift",
    "Measurement": "_measurement",
    "MeasurementError": "_errors",
    "ModelError": "_errors",
    "ModelShapedReference": "_drift",
    "NoisyMeasurementWarning": "_errors",
    "NumericMatch": "_quality",
    "ParetoFront": "_pareto",
    "ParetoPoint": "_pareto",
    "ProbePrompts": "_prompts",
    "PromptError": "_errors",
    "RatioEstimate": "_stats",
    "ReferenceWorkload": "_drift",
    "ReportError": "_errors",
    "RequestSample": "_measurement",
    "RunReport": "_report",
    "SCHEMA_VERSION": "_measurement",
    "Stats": "_stats",
    "Verdict": "_budget",
    "compare": "_compare",
    "evaluate": "_budget",
    "measure": "_measure",
    "measure_endpoint": "_endpoint",
    "needs_more": "_sequential",
    "pareto": "_pareto",
    "plot_report": "_plot",
    "serving_form": "_forms",
    "shutdown_distributed": "_distributed",
}

__all__ = [
    "BaselineError",
    "Budget",
    "BudgetCheck",
    "CheckRecord",
    "Comparison",
    "ConfigError",
    "EfficiencyCallback",
    "FTCallbackError",
    "LatencyCause",
    "LatencyDecomposition",
    "MachineFactor",
    "Measurement",
    "MeasurementError",
    "ModelError",
    "ModelShapedReference",
    "NoisyMeasurementWarning",
    "NumericMatch",
    "ParetoFront",
    "ParetoPoint",
    "ProbePrompts",
    "PromptError",
    "RatioEstimate",
    "ReferenceWorkload",
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
    "measure_endpoint",
    "needs_more",
    "pareto",
    "plot_report",
    "serving_form",
    "shutdown_distributed",
]

# The attribute names under which a definition differs from its module-level name.
_ALIASES = {"shutdown_distributed": "shutdown"}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ftcallback' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{module}", __name__), _ALIASES.get(name, name))
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # static checkers and IDEs see the names eagerly
    from ._budget import Budget, BudgetCheck, Verdict, evaluate
    from ._callback import EfficiencyCallback
    from ._compare import Comparison, LatencyCause, compare
    from ._distributed import shutdown as shutdown_distributed
    from ._errors import (
        BaselineError,
        ConfigError,
        FTCallbackError,
        MeasurementError,
        ModelError,
        NoisyMeasurementWarning,
        PromptError,
        ReportError,
    )
    from ._forms import serving_form
    from ._measure import measure
    from ._measurement import SCHEMA_VERSION, Measurement, RequestSample
    from ._pareto import ParetoFront, ParetoPoint, pareto
    from ._plot import plot_report
    from ._prompts import ProbePrompts
    from ._quality import NumericMatch
    from ._report import CheckRecord, RunReport
    from ._stats import RatioEstimate, Stats
