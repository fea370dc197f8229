"""The model of round 0, built from a :class:`~gradtrace.loop.config.ModelConfig`.

``tiny_gpt2`` trains every parameter; ``smollm2_lora`` and ``hf_lora`` wrap
the model with PEFT LoRA adapters (only they train, so checkpoints hold only
them). LoRA's random initialisation is drawn under a forked, seeded RNG so
the caller's global RNG is untouched and the same seed gives the same
adapters.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import MissingDependencyError
from .config import ModelConfig
from .lm import LanguageModel

N_POSITIONS = 256


def build_lm(config: ModelConfig) -> LanguageModel:
    """A fresh round-0 model (untrained tiny GPT-2, or a base model with new LoRA adapters)."""
    from ..models.zoo import byte_tokenizer, load_smollm2, tiny_gpt2

    if config.kind == "tiny_gpt2":
        model = tiny_gpt2(n_layer=config.n_layer, n_embd=config.n_embd, n_head=config.n_head, n_positions=N_POSITIONS, seed=config.seed)
        return LanguageModel(model, byte_tokenizer(), max_length=min(config.max_length, N_POSITIONS))
    if config.kind == "smollm2_lora":
        base, tokenizer = load_smollm2()
    else:
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise MissingDependencyError("transformers", "model.kind = 'hf_lora'", "pip install 'gradtrace[loop]'") from None
        base = AutoModelForCausalLM.from_pretrained(config.path, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(config.path)
    return LanguageModel(add_lora(base, config), tokenizer, max_length=config.max_length)


def add_lora(model: Any, config: ModelConfig) -> Any:
    """``model`` with LoRA adapters on ``config.lora_targets`` (dropout 0)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise MissingDependencyError("peft", "LoRA training in the loop", "pip install 'gradtrace[loop]'") from None
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, target_modules=list(config.lora_targets), lora_dropout=0.0, bias="none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        wrapped = get_peft_model(model, lora)
    wrapped.eval()
    return wrapped
