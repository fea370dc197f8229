"""Which parameters the gradients are taken with respect to.

A selection is ``"all"`` (every parameter that requires grad), ``"last"`` (the
parameters of the last module that owns any), or one or more ``fnmatch``
patterns over parameter names (``"fc2.*"``, ``"*.lora_*"``). The result keeps
the model's own parameter order, so features are laid out the same way on
every run.
"""

from __future__ import annotations

import fnmatch
from typing import Sequence

from torch import nn

from ..errors import InputError

Selection = str | Sequence[str]


def select_parameters(model: nn.Module, selection: Selection = "all") -> list[str]:
    """Names of the selected parameters, in ``model.named_parameters()`` order."""
    names = [name for name, p in model.named_parameters()]
    if not names:
        raise InputError("model has no parameters to take gradients with respect to")
    if selection == "all":
        chosen = [name for name, p in model.named_parameters() if p.requires_grad] or names
    elif selection == "last":
        owners = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
        last = owners[-1]
        ids = {id(p) for p in last.parameters(recurse=False)}
        chosen = [name for name, p in model.named_parameters() if id(p) in ids]
    else:
        patterns = [selection] if isinstance(selection, str) else list(selection)
        if not patterns or not all(isinstance(p, str) and p for p in patterns):
            raise InputError(f"params must be 'all', 'last' or non-empty name patterns; got {selection!r}")
        chosen = [n for n in names if any(fnmatch.fnmatchcase(n, pat) for pat in patterns)]
        if not chosen:
            raise InputError(
                f"params patterns {patterns!r} match no parameter of the model; "
                f"parameter names start with {names[:6]!r}"
            )
    return chosen
