"""``adam``: ``sum_c lr_c <g_c(z), D_c g_c(q)>`` with Adam's diagonal
``D_c = 1/(sqrt(v_hat_c)+eps)`` from the optimizer state saved with checkpoint
``c`` (see :mod:`gradtrace.grads.adam`).

``D_c`` is applied to the exact query gradient before the store's projection,
so the stored training features are reused as they are; query features must
therefore be computed for this method (``Attributor.query_features(queries,
variant=method)``, or pass the queries themselves). Needs the states:
``variant=AdamMethod(adam_states)``, one ``optimizer.state_dict()`` per
checkpoint of the store; the registered ``"adam"`` has none and says so.
"""

from __future__ import annotations

from typing import Any, Mapping, MutableMapping, Sequence

from torch import nn

from ...errors import InputError
from ...grads.adam import DiagonalTransform, adam_diagonals
from ...grads.per_example import GradTransform
from .base import BlockScorer, MethodBase, QueryInputs, linear_scorer, scaled_queries


class AdamMethod(MethodBase):
    name = "adam"
    meaning = (
        "Adam-preconditioned TracIn: sum over checkpoints of lr_c * <grad loss(z), grad behaviour(q) / "
        "(sqrt(v_hat_c) + eps)>, v_hat_c Adam's bias-corrected second moment at checkpoint c; same sign "
        "convention as raw. The first-order change of the behaviour when the run trains with Adam."
    )
    projections = ("none", "dense")
    transforms_queries = True

    def __init__(self, adam_states: Sequence[Mapping[str, Any]] | None = None, *, eps: float | None = None):
        if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0):
            raise InputError(f"adam eps must be a positive number or None; got {eps!r}")
        self.adam_states = None if adam_states is None else list(adam_states)
        self.eps = eps

    def __repr__(self) -> str:
        n = None if self.adam_states is None else len(self.adam_states)
        return f"AdamMethod(<{n} states>, eps={self.eps!r})"

    def check(self, store: Any) -> None:
        super().check(store)
        check_adam_states(self.adam_states, store, "need", "AdamMethod")

    def query_transform(self, model: nn.Module, checkpoint: int, param_names: list[str]) -> GradTransform | None:
        if self.adam_states is None or not 0 <= checkpoint < len(self.adam_states):
            raise InputError(f"adam_states: no optimizer state for checkpoint {checkpoint}; pass AdamMethod(adam_states)")
        return DiagonalTransform(adam_diagonals(self.adam_states[checkpoint], model, param_names, eps=self.eps))

    def prepare(self, store: Any, queries: QueryInputs, cache: MutableMapping[Any, Any]) -> BlockScorer:
        # the query features already carry D_c: what is left is raw TracIn
        return linear_scorer(scaled_queries(queries), queries.accumulate)


def check_adam_states(states: Sequence[Any] | None, store: Any, needs: str, method_class: str) -> None:
    """Refuse optimizer states that are not one per checkpoint of ``store``
    (``needs``: how the message starts, e.g. ``"need"``; ``method_class``: the
    class to pass them to)."""
    n = len(store.manifest["checkpoints"])
    if states is None or len(states) != n:
        got = None if states is None else len(states)
        raise InputError(
            f"adam_states: {needs} one optimizer state dict per checkpoint ({n}); got {got} "
            f"(pass variant=gradtrace.scoring.methods.{method_class}(adam_states))"
        )
