"""What-if remedies: the fine-tuned model measured in each deployed form, judged against the same budget.

``ftcallback compare BASE FINETUNED --what-if merged,int8,bf16`` turns "add quantization" from advice into a
measured answer: each form of FINETUNED is measured with the probe BASE was measured with, evaluated against
the budget with BASE as the baseline, and named when it brings the model within budget.

Example:
    >>> from ftcallback._measurement import Measurement, RequestSample
    >>> def m(latency, form=None):
    ...     env = {"form": form} if form else {}
    ...     return Measurement(samples=(RequestSample(0, 0, latency, 0.05, 20, 40, True),), environment=env)
    >>> w = what_if(m(0.30), m(0.812), {"int8": m(0.388, "int8"), "bf16": m(0.95, "bf16")}, Budget(latency_ms=400))
    >>> print(w.sentences[0])
    int8 brings latency p95 from 812 to 388 ms: within the 400 ms budget
    >>> w.within_budget
    ['int8']
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ._budget import Budget, BudgetCheck, Verdict, evaluate
from ._format import metric_value, number
from ._measurement import Measurement

__all__ = ["WhatIf", "WhatIfRow", "what_if"]


@dataclass(frozen=True)
class WhatIfRow:
    """One form of the fine-tuned model.

    Attributes:
        form: ``"as is"`` for the model as loaded, else the form's name.
        measurement: the measurement in that form (None when the form does not apply).
        verdict: the budget's verdict, BASE as the baseline (None when the form does not apply).
        note: why the form does not apply (no adapters, not enough memory, ...), else empty.
    """

    form: str
    measurement: Measurement | None
    verdict: Verdict | None
    note: str = ""

    @property
    def status(self) -> str:
        if self.verdict is None:
            return "n/a"
        return "within budget" if self.verdict.passed else "over budget"


@dataclass(frozen=True)
class WhatIf:
    """The fine-tuned model as it is and in each form, with one sentence per form.

    Attributes:
        rows: the model as it is first, then each form in the order asked.
        latency_metric: the latency statistic the budget judges (``latency_ms_p95`` by default).
        sentences: per form, what it changes about the budget line that decided (see :func:`what_if`).
    """

    rows: tuple[WhatIfRow, ...]
    latency_metric: str
    sentences: tuple[str, ...]

    @property
    def within_budget(self) -> list[str]:
        """The forms that bring the model within budget."""
        return [r.form for r in self.rows[1:] if r.verdict is not None and r.verdict.passed]

    def format_table(self) -> str:
        """A table (form, latency, tokens, verdict) and the sentences."""
        stat = self.latency_metric.rsplit("_", 1)[-1]
        lines = [f"{'form':<14}{'latency ' + stat + ' (ms)':>20}{'output tokens':>15}  verdict"]
        for row in self.rows:
            m = row.measurement
            latency = number(m.summary().get(self.latency_metric) if m else None, ".1f")
            tokens = number(m.output_tokens.mean if m else None, ".1f")
            status = row.status if not row.note else f"n/a: {row.note}"
            lines.append(f"{row.form:<14}{latency:>20}{tokens:>15}  {status}")
        lines.append("")
        lines += list(self.sentences)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "latency_metric": self.latency_metric,
            "rows": [
                {
                    "form": r.form,
                    "status": r.status,
                    "note": r.note or None,
                    "summary": r.measurement.summary() if r.measurement else None,
                    "verdict": r.verdict.to_dict() if r.verdict else None,
                    "environment": dict(r.measurement.environment) if r.measurement else None,
                }
                for r in self.rows
            ],
            "within_budget": self.within_budget,
            "sentences": list(self.sentences),
        }


def what_if(
    base: Measurement,
    finetuned: Measurement,
    by_form: dict[str, Measurement | str],
    budget: Budget,
) -> WhatIf:
    """Judge the fine-tuned model in each form against ``budget``, ``base`` as the baseline.

    Args:
        base: the base model's measurement (the baseline of relative budgets).
        finetuned: the fine-tuned model as loaded.
        by_form: per form, its measurement, or a line saying why the form does not apply.
        budget: the budget.

    Returns:
        A :class:`WhatIf`. Its sentences follow the budget line that the model as it is breaches first
        (else the latency line): "int8 brings latency p95 from 812 to 388 ms: within the 400 ms budget".
    """
    as_is = evaluate(budget, finetuned, base)
    rows = [WhatIfRow("as is", finetuned, as_is)]
    for form, m in by_form.items():
        if isinstance(m, str):
            rows.append(WhatIfRow(form, None, None, m))
        else:
            rows.append(WhatIfRow(form, m, evaluate(budget, _as_remedy(m, finetuned), base)))
    headline = as_is.first_breach or next((c for c in as_is.checks if c.metric == budget.latency_metric), None)
    sentences = []
    for row in rows[1:]:
        if row.verdict is None or row.measurement is None:
            sentences.append(f"{row.form} does not apply: {row.note}")
            continue
        sentences.append(_sentence(row, headline, finetuned, budget))
    if not as_is.passed and not any(r.verdict is not None and r.verdict.passed for r in rows[1:]):
        sentences.append("No form measured brings the model within budget.")
    return WhatIf(tuple(rows), budget.latency_metric, tuple(sentences))


#: What a form changes by design: a difference from the base in these is the remedy under test, not a reason
#: to call the comparison unfair (``Measurement.incompatibilities`` would).
_FORM_FACTS = ("param_dtype", "compute_dtype", "adapters")


def _as_remedy(m: Measurement, finetuned: Measurement) -> Measurement:
    """``m`` with the facts its form changed set back to FINETUNED's as it is, so that the form is judged against
    the base exactly as FINETUNED is (``environment["form"]`` still says what ran)."""
    model = {**m.model, **{k: finetuned.model[k] for k in _FORM_FACTS if k in finetuned.model}}
    for key in _FORM_FACTS:
        if key not in finetuned.model:
            model.pop(key, None)
    return dataclasses.replace(m, model=model)


def _sentence(row: WhatIfRow, headline: BudgetCheck | None, finetuned: Measurement, budget: Budget) -> str:
    assert row.verdict is not None and row.measurement is not None
    metric = headline.metric if headline is not None else budget.latency_metric
    check = next((c for c in row.verdict.checks if c.budget == headline.budget), None) if headline else None
    # A summary metric reads the table's figures; a ratio (a relative latency budget decides on the paired
    # ratio to the base) reads the check's own value, the one that decided.
    before = _figure(finetuned, metric, headline)
    after = _figure(row.measurement, metric, check)
    label, unit = _label(metric)
    text = f"{row.form} brings {label} from {_value(metric, before)} to {_value(metric, after)}{unit}"
    if budget.is_empty:
        return text
    if row.verdict.passed:
        if check is not None and check.passed:
            return f"{text}: within the {_value(metric, check.limit)}{unit} budget"
        return f"{text}: within budget"
    breach = row.verdict.first_breach
    return f"{text}: still over budget ({breach.describe() if breach else 'not evaluable'})"


def _figure(m: Measurement, metric: str, check: BudgetCheck | None) -> float | None:
    summary = m.summary()
    if metric in summary:
        return summary[metric]
    return check.value if check is not None else None


def _label(metric: str) -> tuple[str, str]:
    """``latency_ms_p95`` -> ("latency p95", " ms"); ``output_tokens_mean`` -> ("output tokens mean", "")."""
    if metric.startswith("latency_ms_"):
        return f"latency {metric.rsplit('_', 1)[-1]}", " ms"
    return metric.replace("_", " "), ""


def _value(metric: str, value: float | None) -> str:
    if metric.startswith("latency_ms_") and value is not None:
        return number(value, ".0f")
    return metric_value(metric, value)
