"""Probe prompts: loading them, fingerprinting them, and turning them into token ids.

The probe is the fixed set of prompts every measurement generates from. It can be
given as a list of strings, a ``datasets.Dataset`` (column ``prompt``, else
``text``), or a ``.txt`` / ``.jsonl`` file. Prompts may carry a reference answer,
scored for quality on the same generations (:mod:`ftcallback._quality`): a
``reference`` field in .jsonl lines, a ``reference`` column in a dataset, or
``(prompt, reference)`` pairs / ``{"prompt": ..., "reference": ...}`` dicts in Python;
:func:`load_probe` returns both, :func:`load_prompts` the prompts only. Encoding never
pads and never touches the tokenizer's settings: the measurement engine pads by hand.

Example:
    >>> from ftcallback._prompts import load_prompts, prompts_sha256
    >>> prompts = load_prompts(["Hello", "What is 2 + 2?"])
    >>> len(prompts_sha256(prompts, apply_chat_template=False))
    64
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import ConfigError, ModelError, PromptError

__all__ = [
    "ProbePrompts",
    "encode_prompts",
    "load_probe",
    "load_prompts",
    "prompts_sha256",
    "references_sha256",
    "resolve_tokenizer",
    "validate_references",
]

#: Dataset columns / JSON keys read as the prompt text, in order of preference.
PROMPT_FIELDS = ("prompt", "text")
#: Dataset column / JSON key read as the reference answer of a prompt.
REFERENCE_FIELD = "reference"
_SUPPORTED_SUFFIXES = (".txt", ".jsonl")


@dataclass(frozen=True)
class ProbePrompts:
    """Probe prompts and, when any prompt carries one, their reference answers.

    Attributes:
        prompts: the prompts, in order.
        references: one entry per prompt (``None`` for a prompt without a reference), or ``None``
            when no prompt has a reference.

    Example:
        >>> load_probe([("2 + 2 =", "4"), "Say hi."])
        ProbePrompts(prompts=('2 + 2 =', 'Say hi.'), references=('4', None))
    """

    prompts: tuple[str, ...]
    references: tuple[str | None, ...] | None = None

    @property
    def has_references(self) -> bool:
        """True when at least one prompt carries a reference."""
        return self.references is not None and any(r is not None for r in self.references)


def load_probe(source: Any) -> ProbePrompts:
    """Load probe prompts and their references (see :func:`load_prompts` for the sources).

    Besides what :func:`load_prompts` reads, ``source`` may hold references: ``.jsonl`` objects with
    a ``"reference"`` field, a dataset with a ``reference`` column, or, in a list, ``(prompt, reference)``
    pairs and ``{"prompt": ..., "reference": ...}`` dicts (mixed with plain strings if some prompts have
    none). A :class:`ProbePrompts` is returned as it is.

    Raises:
        PromptError: as :func:`load_prompts`, and for a reference that is not a string (or null).

    Example:
        >>> load_probe(["no reference"]).references is None
        True
    """
    if isinstance(source, ProbePrompts):
        _validate(source.prompts)
        if source.references is not None:
            validate_references(list(source.references), len(source.prompts))
        return source
    if isinstance(source, (str, os.PathLike)):
        prompts, references = _load_file(Path(source))
    elif _is_dataset_dict(source):
        raise PromptError(
            "`prompts` is a DatasetDict; pass one split, e.g. prompts=dataset['train'] "
            f"(splits: {sorted(source.keys())})"
        )
    elif _is_dataset(source):
        prompts, references = _load_dataset(source)
    elif isinstance(source, (list, tuple)):
        prompts, references = _split_items(source)
    else:
        raise PromptError(
            f"`prompts` must be a list of strings, a datasets.Dataset or a path to a .txt/.jsonl file, "
            f"got {type(source).__name__}"
        )
    _validate(prompts)
    validate_references(references, len(prompts))
    has_any = any(r is not None for r in references)
    return ProbePrompts(tuple(prompts), tuple(references) if has_any else None)


def _split_items(items: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """Prompts and references from a Python list of strings, (prompt, reference) pairs and dicts."""
    prompts: list[Any] = []
    references: list[Any] = []
    for i, item in enumerate(items):
        if isinstance(item, tuple) and len(item) == 2:
            prompts.append(item[0])
            references.append(item[1])
        elif isinstance(item, Mapping):
            key = next((k for k in PROMPT_FIELDS if k in item), None)
            if key is None:
                raise PromptError(
                    f"`prompts[{i}]` is a dict without a 'prompt' or 'text' key (keys: {sorted(item)}); "
                    'write {"prompt": ..., "reference": ...}'
                )
            prompts.append(item[key])
            references.append(item.get(REFERENCE_FIELD))
        else:
            prompts.append(item)
            references.append(None)
    return prompts, references


def validate_references(references: Sequence[Any], n: int) -> None:
    """Raise :class:`PromptError` unless ``references`` holds one str (or None) per prompt of ``n``."""
    if len(references) != n:
        raise PromptError(f"`references` must have one entry per prompt, got {len(references)} for {n} prompts")
    for i, ref in enumerate(references):
        if ref is not None and not isinstance(ref, str):
            raise PromptError(
                f"the reference of `prompts[{i}]` must be a str or None, got {type(ref).__name__} "
                f"({ref!r:.60}); write numbers as text, e.g. \"42\""
            )


def references_sha256(references: Sequence[str | None] | None) -> str | None:
    """Fingerprint of the references (None without any): quality is comparable only on the same ones."""
    if references is None:
        return None
    payload = json.dumps(list(references), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def load_prompts(source: Any) -> list[str]:
    """Load probe prompts from a list of strings, a ``datasets.Dataset`` or a ``.txt`` / ``.jsonl`` file.

    References carried by the source are dropped here; :func:`load_probe` keeps them.

    Args:
        source: a list or tuple of strings; a ``datasets.Dataset`` with a ``prompt`` (else ``text``)
            column; or a path to a ``.txt`` file (one prompt per non-empty line) or a ``.jsonl`` file
            (each line an object with ``"prompt"`` or ``"text"``, or a bare JSON string).

    Returns:
        The prompts, in order, as a new list.

    Raises:
        PromptError: no prompts, a non-string or blank prompt, a dataset without a usable column,
            a missing or unreadable file, an unsupported file type, or a malformed JSON line.

    Example:
        >>> load_prompts(("a question", "another one"))
        ['a question', 'another one']
    """
    return list(load_probe(source).prompts)


def _validate(prompts: Sequence[Any]) -> None:
    if len(prompts) == 0:
        raise PromptError(
            "`prompts` must contain at least one prompt, got none; pass a non-empty list of strings"
        )
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise PromptError(
                f"`prompts[{i}]` must be a str, got {type(p).__name__} ({p!r:.60}); pass text prompts only"
            )
        if not p.strip():
            raise PromptError(f"`prompts[{i}]` is empty or whitespace-only; remove it or give it some text")


def _is_dataset(source: Any) -> bool:
    # Only a program that imported `datasets` can hand us a Dataset, so never import it ourselves.
    ds = sys.modules.get("datasets")
    return ds is not None and isinstance(source, ds.Dataset)


def _is_dataset_dict(source: Any) -> bool:
    ds = sys.modules.get("datasets")
    return ds is not None and isinstance(source, (ds.DatasetDict, ds.IterableDatasetDict))


def _load_dataset(dataset: Any) -> tuple[list[Any], list[Any]]:
    columns = list(dataset.column_names)
    for name in PROMPT_FIELDS:
        if name in columns:
            prompts = list(dataset[name])
            refs = list(dataset[REFERENCE_FIELD]) if REFERENCE_FIELD in columns else [None] * len(prompts)
            return prompts, refs
    hint = (
        f"dataset.rename_column({columns[0]!r}, 'prompt')" if columns else "a dataset with a 'prompt' column"
    )
    raise PromptError(f"`prompts` dataset has no 'prompt' or 'text' column (columns: {columns}); use {hint}")


def _load_file(path: Path) -> tuple[list[Any], list[Any]]:
    suffix = path.suffix.lower()
    if suffix not in _SUPPORTED_SUFFIXES:
        if not path.exists():
            raise PromptError(
                f"`prompts` file {str(path)!r} does not exist; pass an existing .txt or .jsonl file, "
                "or a list of strings for literal prompts"
            )
        raise PromptError(
            f"`prompts` file {str(path)!r} has unsupported extension {path.suffix!r}; "
            "use .txt (one prompt per line) or .jsonl (objects with a 'prompt' or 'text' field)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptError(
            f"`prompts` file {str(path)!r} does not exist; pass an existing .txt or .jsonl file"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PromptError(
            f"`prompts` file {str(path)!r} cannot be read ({reason}); "
            "check its permissions and UTF-8 encoding"
        ) from exc
    if suffix == ".txt":
        lines = [line for line in text.splitlines() if line.strip()]
        return lines, [None] * len(lines)
    return _parse_jsonl(text, path)


def _parse_jsonl(text: str, path: Path) -> tuple[list[Any], list[Any]]:
    prompts: list[str] = []
    references: list[Any] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptError(
                f"`prompts` file {str(path)!r} line {lineno} is not valid JSON ({exc.msg}); "
                'write one object per line, e.g. {"prompt": "..."}'
            ) from exc
        if isinstance(item, dict):
            key = next((k for k in PROMPT_FIELDS if k in item), None)
            if key is None:
                raise PromptError(
                    f"`prompts` file {str(path)!r} line {lineno} has no 'prompt' or 'text' field "
                    f"(keys: {sorted(item)}); add one"
                )
            reference = item.get(REFERENCE_FIELD)
            if reference is not None and not isinstance(reference, str):
                raise PromptError(
                    f"`prompts` file {str(path)!r} line {lineno}: the reference must be a JSON string, "
                    f'got {type(reference).__name__}; write numbers as text, e.g. "reference": "42"'
                )
            item = item[key]
        else:
            reference = None
        if not isinstance(item, str):
            raise PromptError(
                f"`prompts` file {str(path)!r} line {lineno}: the prompt must be a JSON string, "
                f"got {type(item).__name__}"
            )
        prompts.append(item)
        references.append(reference)
    return prompts, references


def prompts_sha256(prompts: Sequence[str], apply_chat_template: bool) -> str:
    """Fingerprint of a probe: identical only for the same prompts, in the same order, encoded the same way.

    A baseline is comparable with a later measurement only when both fingerprints match.

    Example:
        >>> prompts_sha256(["a"], True) == prompts_sha256(["a"], False)
        False
    """
    payload = json.dumps(
        {"apply_chat_template": bool(apply_chat_template), "prompts": list(prompts)},
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def resolve_tokenizer(processing_class: Any) -> Any:
    """Return the tokenizer behind ``processing_class``: a tokenizer as is, a processor's ``.tokenizer``.

    Raises:
        ModelError: ``processing_class`` is None or neither a tokenizer nor a processor holding one.

    Example:
        >>> from ftcallback.testing import tiny_tokenizer
        >>> tok = tiny_tokenizer()
        >>> resolve_tokenizer(tok) is tok
        True
    """
    from transformers import PreTrainedTokenizerBase

    if isinstance(processing_class, PreTrainedTokenizerBase):
        return processing_class
    inner = getattr(processing_class, "tokenizer", None)
    if isinstance(inner, PreTrainedTokenizerBase):
        return inner
    got = "None" if processing_class is None else type(processing_class).__name__
    raise ModelError(
        f"a tokenizer is needed to encode the probe prompts, got {got}; "
        "pass tokenizer=... to EfficiencyCallback or processing_class=... to Trainer"
    )


def encode_prompts(
    tokenizer: Any, prompts: Sequence[str], *, apply_chat_template: bool = False
) -> list[list[int]]:
    """Token ids of each prompt, encoded one by one: no padding, no truncation, tokenizer left untouched.

    Args:
        tokenizer: a ``transformers`` tokenizer.
        prompts: prompt strings.
        apply_chat_template: wrap each prompt as one user turn with the tokenizer's chat template and the
            generation prompt; the template supplies the special tokens, so none are added on top.

    Raises:
        ConfigError: ``apply_chat_template=True`` with a tokenizer that has no chat template.

    Example:
        >>> from ftcallback.testing import tiny_tokenizer
        >>> ids = encode_prompts(tiny_tokenizer(), ["the model returns"])
        >>> isinstance(ids[0][0], int)
        True
    """
    if apply_chat_template and not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"`apply_chat_template` is True but the tokenizer ({type(tokenizer).__name__}) has no chat "
            "template; set apply_chat_template=False or use a tokenizer with a chat_template"
        )
    encoded: list[list[int]] = []
    for prompt in prompts:
        if apply_chat_template:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
            ids = tokenizer(text, add_special_tokens=False, padding=False, truncation=False)["input_ids"]
        else:
            ids = tokenizer(prompt, padding=False, truncation=False)["input_ids"]
        encoded.append([int(i) for i in ids])
    return encoded
