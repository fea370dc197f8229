"""Preconditioners of training gradients, applied before projection.

:class:`AdamPreconditioner` turns a training example's gradient ``g`` into the
Adam update direction it would cause from the optimizer's saved state, as LESS
(Xia et al., 2024) does::

    m' = beta1 * m + (1 - beta1) * g
    v' = beta2 * v + (1 - beta2) * g**2
    T(g) = m' / (sqrt(v') + eps)

(no bias correction: the saved moments are used as they are). Query
gradients stay plain. Parameters a model trains with Adam move along ``T(g)``,
not ``g``, so ``<T(g_z), g_q>`` is the first-order change of the query's
behaviour that a step on ``z`` causes under Adam.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch
from torch import Tensor

from ..errors import CheckpointError, InputError


@dataclasses.dataclass(frozen=True)
class AdamPreconditioner:
    """``T(g) = m'/(sqrt(v')+eps)`` per parameter name (see the module docstring).

    ``exp_avg`` and ``exp_avg_sq`` map parameter names to Adam's first and
    second moments, shaped like the parameters.
    """

    exp_avg: Mapping[str, Tensor]
    exp_avg_sq: Mapping[str, Tensor]
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self) -> None:
        for name, value in (("beta1", self.beta1), ("beta2", self.beta2)):
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise InputError(f"{name} must be in [0, 1); got {value!r}")
        if not isinstance(self.eps, (int, float)) or self.eps <= 0:
            raise InputError(f"eps must be a positive number; got {self.eps!r}")
        if set(self.exp_avg) != set(self.exp_avg_sq):
            raise InputError("exp_avg and exp_avg_sq must name the same parameters")

    def __call__(self, name: str, grad: Tensor) -> Tensor:
        """``T(g)`` for a batch ``grad`` of shape ``[b, *param.shape]``."""
        if name not in self.exp_avg:
            raise CheckpointError(f"the optimizer state has no moments for parameter {name!r}")
        m = self.exp_avg[name].to(dtype=grad.dtype, device=grad.device)
        v = self.exp_avg_sq[name].to(dtype=grad.dtype, device=grad.device)
        if tuple(m.shape) != tuple(grad.shape[1:]):
            raise CheckpointError(
                f"optimizer moments of {name!r} have shape {tuple(m.shape)}; the gradient has {tuple(grad.shape[1:])}"
            )
        m_new = self.beta1 * m + (1.0 - self.beta1) * grad
        v_new = self.beta2 * v + (1.0 - self.beta2) * grad.pow(2)
        return m_new / (v_new.sqrt() + self.eps)

    def describe(self) -> dict[str, Any]:
        return {"kind": "adam", "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}
