"""``raw``: TracIn, ``sum_c lr_c <g_c(z), g_c(q)>``."""

from __future__ import annotations

from typing import Any, MutableMapping

from .base import BlockScorer, MethodBase, QueryInputs, factored_dots, linear_scorer, scaled_queries


class RawMethod(MethodBase):
    name = "raw"
    meaning = (
        "TracIn score: sum over checkpoints of lr_c * <grad loss(z), grad behaviour(q)>, signed so that a "
        "positive score means one gradient step on training example z moves the query's behaviour in its "
        "direction (proponent) and a negative score the other way (opponent). Units: behaviour units per "
        "step (first-order change of the behaviour). Large-norm examples (often mislabelled) dominate."
    )

    def prepare(self, store: Any, queries: QueryInputs, cache: MutableMapping[Any, Any]) -> BlockScorer:
        if not queries.layout:
            return linear_scorer(scaled_queries(queries), queries.accumulate)
        unit = [u.to(queries.compute) for u in queries.features.unit]

        def score(c: int, rows: Any, norms: Any) -> Any:
            # factored rows are the exact gradient's factors: their dot products are the gradients'
            return factored_dots(unit[c], rows, queries.layout).to(queries.accumulate).mul_(queries.lrs[c])

        return score
