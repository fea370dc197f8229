"""How parameter names are grouped when allocations are aggregated.

Levels (from finest to coarsest):

* ``tensor``: each parameter tensor on its own.
* ``module``: the module that owns the tensor (the name without its last
  component, ``transformer.h.0.attn.c_attn``); the ``lora_A``/``lora_B``
  tensors of one PEFT adapter form one module, ``<wrapped module> [LoRA]``.
* ``block``: the part of a layer the tensor is in: the name up to the
  component after the first numeric component (``transformer.h.0.attn``,
  ``transformer.h.0.mlp``, ``model.layers.3.self_attn``); a tensor directly
  under a numbered module (``0.weight`` of an ``nn.Sequential``) is in block
  ``0``; a tensor outside numbered layers is its own module.
* ``layer``: ``layer N`` for the first numeric component of the name, and
  ``(no layer)`` for tensors outside numbered layers (embeddings, final norm,
  head).

Every tensor is in exactly one group at each level, so a group's allocation
is the sum of its tensors'.
"""

from __future__ import annotations

import re
from typing import Sequence

from ..errors import InputError

LEVELS = ("tensor", "module", "block", "layer")
NO_LAYER = "(no layer)"
_LORA = re.compile(r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)(\.|$)")


def group_of(name: str, level: str) -> str:
    """The group of parameter ``name`` at ``level`` (see the module docstring)."""
    if level not in LEVELS:
        raise InputError(f"level must be one of {', '.join(LEVELS)}; got {level!r}")
    if level == "tensor":
        return name
    parts = name.split(".")
    lora = _LORA.search(name)
    if level == "module":
        if lora:
            return name[: lora.start()] + " [LoRA]"
        return ".".join(parts[:-1]) if len(parts) > 1 else name
    numeric = next((i for i, p in enumerate(parts) if p.isdigit()), None)
    if level == "layer":
        return NO_LAYER if numeric is None else f"layer {int(parts[numeric])}"
    if numeric is None:
        return group_of(name, "module")
    # the numbered module's child, unless that child is already the tensor itself
    stop = numeric + 2 if numeric + 2 < len(parts) else numeric + 1
    return ".".join(parts[:stop])


def group_names(names: Sequence[str], level: str) -> dict[str, str]:
    """``{name: group}`` for every name."""
    return {n: group_of(n, level) for n in names}
