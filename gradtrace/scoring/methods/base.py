"""What a score method is: the :class:`ScoreMethod` protocol and shared pieces.

A score method turns query features and stored training rows into TracIn-like
scores. The attributor streams the store and asks the method three things:

* **what it needs from the store** (:meth:`ScoreMethod.check`): the
  projection kinds it supports and any extra inputs (optimizer states, ...);
  an unsupported store raises :class:`~gradtrace.errors.InputError` naming
  the projection kind.
* **how queries are transformed**: before projection, per checkpoint
  (:meth:`ScoreMethod.query_transform`, when ``transforms_queries``: the query
  features must then be computed for this method, e.g. Adam's diagonal applied
  to the exact query gradient), and after (:meth:`ScoreMethod.prepare`: scale,
  normalise, precondition; may fit something on the store first, cached in
  the attributor).
* **how a block of rows of one checkpoint is scored**: ``prepare`` returns a
  :data:`BlockScorer` ``(checkpoint, rows, row_norms) -> [n_query, m]``
  scores, already weighted by the checkpoint's learning rate.

A new method is one file defining a class with these members (subclass
:class:`MethodBase` for the defaults) and one line registering an instance in
:mod:`gradtrace.scoring.methods`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, MutableMapping, Protocol, Sequence

import torch
from torch import Tensor, nn

from ...errors import InputError
from ...grads.per_example import GradTransform
from ...grads.projection import KINDS

if TYPE_CHECKING:
    from ...store.gradient_store import GradientStore
    from ..attributor import QueryFeatures

# (checkpoint index, stored rows [m, feature_dim] in the compute dtype, their
# norms [m] in the accumulate dtype) -> lr-weighted scores [n_query, m] in the
# accumulate dtype.
BlockScorer = Callable[[int, Tensor, Tensor], Tensor]


@dataclasses.dataclass(frozen=True)
class QueryInputs:
    """What :meth:`ScoreMethod.prepare` gets for one query set."""

    features: QueryFeatures  # rows (float64) and norms per checkpoint, as computed
    lrs: Sequence[float]  # learning rate per checkpoint
    layout: Sequence[tuple[int, int]]  # the store's factor layout (empty unless factored)
    compute: torch.dtype  # dtype the stored rows arrive in
    accumulate: torch.dtype  # dtype scores are returned in


class ScoreMethod(Protocol):
    """A way of scoring training rows against queries (module docstring)."""

    name: str  # the ``variant=`` name
    meaning: str  # what a score means, shown with results
    projections: tuple[str, ...]  # projection kinds of stores it can score
    transforms_queries: bool  # query features must be computed with query_transform
    supports_self_influence: bool  # score(z, z) of a training row means something (Attributor.self_influence)

    def check(self, store: GradientStore) -> None:
        """Raise InputError if this method cannot score ``store``."""

    def query_transform(self, model: nn.Module, checkpoint: int, param_names: list[str]) -> GradTransform | None:
        """Transform of exact query gradients at ``checkpoint`` (model loaded), or None."""

    def prepare(self, store: GradientStore, queries: QueryInputs, cache: MutableMapping[Any, Any]) -> BlockScorer:
        """The block scorer for these queries; ``cache`` lives as long as the attributor."""


class MethodBase:
    """Defaults for a :class:`ScoreMethod`: every projection kind, plain query
    gradients. Subclasses set ``name``, ``meaning`` and define ``prepare``."""

    name = ""
    meaning = ""
    projections: tuple[str, ...] = KINDS
    transforms_queries = False
    supports_self_influence = True

    def check(self, store: GradientStore) -> None:
        kind = store.settings.projection_kind
        if kind not in self.projections:
            raise InputError(
                f"variant {self.name!r} does not support projection kind {kind!r}; "
                f"it needs a store with projection {_either(self.projections)}"
            )

    def query_transform(self, model: nn.Module, checkpoint: int, param_names: list[str]) -> GradTransform | None:
        return None

    def prepare(self, store: GradientStore, queries: QueryInputs, cache: MutableMapping[Any, Any]) -> BlockScorer:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def factored_dots(q: Tensor, rows: Tensor, layout: Sequence[tuple[int, int]]) -> Tensor:
    """Exact gradient dot products of factored rows: per layer
    ``(x . x')(dy . dy')``, summed over layers (in the rows' dtype)."""
    dots = None
    at = 0
    for d_in, d_out in layout:
        part = q[:, at : at + d_in] @ rows[:, at : at + d_in].T
        part.mul_(q[:, at + d_in : at + d_in + d_out] @ rows[:, at + d_in : at + d_in + d_out].T)
        dots = part if dots is None else dots.add_(part)
        at += d_in + d_out
    if dots is None:
        raise InputError("the store's factor layout is empty; it holds no factored layer")
    return dots


def scaled_queries(queries: QueryInputs) -> list[Tensor]:
    """Per checkpoint, the query gradients times the learning rate
    (``unit * lr * norm``) in the compute dtype: lr and the norms scale the
    small query matrix, not the score block."""
    qf, compute, acc = queries.features, queries.compute, queries.accumulate
    out = []
    for u, n, lr in zip(qf.unit, qf.norms, queries.lrs):
        q = u.to(compute)
        out.append(q * (lr * n.to(acc)).to(compute)[:, None])
    return out


def linear_scorer(operands: Sequence[Tensor], accumulate: torch.dtype) -> BlockScorer:
    """Scores ``<operand_c, row * row_norm>``: for methods whose prepared
    query (lr included) is dotted with the stored gradient."""

    def score(c: int, rows: Tensor, norms: Tensor) -> Tensor:
        return (operands[c] @ rows.T).to(accumulate).mul_(norms[None, :])

    return score


def _either(kinds: Sequence[str]) -> str:
    names = [repr(k) for k in kinds]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
