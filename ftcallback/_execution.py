"""How the model really ran during a measurement: decoding, compute dtype and autocast, compile, adapters.

A latency or token figure is only as good as the description beside it. This module works out
what :func:`~ftcallback._measure.measure` records about the run, from what actually happened rather
than from what was asked:

* :func:`describe_decoding`: the decoding transformers will really do once it has merged the model's
  ``generation_config`` with the user's ``generation_kwargs``, and the flags that have no effect
  (``temperature=0.7`` without ``do_sample=True`` stays greedy).
* :class:`ComputeProbe`: a self-removing forward hook on the output head that sees, during the first
  ``generate`` call, whether autocast is on and in which dtype the matmuls really compute (accelerate's
  mixed precision patches ``model.forward`` with autocast, so nothing at the call site shows it).
* :func:`compile_info` and :func:`adapters_info`: the compile state of the measured module against the
  trained one, and the PEFT adapters with their rank, targets and whether they are merged.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import GenerationConfig

from ._errors import ConfigError

__all__ = [
    "ComputeProbe",
    "Decoding",
    "adapters_info",
    "build_generation_config",
    "compile_info",
    "describe_decoding",
]

logger = logging.getLogger("ftcallback.measure")

# Sampling-only flags at the values that make them inert (transformers' `GenerationConfig.validate` rules).
# Set on the greedy generation config so that an instruct model's `temperature=0.6, top_p=0.9` neither
# applies nor warns under `do_sample=False`. min_p and top_h have no inert value but None, which generate
# refills from model.generation_config: a checkpoint that sets them still gets transformers' warning.
INERT_SAMPLING_FLAGS: dict[str, Any] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 50,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "min_p": None,
    "top_h": None,
}
# Beam-only flags at their inert values (same source).
INERT_BEAM_FLAGS: dict[str, Any] = {"early_stopping": False, "length_penalty": 1.0}

# What each decoding mode really uses; a record lists these with the values generate will apply.
_COMMON_PARAMETERS = ("repetition_penalty", "no_repeat_ngram_size", "min_new_tokens")
_SAMPLING_PARAMETERS = ("temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "top_h")
_BEAM_PARAMETERS = ("num_beams", "length_penalty", "early_stopping", "num_beam_groups", "diversity_penalty")

# transformers' GenerationMode values -> the names a record uses.
_MODE_NAMES = {
    "greedy_search": "greedy",
    "sample": "sampling",
    "beam_search": "beam",
    "beam_sample": "beam_sampling",
}


# ----------------------------------------------------------------- decoding
@dataclass(frozen=True)
class Decoding:
    """The decoding ``generate`` really does, after transformers resolved the generation config.

    Attributes:
        mode: ``"greedy"``, ``"sampling"``, ``"beam"``, ``"beam_sampling"``, or transformers' own name of
            another mode (``"contrastive_search"``, ``"assisted_generation"``, ...).
        parameters: the parameters that apply in that mode, with the values generate uses (the user's,
            else the model's ``generation_config``, else transformers' defaults); unset ones are left out.
        ignored: flags the user set that have no effect in that mode, with the value given,
            e.g. ``{"temperature": 0.7}`` without ``do_sample=True``.

    Example:
        >>> d = describe_decoding(None, {"temperature": 0.7})
        >>> d.mode, d.ignored
        ('greedy', {'temperature': 0.7})
    """

    mode: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    ignored: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """``{"mode", "parameters", "ignored"}``, JSON-safe."""
        return {"mode": self.mode, "parameters": dict(self.parameters), "ignored": dict(self.ignored)}

    def warning(self) -> str | None:
        """The one-line warning about ignored flags, or None when every flag given applies."""
        if not self.ignored:
            return None
        flags = ", ".join(f"{k}={v!r}" for k, v in self.ignored.items())
        if self.mode in ("greedy", "beam") and set(self.ignored) & set(INERT_SAMPLING_FLAGS):
            fix = "add do_sample=True to sample, or remove them"
        else:
            fix = "remove them, or set what enables them (num_beams > 1 for beam-only flags)"
        return (
            f"generation_kwargs {flags} have no effect: decoding is {self.mode}, so the measurement "
            f"records {self.mode} outputs, not what these flags ask for; {fix}"
        )

    def warn(self) -> None:
        """Log :meth:`warning` once at WARNING on ``ftcallback.measure`` (nothing when no flag is ignored)."""
        message = self.warning()
        if message is not None:
            logger.warning(message)


def _model_generation_config(source: Any) -> GenerationConfig | None:
    if isinstance(source, GenerationConfig):
        return source
    config = getattr(source, "generation_config", None)
    return config if isinstance(config, GenerationConfig) else None


def _differs(key: str, value: Any, inert: Mapping[str, Any]) -> bool:
    return value is not None and value != inert[key]


def build_generation_config(
    model_config: GenerationConfig | None, user_kwargs: Mapping[str, Any]
) -> tuple[GenerationConfig, dict[str, Any], Decoding]:
    """The generation config measure() passes to every ``generate`` call, the other kwargs, and its decoding.

    Everything that belongs to a GenerationConfig goes into one copied config, never into generate's
    kwargs: generate warns when both are given, and a config field set to None would be refilled from
    ``model.generation_config``, which is why inert flags carry explicit values. Decoding is greedy unless
    ``do_sample=True`` is asked for (in ``user_kwargs`` or a ``generation_config`` given there), whatever
    the checkpoint's own ``generation_config`` says.

    Flags the user set that have no effect (:attr:`Decoding.ignored`) go into the config at their inert
    values: the tokens are the same, and transformers does not add its own warning to ftcallback's.

    Raises:
        ConfigError: ``user_kwargs["generation_config"]`` is not a ``GenerationConfig``.
    """
    kwargs = dict(user_kwargs)
    user_config = kwargs.pop("generation_config", None)
    if user_config is not None and not isinstance(user_config, GenerationConfig):
        raise ConfigError(
            "`generation_kwargs['generation_config']` must be a transformers.GenerationConfig, "
            f"got {type(user_config).__name__}"
        )
    base = user_config if user_config is not None else model_config
    # A copy: model.generation_config must come out of the measurement exactly as it went in.
    config = copy.deepcopy(base) if isinstance(base, GenerationConfig) else GenerationConfig()
    # What the user set: generate() kwargs, plus what a given generation_config changes from the defaults.
    user_set = {**(user_config.to_diff_dict() if user_config is not None else {}), **kwargs}
    do_sample = kwargs.get("do_sample", config.do_sample if user_config is not None else False) is True
    num_beams = kwargs.get("num_beams", config.num_beams)
    beams = num_beams not in (None, 1)
    ignored: dict[str, Any] = {}
    if not do_sample:
        config.do_sample = False
        ignored.update(
            {k: v for k, v in user_set.items() if k in INERT_SAMPLING_FLAGS and _differs(k, v, INERT_SAMPLING_FLAGS)}
        )
        for key, value in INERT_SAMPLING_FLAGS.items():
            if key not in kwargs or key in ignored:
                setattr(config, key, value)
    if not beams:
        ignored.update(
            {k: v for k, v in user_set.items() if k in INERT_BEAM_FLAGS and _differs(k, v, INERT_BEAM_FLAGS)}
        )
        for key, value in INERT_BEAM_FLAGS.items():
            if key in ignored or (not do_sample and key not in kwargs):
                setattr(config, key, value)
    config.use_cache = True
    # GenerationConfig.update applies the fields it knows and hands back the rest (model kwargs,
    # stopping_criteria, logits_processor, streamer, ...), which go to generate() as they are.
    call_kwargs = config.update(**{k: v for k, v in kwargs.items() if k not in ignored})
    return config, call_kwargs, _describe(config, model_config, ignored)


def _resolved(config: GenerationConfig, model_config: GenerationConfig | None) -> GenerationConfig:
    """``config`` as generate resolves it: None fields filled from the model's config, then the global defaults.

    The same order as ``GenerationMixin._prepare_generation_config`` in transformers 5, without its
    validation (which would log transformers' own warnings about inherited flags).
    """
    resolved = copy.deepcopy(config)
    sources = [model_config.to_dict() if model_config is not None else {}]
    defaults = getattr(GenerationConfig, "_get_default_generation_params", None)
    if callable(defaults):
        sources.append(defaults())
    for source in sources:
        for key, value in source.items():
            if hasattr(resolved, key) and getattr(resolved, key) is None:
                setattr(resolved, key, value)
    return resolved


def _describe(config: GenerationConfig, model_config: GenerationConfig | None, ignored: Mapping[str, Any]) -> Decoding:
    resolved = _resolved(config, model_config)
    raw = resolved.get_generation_mode()
    mode = _MODE_NAMES.get(str(getattr(raw, "value", raw)), str(getattr(raw, "value", raw)))
    names = list(_COMMON_PARAMETERS)
    if "sampl" in mode:
        names = [*_SAMPLING_PARAMETERS, *names]
    if "beam" in mode:
        names = [*_BEAM_PARAMETERS, *names]
    parameters = {n: _plain(getattr(resolved, n, None)) for n in names if getattr(resolved, n, None) is not None}
    return Decoding(mode=mode, parameters=parameters, ignored={k: _plain(v) for k, v in ignored.items()})


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return repr(value)


def describe_decoding(generation_config_or_model: Any, generation_kwargs: Mapping[str, Any] | None) -> Decoding:
    """The decoding ``measure`` will really do with these ``generation_kwargs``, and the flags it ignores.

    Args:
        generation_config_or_model: the model (its ``generation_config`` is used), a ``GenerationConfig``,
            or None for transformers' defaults (what is known before the model is: whether sampling
            flags apply depends only on ``generation_kwargs``, since measure decodes greedily unless
            ``do_sample=True`` is given).
        generation_kwargs: the ``generate`` keyword arguments the measurement uses.

    Returns:
        A :class:`Decoding`; :meth:`Decoding.warn` logs the one WARNING about ignored flags.

    Example:
        >>> describe_decoding(None, {"do_sample": True, "temperature": 0.7}).parameters["temperature"]
        0.7
    """
    model_config = _model_generation_config(generation_config_or_model)
    return build_generation_config(model_config, dict(generation_kwargs or {}))[2]


# ----------------------------------------------------------------- compute dtype and autocast
def _dtype_name(dtype: Any) -> str | None:
    return str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else None


def _autocast_state(device_type: str) -> tuple[bool, str | None]:
    try:
        if not torch.is_autocast_enabled(device_type):
            return False, None
        return True, _dtype_name(torch.get_autocast_dtype(device_type))
    except (RuntimeError, TypeError, ValueError):  # a device type autocast does not know
        return False, None


def _forward_patched(*modules: Any) -> bool:
    # accelerate's mixed precision wraps model.forward in autocast and keeps the original here: generate
    # then runs under autocast although no autocast context is active at the call.
    return any("_original_forward" in getattr(m, "__dict__", {}) for m in modules if m is not None)


def _head(target: torch.nn.Module) -> torch.nn.Module | None:
    """The module whose output shows the compute dtype: the LM head, else the first Linear."""
    get = getattr(target, "get_output_embeddings", None)
    try:
        head = get() if callable(get) else None
    except (AttributeError, NotImplementedError):
        head = None
    if isinstance(head, torch.nn.Module):
        return head
    return next((m for m in target.modules() if isinstance(m, torch.nn.Linear)), None)


class ComputeProbe:
    """Sees, inside the first forward pass, in which dtype the model computes and whether autocast is on.

    A forward hook on the LM head (a matmul, so autocast casts it) records the autocast state and the
    dtype of its output once, then removes itself: the timed calls run without it. Install it with
    :meth:`install` before the first ``generate`` call and read :meth:`record` afterwards.
    """

    def __init__(self, model: Any, target: torch.nn.Module, device: torch.device) -> None:
        self._model = model
        self._target = target
        self._device_type = device.type
        self._handle: Any = None
        self.at_call: tuple[bool, str | None] = _autocast_state(device.type)
        self.inside: tuple[bool, str | None] | None = None
        self.output_dtype: str | None = None

    def install(self) -> None:
        head = _head(self._target)
        if head is None:
            return

        def hook(module: Any, args: Any, output: Any) -> None:
            self.inside = _autocast_state(self._device_type)
            tensor = output if isinstance(output, torch.Tensor) else getattr(output, "logits", None)
            if isinstance(tensor, torch.Tensor):
                self.output_dtype = _dtype_name(tensor.dtype)
            self.remove()

        self._handle = head.register_forward_hook(hook)

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def record(self, param_dtype: str | None) -> tuple[dict[str, Any], str | None]:
        """``(autocast, compute_dtype)``: ``{"enabled", "dtype", "source"}`` and the dtype matmuls ran in."""
        enabled, dtype = self.inside if self.inside is not None else self.at_call
        source: str | None = None
        if enabled:
            if self.at_call[0]:
                source = "autocast context"
            elif _forward_patched(self._model, self._target, getattr(self._model, "module", None)):
                source = "accelerate forward patch"
            else:
                source = "model forward"
        compute = self.output_dtype or (dtype if enabled else param_dtype)
        return {"enabled": enabled, "dtype": dtype, "source": source}, compute


# ----------------------------------------------------------------- compile and adapters
def _is_compiled(module: Any) -> bool:
    if isinstance(getattr(module, "_orig_mod", None), torch.nn.Module):
        return True  # a torch.compile(model) wrapper
    if getattr(module, "_compiled_call_impl", None) is not None:
        return True  # model.compile()
    forward = getattr(module, "forward", None)
    return getattr(forward, "_torchdynamo_orig_callable", None) is not None  # torch.compile(model.forward)


def compile_info(model: Any, target: Any, trained_compiled: bool | None = None) -> dict[str, bool]:
    """``{"trained_module_compiled", "measured_compiled"}``.

    Args:
        model: what measure() was given (possibly a ``torch.compile`` wrapper it peeled off).
        target: the module whose ``generate`` ran.
        trained_compiled: whether the module being trained runs compiled when ``model`` is its uncompiled
            original (the Trainer's ``args.torch_compile``); None detects it from ``model``.
    """
    measured = _is_compiled(target)
    trained = bool(trained_compiled) if trained_compiled is not None else (_is_compiled(model) or measured)
    return {"trained_module_compiled": trained, "measured_compiled": measured}


def adapters_info(target: Any) -> list[dict[str, Any]]:
    """One entry per PEFT adapter: ``name``, ``type``, ``r``, ``lora_alpha``, ``target_modules``, ``merged``.

    ``merged`` is True when the adapter's weights are folded into the base layers (``merge_adapter()``);
    after ``merge_and_unload()`` no adapter is left to list. Non-LoRA adapters have ``r`` and ``lora_alpha``
    None. Empty for a model without adapters.
    """
    configs = getattr(target, "peft_config", None)
    if not isinstance(configs, Mapping) or not configs:
        return []
    merged: set[str] = set()
    for module in target.modules():
        names = getattr(module, "merged_adapters", None)
        if isinstance(names, (list, tuple)):
            merged.update(str(n) for n in names)
    out = []
    for name, config in configs.items():
        peft_type = getattr(config, "peft_type", None)
        targets = getattr(config, "target_modules", None)
        if isinstance(targets, (set, frozenset, list, tuple)):
            targets = sorted(str(t) for t in targets)
        elif targets is not None:
            targets = str(targets)
        out.append(
            {
                "name": str(name),
                "type": str(getattr(peft_type, "value", peft_type)) if peft_type is not None else "unknown",
                "r": getattr(config, "r", None),
                "lora_alpha": getattr(config, "lora_alpha", None),
                "target_modules": targets,
                "merged": str(name) in merged,
            }
        )
    return out
