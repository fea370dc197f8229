"""Per-example negative log-likelihood tasks for causal LMs (gradtrace tasks).

* :class:`CausalLMTask`: the **summed** NLL of a completion after a prompt
  (prompt and padding masked). An example is ``{"prompt", "completion"}``
  (with ``as_chat=True`` rendered through the chat template) or
  ``{"messages": [...]}`` whose last message, the assistant's, is the
  completion. The prompt and the completion are tokenized separately, so the
  boundary between them is exact; an end-of-sequence token is appended to
  plain completions. Batches are right-padded.
* :class:`TextNLLTask`: the **mean** next-token NLL (nats per token) of a
  whole text, the loss the self-training loop trains with; examples are 1-D
  tensors of token ids.

Both compute token NLLs with :func:`next_token_nll`.

Stores record a task by its dotted class name; both classes keep the names
they had before they moved here (``gradtrace.models.hf.CausalLMTask``,
``gradtrace.loop.trace.TextNLLTask``, still importable there), so stores made
earlier still resume and query.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError

IGNORE = -100


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of a tokenizer's vocabulary, special tokens and chat template:
    the same tokenization gives the same fingerprint on every machine."""
    h = hashlib.sha256()
    vocab = tokenizer.get_vocab()
    for token, idx in sorted(vocab.items(), key=lambda kv: kv[1]):
        h.update(f"{idx}:{token};".encode())
    h.update(repr(sorted((k, str(v)) for k, v in tokenizer.special_tokens_map.items())).encode())
    h.update(str(getattr(tokenizer, "chat_template", None)).encode())
    return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class CausalLMTask:
    """Summed completion NLL of a causal LM, one value per example.

    ``tokenizer`` is any Hugging Face tokenizer (kept out of the manifest;
    its fingerprint goes in). ``max_length`` caps prompt + completion in
    tokens: a prompt that does not leave room for one completion token is an
    error, a completion that overflows is cut at the cap. ``as_chat`` renders
    prompt/completion pairs with the tokenizer's chat template.
    """

    tokenizer: dataclasses.InitVar[Any]
    max_length: int = 256
    as_chat: bool = False
    tokenizer_id: str = dataclasses.field(init=False, default="")

    def __post_init__(self, tokenizer: Any) -> None:
        if tokenizer is None or not callable(getattr(tokenizer, "__call__", None)):
            raise InputError(f"tokenizer must be a Hugging Face tokenizer; got {type(tokenizer).__name__}")
        if not isinstance(self.max_length, int) or isinstance(self.max_length, bool) or self.max_length < 2:
            raise InputError(f"max_length must be an integer >= 2; got {self.max_length!r}")
        if self.as_chat and not getattr(tokenizer, "chat_template", None):
            raise InputError("as_chat=True needs a tokenizer with a chat_template; this one has none")
        object.__setattr__(self, "_tokenizer", tokenizer)
        object.__setattr__(self, "tokenizer_id", tokenizer_fingerprint(tokenizer))

    # -- tokenization -------------------------------------------------------
    def encode(self, example: Mapping[str, Any], index: int | None = None) -> tuple[list[int], list[int]]:
        """``(prompt_ids, completion_ids)`` of one example, completion cut to fit."""
        where = "example" if index is None else f"example {index}"
        prompt_text, completion_text, templated = self._texts(example, where)
        tok = self.tokenizer
        prompt = list(tok(prompt_text, add_special_tokens=not templated)["input_ids"])
        completion = list(tok(completion_text, add_special_tokens=False)["input_ids"])
        if not templated and tok.eos_token_id is not None:
            completion.append(int(tok.eos_token_id))
        if not completion:
            raise InputError(f"{where}: the completion is empty after tokenization; got {completion_text!r}")
        if len(prompt) >= self.max_length:
            raise InputError(
                f"{where}: the prompt is {len(prompt)} tokens, longer than the context max_length={self.max_length} "
                "allows (it must leave room for at least one completion token); raise max_length or shorten the prompt"
            )
        return prompt, completion[: self.max_length - len(prompt)]

    def completion_spans(self, example: Mapping[str, Any], index: int | None = None) -> list[tuple[int, int]]:
        """For each completion token of :meth:`encode` (after the cut), its character span ``[start, end)``
        in ``example["completion"]`` (a prompt/completion example); ``(-1, -1)`` for tokens outside it
        (the chat template's end-of-turn text, an appended end-of-sequence token). Needs a fast tokenizer
        (offsets); the ids are those :meth:`encode` gives."""
        where = "example" if index is None else f"example {index}"
        prompt, completion = self.encode(example, index)
        _, completion_text, _ = self._texts(example, where)
        raw = example.get("completion", "") if isinstance(example, Mapping) else ""
        shift = completion_text.find(raw) if raw else -1
        tok = self.tokenizer
        if not getattr(tok, "is_fast", False):
            raise InputError("completion_spans needs a fast (Rust) Hugging Face tokenizer: character offsets come from it")
        enc = tok(completion_text, add_special_tokens=False, return_offsets_mapping=True)
        n = min(len(enc["input_ids"]), len(completion))  # encode() cut a completion that max_length does not hold
        if list(enc["input_ids"][:n]) != completion[:n]:
            raise InputError(f"{where}: tokenizing the completion with offsets gave other ids than encode()")
        spans = []
        for s, e in enc["offset_mapping"]:
            s, e = s - shift, e - shift
            spans.append((s, e) if shift >= 0 and 0 <= s < len(raw) and e > s else (-1, -1))
        spans += [(-1, -1)] * (len(completion) - len(spans))  # an appended end-of-sequence token
        return spans[: len(completion)]

    def _texts(self, example: Mapping[str, Any], where: str) -> tuple[str, str, bool]:
        if not isinstance(example, Mapping):
            raise InputError(f"{where}: must be a dict with 'prompt' and 'completion' or 'messages'; got {type(example).__name__}")
        tok = self.tokenizer
        if "messages" in example:
            messages = example["messages"]
            if not isinstance(messages, Sequence) or len(messages) < 2 or not all(isinstance(m, Mapping) for m in messages):
                raise InputError(f"{where}: 'messages' must be a list of at least two {{role, content}} dicts; got {messages!r:.200}")
            if messages[-1].get("role") != "assistant":
                raise InputError(f"{where}: the last message must be the assistant's (the completion); got role {messages[-1].get('role')!r}")
            if not getattr(tok, "chat_template", None):
                raise InputError(f"{where}: chat 'messages' need a tokenizer with a chat_template; this one has none")
            return self._chat(list(messages), where) + (True,)
        for key in ("prompt", "completion"):
            if key not in example:
                raise InputError(f"{where}: missing {key!r} (keys: {sorted(example)!r}); need 'prompt' and 'completion', or 'messages'")
            if not isinstance(example[key], str):
                raise InputError(f"{where}: {key!r} must be a string; got {type(example[key]).__name__}")
        if not example["completion"]:
            raise InputError(f"{where}: 'completion' is empty")
        if self.as_chat:
            messages = [{"role": "user", "content": example["prompt"]}, {"role": "assistant", "content": example["completion"]}]
            return self._chat(messages, where) + (True,)
        return example["prompt"], example["completion"], False

    def _chat(self, messages: list[Mapping[str, Any]], where: str) -> tuple[str, str]:
        tok = self.tokenizer
        full = tok.apply_chat_template(messages, tokenize=False)
        prompt = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        if not full.startswith(prompt):
            raise InputError(f"{where}: the chat template renders the conversation without its prompt as a prefix; cannot mask the prompt")
        return prompt, full[len(prompt):]

    def example_length(self, example: Any) -> int:
        """Tokens of one example as :meth:`collate` lays it out (prompt +
        completion; a preference pair: its longer side): featurize's
        ``batch_order="length"`` batches examples of similar length together."""
        if isinstance(example, Mapping) and "chosen" in example and "rejected" in example and "prompt" in example:
            return max(self.example_length({"prompt": example["prompt"], "completion": example[k]}) for k in ("chosen", "rejected"))
        try:
            prompt, completion = self.encode(example)
        except InputError as exc:  # the caller names the example: "example: " would say it twice
            text = str(exc)
            raise InputError(text[len("example: "):] if text.startswith("example: ") else text) from None
        return len(prompt) + len(completion)

    # -- batching -----------------------------------------------------------
    def collate(self, examples: list[Any]) -> dict[str, Any]:
        """Right-padded ``input_ids``/``attention_mask``/``labels``; pairs
        with ``chosen``/``rejected`` become ``{"chosen": batch, "rejected": batch}``."""
        if examples and all(isinstance(e, Mapping) and "chosen" in e and "rejected" in e for e in examples):
            for i, e in enumerate(examples):
                if "prompt" not in e:
                    raise InputError(f"query {i}: a preference pair needs 'prompt', 'chosen' and 'rejected'; got keys {sorted(e)!r}")
            return {
                "chosen": self.collate([{"prompt": e["prompt"], "completion": e["chosen"]} for e in examples]),
                "rejected": self.collate([{"prompt": e["prompt"], "completion": e["rejected"]} for e in examples]),
            }
        encoded = [self.encode(e, i) for i, e in enumerate(examples)]
        width = max(len(p) + len(c) for p, c in encoded)
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        ids = torch.full((len(encoded), width), int(pad), dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        labels = torch.full((len(encoded), width), IGNORE, dtype=torch.long)
        for i, (p, c) in enumerate(encoded):
            n = len(p) + len(c)
            ids[i, :n] = torch.tensor(p + c)
            mask[i, :n] = 1
            labels[i, len(p) : n] = torch.tensor(c)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    # -- the loss -----------------------------------------------------------
    def per_example_loss(self, model: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
        """Summed NLL of the completion tokens of each example."""
        if "chosen" in batch:
            raise InputError("per_example_loss got a preference-pair batch; use PreferenceMarginBehaviour for pairs")
        return completion_nll(model, batch)


# Set after the class is made: a property in the class body would become the InitVar's default.
CausalLMTask.tokenizer = property(lambda self: self._tokenizer, doc="The Hugging Face tokenizer.")  # type: ignore[assignment]


def completion_nll(model: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
    """Summed NLL over the positions whose label is not -100, per example.

    Logits (the vocabulary-wide output layer, about a fifth of a small
    model's compute) are computed only from the first position that predicts
    a label onwards, when the model takes ``logits_to_keep`` (Hugging Face
    causal LMs do): the prompt before it needs none."""
    for key in ("input_ids", "attention_mask", "labels"):
        if key not in batch:
            raise InputError(f"batch: missing {key!r}; build batches with CausalLMTask.collate")
    device = next(model.parameters()).device
    ids, mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
    keep = _logits_needed(labels) if _takes_logits_to_keep(model) else 0
    if keep:
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
        labels = labels[:, labels.shape[1] - keep :]
    else:
        logits = model(input_ids=ids, attention_mask=mask).logits
    return next_token_nll(logits, labels).sum(dim=1).to(logits.dtype)


def _logits_needed(labels: Tensor) -> int:
    """How many last positions' logits the loss reads: from the position
    before the first label (it predicts that label) to the end; 0 (all) when
    no position is labelled."""
    labelled = (labels[:, 1:] != IGNORE).any(dim=0).nonzero()
    if labelled.numel() == 0:
        return 0
    return int(labels.shape[1] - labelled[0, 0])


def _takes_logits_to_keep(model: nn.Module) -> bool:
    """Whether the model's forward (a PEFT model's: its base model's) takes ``logits_to_keep``."""
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    forward = getattr(base, "forward", None)
    if forward is None:
        return False
    cached = _TAKES_KEEP.get(type(base))
    if cached is None:
        try:
            cached = "logits_to_keep" in inspect.signature(forward).parameters
        except (TypeError, ValueError):
            cached = False
        _TAKES_KEEP[type(base)] = cached
    return cached


_TAKES_KEEP: dict[type, bool] = {}


def next_token_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """NLL of each next token, ``[batch, length - 1]``: position ``t`` predicts
    ``labels[:, t + 1]``; 0 where that label is -100. Half-precision logits
    are upcast (a half-precision softmax loses too much)."""
    shift_logits = logits[:, :-1, :]
    shift_labels = labels[:, 1:]
    flat = shift_logits.reshape(-1, shift_logits.shape[-1])
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    return F.cross_entropy(flat, shift_labels.reshape(-1), ignore_index=IGNORE, reduction="none").view(shift_labels.shape)


def mean_text_nll(model: nn.Module, ids: Tensor, mask: Tensor) -> Tensor:
    """Per-example mean next-token NLL (nats/token) of right-padded ``ids`` (``mask`` 1 on real tokens)."""
    logits = model(input_ids=ids, attention_mask=mask).logits
    nll = next_token_nll(logits, ids.masked_fill(mask == 0, IGNORE))
    return nll.sum(1) / mask[:, 1:].to(nll.dtype).sum(1).clamp_min(1.0)


def pad_right(seqs: Sequence[Sequence[int] | Tensor], pad_id: int) -> tuple[Tensor, Tensor]:
    """``(ids, mask)`` of right-padded token sequences."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


@dataclasses.dataclass(frozen=True)
class TextNLLTask:
    """Per-example mean next-token NLL (nats/token) of ``(ids, mask)`` batches
    of right-padded token ids, the loss the loop trains with (unlike
    :class:`CausalLMTask`, which sums the NLL of a completion after a
    prompt); ``collate`` pads 1-D id tensors."""

    pad_id: int

    def per_example_loss(self, model: nn.Module, batch: Any) -> Tensor:
        ids, mask = batch
        return mean_text_nll(model, ids, mask)

    def example_length(self, example: Sequence[int] | Tensor) -> int:
        """Tokens of one example (featurize's ``batch_order="length"``)."""
        return len(example)

    def collate(self, examples: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        return pad_right(examples, self.pad_id)


# Stores name a task by its class's dotted name; these are the names the classes had before (see the module docstring).
CausalLMTask.__module__ = "gradtrace.models.hf"
TextNLLTask.__module__ = "gradtrace.loop.trace"
