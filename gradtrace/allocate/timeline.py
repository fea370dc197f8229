"""Influence over time: which checkpoints (training periods) carried a
query's TracIn influence, and which examples dominated each period.

TracIn's score is a sum over checkpoints, ``score(z, q) = Σ_c S_c(z, q)``
with ``S_c = lr_c <g_c(z), g_c(q)>`` (signed so that positive is a
proponent); checkpoint ``c`` stands for the training steps around it. For
each query:

* ``abs_share[c] = Σ_z |S_c(z, q)| / Σ_c' Σ_z |S_c'(z, q)|``: the share of
  the query's total absolute influence carried by checkpoint ``c``
  (non-negative, sums to 1);
* ``signed[c] = Σ_z S_c(z, q)``: the net push of the whole training set at
  checkpoint ``c`` (positive: in the behaviour's direction);
* the top ``k`` proponents and opponents of each checkpoint by ``S_c``.

**Critical period** (per query, and for the behaviour as the queries' mean
``abs_share``): the shortest run of consecutive checkpoints whose
``abs_share`` adds up to at least ``mass`` (default 0.5); among runs of that
length the one with the larger share, then the earliest. Its
``concentration`` is its share divided by its length's share under a
uniform spread (``len / n_checkpoints``): 1 means no period stands out.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from ..configbase import positive_int
from ..errors import InputError


@dataclasses.dataclass(frozen=True)
class CriticalPeriod:
    """A run of consecutive checkpoints ``first..last`` (inclusive positions)."""

    first: int
    last: int
    share: float
    concentration: float
    peak: int

    def to_dict(self, labels: Sequence[str]) -> dict[str, Any]:
        return {"first": self.first, "last": self.last, "from": labels[self.first], "to": labels[self.last],
                "share": self.share, "concentration": self.concentration, "peak": self.peak, "peak_label": labels[self.peak]}


def critical_period(abs_share: np.ndarray, mass: float = 0.5) -> CriticalPeriod:
    """The critical period of one ``abs_share`` vector (see the module docstring)."""
    share = np.asarray(abs_share, dtype=np.float64)
    if share.ndim != 1 or share.size == 0 or not np.isfinite(share).all() or (share < 0).any():
        raise InputError(f"abs_share must be a non-empty 1-D array of finite non-negative shares; got {abs_share!r}")
    if not 0.0 < mass <= 1.0:
        raise InputError(f"mass must be in (0, 1]; got {mass!r}")
    total = share.sum()
    n = share.size
    peak = int(np.argmax(share))
    if total == 0.0:
        return CriticalPeriod(0, n - 1, 0.0, 0.0, peak)
    share = share / total
    target = mass - 1e-12
    csum = np.concatenate([[0.0], np.cumsum(share)])
    for length in range(1, n + 1):
        sums = csum[length:] - csum[:-length]
        if sums.max() >= target:
            first = int(np.argmax(sums))  # the largest share; the earliest among equals
            got = float(sums[first])
            return CriticalPeriod(first, first + length - 1, got, got / (length / n), peak)
    raise AssertionError("unreachable: the whole run holds all of the share")  # pragma: no cover


@dataclasses.dataclass(frozen=True)
class InfluenceTimeline:
    """Influence over time of a set of queries (see the module docstring).

    ``abs_mass``, ``signed``: ``[n_checkpoint, n_query]``; ``top`` /
    ``bottom``: ``[n_checkpoint, n_query, k]`` training indices (proponents /
    opponents of each checkpoint alone), ``top_scores`` / ``bottom_scores``
    their ``S_c`` values."""

    labels: list[str]
    query_ids: list[str]
    abs_mass: np.ndarray
    signed: np.ndarray
    top: np.ndarray
    top_scores: np.ndarray
    bottom: np.ndarray
    bottom_scores: np.ndarray
    mass: float

    @property
    def abs_share(self) -> np.ndarray:
        """``[n_checkpoint, n_query]``, each column summing to 1 (0 for a query with no influence)."""
        total = self.abs_mass.sum(axis=0, keepdims=True)
        return np.divide(self.abs_mass, total, out=np.zeros_like(self.abs_mass), where=total > 0)

    def critical(self, query: int) -> CriticalPeriod:
        return critical_period(self.abs_share[:, query], self.mass)

    def behaviour_critical(self) -> CriticalPeriod:
        """The critical period of the queries' mean ``abs_share``."""
        return critical_period(self.abs_share.mean(axis=1), self.mass)

    def to_dict(self, ids: Sequence[str] | None = None) -> dict[str, Any]:
        share = self.abs_share

        def name(i: int) -> Any:
            return ids[i] if ids is not None else i

        queries = []
        for q, qid in enumerate(self.query_ids):
            periods = []
            for c, label in enumerate(self.labels):
                periods.append({
                    "checkpoint": label, "abs_share": float(share[c, q]), "signed": float(self.signed[c, q]),
                    "proponents": [{"train": name(int(i)), "score": float(s)} for i, s in zip(self.top[c, q], self.top_scores[c, q])],
                    "opponents": [{"train": name(int(i)), "score": float(s)} for i, s in zip(self.bottom[c, q], self.bottom_scores[c, q])],
                })
            queries.append({"query": qid, "critical_period": self.critical(q).to_dict(self.labels), "periods": periods})
        return {"checkpoints": list(self.labels), "mass": self.mass, "mean_abs_share": share.mean(axis=1).tolist(),
                "behaviour_critical_period": self.behaviour_critical().to_dict(self.labels), "queries": queries}


def influence_over_time(
    attributor: Any, query_features: Any, *, k: int = 5, mass: float = 0.5, variant: str = "raw", chunk: int = 4096,
    query_ids: Sequence[str] | None = None,
) -> InfluenceTimeline:
    """The :class:`InfluenceTimeline` of precomputed query features
    (:meth:`gradtrace.Attributor.query_features`), read from the store in
    chunks of ``chunk`` training examples through :meth:`Attributor.breakdown`."""
    positive_int(k, "k")
    positive_int(chunk, "chunk")
    if not 0.0 < mass <= 1.0:
        raise InputError(f"mass must be in (0, 1]; got {mass!r}")
    st = attributor.store
    n_train = st.n_examples
    k = min(k, n_train)
    n_ckpt, n_q = len(st.checkpoints), query_features.n
    abs_mass = np.zeros((n_ckpt, n_q))
    signed = np.zeros((n_ckpt, n_q))
    best = [np.empty((n_ckpt, n_q, 0)), np.empty((n_ckpt, n_q, 0), dtype=np.int64)]
    worst = [np.empty((n_ckpt, n_q, 0)), np.empty((n_ckpt, n_q, 0), dtype=np.int64)]
    for a in range(0, n_train, chunk):
        idx = np.arange(a, min(a + chunk, n_train))
        part = attributor.breakdown(query_features, idx, variant=variant)  # [C, Q, m]
        abs_mass += np.abs(part).sum(axis=2)
        signed += part.sum(axis=2)
        cols = np.broadcast_to(idx, part.shape)
        for holder, sign in ((best, 1.0), (worst, -1.0)):
            vals = np.concatenate([holder[0], part], axis=2)
            where = np.concatenate([holder[1], cols], axis=2)
            order = np.lexsort((where, -sign * vals), axis=2)[:, :, :k]  # best first, ties to the lower index
            holder[0], holder[1] = np.take_along_axis(vals, order, 2), np.take_along_axis(where, order, 2)
    labels = [f"step {r.step}" if r.step is not None else f"checkpoint {c}" for c, r in enumerate(st.checkpoints)]
    qids = list(query_ids) if query_ids is not None else [str(q) for q in range(n_q)]
    if len(qids) != n_q:
        raise InputError(f"query_ids: {len(qids)} ids for {n_q} queries")
    return InfluenceTimeline(labels, qids, abs_mass, signed, best[1], best[0], worst[1], worst[0], float(mass))
