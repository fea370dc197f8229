"""One seeded top-p sampler for causal LMs, chat-formatted or plain.

``model.generate`` draws from torch's global RNG; this sampler draws from a
``torch.Generator`` the caller passes in, so a run is reproducible, a resumed
run gives the same texts as an uninterrupted one, and the caller's RNG is
untouched.

* :func:`sample_chat` renders each prompt with the tokenizer's chat template,
  left-pads the batch and returns the decoded answers (the behavioural diff).
* :func:`sample_continuations` continues plain-text prompts, ``n`` samples
  each, and returns prompt + continuation (the self-training loop).

Both run :func:`sample_tokens`. The two callers drew their tokens slightly
differently before they shared this code, and their results are kept
bit-identical: the chat sampler takes the softmax in float32 and renormalises
even without top-p; the loop takes it in float64 and renormalises only after
top-p (``precision`` and ``renormalise`` of :func:`next_tokens`).
``torch.multinomial`` draws one exponential per vocabulary entry and row, so
the dtype decides the draws.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch
from torch import Tensor

from ..configbase import ConfigBase, in_range, non_negative, positive_int
from ..errors import InputError


@dataclasses.dataclass(frozen=True)
class SamplingConfig(ConfigBase):
    """Sampling settings. ``temperature == 0`` means greedy decoding. ``system``:
    a system message for chat prompts (``None``: the chat template's default,
    if it has one). ``batch_size``: prompts sampled together.

    ``to_dict()`` is part of the diff's sample cache key (pinned in
    tests/test_configbase.py)."""

    max_new_tokens: int = 96
    temperature: float = 0.8
    top_p: float = 0.95
    batch_size: int = 16
    system: str | None = None

    _prefix = "generation."
    _checks = {"max_new_tokens": positive_int, "temperature": non_negative, "top_p": in_range(0, 1, low_open=True),
               "batch_size": positive_int}


def chat_prompt(tokenizer: Any, prompt: str, system: str | None = None) -> str:
    """The prompt rendered with the tokenizer's chat template, ready for the assistant's turn."""
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def top_p_filter(probs: Tensor, top_p: float) -> Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches ``top_p``; renormalised."""
    sorted_p, idx = probs.sort(dim=-1, descending=True, stable=True)
    before = sorted_p.cumsum(-1) - sorted_p
    sorted_p = torch.where(before < top_p, sorted_p, torch.zeros_like(sorted_p))
    kept = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    return kept / kept.sum(-1, keepdim=True)


def next_tokens(logits: Tensor, config: SamplingConfig, generator: torch.Generator, *, precision: torch.dtype = torch.float32,
                renormalise: bool = True) -> Tensor:
    """One token per row of ``logits`` [b, vocab] (on the logits' device).

    ``precision``: dtype of the softmax and of the draw. ``renormalise``:
    divide by the sum also when ``top_p == 1`` (the chat sampler's habit)."""
    if config.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax((logits.float().cpu() / config.temperature).to(precision), dim=-1)
    if config.top_p < 1.0:
        probs = top_p_filter(probs, config.top_p)
    elif renormalise:
        probs = probs / probs.sum(-1, keepdim=True)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(logits.device)


@torch.no_grad()
def sample_tokens(model: Any, ids: Tensor, mask: Tensor, config: SamplingConfig, generator: torch.Generator, eos: Sequence[int], *,
                  precision: torch.dtype = torch.float32, renormalise: bool = True) -> list[list[int]]:
    """New token ids of each row of a left-padded batch, up to (without) its first ``eos`` token.

    Position ids follow the attention mask, so left padding does not shift
    positions; every row draws a token at every step until all rows are done."""
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    past, logits, next_pos = out.past_key_values, out.logits[:, -1, :], pos[:, -1:] + 1
    eos_t = torch.tensor(list(eos), device=device)
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=device)
    new: list[Tensor] = []
    for _ in range(config.max_new_tokens):
        token = next_tokens(logits, config, generator, precision=precision, renormalise=renormalise)
        token = torch.where(done, torch.full_like(token, int(eos[0])), token)
        new.append(token)
        done |= torch.isin(token, eos_t)
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_pos, past_key_values=past, use_cache=True)
        past, logits, next_pos = out.past_key_values, out.logits[:, -1, :], next_pos + 1
    rows = torch.stack(new, dim=1).cpu().tolist() if new else [[] for _ in range(ids.shape[0])]
    stop = set(int(e) for e in eos)
    return [row[: next((i for i, t in enumerate(row) if t in stop), len(row))] for row in rows]


def sample_chat(model: Any, tokenizer: Any, prompts: Sequence[str], config: SamplingConfig, generator: torch.Generator, *,
                answer_start: str = "", stop_ids: Sequence[int] = ()) -> list[str]:
    """One answer per prompt (chat-formatted, one batch), decoded without special tokens and stripped.

    ``answer_start``: text the assistant's turn starts with (the model
    continues it; each answer begins with it). ``stop_ids``: tokens that end
    an answer besides the chat's end tokens (not part of the answer)."""
    texts = [chat_prompt(tokenizer, p, config.system) + answer_start for p in prompts]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    eos = chat_eos_ids(model, tokenizer)
    eos += [int(i) for i in stop_ids if int(i) not in eos]
    rows = sample_tokens(model, enc["input_ids"], enc["attention_mask"], config, generator, eos)
    return [(answer_start + tokenizer.decode(row, skip_special_tokens=True)).strip() for row in rows]


def sample_continuations(model: Any, tokenizer: Any, prompts: Sequence[str], n_per_prompt: int, config: SamplingConfig,
                         generator: torch.Generator, eos_id: int) -> list[tuple[int, str]]:
    """``n_per_prompt`` samples for each plain-text prompt, as ``(prompt index,
    prompt + continuation)`` in prompt order; sampling stops at ``eos_id``.

    Prompts of equal token length are sampled together (no padding), in
    batches of ``config.batch_size``, all drawing from ``generator``."""
    encoded = [list(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    by_len: dict[int, list[tuple[int, list[int]]]] = {}
    for i in range(len(prompts)):
        for _ in range(n_per_prompt):
            by_len.setdefault(len(encoded[i]), []).append((i, encoded[i]))
    results: dict[int, list[str]] = {i: [] for i in range(len(prompts))}
    for length in sorted(by_len):
        group = by_len[length]
        for a in range(0, len(group), config.batch_size):
            chunk = group[a : a + config.batch_size]
            ids = torch.tensor([c[1] for c in chunk], dtype=torch.long)
            new = sample_tokens(model, ids, torch.ones_like(ids), config, generator, [eos_id], precision=torch.float64, renormalise=False)
            for (i, prompt_ids), cont in zip(chunk, new):
                results[i].append(tokenizer.decode(prompt_ids + cont, skip_special_tokens=True))
    return [(i, t) for i in range(len(prompts)) for t in results[i]]


def chat_eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Tokens that end a chat answer: the model's and tokenizer's eos, and ``<|im_end|>`` where the vocabulary has it."""
    ids: list[int] = []
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id,
                  tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None):
        for v in value if isinstance(value, list) else [value]:
            if v is not None and int(v) not in ids:
                ids.append(int(v))
    if not ids:
        raise InputError("the tokenizer has no end-of-sequence token; set tokenizer.eos_token")
    return ids
