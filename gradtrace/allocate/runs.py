"""Influence across runs: how stable is an attribution when the same data
is trained again (another seed, data order or hyper-parameters)?

All functions take score matrices ``[n_query, n_train]`` over the same
training examples in the same order (one per run), e.g. from
:meth:`gradtrace.Attributor.score` on each run's store.

* :func:`spearman_rows`: per query, Spearman's rank correlation of the two
  runs' scores (ties get their average rank).
* :func:`topk_jaccard`: per query, ``|A ∩ B| / |A ∪ B|`` of the two runs'
  top-``k`` proponents (``largest=False``: opponents); ties at the k-th
  score go to the lower index.
* :func:`most_different`: per query, the examples whose influence differs
  most: the largest ``|z_1 − z_2|`` where ``z = score / std(row)`` puts
  each run's row on its own scale (runs differ in learning rate and length).
* :func:`average_runs`: TracIn over several runs, the mean of their score
  matrices (the sum over every run's checkpoints, divided by the number of runs).
* :func:`split_half_stability`: how much averaging stabilises the ranking:
  for ``m = 1 .. n_runs // 2``, disjoint pairs of ``m``-run subsets ``A``,
  ``B`` are drawn (all of them when few, else ``max_splits`` at random from
  a seeded generator) and the mean over queries of Spearman and top-``k``
  Jaccard between ``average(A)`` and ``average(B)`` is reported. ``m = 1``
  is the agreement of two single runs; the curve's rise with ``m`` is what
  averaging buys.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Sequence

import numpy as np

from ..configbase import positive_int
from ..errors import InputError


def _matrix(scores: Any, what: str) -> np.ndarray:
    a = np.asarray(scores, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] == 0:
        raise InputError(f"{what} must be a [n_query, n_train] score matrix; got shape {a.shape}")
    if not np.isfinite(a).all():
        raise InputError(f"{what} holds non-finite scores")
    return a


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = _matrix(a, "scores of run 1"), _matrix(b, "scores of run 2")
    if x.shape != y.shape:
        raise InputError(f"the two runs' score matrices differ in shape: {x.shape} vs {y.shape} (same queries and training data?)")
    return x, y


def _ranks(row: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(row, kind="mergesort")
    sorted_vals = row[order]
    first = np.concatenate([[True], sorted_vals[1:] != sorted_vals[:-1]])
    group = np.cumsum(first)  # 1-based tie group of each sorted position
    bounds = np.concatenate([np.nonzero(first)[0], [row.size]])
    ranks = np.empty(row.size, dtype=np.float64)
    ranks[order] = 0.5 * (bounds[group] + bounds[group - 1] + 1)
    return ranks


def spearman_rows(a: Any, b: Any) -> np.ndarray:
    """``[n_query]`` Spearman correlations (NaN where a row is constant)."""
    x, y = _pair(a, b)
    out = np.empty(x.shape[0])
    for q in range(x.shape[0]):
        rx, ry = _ranks(x[q]), _ranks(y[q])
        rx, ry = rx - rx.mean(), ry - ry.mean()
        den = np.sqrt((rx * rx).sum() * (ry * ry).sum())
        out[q] = (rx * ry).sum() / den if den > 0 else np.nan
    return out


def top_indices(scores: Any, k: int, largest: bool = True) -> np.ndarray:
    """``[n_query, k]`` indices of each row's ``k`` best, best first, ties to the lower index."""
    positive_int(k, "k")
    s = _matrix(scores, "scores")
    k = min(k, s.shape[1])
    idx = np.broadcast_to(np.arange(s.shape[1]), s.shape)
    return np.lexsort((idx, -s if largest else s), axis=1)[:, :k]


def topk_jaccard(a: Any, b: Any, k: int = 10, largest: bool = True) -> np.ndarray:
    """``[n_query]`` Jaccard overlap of the two runs' top-``k`` sets."""
    x, y = _pair(a, b)
    ta, tb = top_indices(x, k, largest), top_indices(y, k, largest)
    return np.array([len(set(r1) & set(r2)) / len(set(r1) | set(r2)) for r1, r2 in zip(ta.tolist(), tb.tolist())])


def standardised(scores: Any) -> np.ndarray:
    """Each row divided by its standard deviation (a constant row stays 0)."""
    s = _matrix(scores, "scores")
    sd = s.std(axis=1, keepdims=True)
    return np.divide(s, sd, out=np.zeros_like(s), where=sd > 0)


def most_different(a: Any, b: Any, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """``(indices [n_query, n], z_1 − z_2 at them)``: per query the ``n``
    examples with the largest ``|z_1 − z_2|`` (see the module docstring)."""
    positive_int(n, "n")
    x, y = _pair(a, b)
    diff = standardised(x) - standardised(y)
    idx = top_indices(np.abs(diff), n, largest=True)
    return idx, np.take_along_axis(diff, idx, 1)


def average_runs(runs: Sequence[Any]) -> np.ndarray:
    """The mean of the runs' ``[n_query, n_train]`` score matrices."""
    if len(runs) == 0:
        raise InputError("runs: need at least one score matrix")
    mats = [_matrix(r, f"scores of run {i + 1}") for i, r in enumerate(runs)]
    if any(m.shape != mats[0].shape for m in mats):
        raise InputError(f"runs: score matrices differ in shape: {[m.shape for m in mats]}")
    return np.mean(mats, axis=0)


@dataclasses.dataclass(frozen=True)
class RunComparison:
    """Two runs compared query by query (see the module docstring)."""

    spearman: np.ndarray
    jaccard: np.ndarray
    jaccard_opponents: np.ndarray
    differ: np.ndarray
    differ_z: np.ndarray
    k: int

    def summary(self) -> dict[str, float]:
        return {"spearman_mean": float(np.nanmean(self.spearman)) if np.isfinite(self.spearman).any() else float("nan"),
                "jaccard_mean": float(self.jaccard.mean()), "jaccard_opponents_mean": float(self.jaccard_opponents.mean()),
                "k": self.k}


def compare_runs(a: Any, b: Any, k: int = 10, n_differ: int = 10) -> RunComparison:
    """Spearman, top-``k`` Jaccard (proponents and opponents) and the most different examples, per query."""
    return RunComparison(spearman_rows(a, b), topk_jaccard(a, b, k, True), topk_jaccard(a, b, k, False),
                         *most_different(a, b, n_differ), k=k)


def split_half_stability(runs: Sequence[Any], k: int = 10, max_splits: int = 20, seed: int = 0) -> list[dict[str, float]]:
    """``[{m, spearman, jaccard, n_splits}]`` for ``m = 1 .. len(runs) // 2`` (see the module docstring)."""
    positive_int(max_splits, "max_splits")
    if len(runs) < 2:
        raise InputError(f"runs: split-half stability needs at least 2 runs; got {len(runs)}")
    mats = [_matrix(r, f"scores of run {i + 1}") for i, r in enumerate(runs)]
    average_runs(mats)  # shapes checked
    rng = np.random.default_rng(seed)
    n = len(mats)
    out = []
    for m in range(1, n // 2 + 1):
        pairs = [(a, b) for a in itertools.combinations(range(n), m) for b in itertools.combinations(range(n), m)
                 if a < b and not set(a) & set(b)]
        if len(pairs) > max_splits:
            pairs = [pairs[i] for i in sorted(rng.choice(len(pairs), size=max_splits, replace=False))]
        rho, jac = [], []
        for a, b in pairs:
            xa, xb = average_runs([mats[i] for i in a]), average_runs([mats[i] for i in b])
            rho.append(float(np.nanmean(spearman_rows(xa, xb))))
            jac.append(float(topk_jaccard(xa, xb, k).mean()))
        out.append({"m": m, "spearman": float(np.mean(rho)), "jaccard": float(np.mean(jac)), "n_splits": len(pairs)})
    return out
