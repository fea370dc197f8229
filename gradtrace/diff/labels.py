"""Cluster labels, offline: c-TF-IDF keywords and medoids, and a check of each
label on held-out texts.

c-TF-IDF (as in BERTopic) treats each cluster as one document: the weight of
term t in cluster c is ``tf(t, c) * log(1 + A / f(t))`` with ``tf`` the
term's count in the cluster divided by the cluster's total term count, ``f(t)``
the term's count over all clusters and ``A`` the mean number of terms per
cluster. Terms frequent in one cluster and rare elsewhere score high, which is
what "contrasted with the rest" means here.

A label is validated by using it: embed the label, rank a balanced held-out
set (validation texts in the cluster and as many outside it) by cosine
similarity to the label, call the top half "in the cluster", and report the
accuracy (0.5 is chance).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import InputError


def c_tf_idf(docs_by_cluster: Sequence[Sequence[str]], n_keywords: int = 8, stop_words: str | None = "english") -> list[list[tuple[str, float]]]:
    """Top ``n_keywords`` (term, weight) per cluster, highest weight first (ties by term)."""
    from sklearn.feature_extraction.text import CountVectorizer

    if n_keywords < 1:
        raise InputError(f"n_keywords must be >= 1; got {n_keywords!r}")
    joined = [" ".join(docs) for docs in docs_by_cluster]
    if not any(s.strip() for s in joined):
        return [[] for _ in joined]
    vectorizer = CountVectorizer(stop_words=stop_words, token_pattern=r"(?u)\b[^\W\d_][^\W\d_]+\b", lowercase=True)
    try:
        counts = vectorizer.fit_transform(joined).toarray().astype(float)
    except ValueError:  # only stop words
        return [[] for _ in joined]
    terms = vectorizer.get_feature_names_out()
    totals = counts.sum(axis=1, keepdims=True)
    tf = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    f = counts.sum(axis=0)
    a = counts.sum() / counts.shape[0]
    weights = tf * np.log(1.0 + a / f)
    out = []
    for row in weights:
        order = sorted(np.flatnonzero(row > 0), key=lambda j: (-row[j], terms[j]))[:n_keywords]
        out.append([(str(terms[j]), float(row[j])) for j in order])
    return out


def medoids(x: np.ndarray, labels: np.ndarray, cluster: int, n: int) -> list[int]:
    """Indices of the ``n`` rows of ``cluster`` closest (cosine) to the cluster's mean; ties by index."""
    idx = np.flatnonzero(labels == cluster)
    if idx.size == 0:
        return []
    rows = _unit(x[idx])
    centre = _unit(rows.mean(axis=0, keepdims=True))[0]
    sims = rows @ centre
    order = np.lexsort((idx, -sims))
    return [int(idx[j]) for j in order[:n]]


def validate_label(label_vec: np.ndarray, x: np.ndarray, in_cluster: np.ndarray, rng: np.random.Generator, max_per_side: int = 200) -> float:
    """Accuracy of picking in-cluster rows by similarity to the label embedding.

    A balanced set: ``m = min(#in, #out, max_per_side)`` rows from inside the
    cluster and ``m`` from outside (seeded draw); the ``m`` rows most similar to
    the label are predicted "in". Returns nan when either side is empty.
    """
    pos = np.flatnonzero(in_cluster)
    neg = np.flatnonzero(~in_cluster)
    m = min(pos.size, neg.size, max_per_side)
    if m == 0:
        return float("nan")
    pos = rng.choice(pos, size=m, replace=False) if pos.size > m else pos
    neg = rng.choice(neg, size=m, replace=False) if neg.size > m else neg
    rows = np.concatenate([pos, neg])
    truth = np.concatenate([np.ones(m, bool), np.zeros(m, bool)])
    sims = _unit(x[rows]) @ _unit(np.asarray(label_vec, dtype=np.float32)[None, :])[0]
    order = np.lexsort((rows, -sims))
    predicted = np.zeros(2 * m, bool)
    predicted[order[:m]] = True
    return float((predicted == truth).mean())


def keyword_label(keywords: Sequence[tuple[str, float]], n: int = 5) -> str:
    """A readable label from the top keywords."""
    return ", ".join(term for term, _ in keywords[:n]) or "(no distinctive words)"


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)
