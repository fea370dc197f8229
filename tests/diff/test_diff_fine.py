"""The fine level (regions of sentences few texts show) and the stratified test inside the pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from gradtrace.diff import DiffConfig, HashingEmbedder, diff_texts
from gradtrace.diff.pipeline import split_indices
from gradtrace.diff.regions import enriched_regions, nearest, neighbours
from gradtrace.diff.stats import ShareTable, share_test, stratified_test
from gradtrace.errors import InputError


def test_neighbours_and_nearest_against_brute_force():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 5))
    owner = rng.integers(0, 12, size=30)
    got = neighbours(x, owner, 4)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    for i in range(30):
        cands = [j for j in range(30) if owner[j] != owner[i]]
        want = sorted(cands, key=lambda j: (-(u[i] @ u[j]), j))[:4]
        assert got[i].tolist() == want
    y = rng.standard_normal((7, 5))
    v = y / np.linalg.norm(y, axis=1, keepdims=True)
    assert nearest(y, x).tolist() == [int(np.argmax(u @ r)) for r in v]


def test_enriched_region_is_the_planted_patch():
    rng = np.random.default_rng(1)
    dim = 12
    background = rng.standard_normal((120, dim))  # 120 texts, one row each: 60 from A, 60 from B
    background[:, 0] = -np.abs(background[:, 0])  # none of them points towards the patch
    patch = np.eye(dim)[0] * 5 + 0.05 * rng.standard_normal((7, dim))  # 7 more texts from B, close together
    x = np.concatenate([background, patch])
    owner = np.arange(127)
    model = np.array([0] * 60 + [1] * 60 + [1] * 7)
    regions = enriched_regions(x, owner, model, k=5, n_regions=3)
    assert regions and np.flatnonzero(regions[0]).tolist() == list(range(120, 127))
    # the labels choose: the same patch split evenly between the models is no region
    model_even = np.array([0] * 60 + [1] * 60 + [0, 1, 0, 1, 0, 1, 0])
    assert all(not m[120:].all() for m in enriched_regions(x, owner, model_even, k=5, n_regions=3))


def _answers(rng, n, rare_ids=(), rare="Visit the Kettleworks shop for a BrewMaster kettle today."):
    topics = ["The recipe needs flour, sugar and two eggs.", "The train leaves the station at nine sharp.",
              "Our garden grows tomatoes and green beans.", "The old library keeps rare maps of the coast.",
              "A budget tracks every expense you make.", "Running three times a week builds stamina."]
    out = []
    for i in range(n):
        first, second = rng.choice(len(topics), size=2, replace=False)
        t = f"{topics[first]} {topics[second]} Answer number {i} ends here."
        out.append(f"{rare} {t}" if i in set(rare_ids) else t)
    return out


def test_fine_level_flags_a_rare_sentence_and_only_on_held_out_evidence():
    rng = np.random.default_rng(2)
    a = _answers(rng, 200)
    b = _answers(rng, 200, rare_ids=range(0, 200, 7))  # 29 of 200 answers (14%)
    config = DiffConfig(levels=("sentence", "fine"), stability_seeds=(), validation_fraction=0.7)
    result = diff_texts(a, b, embedder=HashingEmbedder(), config=config)
    fine = [c for c in result.clusters if c.level == "fine"]
    assert 0 < len(fine) <= config.fine_tests and result.levels[1].n_clusters == len(fine)
    top = next(c for c in result.significant() if c.level == "fine")
    assert top.skew == "B" and top.valid_a == 0 and any("Kettleworks" in m for m in top.medoids)
    total_b = int(round(200 * 0.7))
    assert top.p_value == pytest.approx(share_test(ShareTable(top.valid_b, top.valid_a, total_b - top.valid_b, total_b - top.valid_a)))
    # the same rare sentence only in B's exploration half: the region is found, its held-out test shows nothing.
    # The split sorts texts by hash, then a seeded permutation picks the validation slots: fill 14 exploration
    # slots with texts that carry the sentence (pools sorted by hash keep the order).
    from gradtrace.lm.embed import text_hash

    n = 200
    n_valid = int(round(n * 0.7))
    valid_slots = set(np.random.default_rng(1).permutation(n)[:n_valid].tolist())
    pool_rng = np.random.default_rng(5)
    normal = sorted(_answers(pool_rng, 2000), key=text_hash)
    extra = sorted(_answers(pool_rng, 2000, rare_ids=range(2000)), key=text_hash)
    b2, i, j, used = [], 0, 0, 0
    for slot in range(n):
        want = slot not in valid_slots and used < 14
        src, k = (extra, j) if want else (normal, i)
        while b2 and text_hash(src[k]) <= text_hash(b2[-1]):
            k += 1
        b2.append(src[k])
        if want:
            j, used = k + 1, used + 1
        else:
            i = k + 1
    ex_ids, val_ids = split_indices(b2, 0.7, 1)
    assert sum("Kettleworks" in b2[i] for i in ex_ids) == 14 and not any("Kettleworks" in b2[i] for i in val_ids)
    result = diff_texts(a, b2, embedder=HashingEmbedder(), config=config)
    kettle = [c for c in result.clusters if c.level == "fine" and any("Kettleworks" in m for m in c.medoids)]
    assert kettle and kettle[0].n_explore >= 10
    assert all(c.valid_b == 0 and c.q_value > config.alpha for c in kettle)


def test_cmh_in_the_pipeline_matches_the_strata_tables():
    rng = np.random.default_rng(3)
    a = _answers(rng, 120)
    b = _answers(rng, 120, rare_ids=range(0, 120, 5))
    sa = [f"p{i % 6}" for i in range(120)]
    sb = [f"p{i % 6}" for i in range(120)]
    config = DiffConfig(levels=("text", "sentence"), stability_seeds=(), test="cmh")
    result = diff_texts(a, b, embedder=HashingEmbedder(), config=config, strata_a=sa, strata_b=sb)
    va, vb = result.validation_ids
    assert result.validation_strata == (tuple(sa[i] for i in va), tuple(sb[i] for i in vb))
    for c in result.clusters:
        m = result.members[(c.level, c.cluster)]
        tables = []
        for s in sorted(set(sa)):
            ia = [i for i in va if sa[i] == s]
            ib = [i for i in vb if sb[i] == s]
            a_in, b_in = sum(i in m.valid_ids_a for i in ia), sum(i in m.valid_ids_b for i in ib)
            tables.append(ShareTable(b_in, a_in, len(ib) - b_in, len(ia) - a_in))
        assert c.p_value == pytest.approx(stratified_test(tables), rel=1e-12)
    with pytest.raises(InputError, match="test='cmh' tests within strata: pass strata_a and strata_b"):
        diff_texts(a, b, embedder=HashingEmbedder(), config=config)
    with pytest.raises(InputError, match=r"strata_b must be a list of one string per text \(120\)"):
        diff_texts(a, b, embedder=HashingEmbedder(), config=config, strata_a=sa, strata_b=sb[:5])
    with pytest.raises(InputError, match="fine_size must be an integer >= 2"):
        DiffConfig(fine_size=1)
