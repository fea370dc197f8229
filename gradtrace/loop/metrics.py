"""The numbers the loop's monitors report, as plain functions with known answers.

Every function here is deterministic and takes plain data (texts, arrays), so
each can be checked against a closed form or a brute-force oracle:

* :func:`distinct_n` — unique n-grams / all n-grams (1 for all-unique text).
* :func:`self_bleu` — mean BLEU of each sampled text against another
  (1 for identical texts, near 0 for texts sharing no words): higher means
  less diverse.
* :func:`compression_ratio` — raw bytes / zlib bytes: higher means more
  repetitive.
* :func:`vendi_score` — ``exp`` of the entropy of the eigenvalues of the
  cosine kernel ``K / n``: 1 for n identical items, n for n orthogonal ones.
* :func:`effective_rank` — ``exp`` of the entropy of the normalised singular
  values of the embedding matrix (Roy and Vetterli, 2007).
* :func:`js_divergence` — Jensen-Shannon divergence in bits (0 to 1).
* :func:`linear_cka` — linear centred kernel alignment (Kornblith et al.,
  2019): 1 for identical representations, invariant to rotation and scale.
* :func:`cochran_armitage` — the trend test for proportions over rounds.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from typing import Sequence

import numpy as np

from ..errors import InputError


def words(text: str) -> list[str]:
    """Lower-cased whitespace tokens (the unit of distinct-n and BLEU)."""
    return text.lower().split()


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams over all n-grams of all texts (0 when there are none)."""
    if n < 1:
        raise InputError(f"distinct_n: n must be >= 1; got {n!r}")
    grams = [g for t in texts for g in ngrams(words(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def sentence_bleu(hypothesis: Sequence[str], reference: Sequence[str], max_n: int = 4) -> float:
    """BLEU of one tokenised hypothesis against one reference.

    Geometric mean of clipped n-gram precisions for n = 1..max_n times the
    brevity penalty. Precisions with no match are smoothed by add-one on
    numerator and denominator for n > 1 (Lin and Och's smoothing 2), so that
    short texts do not all score 0; n = 1 is not smoothed (no shared word
    gives 0).
    """
    if not hypothesis or not reference:
        return 0.0
    log_sum = 0.0
    for n in range(1, max_n + 1):
        hyp, ref = Counter(ngrams(hypothesis, n)), Counter(ngrams(reference, n))
        total = sum(hyp.values())
        match = sum(min(c, ref[g]) for g, c in hyp.items())
        if n == 1:
            if match == 0:
                return 0.0
            log_sum += math.log(match / total)
        else:
            log_sum += math.log((match + 1) / (total + 1))
    bp = 1.0 if len(hypothesis) > len(reference) else math.exp(1 - len(reference) / len(hypothesis))
    return bp * math.exp(log_sum / max_n)


def self_bleu(texts: Sequence[str], n_pairs: int = 200, seed: int = 0, max_n: int = 4) -> float:
    """Mean BLEU over ``n_pairs`` ordered pairs (i != j) drawn with a seeded
    generator (all pairs when there are fewer). Higher means less diverse."""
    m = len(texts)
    if m < 2:
        return 0.0
    toks = [words(t) for t in texts]
    if m * (m - 1) <= n_pairs:
        pairs = [(i, j) for i in range(m) for j in range(m) if i != j]
    else:
        rng = np.random.default_rng(seed)
        i = rng.integers(0, m, size=n_pairs)
        j = (i + rng.integers(1, m, size=n_pairs)) % m
        pairs = list(zip(i.tolist(), j.tolist()))
    return float(np.mean([sentence_bleu(toks[a], toks[b], max_n) for a, b in pairs]))


def compression_ratio(texts: Sequence[str]) -> float:
    """Bytes of the newline-joined texts over their zlib (level 9) size."""
    raw = "\n".join(texts).encode("utf-8")
    if not raw:
        return 0.0
    return len(raw) / len(zlib.compress(raw, 9))


def _entropy_exp(weights: np.ndarray) -> float:
    w = np.clip(weights, 0.0, None)
    total = w.sum()
    if total <= 0:
        return 0.0
    p = w / total
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise InputError(f"embeddings must be a 2-D array [n, d]; got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise InputError("embeddings: every row must be non-zero (cosine similarity is undefined for a zero row)")
    return x / norms


def vendi_score(embeddings: np.ndarray) -> float:
    """Vendi score (Friedman and Dieng, 2023) with the cosine kernel: the
    effective number of distinct items, from 1 (all alike) to n."""
    x = _unit_rows(embeddings)
    n = x.shape[0]
    if n == 0:
        return 0.0
    # The non-zero eigenvalues of X X^T / n equal those of X^T X / n: use the smaller.
    gram = x @ x.T if n <= x.shape[1] else x.T @ x
    eig = np.linalg.eigvalsh(gram / n)
    return _entropy_exp(eig)


def effective_rank(embeddings: np.ndarray) -> float:
    """``exp`` of the entropy of the singular values (normalised to sum 1) of
    the row-normalised embedding matrix."""
    x = _unit_rows(embeddings)
    if x.shape[0] == 0:
        return 0.0
    return _entropy_exp(np.linalg.svd(x, compute_uv=False))


def js_divergence(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen-Shannon divergence of two distributions, in bits (0 to 1).

    Inputs are non-negative weights of equal length, normalised here."""
    a, b = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise InputError(f"js_divergence: p and q must be 1-D of one length; got shapes {a.shape} and {b.shape}")
    if np.any(a < 0) or np.any(b < 0) or a.sum() <= 0 or b.sum() <= 0:
        raise InputError("js_divergence: weights must be non-negative with a positive sum")
    a, b = a / a.sum(), b / b.sum()
    m = (a + b) / 2

    def kl(x: np.ndarray) -> float:
        keep = x > 0
        return float((x[keep] * np.log2(x[keep] / m[keep])).sum())

    return max(0.0, 0.5 * kl(a) + 0.5 * kl(b))


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two representations of the same n inputs:
    ``|Yc^T Xc|_F^2 / (|Xc^T Xc|_F |Yc^T Yc|_F)`` with column-centred X, Y."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise InputError(f"linear_cka: need two 2-D arrays with the same number of rows; got {a.shape} and {b.shape}")
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    num = np.linalg.norm(b.T @ a) ** 2
    den = np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)
    if den == 0:
        raise InputError("linear_cka: a representation is constant across inputs (zero variance)")
    return float(num / den)


def cochran_armitage(successes: Sequence[int], totals: Sequence[int], scores: Sequence[float] | None = None) -> tuple[float, float]:
    """Cochran-Armitage test for a linear trend in proportions.

    Group i has ``successes[i]`` of ``totals[i]``; ``scores`` default to
    0, 1, 2, ... (the round). Returns ``(z, two-sided p-value)``; ``z > 0``
    means the rate rises with the score. ``z**2 = N r**2`` with ``r`` the
    Pearson correlation of score and outcome over all N individuals.
    """
    x = np.asarray(successes, dtype=np.float64)
    n = np.asarray(totals, dtype=np.float64)
    s = np.arange(len(x), dtype=np.float64) if scores is None else np.asarray(scores, dtype=np.float64)
    if not (x.shape == n.shape == s.shape) or x.ndim != 1:
        raise InputError("cochran_armitage: successes, totals and scores must be 1-D of one length")
    if np.any(x < 0) or np.any(x > n):
        raise InputError("cochran_armitage: need 0 <= successes <= totals in every group")
    big_n = n.sum()
    if big_n == 0:
        return 0.0, 1.0
    p = x.sum() / big_n
    t = float((s * (x - n * p)).sum())
    var = p * (1 - p) * float((n * s**2).sum() - (n * s).sum() ** 2 / big_n)
    if var <= 0:
        return 0.0, 1.0
    z = t / math.sqrt(var)
    return z, math.erfc(abs(z) / math.sqrt(2))
