"""ftcallback: latency and token-efficiency budgets for fine-tuning with transformers."""

from __future__ import annotations

__version__ = "0.1.0"
