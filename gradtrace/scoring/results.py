"""Result objects of scoring."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping

import numpy as np

from .methods import available_methods, get_method


class _Meanings(Mapping[str, str]):
    """What a score of each registered method means (read from the registry,
    so methods registered later are included)."""

    def __getitem__(self, name: str) -> str:
        if name not in available_methods():
            raise KeyError(name)
        return get_method(name).meaning

    def __iter__(self) -> Iterator[str]:
        return iter(available_methods())

    def __len__(self) -> int:
        return len(available_methods())


# The built-in methods' names; available_methods() also lists those registered later.
VARIANTS = available_methods()
SCORE_MEANING: Mapping[str, str] = _Meanings()


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
        return SCORE_MEANING.get(self.variant, f"scores of {self.variant!r}, a score method that is not registered")

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
