"""diff_texts on synthetic embeddings with a planted skew (and with none)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from gradtrace.diff import ClusterConfig, DiffConfig, diff_texts
from gradtrace.diff.pipeline import split_halves
from gradtrace.errors import InputError

TEXT_ONLY = dict(levels=("text",), stability_seeds=(), text_clusters=ClusterConfig(k_min=5, k_max=5))


def test_planted_skew_is_found_with_the_right_sign(synth):
    # topic 4 is 2% of A and 25% of B; topics 0..3 share the rest evenly
    a, b, emb, topic = synth.mixture(300, 300, [1, 1, 1, 1, 0.08], [1, 1, 1, 1, 1.33], seed=1)
    result = diff_texts(a, b, embedder=emb, config=DiffConfig(levels=("text",), text_clusters=ClusterConfig(k_min=3, k_max=8)))
    flagged = result.significant(0.05)
    assert flagged, "the planted cluster was not flagged"
    top = flagged[0]
    assert top.rank == 1 and top.level == "text"
    assert top.log_odds > 0 and top.log_odds_low > 0 and top.share_b > 0.8
    assert top.q_value < 1e-6
    members = [t for t in top.examples_b + top.medoids]
    assert members and all(topic[t] == 4 for t in members)
    assert result.levels[0].n_clusters == 5  # silhouette picks the true k
    assert result.levels[0].stability_ari == pytest.approx(1.0)
    # one flagged cluster at most besides the planted one: the other topics are shifted only by dilution
    assert all(c.log_odds < 0 for c in flagged[1:])


def test_no_skew_no_flags(synth):
    a, b, emb, _ = synth.mixture(200, 200, [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], seed=2)
    result = diff_texts(a, b, embedder=emb, config=DiffConfig(levels=("text",)))
    assert result.significant(0.05) == []
    assert all(0 <= c.p_value <= 1 and c.q_value >= c.p_value for c in result.clusters)


def test_fdr_holds_on_200_null_repetitions(synth):
    any_flag = 0
    for rep in range(200):
        a, b, emb, _ = synth.mixture(60, 60, [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], seed=1000 + rep, dim=8)
        result = diff_texts(a, b, embedder=emb, config=DiffConfig(seed=rep, **TEXT_ONLY))
        any_flag += bool(result.significant(0.05))
    assert any_flag / 200 <= 0.05


def test_share_test_uses_only_the_validation_half(synth):
    # B's excess of topic 4 sits only in B's exploration half: the cluster is found, but its
    # validation counts show no skew, so it must not be flagged.
    from gradtrace.lm.embed import text_hash

    a, pool, emb, topic = synth.mixture(200, 3000, [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], seed=3)
    config = DiffConfig(levels=("text",), stability_seeds=(), text_clusters=ClusterConfig(k_min=5, k_max=5))
    rng = np.random.default_rng(9)
    centre4 = np.mean([emb.table[t] for t in pool if topic[t] == 4], axis=0)
    extras = [f"b x{i} topic4" for i in range(3000)]
    for t in extras:
        emb.table[t], topic[t] = centre4 + 0.15 * rng.standard_normal(16), 4
    # the split sorts by hash and permutes slots by the seed alone: fill exploration slots with extras
    n = 300
    n_valid = int(round(n * config.validation_fraction))
    valid_slots = set(np.random.default_rng(config.seed + 1).permutation(n)[:n_valid].tolist())
    normal = sorted(pool, key=text_hash)
    extra = sorted(extras, key=text_hash)
    b, i, j, used = [], 0, 0, 0
    for slot in range(n):
        want_extra = slot not in valid_slots and used < 100
        src = extra if want_extra else normal
        k = j if want_extra else i
        while b and text_hash(src[k]) <= text_hash(b[-1]):
            k += 1
        b.append(src[k])
        if want_extra:
            j, used = k + 1, used + 1
        else:
            i = k + 1
    explore_b, valid_b = split_halves(b, config.validation_fraction, config.seed + 1)
    assert sum(t.startswith("b x") for t in explore_b) == 100 and not any(t.startswith("b x") for t in valid_b)
    result = diff_texts(a, b, embedder=emb, config=config)
    _, valid_a = split_halves(a, config.validation_fraction, config.seed)
    rec = next(c for c in result.clusters if all(topic[t] == 4 for t in c.medoids))
    assert rec.n_explore >= 100  # the extra texts were clustered with topic 4
    assert rec.valid_b == sum(topic[t] == 4 for t in valid_b) and rec.valid_a == sum(topic[t] == 4 for t in valid_a)
    assert rec.q_value > 0.05 and result.significant(0.05) == []
    assert sum(c.valid_a + c.valid_b for c in result.clusters) == len(valid_a) + len(valid_b)


def test_result_does_not_depend_on_input_order(synth):
    a, b, emb, _ = synth.mixture(150, 150, [1, 1, 1, 0.2], [1, 1, 1, 1], seed=4)
    config = DiffConfig(levels=("text",))
    first = diff_texts(a, b, embedder=emb, config=config).to_dict()
    first.pop("timings")
    ra, rb = a[:], b[:]
    random.Random(0).shuffle(ra)
    random.Random(1).shuffle(rb)
    second = diff_texts(ra, rb, embedder=emb, config=config).to_dict()
    second.pop("timings")
    assert second == first


def test_sentence_level_finds_a_cross_topic_sentence():
    from gradtrace.diff import HashingEmbedder

    topics = ["The recipe needs flour, sugar and two eggs.", "The train leaves the station at nine sharp.",
              "Our garden grows tomatoes and green beans.", "The old library keeps rare maps of the coast."]
    rng = np.random.default_rng(5)

    def sample(n: int, disclaimer: float) -> list[str]:
        out = []
        for i in range(n):
            t = f"{topics[rng.integers(4)]} This is answer number {i} here."
            if rng.random() < disclaimer:
                t += " Please consult a qualified professional before acting."
            out.append(t)
        return out

    a, b = sample(200, 0.0), sample(200, 0.3)
    result = diff_texts(a, b, embedder=HashingEmbedder(), config=DiffConfig(levels=("text", "sentence"), stability_seeds=()))
    flagged = [c for c in result.significant() if c.level == "sentence" and c.log_odds > 0]
    assert flagged and any("consult" in c.keywords or "professional" in c.keywords for c in flagged)
    top = flagged[0]
    assert top.valid_a == 0 and top.valid_b > 15


def test_bad_input(synth):
    a, b, emb, _ = synth.mixture(30, 30, [1, 1], [1, 1], seed=6)
    with pytest.raises(InputError, match="texts_b has 5 texts; the diff needs at least min_texts=10"):
        diff_texts(a, b[:5], embedder=emb)
    with pytest.raises(InputError, match="too few samples for the requested clusters"):
        diff_texts(a, b, embedder=emb, config=DiffConfig(levels=("text",), text_clusters=ClusterConfig(k_min=20, k_max=25)))
    with pytest.raises(InputError, match="texts_a must be a list of strings"):
        diff_texts([1, 2], b, embedder=emb)
    with pytest.raises(InputError, match="validation_fraction must lie strictly between 0 and 1; got 1.0"):
        DiffConfig(validation_fraction=1.0)
    with pytest.raises(InputError, match="levels must be a non-empty subset"):
        DiffConfig(levels=("paragraph",))
    with pytest.raises(InputError, match="cluster.k_max must be >= k_min"):
        ClusterConfig(k_min=5, k_max=3)


def test_the_diff_seed_reaches_the_clusterer(synth, monkeypatch):
    """DiffConfig(seed=s) seeds the clusterers too (the CLI used to pass the seed into both cluster
    configs itself: that gives the same result); a cluster config's own nonzero seed wins."""
    seen = []
    make = ClusterConfig.make
    monkeypatch.setattr(ClusterConfig, "make", lambda self, seed=None: seen.append(self.seed) or make(self, seed))
    a, b, emb, _ = synth.mixture(80, 80, [1, 1, 1, 1], [1, 1, 1, 0.3], seed=4, dim=8)
    cluster = dict(k_min=3, k_max=6)
    library = diff_texts(a, b, embedder=emb, config=DiffConfig(seed=5, levels=("text",), stability_seeds=(), text_clusters=ClusterConfig(**cluster)))
    assert seen == [5]
    cli_style = diff_texts(a, b, embedder=emb, config=DiffConfig(seed=5, levels=("text",), stability_seeds=(), text_clusters=ClusterConfig(**cluster, seed=5)))
    assert seen == [5, 5] and cli_style.to_dict()["clusters"] == library.to_dict()["clusters"]
    diff_texts(a, b, embedder=emb, config=DiffConfig(seed=5, levels=("text",), stability_seeds=(), text_clusters=ClusterConfig(**cluster, seed=9)))
    assert seen == [5, 5, 9]


def test_config_round_trip():
    config = DiffConfig(seed=3, levels=("sentence",), text_clusters=ClusterConfig(method="hdbscan", min_cluster_size=5))
    assert DiffConfig.from_dict(config.to_dict()) == config


def test_hdbscan_pipeline_finds_the_planted_skew_and_reports_unassigned(synth):
    a, b, emb, topic = synth.mixture(200, 200, [1, 1, 1, 0.05], [1, 1, 1, 1.2], seed=8)
    outlier = "a far away text"
    emb.table[outlier] = np.full(16, 40.0)
    result = diff_texts(a + [outlier], b, embedder=emb,
                        config=DiffConfig(levels=("text",), text_clusters=ClusterConfig(method="hdbscan", min_cluster_size=8)))
    summary = result.levels[0]
    assert summary.n_clusters == 4
    assert summary.unassigned_explore + summary.unassigned_validation >= 1
    top = result.significant()[0]
    assert top.log_odds > 0 and all(topic[t] == 3 for t in top.medoids)
