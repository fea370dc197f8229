"""Result objects of scoring."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

VARIANTS = ("raw", "cosine")

SCORE_MEANING = {
    "raw": (
        "TracIn score: sum over checkpoints of lr_c * <grad loss(z), grad behaviour(q)>, signed so that a "
        "positive score means one gradient step on training example z moves the query's behaviour in its "
        "direction (proponent) and a negative score the other way (opponent). Units: behaviour units per "
        "step (first-order change of the behaviour). Large-norm examples (often mislabelled) dominate."
    ),
    "cosine": (
        "Cosine TracIn: sum over checkpoints of lr_c * cos(grad loss(z), grad behaviour(q)); same sign "
        "convention as raw, but each gradient is unit-normalised, so the ranking reflects direction "
        "only and the same large-norm examples no longer top every query's list."
    ),
}


@dataclasses.dataclass(frozen=True)
class TopK:
    """The k most positive (``largest=True``: proponents) or most negative
    (opponents) training examples for each query, best first."""

    indices: np.ndarray  # [n_query, k] int64, positions in the store
    scores: np.ndarray  # [n_query, k] float64
    ids: list[list[str]]
    largest: bool
    variant: str

    @property
    def meaning(self) -> str:
        return SCORE_MEANING[self.variant]

    def to_records(self, query_ids: list[str] | None = None, tags: list[Any] | None = None) -> list[dict[str, Any]]:
        """One flat record per (query, rank), for JSONL or Parquet output."""
        kind = "proponent" if self.largest else "opponent"
        records = []
        for q in range(self.indices.shape[0]):
            for rank in range(self.indices.shape[1]):
                idx = int(self.indices[q, rank])
                rec = {
                    "query": q if query_ids is None else query_ids[q],
                    "kind": kind,
                    "rank": rank + 1,
                    "train_index": idx,
                    "train_id": self.ids[q][rank],
                    "score": float(self.scores[q, rank]),
                    "variant": self.variant,
                }
                if tags is not None:
                    rec["train_tag"] = tags[idx]
                records.append(rec)
        return records
