"""Quality from the probe's own generations: a reference per prompt and a scorer.

Quality costs no extra ``generate`` call: :func:`~ftcallback._measure.measure` decodes every
prompt's response of its last timed repeat (greedy responses are the same on every repeat)
and scores it against the prompt's reference. The per-prompt scores are kept on the
:class:`~ftcallback._measurement.Measurement` (``quality_scores``) and their mean is its
``quality``.

A scorer is a callable ``score(prompt, output, reference) -> float`` (1.0 right, 0.0 wrong,
anything in between for partial credit), or the name of a built-in one:

========== ==================================================================================
name       1.0 when
========== ==================================================================================
exact      the output equals the reference after normalisation (SQuAD: lower case, no
           punctuation, no articles ``a``/``an``/``the``, single spaces)
contains   the normalised reference occurs in the normalised output
regex      the reference, read as a regular expression, matches somewhere in the output
numeric    the last number in the output equals the last number in the reference, within
           a tolerance (``1e-6`` relative, ``1e-9`` absolute; ``NumericMatch(tolerance=...)``)
========== ==================================================================================

Example:
    >>> scorer_name, score = resolve_scorer("exact")
    >>> score("Capital of France?", "Paris.", "paris"), score("2+2?", "The answer is 4", "four")
    (1.0, 0.0)
    >>> resolve_scorer("numeric")[1]("2+2?", "so 2 + 2 = 4.0", "#### 4")
    1.0
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ._errors import ConfigError

__all__ = [
    "SCORERS",
    "NumericMatch",
    "Scorer",
    "contains",
    "exact_match",
    "normalize_answer",
    "regex_match",
    "resolve_scorer",
    "score_outputs",
]

#: ``score(prompt, output, reference) -> float``.
Scorer = Callable[[str, str, str], float]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
# A number as people write it: sign, thousands separators, decimals, exponent.
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, punctuation and articles removed, whitespace collapsed.

    Example:
        >>> normalize_answer("  The  Eiffel Tower!")
        'eiffel tower'
    """
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prompt: str, output: str, reference: str) -> float:
    """1.0 when ``output`` equals ``reference`` after :func:`normalize_answer`, else 0.0."""
    return float(normalize_answer(output) == normalize_answer(reference))


def contains(prompt: str, output: str, reference: str) -> float:
    """1.0 when the normalised ``reference`` occurs (as whole words) in the normalised ``output``."""
    ref = normalize_answer(reference)
    return float(f" {ref} " in f" {normalize_answer(output)} ")


def regex_match(prompt: str, output: str, reference: str) -> float:
    """1.0 when ``reference``, read as a regular expression, matches somewhere in ``output``.

    Raises:
        ConfigError: ``reference`` is not a valid regular expression.
    """
    try:
        return float(re.search(reference, output) is not None)
    except re.error as exc:
        raise ConfigError(
            f"scorer 'regex': reference {reference!r} is not a valid regular expression ({exc}); "
            "escape it with re.escape or use scorer='contains'"
        ) from exc


def _last_number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


@dataclass(frozen=True)
class NumericMatch:
    """Scorer: 1.0 when the last number in the output equals the last number in the reference.

    Works for bare answers (``"42"``) and GSM8K-style references (``"... #### 42"``); thousands
    separators are ignored.

    Attributes:
        tolerance: allowed relative difference (absolute below 1e-3 in magnitude).

    Example:
        >>> NumericMatch(tolerance=0.01)("", "about 3.14", "pi is 3.1416")
        1.0
    """

    tolerance: float = 1e-6

    def __post_init__(self) -> None:
        tol = self.tolerance
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
            raise ConfigError(f"`tolerance` must be a finite number >= 0, got {tol!r} (e.g. 1e-6)")

    def __call__(self, prompt: str, output: str, reference: str) -> float:
        want = _last_number(reference)
        if want is None:
            raise ConfigError(
                f"scorer 'numeric': reference {reference!r} holds no number; give a numeric answer "
                "or use scorer='exact'"
            )
        got = _last_number(output)
        if got is None:
            return 0.0
        return float(math.isclose(got, want, rel_tol=self.tolerance, abs_tol=self.tolerance * 1e-3))


#: Built-in scorers by name.
SCORERS: dict[str, Scorer] = {
    "exact": exact_match,
    "exact_match": exact_match,
    "contains": contains,
    "regex": regex_match,
    "numeric": NumericMatch(),
}


def resolve_scorer(scorer: str | Scorer | None) -> tuple[str, Scorer]:
    """The scorer's recorded name and the callable; ``None`` means ``"exact"``.

    Args:
        scorer: a name from :data:`SCORERS` or a callable ``score(prompt, output, reference) -> float``.

    Returns:
        ``(name, callable)``; a callable is named after its ``__name__`` (or its class).

    Raises:
        ConfigError: an unknown name or something neither a name nor callable.
    """
    if scorer is None:
        scorer = "exact"
    if isinstance(scorer, str):
        if scorer not in SCORERS:
            raise ConfigError(
                f"`scorer` must be one of {', '.join(map(repr, SCORERS))} or a callable "
                f"score(prompt, output, reference) -> float, got {scorer!r}"
            )
        return scorer, SCORERS[scorer]
    if not callable(scorer):
        raise ConfigError(
            f"`scorer` must be a name ({', '.join(map(repr, SCORERS))}) or a callable "
            f"score(prompt, output, reference) -> float, got {type(scorer).__name__}"
        )
    if isinstance(scorer, NumericMatch):
        return f"numeric(tolerance={scorer.tolerance!r})", scorer
    name = getattr(scorer, "__name__", None) or type(scorer).__name__
    return str(name), scorer


def _as_score(value: Any, name: str, index: int) -> float:
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(
            f"scorer {name!r} must return a finite number, got {value!r} ({type(value).__name__}) "
            f"for prompts[{index}]; return 1.0 for right, 0.0 for wrong"
        )
    return float(value)


def score_outputs(
    prompts: Sequence[str],
    outputs: Sequence[str],
    references: Sequence[str | None],
    scorer: str | Scorer | None = None,
) -> tuple[float, ...]:
    """Score each output against its prompt's reference; NaN where a prompt has no reference.

    Args:
        prompts: the probe prompts.
        outputs: the decoded response to each prompt.
        references: the reference of each prompt, ``None`` for prompts not scored.
        scorer: see :func:`resolve_scorer`.

    Returns:
        One score per prompt.

    Raises:
        ConfigError: the lengths differ, the scorer is unknown or returns something not a finite number.

    Example:
        >>> score_outputs(["q1", "q2", "q3"], ["Paris", "Rome", "x"], ["paris", "Madrid", None])
        (1.0, 0.0, nan)
    """
    if not len(prompts) == len(outputs) == len(references):
        raise ConfigError(
            f"`references` must have one entry per prompt, got {len(references)} for {len(prompts)} prompts"
        )
    name, fn = resolve_scorer(scorer)
    return tuple(
        math.nan if ref is None else _as_score(fn(p, o, ref), name, i)
        for i, (p, o, ref) in enumerate(zip(prompts, outputs, references, strict=True))
    )


def mean_quality(scores: Sequence[float]) -> float:
    """Mean of the finite scores; NaN when none is."""
    finite = [s for s in scores if math.isfinite(s)]
    return math.fsum(finite) / len(finite) if finite else math.nan
