"""Computing gradient features of a range of examples at one checkpoint.

The one place both sides of gradtrace compute features: :func:`gradtrace.featurize`
(the write side: training examples into the store) and
:class:`gradtrace.Attributor` (the read side: query features). The two meet
only in the store; neither imports the other.

* :func:`compute_shard`: feature rows and norms of examples ``start:stop``.
* :func:`restored`: give a model back with the weights and mode it came with.
* :func:`model_fingerprint`: the architecture's hash, recorded in a store.
* :func:`default_loader`: the checkpoint loader every entry point uses when
  the caller gives none (``torch.load(weights_only=...)`` through
  :func:`gradtrace.checkpoints.load_checkpoint`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from ..checkpoints import CheckpointRef, load_checkpoint
from ..data import ExampleSource
from ..errors import InputError
from ..progress import Progress
from .per_example import GradientFeaturizer, PerExampleFn

CheckpointLoader = Callable[[nn.Module, CheckpointRef], Any]


def default_loader(weights_only: bool = True) -> CheckpointLoader:
    """Load a checkpoint's state dict into the model, strictly (see
    :func:`gradtrace.checkpoints.load_checkpoint`). ``weights_only=False``
    unpickles arbitrary objects: only for files you trust."""

    def load(model: nn.Module, ref: CheckpointRef) -> Any:
        return load_checkpoint(model, ref, weights_only=weights_only)

    return load


def resolve_loader(checkpoint_loader: CheckpointLoader | None, weights_only: bool = True) -> CheckpointLoader:
    """The caller's loader, or :func:`default_loader`."""
    return checkpoint_loader if checkpoint_loader is not None else default_loader(weights_only)


@contextlib.contextmanager
def restored(model: nn.Module) -> Iterator[nn.Module]:
    """Give the model back with the weights and mode it came with."""
    state = copy.deepcopy(model.state_dict())
    training = model.training
    try:
        yield model
    finally:
        model.load_state_dict(state)
        model.train(training)


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of the architecture: parameter names, shapes and dtypes."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype};".encode())
    return h.hexdigest()


def compute_shard(
    model: nn.Module, fn: PerExampleFn, featurizer: GradientFeaturizer, source: ExampleSource,
    start: int, stop: int, *, batch_size: int, normalise: bool, dtype: str | np.dtype,
    bar: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows (``dtype``) and float64 ``[row norm, exact squared
    gradient norm]`` for examples ``start:stop`` of ``source``, ``batch_size``
    at a time.

    With ``normalise`` rows are scaled to unit norm and the first norm column
    is the projected norm; without (factored features) rows are kept as they
    are and the first column is the exact gradient norm.
    """
    rows, norms = [], []
    for a in range(start, stop, batch_size):
        b = min(a + batch_size, stop)
        fb = featurizer(model, fn, source.batch(a, b))
        if fb.features.shape[0] != b - a:
            raise InputError(f"the per-example function returned {fb.features.shape[0]} values for a batch of {b - a}")
        feats = fb.features.detach()
        sq = fb.sqnorms.detach().to(torch.float64)
        if normalise:
            proj = feats.to(torch.float64).norm(dim=1)
            scale = torch.where(proj > 0, 1.0 / proj.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
            feats = feats * scale.to(feats.dtype)[:, None]
        else:
            proj = sq.sqrt()
        rows.append(feats.cpu().numpy().astype(dtype, copy=False))
        norms.append(torch.stack([proj, sq], dim=1).cpu().numpy())
        if bar is not None:
            bar.advance(b - a)
    return np.concatenate(rows), np.concatenate(norms)
