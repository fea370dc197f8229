"""Capture the inputs and output gradients of ``nn.Linear`` layers.

For a linear layer ``y = x W^T + b`` applied to an example's tokens, the
example's weight gradient is ``sum_t dy_t x_t^T``. One forward and one
backward pass over a batch of per-example losses therefore gives every
example's gradient of every selected linear layer, without ``vmap`` (which
some Hugging Face models break) and without a per-example backward loop.
The exact path builds those gradients; the Kronecker path projects ``x`` and
``dy`` first and never builds them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..errors import InputError


@dataclasses.dataclass
class LinearSite:
    """A selected linear layer and which of its parameters are selected."""

    module_name: str
    module: nn.Linear
    weight_name: str | None
    bias_name: str | None

    @property
    def d_in(self) -> int:
        return self.module.in_features

    @property
    def d_out(self) -> int:
        return self.module.out_features


def linear_sites(model: nn.Module, param_names: list[str]) -> list[LinearSite] | None:
    """The linear layers owning ``param_names``, or None when some selected
    parameter is not the weight or bias of an ``nn.Linear`` used by that
    module alone (tied weights would be missed by the hooks)."""
    owner_count: dict[int, int] = {}
    for module in model.modules():
        for p in module._parameters.values():
            if p is not None:
                owner_count[id(p)] = owner_count.get(id(p), 0) + 1
    wanted = set(param_names)
    sites: list[LinearSite] = []
    covered: set[str] = set()
    for module_name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        prefix = f"{module_name}." if module_name else ""
        w = f"{prefix}weight" if f"{prefix}weight" in wanted else None
        b = f"{prefix}bias" if module.bias is not None and f"{prefix}bias" in wanted else None
        if w is None and b is None:
            continue
        for name, p in ((w, module.weight), (b, module.bias)):
            if name is not None and owner_count.get(id(p), 0) > 1:
                return None
        sites.append(LinearSite(module_name, module, w, b))
        covered.update(n for n in (w, b) if n is not None)
    if covered != wanted:
        return None
    return sites


class LinearCapture:
    """Context manager recording, for each site, every call's input (or
    ``input_maps[i]`` of it) and output.

    After the forward pass, :meth:`output_grads` differentiates a scalar with
    respect to the recorded outputs. Calls are kept in order, so a layer used
    twice contributes the sum of both calls' gradients.
    """

    def __init__(self, sites: list[LinearSite], input_maps: list[Callable[[Tensor], Tensor]] | None = None):
        self.sites = sites
        self.inputs: list[list[Tensor]] = [[] for _ in sites]
        self.outputs: list[list[Tensor]] = [[] for _ in sites]
        self._handles: list[Any] = []
        # applied to each (detached) input as it is recorded: what is kept is the map's result (e.g. the input
        # already projected, so that the full activations are not held until the backward pass)
        self.input_maps = input_maps

    def __enter__(self) -> "LinearCapture":
        for i, site in enumerate(self.sites):
            self._handles.append(site.module.register_forward_hook(self._hook(i)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, i: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            x = args[0].detach()
            self.inputs[i].append(x if self.input_maps is None else self.input_maps[i](x))
            self.outputs[i].append(output)

        return hook

    def output_grads(self, total: Tensor) -> list[list[Tensor]]:
        flat = [o for outs in self.outputs for o in outs]
        if not flat:
            raise InputError("no selected linear layer was called during the forward pass")
        grads = torch.autograd.grad(total, flat, allow_unused=True)
        out: list[list[Tensor]] = []
        k = 0
        for outs in self.outputs:
            row = []
            for o in outs:
                g = grads[k]
                row.append(torch.zeros_like(o) if g is None else g.detach())
                k += 1
            out.append(row)
        return out


def as_tokens(t: Tensor, batch_size: int, what: str) -> Tensor:
    """View ``t`` of shape ``(b, ..., d)`` as ``(b, tokens, d)``."""
    if t.dim() < 2 or t.shape[0] != batch_size:
        raise InputError(
            f"{what}: expected the batch in dimension 0 (size {batch_size}); got shape {tuple(t.shape)}"
        )
    return t.reshape(batch_size, -1, t.shape[-1])


def augmented_input(x: Tensor, with_bias: bool) -> Tensor:
    """Append a column of ones so the bias gradient rides along with the weight's."""
    if not with_bias:
        return x
    return torch.cat([x, x.new_ones(*x.shape[:-1], 1)], dim=-1)
