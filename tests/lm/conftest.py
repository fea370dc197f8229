"""Fixtures of the LM tests: the tiny GPT-2 (float64) with random LoRA
adapters, its byte tokenizer, and a causal-LM task."""

from __future__ import annotations

import types
import warnings

import pytest
import torch

from gradtrace.models import zoo
from gradtrace.models.hf import CausalLMTask


def lora_gpt2(rank: int = 3, seed: int = 0, targets: tuple[str, ...] = ("c_attn", "c_fc"), dtype: torch.dtype = torch.float64):
    """A tiny GPT-2 with LoRA adapters whose A and B are both random (so every
    adapter gradient is non-zero), in eval mode."""
    from peft import LoraConfig, get_peft_model

    model = zoo.tiny_gpt2(seed=seed, n_layer=2, n_embd=32, n_head=2, n_positions=128).to(dtype)
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore")
        torch.manual_seed(seed + 1)
        peft_model = get_peft_model(
            model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets), lora_dropout=0.0, init_lora_weights=False)
        )
    peft_model.eval()
    return peft_model


EXAMPLES = [
    {"prompt": "Q: 2+2?\nA:", "completion": " 4"},
    {"prompt": "Name a colour.", "completion": " A deep shade of blue."},
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]},
    {"prompt": "x", "completion": " <script>alert(1)</script>"},
]


@pytest.fixture(scope="session")
def lm() -> types.SimpleNamespace:
    tok = zoo.byte_tokenizer()
    return types.SimpleNamespace(
        tok=tok, task=CausalLMTask(tok, max_length=96), lora_gpt2=lora_gpt2, examples=[dict(e) for e in EXAMPLES],
    )
