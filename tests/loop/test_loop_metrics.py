"""The loop's metrics against closed forms and independent oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import pearsonr

from gradtrace.errors import InputError
from gradtrace.loop import metrics as M


def test_distinct_n_by_hand():
    texts = ["a b a b", "a c"]
    # unigrams a b a b a c: 3 unique of 6; bigrams ab ba ab ac: 3 unique of 4
    assert M.distinct_n(texts, 1) == pytest.approx(3 / 6, abs=0, rel=0)
    assert M.distinct_n(texts, 2) == 3 / 4
    assert M.distinct_n(texts, 3) == 2 / 2
    assert M.distinct_n(["a"], 2) == 0.0
    with pytest.raises(InputError, match="n must be >= 1"):
        M.distinct_n(texts, 0)


def test_sentence_bleu_by_hand():
    hyp, ref = "the cat sat on the mat".split(), "the cat is on the mat".split()
    expected = (5 / 6 * 4 / 6 * 2 / 5 * 1 / 4) ** 0.25  # clipped p1; add-one smoothed p2..p4; BP = 1
    assert M.sentence_bleu(hyp, ref) == pytest.approx(expected, rel=1e-12)
    assert M.sentence_bleu(hyp, hyp) == pytest.approx(1.0, rel=1e-12)
    assert M.sentence_bleu("x y".split(), "a b".split()) == 0.0
    short = "the cat".split()  # brevity penalty exp(1 - 6/2)
    p = (2 / 2) * ((1 + 1) / (1 + 1)) * (1 / 1) * (1 / 1)
    assert M.sentence_bleu(short, ref) == pytest.approx(math.exp(1 - 6 / 2) * p ** 0.25, rel=1e-12)


def test_self_bleu_identical_and_disjoint():
    assert M.self_bleu(["a b c d"] * 5) == pytest.approx(1.0)
    assert M.self_bleu(["a b", "c d", "e f"]) == 0.0
    # all 6 ordered pairs used when there are fewer than n_pairs
    texts = ["a b c", "a b d", "x y z"]
    pairs = [M.sentence_bleu(M.words(texts[i]), M.words(texts[j])) for i in range(3) for j in range(3) if i != j]
    assert M.self_bleu(texts, n_pairs=100) == pytest.approx(np.mean(pairs))


def test_compression_ratio_orders_repetition():
    diverse = [f"sentence number {i} says {w}" for i, w in enumerate("alpha beta gamma delta epsilon zeta eta theta".split())]
    assert M.compression_ratio(["same sentence here"] * 8) > M.compression_ratio(diverse)


def test_vendi_and_effective_rank_known_answers():
    n, d = 6, 10
    same = np.tile(np.arange(1.0, d + 1), (n, 1))
    ortho = np.eye(d)[:n] * 3.0
    assert M.vendi_score(same) == pytest.approx(1.0, abs=1e-9)
    assert M.vendi_score(ortho) == pytest.approx(n, rel=1e-9)
    assert M.effective_rank(same) == pytest.approx(1.0, abs=1e-9)
    assert M.effective_rank(ortho) == pytest.approx(n, rel=1e-9)
    # rows e1, e1, e2: singular values sqrt(2) and 1
    s = np.array([math.sqrt(2), 1.0])
    p = s / s.sum()
    assert M.effective_rank(np.array([[1.0, 0], [2.0, 0], [0, 5.0]])) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-12)


def test_vendi_equals_the_n_by_n_kernel_formula():
    rng = np.random.default_rng(0)
    for n, d in ((5, 12), (30, 4)):  # both branches (n <= d uses X X^T, n > d uses X^T X)
        x = rng.normal(size=(n, d))
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        lam = np.linalg.eigvalsh(u @ u.T / n)
        lam = lam[lam > 1e-15]
        assert M.vendi_score(x) == pytest.approx(math.exp(-(lam * np.log(lam)).sum()), rel=1e-9)


def test_js_divergence_against_scipy():
    assert M.js_divergence([1, 2, 3], [1, 2, 3]) == 0.0
    assert M.js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    p, q = [0.1, 0.6, 0.3], [0.3, 0.3, 0.4]
    assert M.js_divergence(p, q) == pytest.approx(jensenshannon(p, q, base=2) ** 2, rel=1e-10)
    with pytest.raises(InputError, match="one length"):
        M.js_divergence([1, 2], [1, 2, 3])


def _cka_hsic(x: np.ndarray, y: np.ndarray) -> float:
    """Oracle: CKA from the HSIC of the Gram matrices with the centring matrix H."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float(np.trace(k @ l) / math.sqrt(np.trace(k @ k) * np.trace(l @ l)))


def test_linear_cka_known_answers_and_oracle():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 6))
    assert M.linear_cka(x, x) == pytest.approx(1.0, rel=1e-12)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert M.linear_cka(x, 3.0 * x @ q + 2.0) == pytest.approx(1.0, rel=1e-10)  # rotation, scale, shift
    y = rng.normal(size=(20, 4))
    assert M.linear_cka(x, y) == pytest.approx(_cka_hsic(x, y), rel=1e-10)
    assert M.linear_cka(x, y) < 0.6
    with pytest.raises(InputError, match="constant"):
        M.linear_cka(x, np.ones((20, 3)))


def test_cochran_armitage_equals_n_r_squared():
    successes, totals = [5, 9, 14, 20], [40, 40, 42, 38]
    z, p = M.cochran_armitage(successes, totals)
    score = np.concatenate([np.full(n, i, dtype=float) for i, n in enumerate(totals)])
    outcome = np.concatenate([np.r_[np.ones(s), np.zeros(n - s)] for s, n in zip(successes, totals)])
    r = pearsonr(score, outcome)[0]
    assert z ** 2 == pytest.approx(len(score) * r ** 2, rel=1e-10)
    assert z > 0 and p == pytest.approx(math.erfc(abs(z) / math.sqrt(2)))
    z_down, _ = M.cochran_armitage(successes[::-1], totals[::-1])
    assert z_down == pytest.approx(-z)
    assert M.cochran_armitage([5, 5, 5], [10, 10, 10]) == (0.0, 1.0)
    with pytest.raises(InputError, match="successes <= totals"):
        M.cochran_armitage([11], [10])
