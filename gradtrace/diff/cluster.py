"""Clustering of embeddings: KMeans with k chosen by silhouette, or HDBSCAN.

A clusterer is fitted on the exploration half and then assigns the validation
half; label ``-1`` means "unassigned" (HDBSCAN noise, or a validation point
whose nearest exploration point is noise). Results do not depend on the order
of the input: callers sort rows by text hash before fitting (see
:func:`gradtrace.diff.pipeline.diff_texts`), and ties inside scikit-learn are
resolved by a seeded ``random_state``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np

from ..configbase import ConfigBase, int_at_least, one_of
from ..errors import InputError

METHODS = ("kmeans", "hdbscan")


class Clusterer(Protocol):
    """What the pipeline needs from a clustering method."""

    def fit(self, x: np.ndarray) -> np.ndarray: ...
    def assign(self, x: np.ndarray) -> np.ndarray: ...
    @property
    def n_clusters(self) -> int: ...


@dataclasses.dataclass(frozen=True)
class ClusterConfig(ConfigBase):
    """How to cluster one level (texts or sentences).

    ``method``: ``kmeans`` (k chosen among ``k_min..k_max`` by the silhouette
    score on at most ``silhouette_sample`` points) or ``hdbscan``
    (``min_cluster_size``). ``seed`` fixes KMeans initialisation and the
    silhouette sample.
    """

    method: str = "kmeans"
    k_min: int = 4
    k_max: int = 24
    min_cluster_size: int = 10
    silhouette_sample: int = 3000
    n_init: int = 4
    seed: int = 0

    _prefix = "cluster."
    _checks = {
        "method": one_of(METHODS), "k_min": int_at_least(2), "k_max": int_at_least(1), "min_cluster_size": int_at_least(2),
        "silhouette_sample": int_at_least(1), "n_init": int_at_least(1),
    }

    def _check(self) -> None:
        if self.k_max < self.k_min:
            raise InputError(f"cluster.k_max must be >= k_min ({self.k_min}); got {self.k_max!r}")

    def make(self, seed: int | None = None) -> "Clusterer":
        """A fresh clusterer with these settings (and ``seed`` if given)."""
        s = self.seed if seed is None else seed
        if self.method == "kmeans":
            return KMeansClusterer(self.k_min, self.k_max, s, self.silhouette_sample, self.n_init)
        return HDBSCANClusterer(self.min_cluster_size)


class KMeansClusterer:
    """KMeans; k is the candidate with the highest silhouette score."""

    def __init__(self, k_min: int = 4, k_max: int = 24, seed: int = 0, silhouette_sample: int = 3000, n_init: int = 4):
        self.k_min, self.k_max, self.seed = k_min, k_max, seed
        self.silhouette_sample, self.n_init = silhouette_sample, n_init
        self.scores: dict[int, float] = {}
        self._model: Any = None

    @property
    def n_clusters(self) -> int:
        if self._model is None:
            raise InputError("the clusterer has not been fitted; call fit() first")
        return int(self._model.n_clusters)

    def fit(self, x: np.ndarray) -> np.ndarray:
        from sklearn.cluster import KMeans
        from sklearn.metrics import silhouette_score

        x = _check_matrix(x)
        n = x.shape[0]
        if n < 2 * self.k_min:
            raise InputError(
                f"too few samples for the requested clusters: {n} exploration rows cannot form k_min={self.k_min} "
                f"clusters of at least 2; lower k_min or sample more texts"
            )
        k_hi = min(self.k_max, n // 2, len(np.unique(x, axis=0)))  # no more clusters than distinct rows
        best: tuple[float, int, Any] | None = None
        self.scores = {}
        for k in range(self.k_min, k_hi + 1):
            model = KMeans(n_clusters=k, n_init=self.n_init, random_state=self.seed).fit(x)
            if len(set(model.labels_.tolist())) < 2:
                continue
            size = min(self.silhouette_sample, n)
            score = float(silhouette_score(x, model.labels_, sample_size=size if size < n else None, random_state=self.seed))
            self.scores[k] = score
            if best is None or score > best[0]:
                best = (score, k, model)
        if best is None:
            raise InputError(f"KMeans found no split of {n} rows into at least 2 clusters (are all embeddings equal?)")
        self._model = best[2]
        return np.asarray(self._model.labels_, dtype=np.int64)

    def assign(self, x: np.ndarray) -> np.ndarray:
        if self._model is None:
            raise InputError("the clusterer has not been fitted; call fit() first")
        return np.asarray(self._model.predict(_check_matrix(x)), dtype=np.int64)


class HDBSCANClusterer:
    """scikit-learn's HDBSCAN; a new point takes the label of its nearest fitted point (``-1`` is noise)."""

    def __init__(self, min_cluster_size: int = 10):
        self.min_cluster_size = min_cluster_size
        self._x: np.ndarray | None = None
        self._labels: np.ndarray | None = None

    @property
    def n_clusters(self) -> int:
        if self._labels is None:
            raise InputError("the clusterer has not been fitted; call fit() first")
        return int(self._labels.max() + 1) if self._labels.size else 0

    def fit(self, x: np.ndarray) -> np.ndarray:
        from sklearn.cluster import HDBSCAN

        x = _check_matrix(x)
        if x.shape[0] < 2 * self.min_cluster_size:
            raise InputError(
                f"too few samples for the requested clusters: {x.shape[0]} exploration rows, "
                f"min_cluster_size={self.min_cluster_size}; need at least {2 * self.min_cluster_size}"
            )
        labels = HDBSCAN(min_cluster_size=self.min_cluster_size, copy=True).fit(x).labels_
        self._x, self._labels = x, np.asarray(labels, dtype=np.int64)
        return self._labels.copy()

    def assign(self, x: np.ndarray) -> np.ndarray:
        if self._x is None or self._labels is None:
            raise InputError("the clusterer has not been fitted; call fit() first")
        x = _check_matrix(x)
        out = np.empty(x.shape[0], dtype=np.int64)
        for start in range(0, x.shape[0], 1024):
            block = x[start : start + 1024]
            d = (block**2).sum(1)[:, None] - 2 * block @ self._x.T + (self._x**2).sum(1)[None, :]
            out[start : start + 1024] = self._labels[np.argmin(d, axis=1)]
        return out


def stability(x: np.ndarray, config: ClusterConfig, seeds: list[int]) -> float:
    """Mean adjusted Rand index between the fit at ``config.seed`` and fits at other seeds.

    1.0: the same partition whatever the seed; near 0: chance agreement.
    HDBSCAN has no seed, so its stability is 1.0 by construction.
    """
    from sklearn.metrics import adjusted_rand_score

    base = config.make().fit(x)
    others = [s for s in seeds if s != config.seed]
    if not others or config.method == "hdbscan":
        return 1.0
    return float(np.mean([adjusted_rand_score(base, config.make(s).fit(x)) for s in others]))


def _check_matrix(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise InputError(f"embeddings must be a non-empty 2-D array; got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise InputError("embeddings contain NaN or infinite values")
    return x
