"""Computing gradient features of a range of examples at one checkpoint.

The one place both sides of gradtrace compute features: :func:`gradtrace.featurize`
(the write side: training examples into the store) and
:class:`gradtrace.Attributor` (the read side: query features). The two meet
only in the store; neither imports the other.

* :func:`compute_shard`: feature rows and norms of examples ``start:stop``
  (:func:`batch_plan`: the batches it computes them in).
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
from typing import Any, Callable, Iterator, Sequence

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
    lengths: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows (``dtype``) and float64 ``[row norm, exact squared
    gradient norm]`` for examples ``start:stop`` of ``source``, ``batch_size``
    at a time.

    With ``normalise`` rows are scaled to unit norm and the first norm column
    is the projected norm; without (factored features) rows are kept as they
    are and the first column is the exact gradient norm. The second column
    is zeros when ``featurizer.exact_norms`` is False.

    ``lengths`` (one per example of ``start:stop``, e.g. tokens): batch the
    examples longest first (ties in source order) instead of in source order,
    so that batches pad little; rows and norms come back in source order
    either way (see :func:`batch_plan`).

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
    rows: np.ndarray | None = None
    norms = np.zeros((stop - start, 2), dtype=np.float64)
    for n_batch, positions in enumerate(batch_plan(start, stop, batch_size, lengths)):
        if isinstance(positions, range):  # consecutive examples: the source's own slicing, as always
            batch = source.batch(positions.start, positions.stop)
        else:
            batch = source.gather(positions)
        if placement is not None:
            batch = placement.batch(batch)
        with input_errors(what, positions[0], positions[-1] + 1, batch, model, first=n_batch == 0, indices=positions):
            fb = featurizer(model, fn, batch)
        if fb.features.shape[0] != len(positions):
            raise InputError(f"the per-example function returned {fb.features.shape[0]} values for a batch of {len(positions)}")
        feats = fb.features.detach()
        sq = None if fb.sqnorms is None else fb.sqnorms.detach().to(torch.float64)
        keep = _finite_or_handled(fb, feats, sq, positions, handler, value_name)
        if keep is not None:
            feats = torch.where(keep[:, None], feats, torch.zeros((), dtype=feats.dtype, device=feats.device))
            if sq is not None:
                sq = torch.where(keep, sq, torch.zeros((), dtype=sq.dtype, device=sq.device))
        if not featurizer.exact_norms:
            sq = None  # not kept: the column stays zeros, whatever the path computed on the way
        if normalise:
            proj = feats.to(torch.float64).norm(dim=1)
            scale = torch.where(proj > 0, 1.0 / proj.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
            feats = feats * scale.to(feats.dtype)[:, None]
        else:
            if sq is None:
                raise InputError("unnormalised (factored) rows need their exact squared norms; the featurizer skipped them")
            proj = sq.sqrt()
        block = feats.cpu().numpy().astype(dtype, copy=False)
        if rows is None:
            rows = np.empty((stop - start, block.shape[1]), dtype=block.dtype)
        at = slice(positions.start - start, positions.stop - start) if isinstance(positions, range) else np.asarray(positions) - start
        rows[at] = block
        norms[at, 0] = proj.cpu().numpy()
        if sq is not None:
            norms[at, 1] = sq.cpu().numpy()
        if bar is not None:
            bar.advance(len(positions))
    if rows is None:
        raise InputError(f"{what}: no examples in {start}-{stop}")
    return rows, norms


def batch_plan(start: int, stop: int, batch_size: int, lengths: Sequence[int] | None = None) -> list[range | list[int]]:
    """The batches (positions in the source) that :func:`compute_shard`
    computes examples ``start:stop`` in: consecutive ranges of ``batch_size``
    without ``lengths``; with them (one per example), the examples sorted by
    length, longest first, ties in source order, ``batch_size`` at a time. A
    plan with ``lengths`` depends on the lengths alone, so the same data
    gives the same batches (and the same bytes) on every run."""
    if lengths is None:
        return [range(a, min(a + batch_size, stop)) for a in range(start, stop, batch_size)]
    if len(lengths) != stop - start:
        raise InputError(f"lengths: need one per example of {start}-{stop} ({stop - start}); got {len(lengths)}")
    order = sorted(range(stop - start), key=lambda i: (-int(lengths[i]), i))
    return [[start + i for i in order[k : k + batch_size]] for k in range(0, stop - start, batch_size)]


def _refuse_nonfinite(what: str) -> NonFiniteHandler:
    def refuse(index: int, problem: str) -> None:
        raise InputError(f"{what}: example {index} has a {problem}; gradtrace refuses non-finite values")

    return refuse


def _finite_or_handled(
    fb: FeatureBatch, feats: torch.Tensor, sq: torch.Tensor | None, positions: Sequence[int], handler: NonFiniteHandler,
    value_name: str,
) -> torch.Tensor | None:
    """None when every example of the batch is finite; else hands each one
    that is not to ``handler`` (with its position in the source) and returns
    the mask of the examples to keep."""
    finite = torch.isfinite(feats).all(dim=1)
    finite_value = torch.isfinite(fb.values.detach()) if fb.values is not None else torch.ones_like(finite)
    finite = finite & finite_value
    if sq is not None:
        finite = finite & torch.isfinite(sq)
    if bool(finite.all()):
        return None
    for i in (~finite).nonzero().flatten().tolist():
        if not finite_value[i]:
            handler(positions[i], f"non-finite {value_name} ({float(fb.values[i])})")  # type: ignore[index]
        elif sq is not None and not torch.isfinite(sq[i]):
            handler(positions[i], f"non-finite gradient (squared norm {float(sq[i])})")
        else:
            handler(positions[i], "non-finite gradient (its projected features are not finite)")
    return finite


@contextlib.contextmanager
def input_errors(
    what: str, a: int, b: int, batch: Any, model: nn.Module, *, first: bool, indices: Sequence[int] | None = None,
) -> Iterator[None]:
    """Errors of computing on examples ``a:b`` of ``what`` (or, given
    ``indices``, on those positions, in batch order) in the user's terms:
    an :class:`~gradtrace.task.ExampleError` names the example's position in
    ``what``; a ``RuntimeError`` of the model on the ``first`` batch (a shape
    or dtype it cannot take) becomes an :class:`InputError` naming the
    examples and torch's message (later ones, and out-of-memory, pass through)."""
    positions = range(a, b) if indices is None else indices
    try:
        yield
    except ExampleError as exc:
        raise InputError(f"{what}: example {positions[exc.index]} {exc.problem}") from None
    except RuntimeError as exc:
        if not first or isinstance(exc, torch.cuda.OutOfMemoryError):
            raise
        raise InputError(_model_failure(what, positions, batch, model, exc)) from exc


def _examples(positions: Sequence[int]) -> str:
    """``examples 3-7``, or ``examples 9, 2, 14, ...`` for positions that are not consecutive."""
    if isinstance(positions, range) or list(positions) == list(range(positions[0], positions[0] + len(positions))):
        return f"examples {positions[0]}-{positions[-1]}"
    shown = ", ".join(str(i) for i in list(positions)[:8])
    return f"examples {shown}{', ...' if len(positions) > 8 else ''}"


def _model_failure(what: str, positions: Sequence[int], batch: Any, model: nn.Module, exc: RuntimeError) -> str:
    """Why the model could not take a batch, in the user's terms."""
    param_dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    inputs = {t.dtype for t in tree_flatten(batch)[0] if isinstance(t, torch.Tensor) and t.is_floating_point()}
    other = sorted(str(d) for d in inputs - param_dtypes)
    if other and len(param_dtypes) == 1:
        want = str(next(iter(param_dtypes)))
        return (
            f"{what}: {_examples(positions)} hold {', '.join(other)} tensors but the model's parameters are {want}; "
            f"convert the data (e.g. x.to({want})) or the model (torch: {exc})"
        )
    return (
        f"{what}: the model failed on {_examples(positions)} ({type(exc).__name__}: {exc}); "
        "check that the examples have the shape and dtype the model expects"
    )
