"""The probe: which prompts are measured, and how. One frozen description, one fingerprint, one comparison.

A baseline and a later check are comparable only when they were measured with the same probe. The settings
a :class:`~ftcallback._measurement.Measurement` records, the ones the callback writes into its report and
the ones the CLI compares all come from :func:`probe_settings`, and whether two of them may be compared is
decided by :func:`settings_incompatibilities` alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._errors import ConfigError
from ._json import jsonable
from ._prompts import prompts_sha256, references_sha256, validate_references
from ._quality import SCORERS, Scorer, resolve_scorer

__all__ = ["COMPARABLE_SETTINGS", "ProbeSpec", "probe_settings", "settings_incompatibilities"]

#: Settings that must agree between a baseline and a later measurement for a comparison to be fair.
#: (``warmup``, ``repeats`` and ``seed`` change how precisely, not what, is measured; ``batch_size`` changes
#: latency but not greedy tokens, so it is compared for latency only: see
#: :func:`ftcallback._measurement.comparable_facts`, which also covers what the record says about the run.)
COMPARABLE_SETTINGS = ("prompts_sha256", "num_prompts", "max_new_tokens", "generation_kwargs", "apply_chat_template")

#: Settings that must also agree before two latencies are compared.
LATENCY_SETTINGS = ("batch_size",)

#: Settings that must also agree before two quality scores are compared (both measured with references).
QUALITY_SETTINGS = ("references_sha256", "scorer")


def probe_settings(
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    generation_kwargs: Mapping[str, Any] | None,
    warmup: int,
    repeats: int,
    batch_size: int,
    apply_chat_template: bool,
    seed: int,
    references: Sequence[str | None] | None = None,
    scorer: str | None = None,
) -> dict[str, Any]:
    """The settings dict a measurement records: the only place it is built.

    With ``references`` (quality scored on the same generations), the scorer's name and a fingerprint of the
    references are recorded too (:data:`QUALITY_SETTINGS`).
    """
    quality: dict[str, Any] = {}
    if references is not None:
        quality = {"scorer": scorer, "references_sha256": references_sha256(references)}
    return {
        "max_new_tokens": int(max_new_tokens),
        "generation_kwargs": jsonable(dict(generation_kwargs or {})),
        "warmup": int(warmup),
        "repeats": int(repeats),
        "batch_size": int(batch_size),
        "apply_chat_template": bool(apply_chat_template),
        "num_prompts": len(prompts),
        "prompts_sha256": prompts_sha256(prompts, apply_chat_template),
        "seed": int(seed),
        **quality,
    }


def _differences(base: Mapping[str, Any], new: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    problems = []
    for key in keys:
        theirs, mine = base.get(key), new.get(key)
        if key == "generation_kwargs":  # older files may hold an unnormalised form
            theirs, mine = jsonable(theirs or {}), jsonable(mine or {})
        if theirs != mine:
            problems.append(f"{key} is {theirs!r} in the baseline but {mine!r} here")
    return problems


def settings_incompatibilities(base: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Why measurements taken with settings ``base`` and ``new`` cannot be compared at all (empty: they can).

    Example:
        >>> settings_incompatibilities({"max_new_tokens": 4}, {"max_new_tokens": 8})
        ['max_new_tokens is 4 in the baseline but 8 here']
    """
    return _differences(base, new, COMPARABLE_SETTINGS)


def quality_incompatibilities(base: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Why the quality scores of two measurements cannot be compared: other references or another scorer."""
    return _differences(base, new, QUALITY_SETTINGS)


def _int(name: str, value: Any, minimum: int, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"`{name}` must be an integer >= {minimum}, got {value!r}{hint}")
    return value


@dataclass(frozen=True, kw_only=True)
class ProbeSpec:
    """What is measured at every check: the prompts and the generation settings, frozen for the run.

    Args:
        prompts: the probe prompts, already loaded (see :func:`ftcallback._prompts.load_prompts`).
        max_new_tokens: generation cap per response.
        generation_kwargs: extra ``generate`` arguments (greedy decoding by default).
        warmup: untimed warm-up calls before each measurement.
        repeats: timed passes over the probe per measurement.
        batch_size: prompts per ``generate`` call.
        seed: seed for sampling and for the bootstrap.
        apply_chat_template: wrap each prompt in the tokenizer's chat template.
        num_sample_outputs: decoded responses kept per measurement.
        references: one reference answer (or None) per prompt, to score quality on the same generations
            (see :func:`ftcallback._prompts.load_probe`); None: quality is not scored.
        scorer: how a response is scored against its reference: a built-in name (``"exact"``, the default
            with references; ``"contains"``, ``"regex"``, ``"numeric"``) or a callable
            ``score(prompt, output, reference) -> float`` (see :mod:`ftcallback._quality`).

    Example:
        >>> spec = ProbeSpec(prompts=("What is 2 + 2?",), max_new_tokens=16)
        >>> spec.incompatibilities(ProbeSpec(prompts=("What is 2 + 2?",), max_new_tokens=32).settings())
        ['max_new_tokens is 32 in the baseline but 16 here']
    """

    prompts: tuple[str, ...]
    max_new_tokens: int = 128
    generation_kwargs: Mapping[str, Any] = field(default_factory=dict)
    warmup: int = 1
    repeats: int = 3
    batch_size: int = 1
    seed: int = 0
    apply_chat_template: bool = False
    num_sample_outputs: int = 3
    references: tuple[str | None, ...] | None = None
    scorer: str | Scorer | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompts", tuple(self.prompts))
        if self.references is not None:
            validate_references(list(self.references), len(self.prompts))
            refs = tuple(self.references)
            object.__setattr__(self, "references", refs if any(r is not None for r in refs) else None)
        if self.scorer is not None:
            resolve_scorer(self.scorer)  # an unknown name fails here, not at the first measurement
            if self.references is None:
                raise ConfigError(
                    "`scorer` is set but no prompt has a reference to score against; give references "
                    '({"prompt": ..., "reference": ...} lines, a reference column, or (prompt, reference) pairs)'
                )
        _int("max_new_tokens", self.max_new_tokens, 1)
        if not isinstance(self.generation_kwargs, Mapping):
            raise ConfigError(
                "`generation_kwargs` must be a dict of generate() arguments, "
                f"got {type(self.generation_kwargs).__name__}"
            )
        object.__setattr__(self, "generation_kwargs", dict(self.generation_kwargs))
        _int("warmup", self.warmup, 0)
        _int("repeats", self.repeats, 1)
        _int("batch_size", self.batch_size, 1)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"`seed` must be an integer, got {self.seed!r}")
        if not isinstance(self.apply_chat_template, bool):
            raise ConfigError(f"`apply_chat_template` must be True or False, got {self.apply_chat_template!r}")
        _int("num_sample_outputs", self.num_sample_outputs, 0)

    def settings(self) -> dict[str, Any]:
        """The settings a measurement of this probe records (see :func:`probe_settings`)."""
        return probe_settings(
            self.prompts,
            max_new_tokens=self.max_new_tokens,
            generation_kwargs=self.generation_kwargs,
            warmup=self.warmup,
            repeats=self.repeats,
            batch_size=self.batch_size,
            apply_chat_template=self.apply_chat_template,
            seed=self.seed,
            references=self.references,
            scorer=self.scorer_name,
        )

    @property
    def scorer_name(self) -> str | None:
        """The name recorded for the scorer (None without references)."""
        return None if self.references is None else resolve_scorer(self.scorer)[0]

    def fingerprint(self) -> str:
        """A short hash of what makes two measurements comparable (prompts and generation settings)."""
        comparable = {k: self.settings()[k] for k in COMPARABLE_SETTINGS}
        payload = json.dumps(comparable, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]

    def incompatibilities(self, settings: Mapping[str, Any]) -> list[str]:
        """Why a measurement recorded with ``settings`` cannot serve as this probe's baseline (empty: it can)."""
        return settings_incompatibilities(settings, self.settings())

    def measure_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`ftcallback.measure` that this spec fixes."""
        return {
            "max_new_tokens": self.max_new_tokens,
            "generation_kwargs": dict(self.generation_kwargs),
            "warmup": self.warmup,
            "repeats": self.repeats,
            "batch_size": self.batch_size,
            "apply_chat_template": self.apply_chat_template,
            "seed": self.seed,
            "num_sample_outputs": self.num_sample_outputs,
            "references": None if self.references is None else list(self.references),
            "scorer": self.scorer,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON form (prompts included), the inverse of :meth:`from_dict`.

        ``references`` and ``scorer`` appear only when quality is scored, so a spec without them keeps the
        keys (the callback's constructor arguments) it always had.
        """
        quality: dict[str, Any] = {}
        if self.references is not None:
            # A callable scorer is recorded by name; from_dict rebuilds built-in scorers only.
            quality = {"references": list(self.references), "scorer": self.scorer_name}
        return {
            "prompts": list(self.prompts),
            "max_new_tokens": self.max_new_tokens,
            "generation_kwargs": jsonable(self.generation_kwargs),
            "warmup": self.warmup,
            "repeats": self.repeats,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "apply_chat_template": self.apply_chat_template,
            "num_sample_outputs": self.num_sample_outputs,
            **quality,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProbeSpec:
        """Rebuild a spec from :meth:`to_dict`; missing keys take their defaults."""
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if known.get("scorer") is not None and known["scorer"] not in SCORERS:
            del known["scorer"]  # a user callable: the caller passes it again
        return cls(**known)
