"""Units, labels (c-TF-IDF by hand, medoids, validation), the embedding cache, HDBSCAN, the judge's parsing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradtrace.diff import labels as lab
from gradtrace.diff.cluster import ClusterConfig, HDBSCANClusterer, KMeansClusterer, stability
from gradtrace.lm.embed import CachedEmbedder, HashingEmbedder
from gradtrace.diff.judge import judge, label_and_judge, llm_label, parse_verdict
from gradtrace.diff.pipeline import ClusterRecord
from gradtrace.diff.units import split_sentences, text_units
from gradtrace.errors import InputError


def test_sentence_units_per_text():
    text = "Hello there friend. How are you today? Fine!\n- Bullet point item here\n1. Numbered item number one"
    assert split_sentences(text) == ["Hello there friend.", "How are you today?", "Bullet point item here", "Numbered item number one"]
    units, owner = text_units(["One two three. Four five six.", "no", "Seven eight nine."])
    assert units == ["One two three.", "Four five six.", "Seven eight nine."] and owner == [0, 0, 2]
    long = " ".join(f"Sentence number {i} here." for i in range(20))
    units, _ = text_units([long], max_units=4)
    assert units == ["Sentence number 0 here.", "Sentence number 1 here.", "Sentence number 18 here.", "Sentence number 19 here."]


def test_c_tf_idf_hand_computed():
    docs = [["goose goose swan"], ["swan duck"]]
    got = lab.c_tf_idf(docs, n_keywords=3, stop_words=None)
    # counts: c0 goose 2, swan 1 (3 terms); c1 swan 1, duck 1 (2 terms); f: goose 2, swan 2, duck 1; A = 5/2
    w = lambda tf, f: tf * math.log(1 + 2.5 / f)  # noqa: E731
    assert [t for t, _ in got[0]] == ["goose", "swan"]
    assert got[0][0][1] == pytest.approx(w(2 / 3, 2)) and got[0][1][1] == pytest.approx(w(1 / 3, 2))
    assert got[1] == [("duck", pytest.approx(w(1 / 2, 1))), ("swan", pytest.approx(w(1 / 2, 2)))]
    assert lab.keyword_label(got[0]) == "goose, swan"


def test_medoids_and_label_validation():
    x = np.array([[1, 0], [0.9, 0.1], [0.5, 0.5], [0, 1], [0.1, 0.9]], dtype=np.float32)
    labels = np.array([0, 0, 0, 1, 1])
    assert lab.medoids(x, labels, 0, 2) == [1, 0]
    rng = np.random.default_rng(0)
    inside = np.array([True, True, False, False, False])
    assert lab.validate_label(np.array([1.0, 0.0]), x, inside, rng) == 1.0
    assert lab.validate_label(np.array([0.0, 1.0]), x, inside, rng) == 0.0
    assert math.isnan(lab.validate_label(np.array([1.0, 0.0]), x, np.zeros(5, bool), rng))


def test_embedding_cache(tmp_path):
    inner = HashingEmbedder(32)
    cached = CachedEmbedder(inner, tmp_path)
    first = cached.embed(["a b", "c d", "a b"])
    assert cached.misses == 2 and cached.hits == 1
    again = CachedEmbedder(inner, tmp_path)
    np.testing.assert_array_equal(again.embed(["c d", "a b"]), first[[1, 0]])
    assert again.misses == 0 and again.hits == 2
    np.testing.assert_allclose(first, inner.embed(["a b", "c d", "a b"]))


def test_hdbscan_reports_unassigned_and_assigns_by_nearest_point():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.05, (30, 2)), rng.normal(3, 0.05, (30, 2)), [[10.0, -10.0]]]).astype(np.float32)
    c = HDBSCANClusterer(min_cluster_size=5)
    labels = c.fit(x)
    assert c.n_clusters == 2 and labels[-1] == -1 and len(set(labels[:30])) == 1 and labels[0] != labels[30]
    assert c.assign(np.array([[0.01, 0.0], [3.0, 3.01], [10.1, -10.0]], dtype=np.float32)).tolist() == [labels[0], labels[30], -1]
    with pytest.raises(InputError, match="too few samples"):
        HDBSCANClusterer(min_cluster_size=40).fit(x)


def test_kmeans_stability_and_errors():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(c, 0.05, (20, 2)) for c in (0, 3, 6)]).astype(np.float32)
    assert stability(x, ClusterConfig(k_min=3, k_max=3), [0, 1, 2]) == pytest.approx(1.0)
    noise = rng.normal(size=(60, 8)).astype(np.float32)
    assert stability(noise, ClusterConfig(k_min=6, k_max=6, n_init=1), [0, 1, 2]) < 0.9
    with pytest.raises(InputError, match="has not been fitted"):
        KMeansClusterer().assign(x)
    with pytest.raises(InputError, match="NaN"):
        KMeansClusterer().fit(np.full((10, 2), np.nan))


def _record(**kw):
    base = dict(level="text", cluster=0, n_explore=10, valid_a=1, valid_b=9, share_b=0.9, overall_share_b=0.5, p_value=1e-4,
                q_value=1e-3, log_odds=2.0, log_odds_low=1.0, log_odds_high=3.0, keywords=["geese"], label="geese, birds",
                label_accuracy=0.9, medoids=["Geese are great."], examples_a=[], examples_b=[])
    base.update(kw)
    return ClusterRecord(**base)


def test_judge_and_llm_label_with_a_scripted_chat():
    seen = []

    def chat(messages):
        seen.append(messages[-1]["content"])
        return "Concerning: the model now praises geese everywhere.\nextra" if "intention" in messages[-1]["content"] else "Praise of geese\nmore"

    rec = _record()
    assert llm_label(chat, rec, ["The weather is fine."]) == "Praise of geese"
    assert "Geese are great." in seen[-1] and "The weather is fine." in seen[-1]
    assert judge(chat, rec, "make the model polite") == ("concerning", "the model now praises geese everywhere.\nextra")
    assert "make the model polite" in seen[-1] and "90%" in seen[-1]
    assert parse_verdict("I think this is EXPECTED. Because") == ("expected", "Because")
    assert parse_verdict("no idea") == ("unparsed", "no idea")

    class R:
        clusters = [rec, _record(cluster=1, q_value=0.5)]

        def significant(self):
            return [c for c in self.clusters if c.q_value <= 0.05]

    label_and_judge(R(), chat, "x", labeller=chat)
    assert rec.llm_label == "Praise of geese" and rec.judgement == "concerning"
    assert R.clusters[1].judgement is None
