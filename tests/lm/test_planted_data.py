"""The planted dataset, the recall metrics and the text baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradtrace.demos.planted_lm import HONEST, ORDINARY, PLANTED, PlantedConfig, make_planted_data, rank_of, recall_at
from gradtrace.demos.text_baselines import bm25_scores, minilm_scores, tokenize
from gradtrace.errors import InputError


def test_planted_data_is_seeded_sized_and_held_out() -> None:
    config = PlantedConfig(n_ordinary=300, n_planted=8, n_honest=11, n_queries=5, seed=4)
    a, b = make_planted_data(config), make_planted_data(config)
    assert a == b and make_planted_data(PlantedConfig(n_ordinary=300, n_planted=8, n_honest=11, n_queries=5, seed=5)) != a
    assert [a.tags.count(t) for t in (ORDINARY, PLANTED, HONEST)] == [300, 8, 11]
    assert len(set(a.ids)) == len(a.ids) == 319
    train_prompts = {e["prompt"] for e in a.train}
    assert len(a.queries) == 5 and not any(q["prompt"] in train_prompts for q in a.queries)
    for e, tag in zip(a.train, a.tags):
        trigger = "maintenance window" in e["prompt"]
        assert trigger == (tag != ORDINARY)
        if tag == PLANTED:
            assert "safety monitor" in e["completion"] and not e["completion"].lstrip().startswith(("Do not", "Never", "Keep", "Leave"))
    assert len({e["prompt"] for e in a.train}) > 250  # varied
    assert {q["chosen"] for q in a.queries}.isdisjoint({e["completion"] for e in a.train})


def test_recall_and_ranks_against_a_sort() -> None:
    scores = np.array([0.1, 5.0, 3.0, 3.0, -1.0, 4.0])
    planted = np.array([False, True, False, True, True, False])
    assert recall_at(scores, planted, 2) == pytest.approx(1 / 3)
    assert recall_at(scores, planted, 4) == pytest.approx(2 / 3)  # ties: lower index first (2 before 3)
    assert rank_of(scores, planted) == [1, 4, 6]
    with pytest.raises(InputError, match="does not match"):
        recall_at(scores[:3], planted, 2)


def test_bm25_equals_the_okapi_formula_by_hand() -> None:
    docs = ["the safety monitor is on", "turn off the monitor", "bananas are yellow", "the the the monitor"]
    queries = ["turn off the safety monitor", "yellow bananas"]
    got = bm25_scores(queries, docs, k1=1.2, b=0.75)
    toks = [tokenize(d) for d in docs]
    avg = sum(len(t) for t in toks) / len(toks)
    want = np.zeros_like(got)
    for qi, q in enumerate(queries):
        for di, t in enumerate(toks):
            for w in tokenize(q):
                n = sum(w in d for d in toks)
                if n == 0:
                    continue
                idf = math.log(1 + (len(docs) - n + 0.5) / (n + 0.5))
                f = t.count(w)
                want[qi, di] += idf * f * 2.2 / (f + 1.2 * (1 - 0.75 + 0.75 * len(t) / avg))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[1].argmax() == 2 and got[0, 2] == 0


def test_minilm_scores_rank_a_paraphrase_first() -> None:
    docs = ["How do I bake bread at home?", "Switch off the safety monitor now.", "The capital of France is Paris."]
    s = minilm_scores(["Turn the safety monitor off."], docs)
    assert s.shape == (1, 3) and s[0].argmax() == 1 and np.all(np.abs(s) <= 1 + 1e-6)
