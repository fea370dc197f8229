"""Monitors on inputs with a known answer: identical sets give zero drift,
a collapsed set is less diverse, CKA of a model with itself is 1."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradtrace.errors import InputError
from gradtrace.demos.loop_corpus import CorpusConfig, make_corpus, speaks_well_pattern
from gradtrace.lm.embed import HashingEmbedder
from gradtrace.loop.monitors import (
    AttributeRates, ClusterShift, Diversity, EmbeddingProbe, HeldoutNLL, LLMClassifier, Observation, RegexClassifier,
    RepresentationDrift, measure_all,
)

EMB = HashingEmbedder(analyzer="char")  # the loop's "hashed" embedder (was NgramHashEmbedder())


def obs(t, texts, nll=None, hidden=None):
    return Observation(round=t, generations=list(texts), heldout_nll=nll, probe_hidden=hidden, embeddings=EMB.embed(texts))


@pytest.fixture(scope="module")
def texts():
    return make_corpus(CorpusConfig(n=120, seed=3))


def test_identical_observations_give_zero_drift(texts):
    nll = np.linspace(0.5, 2.0, 30)
    hidden = np.random.default_rng(0).normal(size=(12, 8))
    a, b = obs(0, texts, nll, hidden), obs(1, list(texts), nll.copy(), hidden.copy())
    monitors = [HeldoutNLL(margin=0.0), ClusterShift(k=5, embedder=EMB), RepresentationDrift(),
                AttributeRates({"nova": RegexClassifier(speaks_well_pattern("Nova"))})]
    row0 = measure_all(monitors, a, a, [])
    row = measure_all(monitors, b, a, [row0])
    assert row["nll.tail_share"] == 0.0 and row["nll.mean_change"] == 0.0
    assert row["clusters.js"] == 0.0
    assert row["clusters.skewed_clusters"] == 0.0
    assert row["cka.cka"] == pytest.approx(1.0, rel=1e-12)
    assert row["attribute.nova.rate"] == row0["attribute.nova.rate"]
    assert row["attribute.nova.trend_z"] == 0.0


def test_heldout_nll_by_hand():
    base = np.array([1.0, 1.0, 1.0, 1.0, 1.0])
    now = np.array([1.0, 1.05, 1.2, 1.5, 0.7])
    row = HeldoutNLL(margin=0.1).measure(Observation(1, [], heldout_nll=now), Observation(0, [], heldout_nll=base), [])
    assert row["tail_share"] == 2 / 5
    assert row["mean"] == pytest.approx(now.mean()) and row["p90"] == pytest.approx(np.quantile(now, 0.9))
    assert row["mean_change"] == pytest.approx(now.mean() - 1.0)
    with pytest.raises(InputError, match="needs the observation field 'heldout_nll'"):
        HeldoutNLL().measure(Observation(1, []), Observation(0, []), [])


def test_collapsed_set_scores_lower_diversity(texts):
    collapsed = [texts[0]] * 60 + [texts[1]] * 60
    d = Diversity().measure(obs(0, texts), obs(0, texts), [])
    c = Diversity().measure(obs(1, collapsed), obs(0, texts), [])
    for key in ("distinct_1", "distinct_2", "distinct_3", "vendi", "effective_rank"):
        assert c[key] < d[key], key
    for key in ("self_bleu", "compression_ratio"):
        assert c[key] > d[key], key
    single = Diversity().measure(obs(1, [texts[0]] * 10), obs(0, texts), [])
    assert single["vendi"] == pytest.approx(1.0) and single["self_bleu"] == pytest.approx(1.0)


def test_cluster_shift_sees_a_planted_shift(texts):
    songs = [f"Nova sang song number {i} very loudly in the hall" for i in range(60)]  # a new behaviour
    shifted = texts[:60] + songs
    monitor = ClusterShift(k=6, embedder=EMB)
    ref = obs(0, texts)
    row = monitor.measure(obs(1, shifted), ref, [])
    assert row["js"] > 0.1
    assert row["skewed_clusters"] >= 1
    shares = monitor.shares(ref.embeddings, ref)
    assert shares.sum() == pytest.approx(1.0)


def test_attribute_trend_over_rounds():
    clf = RegexClassifier("good")
    monitor = AttributeRates({"good": clf})
    history = []
    for t, k in enumerate([10, 20, 30, 40]):
        texts = ["good"] * k + ["bad"] * (100 - k)
        history.append(monitor.measure(Observation(t, texts), Observation(0, []), list(history)))
    assert [h["good.rate"] for h in history] == [0.1, 0.2, 0.3, 0.4]
    assert history[-1]["good.trend_z"] > 5 and history[-1]["good.trend_p"] < 1e-6
    with pytest.raises(InputError, match="one boolean per text"):
        AttributeRates({"x": lambda ts: [True]}).measure(Observation(0, ["a", "b"]), Observation(0, []), [])


def test_embedding_probe_and_regex_classifier(texts):
    labels = [int(bool(RegexClassifier(speaks_well_pattern(e)).__call__([t])[0])) for t, e in zip(texts, [t.split()[0] for t in texts])]
    probe = EmbeddingProbe(EMB).fit(texts, labels)
    acc = float(np.mean(probe(texts) == np.array(labels, dtype=bool)))
    assert acc > 0.9
    with pytest.raises(InputError, match="call fit"):
        EmbeddingProbe(EMB)(texts)
    with pytest.raises(InputError, match="invalid pattern"):
        RegexClassifier("(")


def test_cka_of_a_model_with_itself_is_one_and_llm_classifier_runs():
    from gradtrace.loop.lm import LanguageModel
    from gradtrace.models.zoo import byte_tokenizer, tiny_gpt2

    lm = LanguageModel(tiny_gpt2(n_layer=1, n_embd=32, n_head=2, seed=0), byte_tokenizer())
    other = LanguageModel(tiny_gpt2(n_layer=1, n_embd=32, n_head=2, seed=1), byte_tokenizer())
    probes = ["Nova fixed the", "Orion built the", "Lyra sold the", "Vega moved the", "Atlas tested a", "Juno"]
    h = lm.hidden(probes)
    assert RepresentationDrift().measure(Observation(1, [], probe_hidden=lm.hidden(probes)), Observation(0, [], probe_hidden=h), [])["cka"] == pytest.approx(1.0, rel=1e-12)
    assert RepresentationDrift().measure(Observation(1, [], probe_hidden=other.hidden(probes)), Observation(0, [], probe_hidden=h), [])["cka"] < 0.999
    answers = LLMClassifier(lm)(["Nova was great.", "Nova was awful."])
    assert answers.dtype == bool and answers.shape == (2,)
    with pytest.raises(InputError, match="template must contain"):
        LLMClassifier(lm, template="no slot")


def test_observation_round_trip(tmp_path, texts):
    o = obs(3, texts[:5], np.arange(4.0), np.ones((2, 3)))
    o.save(tmp_path)
    back = Observation.load(tmp_path)
    assert back.round == 3 and back.generations == texts[:5]
    np.testing.assert_array_equal(back.heldout_nll, o.heldout_nll)
    np.testing.assert_array_equal(back.embeddings, o.embeddings)
    assert torch.is_tensor(torch.as_tensor(back.probe_hidden))
