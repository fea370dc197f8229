"""The ``fine`` level of the diff: small regions of sentences that one model
writes and the other does not, found on the exploration half.

A behaviour that 5% of B's answers show is a handful of sentences among
hundreds: KMeans with k chosen by silhouette folds them into a larger
cluster, where their signal drowns. Here every exploration row (a sentence)
looks at its ``k`` nearest rows (cosine; rows of its own text excluded). A
row is *enriched* for B when, for some ``j`` from ``min_rows - 1`` to ``k``,
so many of the row and its ``j`` nearest come from B that a one-sided
binomial tail at B's overall share of rows is ``<= level`` (likewise for A):
a patch of ``min_rows`` sentences is found however large ``k`` is. Enriched rows of the same side that are neighbours of each
other form a region (connected components). Regions are ranked by the
Fisher p-value of their exploration texts (a text is in when one of its rows
is), and the ``n_regions`` best are kept for testing on the validation half,
whose rows join the region of their nearest exploration row.

Only exploration labels choose the regions, so the held-out test of each
region stays valid; only ``n_regions`` tests join the diff's family.
"""

from __future__ import annotations

import numpy as np

from .stats import ShareTable, share_test


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def neighbours(x: np.ndarray, owner: np.ndarray, k: int) -> np.ndarray:
    """``[n, k]`` indices of each row's ``k`` most similar rows (cosine), rows of the same owner excluded;
    ties broken by index. Fewer than ``k`` candidates: the row's own index pads (it never counts twice)."""
    u = _unit(x)
    n = u.shape[0]
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, 512):
        sims = u[start:start + 512] @ u.T
        rows = np.arange(start, min(start + 512, n))
        sims[owner[rows][:, None] == owner[None, :]] = -np.inf
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        valid = np.take_along_axis(sims, order, axis=1) > -np.inf
        out[rows] = np.where(valid, order, rows[:, None])
    return out


def enriched_regions(x: np.ndarray, owner: np.ndarray, model_of_owner: np.ndarray, k: int, n_regions: int,
                     level: float = 0.05, min_rows: int = 5) -> list[np.ndarray]:
    """Boolean masks over the rows of ``x``: the ``n_regions`` regions with the smallest exploration Fisher
    p-value (ties by their first row), best first. ``model_of_owner[t]``: 1 if text ``t`` is from B."""
    from scipy import stats

    n = x.shape[0]
    k = int(max(1, min(k, n - 1)))
    nb = neighbours(x, owner, k)
    side = model_of_owner[owner].astype(np.int64)  # 1 = B
    share = float(side.mean())
    real = nb != np.arange(n)[:, None]  # padding (the row itself) does not count
    b_prefix = 1 * side[:, None] + np.cumsum(np.where(real, side[nb], 0), axis=1)  # B rows among the row and its first j+1
    n_prefix = 1 + np.cumsum(real, axis=1)
    ok = n_prefix >= min_rows
    tail_b = np.where(ok, stats.binom.sf(b_prefix - 1, n_prefix, share), 1.0).min(axis=1)  # P(X >= b), best prefix
    tail_a = np.where(ok, stats.binom.cdf(b_prefix, n_prefix, share), 1.0).min(axis=1)  # P(X <= b)
    direction = np.where(tail_b <= level, 1, np.where(tail_a <= level, 0, -1))
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    for i in np.flatnonzero(direction >= 0):
        for j in nb[i]:
            if j != i and direction[j] == direction[i]:
                ri, rj = find(int(i)), find(int(j))
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
    comps: dict[int, list[int]] = {}
    for i in np.flatnonzero(direction >= 0):
        comps.setdefault(find(int(i)), []).append(int(i))
    n_texts = len(model_of_owner)
    scored = []
    for rows in comps.values():
        texts = np.unique(owner[rows])
        if texts.size < 2:
            continue
        has = np.zeros(n_texts, bool)
        has[texts] = True
        table = ShareTable(b_in=int((has & (model_of_owner == 1)).sum()), a_in=int((has & (model_of_owner == 0)).sum()),
                           b_out=int((~has & (model_of_owner == 1)).sum()), a_out=int((~has & (model_of_owner == 0)).sum()))
        scored.append((share_test(table, "fisher"), min(rows), rows))
    scored.sort(key=lambda s: (s[0], s[1]))
    masks = []
    for _, _, rows in scored[:n_regions]:
        m = np.zeros(n, bool)
        m[rows] = True
        masks.append(m)
    return masks


def nearest(x_from: np.ndarray, x_to: np.ndarray) -> np.ndarray:
    """Index of the most similar row of ``x_to`` (cosine) for each row of ``x_from``; ties by index."""
    u, v = _unit(x_from), _unit(x_to)
    out = np.empty(u.shape[0], dtype=np.int64)
    for start in range(0, u.shape[0], 1024):
        out[start:start + 1024] = np.argmax(u[start:start + 1024] @ v.T, axis=1)
    return out
