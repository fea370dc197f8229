"""Seeded, batched sampling from a local causal LM with a chat template.

``model.generate`` draws from torch's global RNG; this loop draws from a
local ``torch.Generator`` seeded per batch (``seed``, batch index), so a run
is reproducible, a resumed run gives the same texts as an uninterrupted one,
and the caller's RNG is untouched.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import torch

from ..errors import InputError


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings. ``temperature == 0`` means greedy decoding. ``system``:
    a system message (``None``: the chat template's default, if it has one)."""

    max_new_tokens: int = 96
    temperature: float = 0.8
    top_p: float = 0.95
    batch_size: int = 16
    system: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"generation.{name} must be a positive integer; got {value!r}")
        if self.temperature < 0:
            raise InputError(f"generation.temperature must be >= 0; got {self.temperature!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"generation.top_p must lie in (0, 1]; got {self.top_p!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GenerationConfig":
        return cls(**dict(d))


def chat_prompt(tokenizer: Any, prompt: str, system: str | None = None) -> str:
    """The prompt rendered with the tokenizer's chat template, ready for the assistant's turn."""
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


@torch.no_grad()
def sample_batch(model: Any, tokenizer: Any, prompts: Sequence[str], config: GenerationConfig, generator: torch.Generator) -> list[str]:
    """One completion per prompt (chat-formatted), decoded without special tokens."""
    texts = [chat_prompt(tokenizer, p, config.system) for p in prompts]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    device = next(model.parameters()).device
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    eos = _eos_ids(model, tokenizer)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    past = out.past_key_values
    logits = out.logits[:, -1, :]
    next_pos = pos[:, -1:] + 1
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=device)
    new: list[torch.Tensor] = []
    for _ in range(config.max_new_tokens):
        token = _pick(logits.float(), config, generator)
        token = torch.where(done, torch.full_like(token, eos[0]), token)
        new.append(token)
        done |= torch.isin(token, torch.tensor(eos, device=device))
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_pos, past_key_values=past, use_cache=True)
        past, logits, next_pos = out.past_key_values, out.logits[:, -1, :], next_pos + 1
    gen = torch.stack(new, dim=1).cpu() if new else torch.zeros(ids.shape[0], 0, dtype=torch.long)
    result = []
    for row in gen.tolist():
        cut = next((i for i, t in enumerate(row) if t in eos), len(row))
        result.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
    return result


def _pick(logits: torch.Tensor, config: GenerationConfig, generator: torch.Generator) -> torch.Tensor:
    if config.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / config.temperature, dim=-1)
    if config.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < config.top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    probs = probs / probs.sum(-1, keepdim=True)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id,
                  tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None):
        for v in value if isinstance(value, list) else [value]:
            if v is not None and int(v) not in ids:
                ids.append(int(v))
    if not ids:
        raise InputError("the tokenizer has no end-of-sequence token; set tokenizer.eos_token")
    return ids
