"""``kfac``: influence with the K-FAC approximation of the Fisher, per linear layer::

    score(q, z) = sum_c w_c sum_layers vec(G_q)^T (A_c (x) S_c + lambda I)^{-1} vec(G_z)

``A_c``, ``S_c``: the layer's Kronecker factors fitted at checkpoint ``c``
(:mod:`gradtrace.scoring.factors`; ``gradtrace fit-factors STORE``), in the
store's space (projected with the store's Kronecker factors on a
``kronecker`` store, as LoGra does). With ``A = Q_A diag(a) Q_A^T`` and
``S = Q_S diag(s) Q_S^T`` the inverse is applied to the query in the
eigenbasis: ``Q_S [(Q_S^T G_q Q_A) / (s a^T + lambda)] Q_A^T``. ``lambda``
is ``damping x`` the mean eigenvalue of the layer (Kronfluence's heuristic;
default 0.1). ``w_c = lr_c`` over all checkpoints (TracIn's sum), or 1 for
the last one alone (``checkpoints="last"``: the classic influence function
at the final weights).

Stores: ``none`` and ``kronecker`` (the preconditioned query is a row of the
store's layout: one dot product per training row), and ``factored`` (the
preconditioned query is a full ``d_out x d_in`` matrix per layer, scored as
``dy_z^T M_q x_z``). A ``dense`` store mixes layers and cannot be served
(use ``fisher``). :mod:`.ekfac` is this with the eigenvalue correction.
"""

from __future__ import annotations

from typing import Any, MutableMapping

import torch
from torch import Tensor

from ...errors import InputError
from ..factors import KroneckerFactors, check_kronecker_store, layer_index, load_factors
from .base import BlockScorer, MethodBase, QueryInputs, linear_scorer


class KFACMethod(MethodBase):
    name = "kfac"
    meaning = (
        "K-FAC influence: sum over checkpoints of lr_c * grad behaviour(q)^T (A (x) S + lambda I)^-1 grad loss(z) per "
        "linear layer, A and S the fitted Kronecker factors of the Fisher (gradtrace fit-factors), lambda = "
        "damping x mean eigenvalue; same sign convention as raw. Discounts directions the training data moves along often."
    )
    projections = ("none", "factored", "kronecker")
    corrected = False
    supports_self_influence = True

    def __init__(self, damping: float = 0.1, *, checkpoints: str = "all", factors: str = "ekfac"):
        if isinstance(damping, bool) or not isinstance(damping, (int, float)) or not damping > 0:
            raise InputError(f"{self.name} damping must be a positive number; got {damping!r}")
        if checkpoints not in ("all", "last"):
            raise InputError(f"{self.name} checkpoints must be 'all' or 'last'; got {checkpoints!r}")
        self.damping = float(damping)
        self.checkpoints = checkpoints
        self.factors = factors

    def __repr__(self) -> str:
        return f"{type(self).__name__}(damping={self.damping!r}, checkpoints={self.checkpoints!r}, factors={self.factors!r})"

    def check(self, store: Any) -> None:
        check_kronecker_store(store, f"variant {self.name!r}")
        super().check(store)
        fitted = load_factors(store, self.factors)
        need = self.weights(store)
        missing = [c for c, w in enumerate(need) if w and c not in fitted.layers]
        if missing:
            raise InputError(
                f"variant {self.name!r} (checkpoints={self.checkpoints!r}) needs factors at checkpoints {missing}; the factors "
                f"{self.factors!r} of the store at {str(store.root)!r} cover {sorted(fitted.layers)}: fit them with "
                f"checkpoints='all', or use checkpoints='last'"
            )

    def weights(self, store: Any) -> list[float]:
        """The weight of each checkpoint: its learning rate, or 1 for the last alone."""
        lrs = [float(lr) for lr in store.learning_rates]
        if self.checkpoints == "last":
            return [0.0] * (len(lrs) - 1) + [1.0]
        return lrs

    def _fitted(self, store: Any, cache: MutableMapping[Any, Any]) -> KroneckerFactors:
        key = ("kronecker-factors", self.factors)
        if key not in cache:
            cache[key] = load_factors(store, self.factors)
        return cache[key]

    def inverse_eigenvalues(self, fitted: KroneckerFactors, c: int, layer: int) -> Tensor:
        """``1 / (Lambda + lambda)`` of one layer, ``[d_out, d_in]`` (float64)."""
        lam = fitted.layers[c][layer].eigenvalues(self.corrected)
        damp = self.damping * float(lam.mean())
        return 1.0 / (lam + (damp if damp > 0 else self.damping))

    def precondition(self, fitted: KroneckerFactors, c: int, layer: int, grads: Tensor) -> Tensor:
        """``(F + lambda I)^{-1}`` applied to gradients ``[n, d_out, d_in]`` of one layer (float64)."""
        lf = fitted.layers[c][layer]
        rotated = lf.q_s.T @ grads @ lf.q_a
        return lf.q_s @ (rotated * self.inverse_eigenvalues(fitted, c, layer)) @ lf.q_a.T

    def prepare(self, store: Any, queries: QueryInputs, cache: MutableMapping[Any, Any]) -> BlockScorer:
        fitted = self._fitted(store, cache)
        kind = store.settings.projection_kind
        layout = fitted.layout
        weights = self.weights(store)
        qf, acc, compute = queries.features, queries.accumulate, queries.compute
        device = qf.unit[0].device  # where the scan scores (the factors are applied on the host)
        if kind == "factored":
            return self._factored_scorer(fitted, queries, weights)
        indices = [layer_index(layer, kind) for layer in layout]
        operands: list[Tensor | None] = []
        for c, (u, n) in enumerate(zip(qf.unit, qf.norms)):
            if not weights[c]:
                operands.append(None)
                continue
            q = u.to(device="cpu", dtype=torch.float64) * n.to(device="cpu", dtype=torch.float64)[:, None]
            out = torch.zeros_like(q)
            for l, idx in enumerate(indices):
                out[:, idx.reshape(-1)] = self.precondition(fitted, c, l, q[:, idx]).reshape(q.shape[0], -1)
            operands.append((out * weights[c]).to(device=device, dtype=compute))
        linear = linear_scorer([o if o is not None else torch.zeros(0) for o in operands], acc)

        def score(c: int, rows: Tensor, norms: Tensor) -> Tensor:
            if operands[c] is None:
                return torch.zeros((qf.n, rows.shape[0]), dtype=acc, device=rows.device)
            return linear(c, rows, norms)

        return score

    def prepare_self(self, store: Any, cache: MutableMapping[Any, Any]) -> Any:
        """``(checkpoint, rows float64, norms) -> [m]``: each row's own score
        ``w_c vec(G_z)^T (F + lambda I)^{-1} vec(G_z)``, without the ``m x m``
        block (used by ``Attributor.self_influence``)."""
        fitted = self._fitted(store, cache)
        kind = store.settings.projection_kind
        weights = self.weights(store)
        layout = fitted.layout
        indices = None if kind == "factored" else [layer_index(layer, kind) for layer in layout]

        def score(c: int, rows: Tensor, norms: Tensor) -> Tensor:
            total = torch.zeros(rows.shape[0], dtype=torch.float64)
            if not weights[c]:
                return total
            if indices is None:
                # G = dy x^T is rank one: in the eigenbasis (Q_S^T dy)(Q_A^T x)^T, so the score is
                # sum_oi (Q_S^T dy)_o^2 (Q_A^T x)_i^2 / (Lambda + lambda)_oi, with no d_out x d_in matrix per row
                for l, layer in enumerate(layout):
                    at, d_in, d_out = int(layer["offset"]), int(layer["d_in"]), int(layer["d_out"])
                    lf = fitted.layers[c][l]
                    g2 = (rows[:, at + d_in : at + d_in + d_out] @ lf.q_s).pow_(2)
                    x2 = (rows[:, at : at + d_in] @ lf.q_a).pow_(2)
                    total += ((g2 @ self.inverse_eigenvalues(fitted, c, l)) * x2).sum(dim=1)
            else:
                q = rows * norms[:, None]
                for l, idx in enumerate(indices):
                    block = q[:, idx]
                    total += (self.precondition(fitted, c, l, block) * block).sum(dim=(1, 2))
            return total * weights[c]

        return score

    def _factored_scorer(self, fitted: KroneckerFactors, queries: QueryInputs, weights: list[float]) -> BlockScorer:
        """Factored rows ``[x | dy]`` per layer: score ``sum_l dy_z^T M_q x_z``."""
        qf, acc, compute = queries.features, queries.accumulate, queries.compute
        device = qf.unit[0].device
        layout = fitted.layout
        mats: list[list[Tensor] | None] = []
        for c, u in enumerate(qf.unit):
            if not weights[c]:
                mats.append(None)
                continue
            q = u.to(device="cpu", dtype=torch.float64)  # factored query rows are the factors themselves
            per_layer = []
            for l, layer in enumerate(layout):
                at, d_in, d_out = int(layer["offset"]), int(layer["d_in"]), int(layer["d_out"])
                grad = q[:, at + d_in : at + d_in + d_out, None] * q[:, None, at : at + d_in]
                per_layer.append((self.precondition(fitted, c, l, grad) * weights[c]).to(device=device, dtype=compute))
            mats.append(per_layer)

        def score(c: int, rows: Tensor, norms: Tensor) -> Tensor:
            if mats[c] is None:
                return torch.zeros((qf.n, rows.shape[0]), dtype=acc, device=rows.device)
            total = None
            for layer, m in zip(layout, mats[c]):
                at, d_in, d_out = int(layer["offset"]), int(layer["d_in"]), int(layer["d_out"])
                x, g = rows[:, at : at + d_in], rows[:, at + d_in : at + d_in + d_out]
                # [m, nq * d_out] -> [m, nq, d_out], dotted with dy_z
                mx = (x @ m.reshape(-1, d_in).T).reshape(rows.shape[0], m.shape[0], d_out)
                part = (mx * g[:, None, :]).sum(-1).T
                total = part if total is None else total.add_(part)
            return total.to(acc)

        return score
