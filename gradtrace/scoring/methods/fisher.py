"""``fisher``: ``sum_c lr_c q_c^T (G_c^T G_c / n + lambda_c I)^{-1} g_c(z)``.

``G_c`` are the stored projected training gradients of checkpoint ``c``;
``lambda_c = damping * trace(G_c^T G_c / n) / k`` (relative to the mean
eigenvalue, so one setting fits any gradient scale). An influence-function
estimate in the projected space. The inverse is fitted on the store by one
pass per checkpoint, the first time it is needed, and kept by the attributor.
Stored rows must be linear in the gradient: projections ``none`` and ``dense``.
"""

from __future__ import annotations

from typing import Any, MutableMapping

import numpy as np
import torch
from torch import Tensor

from ...errors import InputError
from .base import BlockScorer, MethodBase, QueryInputs, linear_scorer


class FisherMethod(MethodBase):
    name = "fisher"
    meaning = (
        "Projected-Fisher influence: sum over checkpoints of lr_c * q^T (G^T G / n + lambda I)^-1 g(z) on the "
        "stored projected gradients G, lambda = damping x their mean eigenvalue; same sign convention as raw. "
        "Discounts directions along which many training examples' gradients point."
    )
    projections = ("none", "dense")

    def __init__(self, damping: float = 0.1):
        if isinstance(damping, bool) or not isinstance(damping, (int, float)) or not damping > 0:
            raise InputError(f"fisher damping must be a positive number; got {damping!r}")
        self.damping = float(damping)

    def __repr__(self) -> str:
        return f"FisherMethod(damping={self.damping!r})"

    def prepare(self, store: Any, queries: QueryInputs, cache: MutableMapping[Any, Any]) -> BlockScorer:
        key = ("fisher", self.damping)
        if key not in cache:
            cache[key] = [self.fit(store, c) for c in range(len(queries.lrs))]
        qf = queries.features
        operands = []
        for u, n, lr, inverse in zip(qf.unit, qf.norms, queries.lrs, cache[key]):
            q = u.to(torch.float64) * n.to(torch.float64)[:, None]
            operands.append(((q @ inverse.to(q.device)) * lr).to(queries.compute))
        return linear_scorer(operands, queries.accumulate)

    def fit(self, store: Any, checkpoint: int) -> Tensor:
        """``(G^T G / n + lambda I)^{-1}`` of one checkpoint, float64."""
        n, k = store.n_examples, store.feature_dim
        gram = torch.zeros(k, k, dtype=torch.float64)
        for a, b in store.shard_ranges():
            g = stored_gradients(store, checkpoint, a, b)
            gram += g.T @ g
        lam = self.damping * float(torch.trace(gram)) / n / k
        return fisher_inverse(gram, n, lam if lam > 0 else self.damping)


def stored_gradients(store: Any, ckpt: int, a: int, b: int) -> Tensor:
    """Projected training gradients (unit rows times their norms), float64."""
    rows = torch.from_numpy(np.asarray(store.features(ckpt, a, b), dtype=np.float64))
    return rows * torch.from_numpy(np.asarray(store.norms(ckpt, a, b)[:, 0], dtype=np.float64))[:, None]


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
