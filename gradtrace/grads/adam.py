"""Adam preconditioning: one module, one reading of the optimizer state, two formulas.

A run trained with Adam moves its parameters along a rescaled gradient, not
the gradient itself, so TracIn's inner product is taken after rescaling.
Both formulas read Adam's moments from an ``optimizer.state_dict()`` through
:func:`read_moments` (one :class:`AdamMoments` per parameter name):

* **Update direction** (:class:`AdamPreconditioner`, training side, applied
  before the projection as ``featurize(train_transform=...)``): the step that
  one more example would cause from the saved state, as LESS (Xia et al.,
  2024) does::

      m' = beta1 * m + (1 - beta1) * g
      v' = beta2 * v + (1 - beta2) * g**2
      T(g) = m' / (sqrt(v') + eps)

  Not linear in ``g`` (it carries the momentum ``m``), so it can only be
  applied to training gradients, which are stored transformed.
* **Diagonal** (:func:`adam_diagonal`, query side, used by the ``adam``
  score method): ``D = 1 / (sqrt(v_hat) + eps)`` with
  ``v_hat = v / (1 - beta2**step)``. Linear and symmetric, so it can be
  applied to the exact query gradient instead of every training gradient:
  ``<D g_q, g_z> = <g_q, D g_z>``, and stored (projected) features are reused.

Bias correction, decided once per formula:

* the diagonal is bias-corrected because it is the divisor
  ``torch.optim.Adam``/``AdamW`` itself applies at step ``step``; without the
  correction the early checkpoints' ``v`` is too small by up to ``1-beta2``
  and would overweight them against later ones.
* the update direction is not, as in LESS's reference code: ``m'`` and ``v'``
  are the moments of the step *after* the saved one, whose correction is a
  single positive scalar per checkpoint (``sqrt(1-beta2^t') / (1-beta1^t')``)
  when eps is negligible, so rankings within a checkpoint do not depend on it,
  and the stores written so far stay valid.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, InputError


@dataclasses.dataclass(frozen=True)
class AdamMoments:
    """Adam's state for one parameter, with its param group's settings."""

    exp_avg: Tensor | None
    exp_avg_sq: Tensor
    step: float
    beta1: float
    beta2: float
    eps: float

    def v_hat(self) -> Tensor:
        """Bias-corrected second moment ``v / (1 - beta2**step)``, float64."""
        return self.exp_avg_sq.to(torch.float64) / (1.0 - self.beta2**self.step)


def read_moments(optimizer_state: Mapping[str, Any], order: Sequence[str], wanted: Sequence[str]) -> dict[str, AdamMoments]:
    """The moments of the parameters ``wanted`` from an Adam/AdamW
    ``optimizer.state_dict()`` whose parameters were given, in ``order``, by name."""
    if not isinstance(optimizer_state, Mapping) or "state" not in optimizer_state or "param_groups" not in optimizer_state:
        raise InputError("optimizer_state must be an optimizer.state_dict() with 'state' and 'param_groups'")
    groups = optimizer_state["param_groups"]
    flat_ids = [i for g in groups for i in g["params"]]
    if len(flat_ids) != len(order):
        raise InputError(
            f"optimizer_state covers {len(flat_ids)} parameters but the model has {len(order)}; "
            "build the optimizer over model.parameters()"
        )
    by_name: dict[str, tuple[Any, Mapping[str, Any]]] = {}
    names = iter(order)
    for g in groups:
        for pid in g["params"]:
            by_name[next(names)] = (pid, g)
    out = {}
    for name in wanted:
        if name not in by_name:
            raise InputError(f"param_names: {name!r} is not a parameter of the model")
        pid, group = by_name[name]
        state = optimizer_state["state"].get(pid, optimizer_state["state"].get(str(pid)))
        if state is None or "exp_avg_sq" not in state:
            raise InputError(f"optimizer_state has no Adam second moment (exp_avg_sq) for parameter {name!r}")
        beta1, beta2 = group.get("betas", (0.9, 0.999))
        out[name] = AdamMoments(
            state.get("exp_avg"), state["exp_avg_sq"], float(state.get("step", torch.tensor(0.0))),
            float(beta1), float(beta2), float(group.get("eps", 1e-8)),
        )
    return out


def adam_diagonals(
    optimizer_state: Mapping[str, Any], model: nn.Module, param_names: Sequence[str], *, eps: float | None = None,
) -> dict[str, Tensor]:
    """Per parameter name, ``1 / (sqrt(v_hat) + eps)`` shaped like the
    parameter, float64 (see :func:`adam_diagonal`)."""
    shapes = {n: p.shape for n, p in model.named_parameters()}
    moments = read_moments(optimizer_state, list(shapes), param_names)
    out = {}
    for name, mo in moments.items():
        if tuple(mo.exp_avg_sq.shape) != tuple(shapes[name]):
            raise InputError(
                f"optimizer_state exp_avg_sq of {name!r} has shape {tuple(mo.exp_avg_sq.shape)}; "
                f"the parameter has {tuple(shapes[name])}"
            )
        if mo.step < 1:
            raise InputError(f"optimizer_state step of {name!r} must be >= 1 for Adam preconditioning; got {mo.step}")
        out[name] = 1.0 / (mo.v_hat().sqrt() + (mo.eps if eps is None else float(eps)))
    return out


def adam_diagonal(
    optimizer_state: Mapping[str, Any], model: nn.Module, param_names: Sequence[str],
    *, eps: float | None = None,
) -> Tensor:
    """Flat ``1 / (sqrt(v / (1 - beta2^t)) + eps)`` over ``param_names``.

    ``optimizer_state`` is ``optimizer.state_dict()`` of an Adam/AdamW built
    over ``model.parameters()`` in their natural order (the usual case);
    ``eps`` defaults to the one recorded in its param group.
    """
    diag = adam_diagonals(optimizer_state, model, param_names, eps=eps)
    return torch.cat([diag[n].reshape(-1) for n in param_names])


@dataclasses.dataclass(frozen=True)
class DiagonalTransform:
    """Gradient transform ``g -> D g`` with one diagonal per parameter name
    (e.g. from :func:`adam_diagonals`), computed in float64 and returned in
    the gradient's dtype."""

    diagonal: Mapping[str, Tensor]

    def __call__(self, name: str, grad: Tensor) -> Tensor:
        d = self.diagonal[name].to(device=grad.device)
        return (grad.to(torch.float64) * d).to(grad.dtype)


@dataclasses.dataclass(frozen=True)
class AdamPreconditioner:
    """``T(g) = m'/(sqrt(v')+eps)`` per parameter name (the update direction,
    see the module docstring).

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

    @classmethod
    def from_optimizer_state(
        cls, optimizer_state: Mapping[str, Any], order: Sequence[str], wanted: Sequence[str] | None = None,
    ) -> "AdamPreconditioner":
        """From an ``optimizer.state_dict()`` whose parameters were given in
        ``order`` (names); betas and eps from the first param group."""
        moments = read_moments(optimizer_state, order, list(order) if wanted is None else wanted)
        lacking = [n for n, mo in moments.items() if mo.exp_avg is None]
        if lacking:
            raise InputError(f"optimizer_state has no Adam first moment (exp_avg) for parameters {lacking[:6]!r}")
        first = next(iter(moments.values()), None)
        settings = {} if first is None else {"beta1": first.beta1, "beta2": first.beta2, "eps": first.eps}
        return cls({n: mo.exp_avg for n, mo in moments.items()}, {n: mo.exp_avg_sq for n, mo in moments.items()}, **settings)  # type: ignore[misc]

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
