"""Deployed forms: the model as it will be served, entered for a measurement and left exactly as it was.

A *form* names how a checkpoint is served, as opposed to how it is trained:

* ``"merged"``: PEFT (LoRA) adapters merged into the base weights, in place. The base weights of the adapted
  layers (only those) are saved before merging and copied back bit for bit afterwards: PEFT's ``unmerge``
  subtracts the delta again, and ``(W + BA) - BA`` is not ``W`` in floating point.
* ``"bf16"`` / ``"fp16"`` (also ``"dtype:bf16"``, ``"dtype:fp16"``): the serving dtype. Each floating-point
  parameter and buffer is cast in place, the original tensor kept aside untouched and put back on exit, so
  the restore is exact and costs the cast copies only (2 bytes a parameter).
* ``"int8"``: dynamic int8 quantization of every ``nn.Linear`` (int8 weights, activations quantized per call;
  ``torch.ao.quantization.quantize_dynamic``, fbgemm kernels), CPU only. It works on a deep copy, with any
  adapters merged in the copy, so the training model is never touched; the copy costs the model's size.
* ``"merged+bf16"``: forms in order, joined with ``+``.

Where a form needs memory beside the model, :func:`form_cost` says how much and :func:`serving_form` refuses
with :class:`~ftcallback.MeasurementError` when the device does not have it, before allocating anything: a
measurement must never run a training job out of memory.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ._errors import ConfigError, MeasurementError, ModelError

__all__ = [
    "FORMS",
    "FormCost",
    "available_memory",
    "form_cost",
    "measure_in_form",
    "parse_form",
    "serving_form",
]

logger = logging.getLogger("ftcallback.forms")

#: The forms, as named in reports, TensorBoard tags and the CLI.
FORMS = ("merged", "bf16", "fp16", "int8")
_ALIASES = {
    "merge": "merged",
    "dtype:bf16": "bf16",
    "dtype:fp16": "fp16",
    "bfloat16": "bf16",
    "float16": "fp16",
    "dtype:bfloat16": "bf16",
    "dtype:float16": "fp16",
}
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: Share of the available memory a form may take: the rest is left to whatever else the process does.
_HEADROOM = 0.9


def parse_form(form: Any, *, argument: str = "deployed_form") -> str:
    """The canonical name of a form: ``"merged"``, ``"bf16"``, ``"fp16"``, ``"int8"`` or steps joined by ``+``.

    Example:
        >>> parse_form("merge"), parse_form("dtype:bf16"), parse_form("merged+bf16")
        ('merged', 'bf16', 'merged+bf16')

    Raises:
        ConfigError: not a form, a step repeated, two dtypes, or ``int8`` combined with another step.
    """
    hint = f"; one of {', '.join(FORMS)} (or dtype:bf16, dtype:fp16), or steps joined by '+' like merged+bf16"
    if not isinstance(form, str) or not form.strip():
        raise ConfigError(f"`{argument}` must be a form name{hint}, got {form!r}")
    steps = [_ALIASES.get(part.strip().lower(), part.strip().lower()) for part in form.split("+")]
    unknown = [s for s in steps if s not in FORMS]
    if unknown:
        raise ConfigError(f"`{argument}` has an unknown form {unknown[0]!r} in {form!r}{hint}")
    if len(set(steps)) != len(steps) or sum(s in _DTYPES for s in steps) > 1:
        raise ConfigError(f"`{argument}` must name each step once and at most one dtype, got {form!r}")
    if "int8" in steps and len(steps) > 1:
        raise ConfigError(
            f"`{argument}` cannot combine int8 with another step, got {form!r}: int8 quantizes a float32 copy "
            "and merges any adapters in it by itself; use 'int8'"
        )
    return "+".join(steps)


@dataclass(frozen=True)
class FormCost:
    """What entering a form costs in memory, beside the model itself.

    Attributes:
        form: the canonical form.
        extra_bytes: bytes allocated while the form is active (saved weights, cast copies, a model copy).
        device: the device that pays them (the model's).
        available_bytes: what that device had available when asked (None when unknown).
    """

    form: str
    extra_bytes: int
    device: str
    available_bytes: int | None

    @property
    def fits(self) -> bool:
        return self.available_bytes is None or self.extra_bytes <= _HEADROOM * self.available_bytes

    def describe(self) -> str:
        have = "unknown" if self.available_bytes is None else _mib(self.available_bytes)
        return f"form {self.form!r} needs {_mib(self.extra_bytes)} on {self.device} ({have} available)"


def available_memory(device: torch.device | str) -> int | None:
    """Bytes available for new allocations on ``device``: free CUDA memory, or the host's ``MemAvailable``."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def form_cost(
    model: Any, form: str, *, available: Callable[[torch.device], int | None] = available_memory
) -> FormCost:
    """The memory ``form`` needs beside ``model``, and what the model's device has (see :class:`FormCost`).

    Raises:
        ConfigError: ``form`` is not a form.
        ModelError: the model cannot take that form (no adapters for ``merged``, int8 off CPU).
    """
    form = parse_form(form, argument="form")
    device = _device(model)
    extra = 0
    for step in form.split("+"):
        if step == "merged":
            extra += sum(_nbytes(t) for _, t in _base_tensors(_adapter_layers(model, need=True)))
        elif step in _DTYPES:
            itemsize = torch.empty((), dtype=_DTYPES[step]).element_size()
            extra += sum(t.numel() * itemsize for t in _floating_tensors(model) if t.dtype != _DTYPES[step])
        else:  # int8: a float32 deep copy before quantization shrinks it
            if device.type != "cpu":
                raise ModelError(
                    f"form 'int8' (dynamic int8 quantization) runs on CPU, the model is on {device}: "
                    "measure it on a CPU copy of the checkpoint, e.g. `ftcallback compare --what-if int8`"
                )
            extra += sum(t.numel() * 4 if t.is_floating_point() else _nbytes(t) for t in _all_tensors(model))
    return FormCost(form, int(extra), str(device), available(device))


@contextlib.contextmanager
def serving_form(
    model: Any, form: str, *, available: Callable[[torch.device], int | None] = available_memory
) -> Iterator[Any]:
    """Enter ``form`` for the time of a ``with`` block; the model is exactly as before afterwards.

    Yields the model in that form: ``model`` itself, changed in place (``merged``, ``bf16``, ``fp16``), or a
    quantized copy (``int8``). On exit, even through an exception, every changed tensor is put back bit for
    bit: the saved originals are restored, nothing is recomputed.

    Args:
        model: a ``transformers`` causal LM, or a PEFT model around one.
        form: see :func:`parse_form`.
        available: bytes available on a device (injectable for tests).

    Raises:
        ConfigError: ``form`` is not a form.
        ModelError: the model cannot take the form.
        MeasurementError: the form needs more memory than the device has (nothing was allocated).

    Example:
        >>> from ftcallback.testing import tiny_causal_lm
        >>> model = tiny_causal_lm("gpt2")
        >>> with serving_form(model, "bf16") as served:
        ...     served.dtype
        torch.bfloat16
        >>> model.dtype
        torch.float32
    """
    cost = form_cost(model, form, available=available)
    if not cost.fits:
        raise MeasurementError(
            f"{cost.describe()}: not measuring that form, so that the training job keeps its memory "
            f"(at most {int(_HEADROOM * 100)}% of what is available is used). Measure it after training with "
            "`ftcallback compare --what-if`, or on a machine with more memory"
        )
    logger.debug("%s", cost.describe())
    with contextlib.ExitStack() as stack:
        served = model
        for step in cost.form.split("+"):
            if step == "merged":
                served = stack.enter_context(_merged(served))
            elif step in _DTYPES:
                served = stack.enter_context(_cast(served, _DTYPES[step]))
            else:
                served = _int8_copy(served)
        yield served


def measure_in_form(model: Any, form: str, run: Callable[[Any], Any], **kwargs: Any) -> Any:
    """``run(model in form)`` -> a :class:`~ftcallback.Measurement`, its ``environment`` saying the form.

    ``environment`` gains ``form``, ``form_memory_bytes`` (what the form cost beside the model) and
    ``form_setup_s`` (seconds to enter and leave the form, outside the timed generation).
    """
    started = time.perf_counter()
    cost = form_cost(model, form, **kwargs)
    with serving_form(model, cost.form, **kwargs) as served:
        entered = time.perf_counter()
        m = run(served)
        done = time.perf_counter()
        if served is not model:
            del served
    setup = (entered - started) + (time.perf_counter() - done)
    env = {**m.environment, "form": cost.form, "form_memory_bytes": cost.extra_bytes, "form_setup_s": setup}
    return dataclasses.replace(m, environment=env)


# ---------------------------------------------------------------------- the forms
@contextlib.contextmanager
def _merged(model: Any) -> Iterator[Any]:
    layers = _adapter_layers(model, need=True)
    saved = [(t, t.detach().clone()) for _, t in _base_tensors(layers)]
    try:
        with torch.no_grad():
            for layer in layers:
                layer.merge()
        yield model
    finally:
        with torch.no_grad():
            for layer in layers:
                if layer.merged:
                    layer.unmerge()  # PEFT's bookkeeping (merged_adapters); the bits come from the copies
            for tensor, original in saved:
                tensor.copy_(original)


@contextlib.contextmanager
def _cast(model: Any, dtype: torch.dtype) -> Iterator[Any]:
    params: list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor | None]] = []
    buffers: list[tuple[torch.nn.Module, str, torch.Tensor]] = []
    cast: dict[int, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for module in model.modules():
                for param in module._parameters.values():
                    if param is None or id(param) in cast or not param.is_floating_point() or param.dtype == dtype:
                        continue
                    original, grad = param.data, param.grad
                    cast[id(param)] = param
                    params.append((param, original, grad))
                    param.grad = None  # a float32 gradient on a bf16 parameter would be refused
                    param.data = original.to(dtype)
                for name, buf in list(module._buffers.items()):
                    if buf is None or not buf.is_floating_point() or buf.dtype == dtype:
                        continue
                    buffers.append((module, name, buf))
                    if id(buf) not in cast:
                        cast[id(buf)] = buf.to(dtype)
                    module._buffers[name] = cast[id(buf)]
        yield model
    finally:
        # The very tensors that were there before: restoring them is exact by construction.
        for param, original, grad in params:
            param.data = original
            param.grad = grad
        for module, name, buf in buffers:
            module._buffers[name] = buf


def _int8_copy(model: Any) -> Any:
    clone = copy.deepcopy(model)
    with torch.no_grad():
        clone.float()
        for layer in _adapter_layers(clone, need=False):
            if not layer.merged:
                layer.merge()
        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():
            # torch marks its quantized tensor types deprecated; they are still its int8 CPU kernels.
            warnings.simplefilter("ignore")
            quantize_dynamic(clone, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    clone.eval()
    return clone


# ---------------------------------------------------------------------- helpers
def _adapter_layers(model: Any, *, need: bool) -> list[Any]:
    """The PEFT tuner layers with active, unmerged adapters (PEFT not imported means there are none)."""
    layers: list[Any] = []
    if "peft" in sys.modules:
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [
            m
            for m in model.modules()
            if isinstance(m, BaseTunerLayer) and not m.merged and not getattr(m, "disable_adapters", False)
        ]
    if need and not layers:
        raise ModelError(
            "form 'merged' needs a model with unmerged PEFT adapters (LoRA), and this model has none: "
            "drop the form or train with peft's get_peft_model"
        )
    for layer in layers if need else ():
        weight = getattr(layer.get_base_layer(), "weight", None)
        if weight is not None and not weight.is_floating_point():
            raise ModelError(
                f"form 'merged' cannot merge adapters into quantized base weights ({weight.dtype}, e.g. QLoRA): "
                "measure the merged model after training with `ftcallback compare --what-if`"
            )
    return layers


def _base_tensors(layers: list[Any]) -> list[tuple[str, torch.Tensor]]:
    """The base-layer parameters that merging changes (weight, and bias when an adapter has one)."""
    seen: set[int] = set()
    out: list[tuple[str, torch.Tensor]] = []
    for layer in layers:
        for name, param in layer.get_base_layer().named_parameters(recurse=False):
            if id(param) not in seen:
                seen.add(id(param))
                out.append((name, param.data))
    return out


def _floating_tensors(model: Any) -> list[torch.Tensor]:
    return [t for t in _all_tensors(model) if t.is_floating_point()]


def _all_tensors(model: Any) -> list[torch.Tensor]:
    seen: set[int] = set()
    out: list[torch.Tensor] = []
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _device(model: Any) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
