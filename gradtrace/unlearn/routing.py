"""Gradient routing and Expand, Route, Ablate (ERA; Cloud et al. 2024).

*Expand*: for each chosen pair of layers ``up -> (elementwise activation)
-> down`` (``nn.Linear`` or Hugging Face ``Conv1D``), add ``expand`` hidden
units: new output rows of ``up`` (seeded random init) and new input
columns of ``down`` (zero init, so the expanded model computes exactly what
the original did).

*Route*: while training, the hidden units ``x`` (the input of ``down``,
after the activation) are replaced by ``m * x + (1 - m) * x.detach()`` --
the same forward value, but the gradient reaching ``up`` (and everything
before it) is scaled by ``m`` (the activation is elementwise, so this is
the same as masking ``up``'s output).
For an example (or token) with forget weight ``w`` in [0, 1]::

    m_original = w * forget_original + (1 - w) * retain_original
    m_expanded = w * forget_expanded + (1 - w) * retain_expanded

so by default forget data trains only the new units (and pushes the
original ones away, ``forget_original < 0``) and retain data trains only
the original ones. An L1 penalty on the new units' activations (the input
of ``down``) keeps them quiet; it is taken before the mask, so it reaches
the new units on every token, also where the mask stops the loss's
gradient (``retain_expanded = 0``). Unlabelled forget data simply has ``w = 0``.

*Ablate*: cut the new units away, giving back the original shapes; then a
short coherence fine-tune on retain data (both done by
:func:`gradtrace.unlearn.compare.run_era`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from ..configbase import ConfigBase, non_negative, positive_int
from ..errors import InputError
from .methods import get_module


def _layer_pairs(value: Any, name: str) -> None:
    if not value:
        raise InputError(f"{name} must name at least one 'up:down' pair of modules; got none")
    for pair in value:
        if not isinstance(pair, str) or pair.count(":") != 1 or "" in pair.split(":"):
            raise InputError(f"{name} entries must look like 'up_module:down_module'; got {pair!r}")


@dataclasses.dataclass(frozen=True)
class RoutingConfig(ConfigBase):
    """``layers``: ``"up:down"`` module-name pairs; ``expand``: new hidden
    units per pair; mask weights as in the module docstring; ``l1_coef``:
    weight of the mean absolute activation of the new units; ``seed``: init
    of the new ``up`` rows."""

    layers: tuple[str, ...] = ()
    expand: int = 16
    forget_expanded: float = 1.0
    forget_original: float = -0.5
    retain_expanded: float = 0.0
    retain_original: float = 1.0
    l1_coef: float = 1e-3
    seed: int = 0

    _checks = {"layers": _layer_pairs, "expand": positive_int, "l1_coef": non_negative}

    def pairs(self) -> list[tuple[str, str]]:
        return [tuple(p.split(":")) for p in self.layers]  # type: ignore[misc]


def _is_conv1d(m: nn.Module) -> bool:
    """Hugging Face ``Conv1D``: ``y = x @ weight + bias``, weight ``[in, out]``."""
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf") and hasattr(m, "weight")


def _dims(m: nn.Module, name: str) -> tuple[int, int]:
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    if _is_conv1d(m):
        return int(m.weight.shape[0]), int(m.weight.shape[1])
    raise InputError(f"layer {name!r} must be nn.Linear or transformers Conv1D to be expanded; got {type(m).__name__}")


def _resized(m: nn.Module, d_in: int, d_out: int) -> nn.Module:
    """A copy of ``m`` with other in/out sizes: the overlap copied, new entries zero."""
    old_in, old_out = _dims(m, "?")
    w = m.weight.detach()
    if isinstance(m, nn.Linear):
        # skip_init: no draw from the global RNG (every entry is set below)
        new = nn.utils.skip_init(nn.Linear, d_in, d_out, bias=m.bias is not None, dtype=w.dtype, device=w.device)
        weight = torch.zeros(d_out, d_in, dtype=w.dtype, device=w.device)
        weight[: min(old_out, d_out), : min(old_in, d_in)] = w[: min(old_out, d_out), : min(old_in, d_in)]
    else:
        new = copy.deepcopy(m)
        new.nf = d_out
        weight = torch.zeros(d_in, d_out, dtype=w.dtype, device=w.device)
        weight[: min(old_in, d_in), : min(old_out, d_out)] = w[: min(old_in, d_in), : min(old_out, d_out)]
    with torch.no_grad():
        new.weight = nn.Parameter(weight)
        if m.bias is not None:
            bias = torch.zeros(d_out, dtype=w.dtype, device=w.device)
            bias[: min(old_out, d_out)] = m.bias.detach()[: min(old_out, d_out)]
            new.bias = nn.Parameter(bias)
    return new


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = get_module(model, parent_name) if parent_name else model
    setattr(parent, child, module)


@dataclasses.dataclass(frozen=True)
class Expansion:
    """Where the new units are: per pair, the original hidden size."""

    config: RoutingConfig
    hidden: tuple[int, ...]


def expand(model: nn.Module, config: RoutingConfig) -> tuple[nn.Module, Expansion]:
    """A copy of ``model`` with ``config.expand`` new hidden units per pair."""
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(config.seed)
    hidden = []
    for up_name, down_name in config.pairs():
        up, down = get_module(out, up_name), get_module(out, down_name)
        up_in, h = _dims(up, up_name)
        h_down, down_out = _dims(down, down_name)
        if h_down != h:
            raise InputError(f"layers {up_name!r}:{down_name!r}: {up_name!r} has {h} outputs but {down_name!r} takes {h_down} inputs")
        new_up = _resized(up, up_in, h + config.expand)
        bound = 1.0 / up_in**0.5
        init = (torch.rand(config.expand, up_in, generator=gen, dtype=torch.float64) * 2 - 1) * bound
        with torch.no_grad():
            if isinstance(new_up, nn.Linear):
                new_up.weight[h:] = init.to(new_up.weight.dtype)
            else:
                new_up.weight[:, h:] = init.T.to(new_up.weight.dtype)
        _set_module(out, up_name, new_up)
        _set_module(out, down_name, _resized(down, h + config.expand, down_out))
        hidden.append(h)
    return out, Expansion(config, tuple(hidden))


def ablate(model: nn.Module, expansion: Expansion) -> nn.Module:
    """A copy of an expanded model with the new units removed (original shapes)."""
    out = copy.deepcopy(model)
    for (up_name, down_name), h in zip(expansion.config.pairs(), expansion.hidden):
        up, down = get_module(out, up_name), get_module(out, down_name)
        up_in, _ = _dims(up, up_name)
        _, down_out = _dims(down, down_name)
        _set_module(out, up_name, _resized(up, up_in, h))
        _set_module(out, down_name, _resized(down, h, down_out))
    return out


class Router:
    """Installs the gradient masks on an expanded model.

    Use ``with router.route(weights): loss = ...`` around the forward pass;
    ``weights`` holds the forget weight of each example (``[b]``) or token
    (``[b, t]``). Outside ``route`` (or with ``weights=None``) the model
    runs unmasked. After each routed forward, :meth:`l1` is the mean absolute
    activation of the new units (for the penalty).
    """

    def __init__(self, model: nn.Module, expansion: Expansion):
        self.model, self.expansion = model, expansion
        self._weights: Tensor | None = None
        self._active: list[Tensor] = []
        self._handles: list[Any] = []
        for (_up, down_name), h in zip(expansion.config.pairs(), expansion.hidden):
            self._handles.append(get_module(model, down_name).register_forward_pre_hook(self._route_hook(h)))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @contextlib.contextmanager
    def route(self, weights: Tensor | None) -> Iterator["Router"]:
        self._weights, self._active = weights, []
        try:
            yield self
        finally:
            self._weights = None

    def l1(self) -> Tensor:
        if not self._active:
            return torch.zeros(())
        return torch.stack([a.abs().mean() for a in self._active]).sum()

    def masks(self, weights: Tensor, hidden: int, out: Tensor) -> Tensor:
        """The per-unit mask ``[b, (t,) hidden + expand]`` for ``weights``."""
        cfg = self.expansion.config
        w = weights.to(out.dtype)
        if w.dim() > out.dim() - 1 or tuple(w.shape) != tuple(out.shape[: w.dim()]):
            raise InputError(f"routing weights must have shape [batch] or [batch, tokens] matching {tuple(out.shape[:-1])}; got {tuple(w.shape)}")
        w = w.reshape(*w.shape, *([1] * (out.dim() - w.dim())))
        original = w * cfg.forget_original + (1 - w) * cfg.retain_original
        expanded = w * cfg.forget_expanded + (1 - w) * cfg.retain_expanded
        shape = list(out.shape)
        return torch.cat([original.expand(*shape[:-1], hidden), expanded.expand(*shape[:-1], shape[-1] - hidden)], dim=-1)

    def _route_hook(self, hidden: int) -> Any:
        def hook(_m: nn.Module, inp: tuple[Tensor, ...]) -> tuple[Tensor, ...] | None:
            if self._weights is None:
                return None
            x = inp[0]
            self._active.append(x[..., hidden:])  # before the mask: the penalty's gradient is never masked
            m = self.masks(self._weights, hidden, x)
            return (m * x + (1 - m) * x.detach(), *inp[1:])

        return hook

