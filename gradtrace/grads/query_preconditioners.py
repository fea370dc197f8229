"""Preconditioners of TracIn's inner product, beyond unit norm (cosine).

* Adam: a run trained with Adam moves along ``g / (sqrt(v_hat) + eps)``, not
  ``g``; the matching influence is ``lr * <g(q), g(z) / (sqrt(v_hat)+eps)>``
  (as in LESS, Xia et al. 2024). :func:`adam_diagonal` (in :mod:`.adam`) reads the diagonal
  ``1 / (sqrt(v_hat) + eps)`` from a ``torch.optim.Adam``/``AdamW`` state
  dict, flattened in the order of the selected parameters. Because it is
  diagonal (symmetric), it can be applied on the query side, before the
  projection: stored training features need not change.
* Projected Fisher: ``F = G^T G / n + lambda I`` on the stored projected
  training gradients ``G`` of a checkpoint; the influence ``q^T F^{-1} g`` is
  an influence-function estimate in the projected space.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError
from .adam import adam_diagonal

__all__ = ["adam_diagonal", "fisher_inverse"]


def fisher_inverse(gram: Tensor, n: int, lam: float) -> Tensor:
    """``(gram / n + lam I)^{-1}`` in float64, where ``gram = G^T G`` sums the
    outer products of ``n`` projected gradients (accumulated shard by shard)."""
    if not lam > 0:
        raise InputError(f"fisher lambda must be positive; got {lam!r}")
    if n < 1:
        raise InputError(f"fisher_inverse: need at least one training gradient; got n={n!r}")
    k = gram.shape[0]
    fisher = gram.to(torch.float64) / n + lam * torch.eye(k, dtype=torch.float64)
    return torch.cholesky_inverse(torch.linalg.cholesky(fisher))
