"""Self-influence straight from checkpoints, with no store.

When all a user wants is the ranking of training examples by self-influence
(``sum_c lr_c * |g_c(z)|^2``: mislabelled, poisoned and atypical examples
first), nothing needs to be kept: each checkpoint contributes one exact
squared gradient norm per example. For linear layers the norm comes from the
layer's input and output gradient, so no per-example gradient is built. Use
:func:`gradtrace.featurize` instead when the same run will also be queried.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..checkpoints import CheckpointRef, checkpoints_from_list
from ..configbase import positive_int
from ..data import as_source
from ..errors import InputError
from ..grads.compute import CheckpointLoader, input_errors, resolve_loader, restored
from ..grads.per_example import GradientFeaturizer
from ..grads.projection import ProjectionConfig
from ..grads.selection import Selection, select_parameters
from ..progress import progress_bar
from ..task import Task, check_task


def self_influence_from_checkpoints(
    model: nn.Module,
    task: Task,
    checkpoints: Sequence[CheckpointRef | tuple[str | Path, float]],
    data: Any,
    *,
    params: Selection = "all",
    method: str = "auto",
    batch_size: int = 1024,
    checkpoint_loader: CheckpointLoader | None = None,
    weights_only: bool = True,
    progress: bool = True,
    on_nonfinite: str = "raise",
) -> np.ndarray:
    """Exact TracIn self-influence of every example of ``data`` (float64),
    equal to ``self_influence(featurize(...))`` with the same parameters but
    without writing a store. ``model``'s own weights are restored afterwards.

    An example whose gradient is not finite at a checkpoint is an
    :class:`InputError` naming it and the checkpoint (``on_nonfinite="raise"``),
    or (``"skip"``) reads 0, with a warning listing such examples."""
    positive_int(batch_size, "batch_size")
    if on_nonfinite not in ("raise", "skip"):
        raise InputError(f"on_nonfinite must be one of ('raise', 'skip'); got {on_nonfinite!r}")
    task = check_task(task)
    refs = checkpoints_from_list(checkpoints)
    source = as_source(data, collate=getattr(task, "collate", None))
    n = len(source)
    if n == 0:
        raise InputError("data: the training set is empty")
    featurizer = GradientFeaturizer(select_parameters(model, params), ProjectionConfig("none"), method)
    loader = resolve_loader(checkpoint_loader, weights_only)
    out = np.zeros(n, dtype=np.float64)
    skipped: dict[int, str] = {}
    with progress_bar("self-influence", n * len(refs), progress) as bar, restored(model):
        model.eval()
        for c, ref in enumerate(refs):
            loader(model, ref)
            for a in range(0, n, batch_size):
                b = min(a + batch_size, n)
                batch = source.batch(a, b)
                with input_errors("data", a, b, batch, model, first=a == 0):
                    sq = featurizer.sqnorms(model, task.per_example_loss, batch)
                if sq.shape != (b - a,):
                    raise InputError(f"the per-example loss returned shape {tuple(sq.shape)} for a batch of {b - a}")
                values = sq.to(torch.float64).cpu().numpy()
                for i in np.nonzero(~np.isfinite(values))[0].tolist():
                    where = f"example {a + i} of data has a non-finite gradient (squared norm {values[i]}) at checkpoint {c} ({ref.path!r})"
                    if on_nonfinite == "raise":
                        raise InputError(f"data: {where}; pass on_nonfinite='skip' to leave such examples out (they then read 0)")
                    skipped.setdefault(a + i, where)
                    values[i] = 0.0
                out[a:b] += ref.lr * values
                bar.advance(b - a)
    if skipped:
        out[list(skipped)] = 0.0
        first = "; ".join(list(skipped.values())[:3])
        warnings.warn(f"gradtrace: {len(skipped)} example(s) left out, reading 0: {first}", RuntimeWarning, stacklevel=2)
    return out
