"""The model of round 0, built from a :class:`~gradtrace.loop.config.ModelConfig`.

``tiny_gpt2`` trains every parameter; ``smollm2_lora`` and ``hf_lora`` wrap
the model with LoRA adapters (:func:`gradtrace.lm.lora.add_lora`; only they
train, so checkpoints hold only them). The adapters are initialised from
``config.seed`` under a forked RNG, so the caller's global RNG is untouched
and the same seed gives the same adapters.
"""

from __future__ import annotations

import torch

from ..lm.load import load_model
from ..lm.lora import LoraTrainConfig, add_lora
from .config import ModelConfig
from .lm import LanguageModel

N_POSITIONS = 256


def build_lm(config: ModelConfig) -> LanguageModel:
    """A fresh round-0 model (untrained tiny GPT-2, or a base model with new LoRA adapters)."""
    if config.kind == "tiny_gpt2":
        model, tokenizer = load_model("tiny", seed=config.seed, n_layer=config.n_layer, n_embd=config.n_embd, n_head=config.n_head,
                                      n_positions=N_POSITIONS)
        return LanguageModel(model, tokenizer, max_length=min(config.max_length, N_POSITIONS))
    if config.kind == "smollm2_lora":
        base, tokenizer = load_model("smollm2")
    else:
        base, tokenizer = load_model(str(config.path), dtype=torch.float32, what="model.path")
    lora = LoraTrainConfig(rank=config.lora_r, alpha=config.lora_alpha, target_modules=config.lora_targets, seed=config.seed)
    return LanguageModel(add_lora(base, lora), tokenizer, max_length=config.max_length)
