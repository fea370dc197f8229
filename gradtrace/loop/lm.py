"""What the loop does with a causal language model: train, sample, score, probe.

:class:`LanguageModel` wraps a Hugging Face causal LM and its tokenizer. Every
random choice (batch order, sampled tokens) comes from a ``torch.Generator``
the caller passes in, never from the global RNG, so a round redone after an
interruption gives the same bytes. Dropout is kept off while training (the
model stays in eval mode) for the same reason: dropout would draw from the
global RNG.

Texts are trained on and scored as ``text + eos``; the loss of an example is
its mean next-token negative log-likelihood in nats per token
(:func:`gradtrace.lm.tasks.mean_text_nll`); samples come from the shared
sampler (:func:`gradtrace.lm.sample.sample_continuations`).

:func:`ewc_penalty` and :func:`diagonal_fisher` are the loop's EWC
regulariser (elastic weight consolidation, pulling later rounds toward round
0), not an attribution method.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import InputError
from ..lm.sample import SamplingConfig, sample_continuations
from ..lm.tasks import mean_text_nll, pad_right
from ..progress import Progress

Regulariser = Callable[[nn.Module], Tensor]
SCHEDULES = ("constant", "linear")


class LanguageModel:
    """A causal LM, its tokenizer, and the names of the parameters it trains
    (all of them, or only LoRA adapters)."""

    def __init__(self, model: nn.Module, tokenizer: Any, max_length: int = 96):
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        if tokenizer.eos_token_id is None:
            raise InputError("tokenizer: needs an eos token (texts are trained as text + eos)")
        self.eos_id = int(tokenizer.eos_token_id)
        self.pad_id = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else self.eos_id

    # -- parameters ---------------------------------------------------------------------------------
    def trainable(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def trainable_state(self) -> dict[str, Tensor]:
        """Copies of the trained parameters (what a checkpoint holds)."""
        return {n: p.detach().clone().contiguous() for n, p in self.trainable().items()}

    def load_trainable_state(self, state: dict[str, Tensor]) -> None:
        params = self.trainable()
        if set(state) != set(params):
            raise InputError(
                f"state: keys differ from the model's trainable parameters (missing {sorted(set(params) - set(state))[:5]}, "
                f"unexpected {sorted(set(state) - set(params))[:5]})"
            )
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(state[n])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- tokens -------------------------------------------------------------------------------------
    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each ``text + eos``, cut to ``max_length``."""
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [(list(x) + [self.eos_id])[: self.max_length] for x in ids]

    def _pad(self, seqs: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
        ids, mask = pad_right(seqs, self.pad_id)
        return ids.to(self.device), mask.to(self.device)

    def token_nll(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Per-example mean next-token NLL (nats/token) of right-padded batches."""
        return mean_text_nll(self.model, ids, mask)

    # -- scoring ------------------------------------------------------------------------------------
    @torch.no_grad()
    def nll(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Mean next-token NLL of each text (nats per token), float64."""
        self.model.eval()
        seqs = self.encode(texts)
        out = []
        for a in range(0, len(seqs), batch_size):
            ids, mask = self._pad(seqs[a : a + batch_size])
            out.append(self.token_nll(ids, mask).double().cpu())
        return torch.cat(out).numpy() if out else np.zeros(0)

    @torch.no_grad()
    def hidden(self, texts: Sequence[str], layer: int = -1, batch_size: int = 64) -> np.ndarray:
        """Mean-pooled hidden state of ``layer`` over each text's tokens, [n, d] float64."""
        self.model.eval()
        seqs = [s[:-1] or s for s in self.encode(texts)]  # the text itself, without eos
        out = []
        for a in range(0, len(seqs), batch_size):
            ids, mask = self._pad(seqs[a : a + batch_size])
            states = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
            h = states[layer].double()
            m = mask.unsqueeze(-1).double()
            out.append(((h * m).sum(1) / m.sum(1)).cpu())
        return torch.cat(out).numpy()

    # -- training -----------------------------------------------------------------------------------
    def train(
        self,
        texts: Sequence[str],
        *,
        steps: int,
        batch_size: int,
        lr: float,
        generator: torch.Generator,
        regulariser: Regulariser | None = None,
        on_step: Callable[[int, float], None] | None = None,
        bar: Progress | None = None,
        schedule: str = "constant",
    ) -> list[float]:
        """``steps`` AdamW steps on mini-batches drawn without replacement
        (reshuffled each epoch) from ``texts``; returns the loss of each step.

        ``regulariser(model)`` is added to the loss (e.g. an EWC penalty);
        ``on_step(step, lr)`` runs after each step (1-based) with the
        learning rate that step used, e.g. to save a checkpoint.
        ``schedule``: ``"constant"``, or ``"linear"`` decay from ``lr`` at
        step 1 to ``lr / steps`` at the last step (the end of a round then
        averages over more data, so rounds are less noisy).
        """
        if schedule not in SCHEDULES:
            raise InputError(f"train.schedule must be one of {SCHEDULES}; got {schedule!r}")
        if not texts:
            raise InputError("train: the round's training set is empty (did curation reject everything?)")
        seqs = self.encode(texts)
        params = list(self.trainable().values())
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        self.model.eval()  # no dropout: it would draw from the global RNG
        order: list[int] = []
        losses = []
        for step in range(1, steps + 1):
            if len(order) < batch_size:
                order += torch.randperm(len(seqs), generator=generator).tolist()
            take, order = order[:batch_size], order[batch_size:]
            ids, mask = self._pad([seqs[i] for i in take])
            rate = lr if schedule == "constant" else lr * (steps - step + 1) / steps
            for group in opt.param_groups:
                group["lr"] = rate
            loss = self.token_nll(ids, mask).mean()
            total = loss + regulariser(self.model) if regulariser is not None else loss
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                raise InputError(f"train: the loss became {losses[-1]} at step {step}; lower train.lr (now {rate})")
            if on_step is not None:
                on_step(step, rate)
            if bar is not None:
                bar.advance(1)
        opt.zero_grad(set_to_none=True)
        return losses

    # -- sampling -----------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        *,
        n_per_prompt: int,
        max_new_tokens: int,
        generator: torch.Generator,
        temperature: float = 1.0,
        top_p: float = 1.0,
        batch_size: int = 128,
    ) -> list[tuple[int, str]]:
        """``n_per_prompt`` samples for each prompt, as ``(prompt index, prompt
        + continuation)`` in prompt order. Sampling stops at eos.

        Prompts of equal token length are sampled together (no padding, so no
        position-id subtleties); tokens are drawn with ``generator``.
        """
        if temperature <= 0:  # the shared sampler would decode greedily; the loop samples
            raise InputError(f"generation.temperature must be > 0; got {temperature!r}")
        self.model.eval()
        config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, batch_size=batch_size)
        return sample_continuations(self.model, self.tokenizer, prompts, n_per_prompt, config, generator, self.eos_id)


def ewc_penalty(anchor: dict[str, Tensor], fisher: dict[str, Tensor], strength: float) -> Regulariser:
    """``strength / 2 * sum_i F_i (theta_i - theta0_i)^2`` over the trained
    parameters (Kirkpatrick et al., 2017), pulling the model toward round 0:
    the EWC regulariser of the loop's training, not an attribution method."""

    def penalty(model: nn.Module) -> Tensor:
        total = None
        for name, p in model.named_parameters():
            if name in anchor:
                term = (fisher[name] * (p - anchor[name]) ** 2).sum()
                total = term if total is None else total + term
        if total is None:
            raise InputError("ewc: none of the anchored parameters is in the model")
        return 0.5 * strength * total

    return penalty


def diagonal_fisher(lm: LanguageModel, texts: Sequence[str]) -> dict[str, Tensor]:
    """Empirical diagonal Fisher: the mean over ``texts`` of each trained
    parameter's squared per-example loss gradient (one backward per text);
    the weights of :func:`ewc_penalty`."""
    params = lm.trainable()
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    lm.model.eval()
    for seq in lm.encode(texts):
        ids, mask = lm._pad([seq])
        lm.model.zero_grad(set_to_none=True)
        lm.token_nll(ids, mask).sum().backward()
        for n, p in params.items():
            if p.grad is not None:
                fisher[n] += p.grad.detach() ** 2
    lm.model.zero_grad(set_to_none=True)
    return {n: f / max(len(texts), 1) for n, f in fisher.items()}


def checkpoint_state(lm: LanguageModel) -> dict[str, Tensor]:
    """What a checkpoint of the loop holds: the full state dict when every
    parameter trains (loadable with :func:`gradtrace.load_checkpoint`), else
    only the trained (adapter) parameters."""
    if all(p.requires_grad for p in lm.model.parameters()):
        return {k: v.detach().clone().contiguous() for k, v in lm.model.state_dict().items()}
    return lm.trainable_state()


def load_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load a :func:`checkpoint_state` into ``model``: strict for a full state
    dict; for an adapter state, every key must exist with the same shape."""
    own = model.state_dict()
    missing = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or wrong:
        raise InputError(f"checkpoint does not fit the model: unknown keys {missing[:5]}, wrong shapes {wrong[:5]}")
    model.load_state_dict(state, strict=len(state) == len(own))
