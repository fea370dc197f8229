"""Per-token log-probabilities of completions under a causal LM, batched,
with progress and an on-disk cache that resumes.

:func:`completion_logprobs` gives, for each ``{"prompt", "completion"}``
example, the log-probability of every completion token given the prompt and
the completion's earlier tokens, tokenized by :class:`~gradtrace.lm.tasks.CausalLMTask`
(the same tokens and masking as its summed NLL: their sum is
``-task.per_example_loss``). With ``cache`` (a JSONL file), each finished
batch is appended as it is done, so an interrupted run resumes at the first
missing batch and a rerun computes nothing; the caller keys the file by the
model and the settings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..data import read_jsonl_objects
from ..errors import InputError
from ..progress import progress_bar
from .tasks import IGNORE, CausalLMTask, next_token_nll


@torch.no_grad()
def completion_logprobs(model: Any, task: CausalLMTask, examples: Sequence[Mapping[str, Any]], *, batch_size: int = 8,
                        progress: bool = False, description: str = "log-probabilities",
                        cache: str | Path | None = None) -> list[np.ndarray]:
    """One float64 array per example: ``log p(token | prompt, earlier tokens)`` of each completion token."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer; got {batch_size!r}")
    examples = list(examples)
    batches = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
    done: dict[int, list[list[float]]] = {}
    path = Path(cache) if cache is not None else None
    if path is not None and path.is_file():
        for rec in read_jsonl_objects(path):
            b = int(rec["batch"])
            if b < len(batches) and rec.get("size") == len(batches[b]):
                done[b] = rec["lps"]
    was_training = model.training
    model.eval()
    try:
        with progress_bar(description, len(examples), progress) as bar:
            bar.advance(sum(len(batches[b]) for b in done))
            for b, batch in enumerate(batches):
                if b in done:
                    continue
                done[b] = _batch_logprobs(model, task, batch)
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with path.open("a", encoding="utf-8") as fh:
                        fh.write(json.dumps({"batch": b, "size": len(batch), "lps": done[b]}) + "\n")
                bar.advance(len(batch))
    finally:
        model.train(was_training)
    return [np.asarray(lp, dtype=np.float64) for b in range(len(batches)) for lp in done[b]]


def _batch_logprobs(model: Any, task: CausalLMTask, batch: list[Mapping[str, Any]]) -> list[list[float]]:
    enc = task.collate(list(batch))
    device = next(model.parameters()).device
    logits = model(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device)).logits
    nll = next_token_nll(logits, enc["labels"].to(device)).double().cpu()
    keep = enc["labels"][:, 1:] != IGNORE
    return [(-nll[i][keep[i]]).tolist() for i in range(nll.shape[0])]
