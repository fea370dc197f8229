"""``cosine``: ``sum_c lr_c cos(g_c(z), g_c(q))``."""

from __future__ import annotations

from typing import Any, MutableMapping

import torch

from .base import BlockScorer, MethodBase, QueryInputs, factored_dots


class CosineMethod(MethodBase):
    name = "cosine"
    meaning = (
        "Cosine TracIn: sum over checkpoints of lr_c * cos(grad loss(z), grad behaviour(q)); same sign "
        "convention as raw, but each gradient is unit-normalised, so the ranking reflects direction "
        "only and the same large-norm examples no longer top every query's list."
    )
    supports_self_influence = False  # cos(z, z) = 1

    def prepare(self, store: Any, queries: QueryInputs, cache: MutableMapping[Any, Any]) -> BlockScorer:
        acc, lrs, layout = queries.accumulate, queries.lrs, queries.layout
        unit = [u.to(queries.compute) for u in queries.features.unit]
        if not layout:
            # stored rows (and query rows) are unit-norm already
            return lambda c, rows, norms: (unit[c] @ rows.T).to(acc).mul_(lrs[c])
        q_norms = [n.to(acc) for n in queries.features.norms]
        tiny = torch.finfo(acc).tiny

        def score(c: int, rows: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
            dots = factored_dots(unit[c], rows, layout).to(acc).mul_(lrs[c])
            denom = q_norms[c][:, None] * norms[None, :]
            return torch.where(denom > 0, dots / denom.clamp_min(tiny), 0.0)

        return score
