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
from torch.utils._pytree import tree_flatten

from ..checkpoints import CheckpointRef, load_checkpoint
from ..data import ExampleSource
from ..devices import Placement
from ..errors import InputError
from ..progress import Progress
from ..task import ExampleError
from .per_example import FeatureBatch, GradientFeaturizer, PerExampleFn

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


NonFiniteHandler = Callable[[int, str], None]
"""Called as ``handler(index, problem)`` for an example whose value or gradient
is not finite (``index``: its position in the source; ``problem``: what is not
finite, e.g. ``"non-finite loss (nan)"``). It raises to stop; if it returns,
the example's feature row and norms are written as zeros."""


def compute_shard(
    model: nn.Module, fn: PerExampleFn, featurizer: GradientFeaturizer, source: ExampleSource,
    start: int, stop: int, *, batch_size: int, normalise: bool, dtype: str | np.dtype,
    bar: Progress | None = None, on_nonfinite: NonFiniteHandler | None = None,
    what: str = "data", value_name: str = "loss", placement: Placement | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows (``dtype``) and float64 ``[row norm, exact squared
    gradient norm]`` for examples ``start:stop`` of ``source``, ``batch_size``
    at a time.

    With ``normalise`` rows are scaled to unit norm and the first norm column
    is the projected norm; without (factored features) rows are kept as they
    are and the first column is the exact gradient norm.

    Every example's value of ``fn`` (its ``value_name``) and gradient are
    checked to be finite; ``on_nonfinite`` decides what happens to one that
    is not (default: an :class:`InputError` naming ``what`` and the index).
    A ``RuntimeError`` of the model on the first batch (a shape or dtype the
    model cannot take) is an :class:`InputError` naming ``what``, the
    examples and torch's message.

    ``placement``: each batch is moved to its device (and its floating-point
    tensors cast to its dtype) before the model sees it; the model must
    already be there (``with placement.model(model)``). Rows and norms come
    back to the host.
    """
    handler = on_nonfinite or _refuse_nonfinite(what)
    rows, norms = [], []
    for a in range(start, stop, batch_size):
        b = min(a + batch_size, stop)
        batch = source.batch(a, b)
        if placement is not None:
            batch = placement.batch(batch)
        with input_errors(what, a, b, batch, model, first=a == start):
            fb = featurizer(model, fn, batch)
        if fb.features.shape[0] != b - a:
            raise InputError(f"the per-example function returned {fb.features.shape[0]} values for a batch of {b - a}")
        feats = fb.features.detach()
        sq = fb.sqnorms.detach().to(torch.float64)
        keep = _finite_or_handled(fb, feats, sq, a, handler, value_name)
        if keep is not None:
            feats = torch.where(keep[:, None], feats, torch.zeros((), dtype=feats.dtype, device=feats.device))
            sq = torch.where(keep, sq, torch.zeros((), dtype=sq.dtype, device=sq.device))
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


def _refuse_nonfinite(what: str) -> NonFiniteHandler:
    def refuse(index: int, problem: str) -> None:
        raise InputError(f"{what}: example {index} has a {problem}; gradtrace refuses non-finite values")

    return refuse


def _finite_or_handled(
    fb: FeatureBatch, feats: torch.Tensor, sq: torch.Tensor, offset: int, handler: NonFiniteHandler, value_name: str,
) -> torch.Tensor | None:
    """None when every example of the batch is finite; else hands each one
    that is not to ``handler`` and returns the mask of the examples to keep."""
    finite_value = torch.isfinite(fb.values.detach()) if fb.values is not None else torch.ones_like(sq, dtype=torch.bool)
    finite = finite_value & torch.isfinite(sq) & torch.isfinite(feats).all(dim=1)
    if bool(finite.all()):
        return None
    for i in (~finite).nonzero().flatten().tolist():
        if not finite_value[i]:
            handler(offset + i, f"non-finite {value_name} ({float(fb.values[i])})")  # type: ignore[index]
        else:
            handler(offset + i, f"non-finite gradient (squared norm {float(sq[i])})")
    return finite


@contextlib.contextmanager
def input_errors(what: str, a: int, b: int, batch: Any, model: nn.Module, *, first: bool) -> Iterator[None]:
    """Errors of computing on examples ``a:b`` of ``what`` in the user's terms:
    an :class:`~gradtrace.task.ExampleError` names the example's position in
    ``what``; a ``RuntimeError`` of the model on the ``first`` batch (a shape
    or dtype it cannot take) becomes an :class:`InputError` naming the
    examples and torch's message (later ones, and out-of-memory, pass through)."""
    try:
        yield
    except ExampleError as exc:
        raise InputError(f"{what}: example {a + exc.index} {exc.problem}") from None
    except RuntimeError as exc:
        if not first or isinstance(exc, torch.cuda.OutOfMemoryError):
            raise
        raise InputError(_model_failure(what, a, b, batch, model, exc)) from exc


def _model_failure(what: str, a: int, b: int, batch: Any, model: nn.Module, exc: RuntimeError) -> str:
    """Why the model could not take a batch, in the user's terms."""
    param_dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    inputs = {t.dtype for t in tree_flatten(batch)[0] if isinstance(t, torch.Tensor) and t.is_floating_point()}
    other = sorted(str(d) for d in inputs - param_dtypes)
    if other and len(param_dtypes) == 1:
        want = str(next(iter(param_dtypes)))
        return (
            f"{what}: examples {a}-{b - 1} hold {', '.join(other)} tensors but the model's parameters are {want}; "
            f"convert the data (e.g. x.to({want})) or the model (torch: {exc})"
        )
    return (
        f"{what}: the model failed on examples {a}-{b - 1} ({type(exc).__name__}: {exc}); "
        "check that the examples have the shape and dtype the model expects"
    )
