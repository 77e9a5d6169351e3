"""Loading what the subcommands measure: model names, devices, prompts files, saved measurements.

Every check that can fail on a user's typo runs before torch or transformers is imported, so a
mistake costs milliseconds and reads as one line, not a hub error.
"""

from __future__ import annotations

import difflib
import functools
import gc
import logging
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._embedded import EMBEDDED_MODEL
from .._errors import FTCallbackError, PromptError
from .._probe import ProbeSpec
from ._console import no_foreign_progress_bars
from ._errors import UsageError, one_line

if TYPE_CHECKING:
    from .._measurement import Measurement

__all__ = [
    "KNOWN_MODELS",
    "MEASURE_DEFAULTS",
    "MeasureSettings",
    "check_model_name",
    "figures_measurement",
    "is_figures",
    "is_measurement_file",
    "load_measurement",
    "load_prompts",
    "measure_model",
    "measure_model_forms",
    "measure_served",
    "resolve_device",
]

logger = logging.getLogger("ftcallback.cli")

#: Model names the CLI knows without a hub or a folder (did-you-mean suggests these).
KNOWN_MODELS = (EMBEDDED_MODEL,)
#: Environment variables that put huggingface_hub / transformers offline.
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")

# Measurement defaults when nothing else decides them (same as measure() and EfficiencyCallback).
MEASURE_DEFAULTS: dict[str, Any] = {
    "max_new_tokens": 128,
    "apply_chat_template": False,
    "repeats": 3,
    "warmup": 1,
    "batch_size": 1,
}


@dataclass(frozen=True)
class MeasureSettings:
    """How a model is measured from the CLI: the probe (the same :class:`ProbeSpec` the callback uses) plus
    how the model is loaded."""

    spec: ProbeSpec
    dtype: str
    device: str | None


def resolve_device(device: str | None) -> str:
    """``device`` checked against this machine (default: cuda when available, else cpu)."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(
            f"--device {device!r} is not a torch device; use e.g. cpu, cuda, cuda:1 or mps"
        ) from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device!r}: CUDA is not available on this machine; use --device cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise UsageError(f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {device!r}: MPS is not available on this machine; use --device cpu")
    return device


def check_model_name(name: str) -> None:
    """Catch a mistyped name or local path before transformers turns it into a confusing hub error."""
    if name in KNOWN_MODELS:
        return
    path = Path(name).expanduser()
    # A hub id is "name" or "org/name"; anything else with a slash can only be a local folder.
    looks_local = name.startswith((".", "/", "~")) or name.rstrip("/").count("/") > 1
    if path.exists():
        if path.is_dir() and (path / "adapter_config.json").is_file():
            return  # a PEFT adapter folder: its base is named inside and loaded with it
        if path.is_dir() and not (path / "config.json").is_file():
            raise UsageError(
                f"model folder {name!r} has no config.json; pass a folder written by save_pretrained, "
                f"a hub id, or '{EMBEDDED_MODEL}'"
            )
        if path.is_file():
            raise UsageError(
                f"model {name!r} is a file; pass the folder written by save_pretrained (a saved "
                "measurement must end with .json)"
            )
        return
    if looks_local:
        raise UsageError(f"model folder {name!r} does not exist")
    close = difflib.get_close_matches(name.lower(), KNOWN_MODELS, n=1, cutoff=0.75)
    if close:
        raise UsageError(f"unknown model {name!r}; did you mean {close[0]!r}?")


def _offline_var() -> str | None:
    """The variable that puts the hub offline, when one does."""
    for var in _OFFLINE_VARS:
        if os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return var
    return None


def _load_model(name: str, dtype: str, device: str) -> tuple[Any, Any]:
    from .._embedded import load_model_and_tokenizer

    logger.info("loading %s (%s) on %s", name, dtype, device)
    try:
        with no_foreign_progress_bars():
            adapter = _adapter_base(name)
            if adapter is None:
                model, tokenizer = load_model_and_tokenizer(name, dtype=dtype)
            else:
                model, tokenizer = _load_adapter(name, adapter, dtype)
    except FTCallbackError:
        raise
    except (OSError, ValueError, ImportError, KeyError) as exc:
        # transformers reports a missing hub id, an offline cache miss or a broken folder this way.
        offline = _offline_var()
        if offline is not None and not Path(name).expanduser().exists():
            raise UsageError(
                f"cannot load model {name!r}: it is not in the local Hugging Face cache and the hub is "
                f"offline ({offline}={os.environ[offline]}); unset {offline} to download it, or pass a "
                f"local folder or '{EMBEDDED_MODEL}'"
            ) from exc
        raise UsageError(f"cannot load model {name!r}: {one_line(exc)}") from exc
    try:
        model.to(device)
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise UsageError(f"cannot move model {name!r} to {device}: {one_line(exc)}") from exc
    return model, tokenizer


def _adapter_base(name: str) -> str | None:
    """The base model a PEFT adapter folder names, or None when ``name`` is not an adapter folder."""
    config = Path(name).expanduser() / "adapter_config.json"
    if not config.is_file():
        return None
    import json

    try:
        base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {config}: {one_line(exc)}") from exc
    if not isinstance(base, str) or not base:
        raise UsageError(f"{config} names no base_model_name_or_path: cannot load the adapter's base model")
    return base


def _load_adapter(name: str, base: str, dtype: str) -> tuple[Any, Any]:
    """A PEFT adapter folder: its base model (a name, hub id or folder), then the adapter on it, unmerged."""
    from .._embedded import load_model_and_tokenizer

    try:
        from peft import PeftModel
    except ImportError as exc:
        raise UsageError(f"{name!r} is a PEFT adapter folder: loading it needs peft (pip install peft)") from exc
    check_model_name(base)
    model, tokenizer = load_model_and_tokenizer(base, dtype=dtype)
    if (Path(name).expanduser() / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name)
    return PeftModel.from_pretrained(model, name), tokenizer


def measure_model(name: str, settings: MeasureSettings) -> Measurement:
    """Load a model, measure it on the probe, and free it again (compare loads two in turn)."""
    measured, _ = measure_model_forms(name, settings, ())
    return measured


def measure_model_forms(
    name: str, settings: MeasureSettings, forms: tuple[str, ...]
) -> tuple[Measurement, dict[str, Measurement | str]]:
    """Load a model once and measure it as it is, then in each deployed form (``--what-if``).

    Returns:
        The measurement as loaded, and per form its measurement, or one line saying why that form does
        not apply to this model (no adapters to merge, not enough memory, ...).
    """
    check_model_name(name)  # before torch and transformers are imported: a typo costs milliseconds
    from .._errors import MeasurementError, ModelError
    from .._forms import measure_in_form

    device = resolve_device(settings.device)
    model, tokenizer = _load_model(name, settings.dtype, device)
    try:
        measured = _measure_loaded(model, name=name, tokenizer=tokenizer, settings=settings, form="")
        by_form: dict[str, Measurement | str] = {}
        for form in forms:
            try:
                run = functools.partial(_measure_loaded, name=name, tokenizer=tokenizer, settings=settings, form=form)
                by_form[form] = measure_in_form(model, form, run)
            except (ModelError, MeasurementError) as exc:
                logger.warning("what-if %s: %s", form, one_line(exc))
                by_form[form] = one_line(exc)
    finally:
        # The second model of a compare must not share memory (or the allocator's cache) with the first.
        del model, tokenizer
        gc.collect()
        if device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
    # Record the model as the user named it: for the embedded model transformers only knows a
    # site-packages folder, and the name is what reproduces the measurement from the command line.
    def named(m: Measurement) -> Measurement:
        return replace(m, model={**m.model, "name_or_path": name})

    return named(measured), {form: m if isinstance(m, str) else named(m) for form, m in by_form.items()}


def _measure_loaded(model: Any, *, name: str, tokenizer: Any, settings: MeasureSettings, form: str) -> Measurement:
    from .._measure import measure

    spec = settings.spec
    logger.info(
        "measuring %s%s: %d prompts x %d repeats (+%d warm-up), max_new_tokens %d",
        name,
        f" ({form})" if form else "",
        len(spec.prompts),
        spec.repeats,
        spec.warmup,
        spec.max_new_tokens,
    )
    return measure(model, tokenizer, list(spec.prompts), **spec.measure_kwargs())


def _load_tokenizer(name: str) -> Any:
    """Only the tokenizer of ``name`` (the embedded model's comes from its GGUF file)."""
    from transformers import AutoTokenizer

    from .._embedded import embedded_model_path

    logger.info("loading the tokenizer of %s", name)
    try:
        with no_foreign_progress_bars():
            if name == EMBEDDED_MODEL:
                folder, gguf = embedded_model_path()
                return AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
            return AutoTokenizer.from_pretrained(name)
    except FTCallbackError:
        raise
    except (OSError, ValueError, ImportError, KeyError) as exc:
        raise UsageError(f"cannot load the tokenizer of {name!r}: {one_line(exc)}") from exc


@dataclass(frozen=True)
class ServedSettings:
    """How a serving endpoint is measured from the CLI (the arguments of ``measure_endpoint``)."""

    url: str
    api: str
    served_model: str | None
    concurrency: int
    api_key: str | None
    timeout_s: float
    tokenizer: str | None


def measure_served(served: ServedSettings, settings: MeasureSettings) -> Measurement:
    """Measure a running OpenAI-compatible server on the probe (``ftcallback measure --endpoint URL``)."""
    from .._endpoint import measure_endpoint

    if served.tokenizer is not None:
        check_model_name(served.tokenizer)
    tokenizer = _load_tokenizer(served.tokenizer) if served.tokenizer is not None else None
    spec = settings.spec
    logger.info(
        "measuring %s (%s): %d prompts x %d repeats (+%d warm-up), max_new_tokens %d, concurrency %d",
        served.url,
        served.api,
        len(spec.prompts),
        spec.repeats,
        spec.warmup,
        spec.max_new_tokens,
        served.concurrency,
    )
    return measure_endpoint(
        served.url,
        list(spec.prompts),
        model=served.served_model,
        api="chat" if served.api == "chat" else "completions",
        max_new_tokens=spec.max_new_tokens,
        generation_kwargs=dict(spec.generation_kwargs) or None,
        warmup=spec.warmup,
        repeats=spec.repeats,
        concurrency=served.concurrency,
        tokenizer=tokenizer,
        api_key=served.api_key,
        timeout_s=served.timeout_s,
        num_sample_outputs=spec.num_sample_outputs,
    )


def load_prompts(path: str | None) -> Any:
    """The prompts of ``--prompts FILE`` with the references they carry (a ``ProbePrompts``); every error
    names the file."""
    from .._prompts import load_probe as load

    if path is None:
        raise UsageError("--prompts FILE is required to measure a model")
    try:
        return load(path)
    except PromptError as exc:
        if path in str(exc):
            raise  # the message names the file already
        if _holds_no_text(path):
            raise UsageError(
                f"prompts file {path!r} holds no prompts; write one prompt per line (.txt) or one "
                '{"prompt": ...} object (with an optional "reference") per line (.jsonl)'
            ) from exc
        # The library words its messages for the Python API (`prompts[3]`); say which file it was.
        raise UsageError(f"prompts file {path!r}: {one_line(exc)}") from exc


def _holds_no_text(path: str) -> bool:
    try:
        return not Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return False


_FIGURES = re.compile(r"^\s*\w+\s*=[^,=]+(,\s*\w+\s*=[^,=]+)*\s*$")
#: Figures BASE / FINETUNED may be stated as instead of a file: ``latency_ms=200,output_tokens=150``.
FIGURE_KEYS = ("latency_ms", "output_tokens", "input_tokens", "ttft_ms", "quality")


def is_figures(arg: str) -> bool:
    """``key=value[,key=value...]``: a side stated as figures, not a file or a model."""
    return bool(_FIGURES.match(arg))


def figures_measurement(arg: str, role: str) -> Measurement:
    """The measurement that ``latency_ms=200,output_tokens=150`` states (see ``Measurement.from_figures``)."""
    from .._errors import ConfigError
    from .._measurement import Measurement

    values: dict[str, float] = {}
    for item in arg.split(","):
        key, _, text = (part.strip() for part in item.partition("="))
        if key not in FIGURE_KEYS:
            raise UsageError(
                f"{role} {arg!r}: unknown figure {key!r}; state a side as "
                f"{', '.join(k + '=...' for k in FIGURE_KEYS)} (latency_ms and output_tokens required)"
            )
        try:
            values[key] = float(text)
        except ValueError:
            raise UsageError(f"{role} {arg!r}: {key} must be a number, got {text!r}") from None
    missing = [k for k in ("latency_ms", "output_tokens") if k not in values]
    if missing:
        raise UsageError(f"{role} {arg!r}: {' and '.join(missing)} missing, e.g. latency_ms=200,output_tokens=150")
    tokens = {k: int(v) if v.is_integer() else v for k, v in values.items() if k.endswith("tokens")}
    try:
        return Measurement.from_figures(**{**values, **tokens})  # type: ignore[arg-type]
    except ConfigError as exc:
        raise UsageError(f"{role} {arg!r}: {one_line(exc)}") from exc


def is_measurement_file(arg: str) -> bool:
    """A saved measurement is named ``*.json``; anything else is a model."""
    return arg.lower().endswith(".json")


def load_measurement(path: str, role: str) -> Measurement:
    """Read a saved measurement, with errors that name its role (BASE / FINETUNED), not "baseline"."""
    from .._measurement import Measurement

    try:
        return Measurement.load(path, what=f"{role} measurement")
    except FTCallbackError as exc:
        raise UsageError(one_line(exc)) from exc
