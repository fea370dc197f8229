"""Hugging Face causal language models as gradtrace behaviours.

The task, :class:`CausalLMTask` (summed completion NLL of prompt/completion
or chat examples), lives in :mod:`gradtrace.lm.tasks` and is importable from
here. Queries for the preference-margin behaviour are ``{"prompt", "chosen",
"rejected"}`` dicts; :meth:`CausalLMTask.collate` turns them into a pair of
batches.

Everything works on stock ``transformers`` models (forward hooks on
``nn.Linear``, not ``vmap``): LoRA adapters from PEFT are ``nn.Linear``
layers, so their per-example gradients come from one forward and backward
pass, and the Kronecker projection never builds a per-example gradient.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

from torch import Tensor, nn

from ..errors import InputError
from ..lm.tasks import IGNORE, CausalLMTask, completion_nll, tokenizer_fingerprint  # noqa: F401 - public here too


@dataclasses.dataclass(frozen=True)
class CompletionLogProbBehaviour:
    """log p(completion | prompt), summed over completion tokens (higher:
    the model is more likely to say it). Queries are prompt/completion dicts."""

    direction: str = "increase"

    def __call__(self, model: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
        if "chosen" in batch:
            raise InputError("the logprob behaviour takes prompt/completion queries; got preference pairs (use 'margin')")
        return -completion_nll(model, batch)


@dataclasses.dataclass(frozen=True)
class PreferenceMarginBehaviour:
    """``log p(chosen | prompt) - rejected_weight * log p(rejected | prompt)``:
    how much the model prefers ``chosen``. Queries are ``{"prompt", "chosen",
    "rejected"}`` dicts; put the unwanted answer as ``chosen`` to trace what
    taught the model to prefer it.

    ``rejected_weight=1`` is the plain preference margin: words the two
    answers share cancel, which leaves a small gradient that examples of
    unrelated topics can drown. ``0`` is the log-probability of ``chosen``
    alone, whose proponents include examples that merely share its words.
    ``0.5`` (the ``contrast`` behaviour) keeps both signals: a proponent must
    raise the unwanted answer and its lead over the other one."""

    direction: str = "increase"
    rejected_weight: float = 1.0

    def __post_init__(self) -> None:
        w = self.rejected_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 <= float(w) <= 1.0:
            raise InputError(f"rejected_weight must be a number in [0, 1]; got {w!r}")

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> Tensor:
        if "chosen" not in batch or "rejected" not in batch:
            raise InputError("the margin behaviour needs queries with 'prompt', 'chosen' and 'rejected'")
        chosen = -completion_nll(model, batch["chosen"])
        if self.rejected_weight == 0:
            return chosen
        return chosen + self.rejected_weight * completion_nll(model, batch["rejected"])


@dataclasses.dataclass(frozen=True)
class CompletionLossBehaviour:
    """The summed completion NLL on a query pair (a loss: a proponent lowers it)."""

    direction: str = "decrease"

    def __call__(self, model: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
        if "chosen" in batch:
            raise InputError("the loss behaviour takes prompt/completion queries; got preference pairs (use 'margin')")
        return completion_nll(model, batch)


BEHAVIOURS = {
    "logprob": CompletionLogProbBehaviour,
    "margin": PreferenceMarginBehaviour,
    "contrast": functools.partial(PreferenceMarginBehaviour, rejected_weight=0.5),
    "loss": CompletionLossBehaviour,
}


def behaviour_by_name(name: str) -> Any:
    """The built-in LM behaviour called ``name`` (logprob, margin, contrast or loss)."""
    if name not in BEHAVIOURS:
        raise InputError(f"behaviour must be one of {sorted(BEHAVIOURS)}; got {name!r}")
    return BEHAVIOURS[name]()


def lora_selection(model: nn.Module) -> tuple[str, ...] | str:
    """The default parameter selection: the adapter weights of a PEFT model
    (parameters named ``lora_``), else ``"all"`` (every parameter that
    requires grad)."""
    names = [n for n, _ in model.named_parameters() if "lora_" in n]
    if names and _is_peft(model):
        return ("*lora_*",)
    return "all"


def _is_peft(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)
