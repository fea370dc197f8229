"""Preconditioners of TracIn's inner product, beyond unit norm (cosine).

* Adam: a run trained with Adam moves along ``g / (sqrt(v_hat) + eps)``, not
  ``g``; the matching influence is ``lr * <g(q), g(z) / (sqrt(v_hat)+eps)>``
  (as in LESS, Xia et al. 2024). :func:`adam_diagonal` reads the diagonal
  ``1 / (sqrt(v_hat) + eps)`` from a ``torch.optim.Adam``/``AdamW`` state
  dict, flattened in the order of the selected parameters. Because it is
  diagonal (symmetric), it can be applied on the query side, before the
  projection: stored training features need not change.
* Projected Fisher: ``F = G^T G / n + lambda I`` on the stored projected
  training gradients ``G`` of a checkpoint; the influence ``q^T F^{-1} g`` is
  an influence-function estimate in the projected space.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import InputError


def adam_diagonal(
    optimizer_state: Mapping[str, Any], model: nn.Module, param_names: Sequence[str],
    *, eps: float | None = None,
) -> Tensor:
    """Flat ``1 / (sqrt(v / (1 - beta2^t)) + eps)`` over ``param_names``.

    ``optimizer_state`` is ``optimizer.state_dict()`` of an Adam/AdamW built
    over ``model.parameters()`` in their natural order (the usual case);
    ``eps`` defaults to the one recorded in its param group.
    """
    if "state" not in optimizer_state or "param_groups" not in optimizer_state:
        raise InputError("optimizer_state must be an optimizer.state_dict() with 'state' and 'param_groups'")
    names = [n for n, _ in model.named_parameters()]
    shapes = {n: p.shape for n, p in model.named_parameters()}
    index_of: dict[int, tuple[str, dict[str, Any]]] = {}
    groups = optimizer_state["param_groups"]
    flat_ids = [i for g in groups for i in g["params"]]
    if len(flat_ids) != len(names):
        raise InputError(
            f"optimizer_state covers {len(flat_ids)} parameters but the model has {len(names)}; "
            "build the optimizer over model.parameters()"
        )
    order = 0
    for g in groups:
        for pid in g["params"]:
            index_of[pid] = (names[order], g)
            order += 1
    by_name = {name: (pid, g) for pid, (name, g) in index_of.items()}
    parts = []
    for name in param_names:
        if name not in by_name:
            raise InputError(f"param_names: {name!r} is not a parameter of the model")
        pid, group = by_name[name]
        state = optimizer_state["state"].get(pid, optimizer_state["state"].get(str(pid)))
        if state is None or "exp_avg_sq" not in state:
            raise InputError(f"optimizer_state has no Adam second moment (exp_avg_sq) for parameter {name!r}")
        v = state["exp_avg_sq"].to(torch.float64)
        if tuple(v.shape) != tuple(shapes[name]):
            raise InputError(f"optimizer_state exp_avg_sq of {name!r} has shape {tuple(v.shape)}; the parameter has {tuple(shapes[name])}")
        step = float(state.get("step", torch.tensor(0.0)))
        beta2 = float(group["betas"][1])
        if step < 1:
            raise InputError(f"optimizer_state step of {name!r} must be >= 1 for Adam preconditioning; got {step}")
        e = float(group["eps"]) if eps is None else float(eps)
        v_hat = v / (1.0 - beta2**step)
        parts.append((1.0 / (v_hat.sqrt() + e)).reshape(-1))
    return torch.cat(parts)


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
