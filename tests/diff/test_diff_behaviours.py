"""Grouping flagged clusters into behaviours: a hand-built case, planted split changes end to end,
the union test, and the member texts the diff keeps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from gradtrace.diff import Behaviour, ClusterConfig, ClusterMembers, ClusterRecord, DiffConfig, DiffResult, diff_texts, group_behaviours
from gradtrace.diff.behaviours import similarity
from gradtrace.diff.pipeline import split_halves, split_indices
from gradtrace.diff.stats import ShareTable, benjamini_hochberg, share_test
from gradtrace.errors import InputError


def _record(level: str, cluster: int, rank: int, p: float, q: float, log_odds: float) -> ClusterRecord:
    return ClusterRecord(level=level, cluster=cluster, n_explore=1, valid_a=0, valid_b=0, share_b=0.5, overall_share_b=0.5, p_value=p,
                         q_value=q, log_odds=log_odds, log_odds_low=log_odds - 1, log_odds_high=log_odds + 1, keywords=[f"w{cluster}"],
                         label=f"{level} {cluster}", label_accuracy=0.5, medoids=[], examples_a=[], examples_b=[], rank=rank)


def _members(ids_a, ids_b, valid_a, valid_b, centroid) -> ClusterMembers:
    c = np.asarray(centroid, dtype=np.float32)
    return ClusterMembers(tuple(ids_a), tuple(ids_b), tuple(valid_a), tuple(valid_b), tuple((i, f"a{i}") for i in ids_a),
                          tuple((i, f"b{i}") for i in ids_b), c / np.linalg.norm(c))


def _hand_built() -> DiffResult:
    """20 texts per side; validation: ids 0..9 of each side. Sentence clusters s1, s2 (near centroids) and the
    text cluster t0 (overlapping s1's texts) are one behaviour; s3 is another; s4 is skewed to A (same
    centroid as s1); s5 is not flagged (near s1)."""
    recs = [_record("sentence", 1, 1, 1e-6, 1e-5, 3.0), _record("sentence", 2, 2, 1e-4, 5e-4, 2.5), _record("text", 0, 3, 1e-4, 5e-4, 2.0),
            _record("sentence", 3, 4, 1e-3, 4e-3, 2.2), _record("sentence", 4, 5, 1e-3, 4e-3, -2.0), _record("sentence", 5, 6, 0.3, 0.5, 1.0)]
    members = {
        ("sentence", 1): _members([], [0, 1, 2, 3, 10, 11], [], [0, 1, 2, 3], [1, 0, 0, 0]),
        ("sentence", 2): _members([9], [4, 5, 6, 12], [9], [4, 5, 6], [0.95, 0.31, 0, 0]),
        ("text", 0): _members([], [0, 1, 2, 3, 10], [], [0, 1, 2, 3], [0, 0, 0, 1]),
        ("sentence", 3): _members([], [7, 8, 13, 14], [], [7, 8], [0, 0, 1, 0]),
        ("sentence", 4): _members([0, 1, 2, 15], [], [0, 1, 2], [], [1, 0, 0, 0]),
        ("sentence", 5): _members([3], [0, 1, 9], [3], [0, 1, 9], [0.9, 0, 0, 0.43]),
    }
    config = DiffConfig(alpha=0.05)
    return DiffResult(recs, config, "table", 20, 20, [], {}, [], members, (tuple(range(10)), tuple(range(10))), None,
                      [f"text a{i}" for i in range(20)], [f"text b{i}" for i in range(20)])


def test_hand_built_groups_union_test_and_family():
    result = _hand_built()
    # the premise of the case, computed independently: centred cosines and Jaccard indices
    sent = [k for k in result.members if k[0] == "sentence"]
    mean = np.mean([result.members[k].centroid for k in sent], axis=0)

    def ccos(k1, k2):
        u, v = result.members[k1].centroid - mean, result.members[k2].centroid - mean
        return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))

    by = {(c.level, c.cluster): c for c in result.clusters}
    assert ccos(("sentence", 1), ("sentence", 2)) > 0.4 > ccos(("sentence", 1), ("sentence", 3))
    assert similarity(result, by[("sentence", 1)], by[("sentence", 2)])[1] == pytest.approx(ccos(("sentence", 1), ("sentence", 2)), abs=1e-6)
    assert similarity(result, by[("sentence", 1)], by[("text", 0)])[0] == pytest.approx(5 / 6)
    assert ccos(("sentence", 1), ("sentence", 4)) == pytest.approx(1.0, abs=1e-6)  # same place, other skew: must stay apart

    behaviours = group_behaviours(result)
    groups = [sorted((m.level, m.cluster) for m in b.members) for b in behaviours]
    assert sorted(groups) == sorted([[("sentence", 1), ("sentence", 2), ("text", 0)], [("sentence", 3)], [("sentence", 4)]])
    one = next(b for b in behaviours if len(b.members) == 3)
    assert isinstance(one, Behaviour) and one.skew == "B" and one.members[0].cluster == 1  # best member first
    assert one.ids_b == [0, 1, 2, 3, 4, 5, 6, 10, 11, 12] and one.ids_a == [9]
    assert one.texts_b[:2] == ["text b0", "text b1"] and one.label.startswith("sentence 1 (+2 more")
    # the union table of validation texts, tested as a whole
    assert (one.valid_a, one.valid_b) == (1, 7) and (one.rate_a, one.rate_b) == (0.1, 0.7)
    p_union = stats.fisher_exact([[7, 1], [3, 9]]).pvalue
    assert one.p_value == pytest.approx(p_union, rel=1e-12)
    # q: BH over the behaviours and the clusters in none (s5)
    ps = {tuple(sorted((m.level, m.cluster) for m in b.members)): b.p_value for b in behaviours}
    order = [ps[tuple(g)] for g in sorted(ps)] + [0.3]
    q = dict(zip(sorted(ps), benjamini_hochberg(order)))
    for b in behaviours:
        assert b.q_value == pytest.approx(q[tuple(sorted((m.level, m.cluster) for m in b.members))], rel=1e-12)
    assert [b.rank for b in behaviours] == [1, 2, 3]
    d = one.to_dict()
    assert d["members"][0] == {"level": "sentence", "cluster": 1, "rank": 1, "label": "sentence 1", "q_value": 1e-5}
    assert d["rows_b"][0] == [0, "b0"]


def test_thresholds_turn_links_off_and_on():
    result = _hand_built()
    alone = group_behaviours(result, jaccard=2, cosine=2)
    assert len(alone) == 5 and all(len(b.members) == 1 for b in alone)
    only_overlap = group_behaviours(result, cosine=2)
    assert sorted(len(b.members) for b in only_overlap) == [1, 1, 1, 2]  # s1 + t0 by overlap; s2 alone
    with pytest.raises(InputError, match="cosine must be a number >= 0"):
        group_behaviours(result, cosine=-0.1)
    with pytest.raises(InputError, match="alpha must lie strictly between 0 and 1"):
        group_behaviours(result, alpha=0)
    bare = DiffResult(result.clusters, result.config, "table", 20, 20, [], {}, [])
    with pytest.raises(InputError, match="needs a DiffResult made by diff_texts in this process"):
        group_behaviours(bare)


# -- end to end: a change the clusterer splits, and a distinct one ------------------------------------------------

def _planted_texts(seed: int):
    rng = np.random.default_rng(seed)
    dim = 8
    e = np.eye(dim) * 3.0
    centres = {"t0": e[0], "t1": e[1], "t2": e[2], "t3": e[3], "4a": e[4] + 1.2 * e[5] / 3, "4b": e[4] - 1.2 * e[5] / 3, "6": e[6]}
    table, kind = {}, {}

    def draw(side: str, n: int, weights: dict[str, float]) -> list[str]:
        names = list(weights)
        w = np.array([weights[k] for k in names], float)
        out = []
        for i, c in enumerate(rng.choice(len(names), size=n, p=w / w.sum())):
            t = f"{side} {i} {names[c]}"
            table[t] = centres[names[c]] + 0.1 * rng.standard_normal(dim)
            kind[t] = names[c]
            out.append(t)
        return out

    a = draw("a", 240, {"t0": 1, "t1": 1, "t2": 1, "t3": 1})
    b = draw("b", 240, {"t0": 1, "t1": 1, "t2": 1, "t3": 1, "4a": 0.5, "4b": 0.5, "6": 0.6})
    return a, b, table, kind


def test_a_split_change_is_one_behaviour_and_a_distinct_change_another(synth):
    a, b, table, kind = _planted_texts(3)
    emb = synth.TableEmbedder(table)
    result = diff_texts(a, b, embedder=emb, config=DiffConfig(levels=("text",), stability_seeds=(), text_clusters=ClusterConfig(k_min=7, k_max=7)))
    flagged_b = [c for c in result.significant() if c.skew == "B"]
    kinds = {c.cluster: {kind[t] for _, t in result.members[("text", c.cluster)].rows_b} for c in flagged_b}
    assert sorted(tuple(sorted(k)) for k in kinds.values()) == [("4a",), ("4b",), ("6",)]  # the clusterer split the change
    behaviours = [bh for bh in group_behaviours(result) if bh.skew == "B"]
    assert len(behaviours) == 2
    four = next(bh for bh in behaviours if len(bh.members) == 2)
    six = next(bh for bh in behaviours if len(bh.members) == 1)
    assert {kind[t] for t in four.texts_b} == {"4a", "4b"} and {kind[t] for t in six.texts_b} == {"6"}
    # the union: its table of validation texts, from the split, tested with Fisher (not the members' min p)
    _, valid_a = split_halves(a, 0.5, 0)
    _, valid_b = split_halves(b, 0.5, 1)
    vb = sum(kind[t] in ("4a", "4b") for t in valid_b)
    va = sum(kind[t] in ("4a", "4b") for t in valid_a)
    assert (four.valid_a, four.valid_b) == (va, vb) == (0, sum(m.valid_b for m in four.members))
    expected = share_test(ShareTable(vb, va, len(valid_b) - vb, len(valid_a) - va))
    assert four.p_value == pytest.approx(expected, rel=1e-12)
    assert four.p_value < min(m.p_value for m in four.members)
    assert set(four.ids_b) == {i for i, t in enumerate(b) if kind[t] in ("4a", "4b")}
    # the cosine of the rule: centroids of the exploration rows, minus the mean exploration row, computed here by hand
    explore = split_halves(a, 0.5, 0)[0] + split_halves(b, 0.5, 1)[0]
    unit = {t: table[t] / np.linalg.norm(table[t]) for t in explore}
    mean = np.mean([unit[t] for t in explore], axis=0)

    def centroid(cluster):
        m = result.members[("text", cluster)]
        rows = {t for _, t in m.rows_a + m.rows_b} & set(explore)
        c = np.mean([unit[t] for t in rows], axis=0)
        v = c / np.linalg.norm(c) - mean
        return v / np.linalg.norm(v)

    m1, m2 = four.members
    assert similarity(result, m1, m2)[1] == pytest.approx(float(centroid(m1.cluster) @ centroid(m2.cluster)), abs=1e-5)


def test_no_merge_keeps_every_cluster_p_and_q(synth):
    a, b, table, _ = _planted_texts(4)
    result = diff_texts(a, b, embedder=synth.TableEmbedder(table),
                        config=DiffConfig(levels=("text",), stability_seeds=(), text_clusters=ClusterConfig(k_min=7, k_max=7)))
    alone = group_behaviours(result, jaccard=2, cosine=2)
    flagged = result.significant()
    assert len(alone) == len(flagged) > 0
    by = {(c.level, c.cluster): c for c in flagged}
    for bh in alone:
        c = by[(bh.members[0].level, bh.members[0].cluster)]
        assert bh.p_value == pytest.approx(c.p_value, rel=1e-12) and bh.q_value == pytest.approx(c.q_value, rel=1e-12)
        assert (bh.valid_a, bh.valid_b) == (c.valid_a, c.valid_b)


def test_members_are_the_input_texts_and_sentences():
    from gradtrace.diff import HashingEmbedder
    from gradtrace.diff.units import split_sentences

    rng = np.random.default_rng(0)
    topics = ["The recipe needs flour, sugar and two eggs.", "The train leaves the station at nine sharp.",
              "Our garden grows tomatoes and green beans."]
    a = [f"{topics[rng.integers(3)]} This is answer number {i} here." for i in range(80)]
    b = [f"{topics[rng.integers(3)]} This is answer number {i} here." + (" Please consult a professional first." if i % 3 == 0 else "")
         for i in range(80)]
    result = diff_texts(a, b, embedder=HashingEmbedder(), config=DiffConfig(stability_seeds=()))
    for c in result.clusters:
        m = result.members[(c.level, c.cluster)]
        assert (len(m.valid_ids_a), len(m.valid_ids_b)) == (c.valid_a, c.valid_b)
        assert set(m.valid_ids_a) <= set(m.ids_a) <= set(range(80)) and set(m.valid_ids_b) <= set(m.ids_b)
        for side, texts in ((m.rows_a, a), (m.rows_b, b)):
            for i, row in side:
                assert row == texts[i] if c.level == "text" else row in split_sentences(texts[i])
    ea, va = split_indices(a, 0.5, 0)
    assert result.validation_ids[0] == tuple(va) and sorted(ea + va) == list(range(80))
    assert [a[i] for i in va] == split_halves(a, 0.5, 0)[1]
