"""Behaviour groups, the membership rule and the intervals, against brute force and closed forms."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest

from gradtrace.audit.behaviours import (Assigner, BehaviourGroup, as_behaviour_groups, member_rows, one_behaviour_per_cluster,
                                        wilson)
from gradtrace.diff.pipeline import ClusterRecord
from gradtrace.diff.units import text_units
from gradtrace.errors import InputError


def record(level: str, cluster: int, rank: int, q: float, log_odds: float, label: str) -> ClusterRecord:
    return ClusterRecord(level=level, cluster=cluster, n_explore=5, valid_a=1, valid_b=4, share_b=0.8, overall_share_b=0.5,
                         p_value=q / 2, q_value=q, log_odds=log_odds, log_odds_low=0.0, log_odds_high=1.0, keywords=[label],
                         label=label, label_accuracy=0.9, medoids=[], examples_a=[], examples_b=[], rank=rank)


def test_groups_of_every_accepted_shape() -> None:
    r1, r2, r3 = record("text", 0, 2, 0.01, 1.0, "x"), record("sentence", 3, 1, 0.001, 2.0, "y"), record("text", 1, 3, 0.04, -1.0, "z")
    groups = as_behaviour_groups([BehaviourGroup([r1]), [r1, r2], types.SimpleNamespace(members=[r2, r3], label="merged"), r3])
    assert [g.keys for g in groups] == [[("text", 0)], [("sentence", 3), ("text", 0)], [("sentence", 3), ("text", 1)], [("text", 1)]]
    assert groups[1].label == "y | x" and groups[2].label == "merged"
    assert groups[1].q_value == 0.001 and groups[1].skew == "B" and groups[2].skew == "mixed" and groups[3].skew == "A"
    with pytest.raises(InputError, match="group 0"):
        as_behaviour_groups([["not a cluster"]])
    with pytest.raises(InputError, match="at least one member"):
        BehaviourGroup([])
    result = types.SimpleNamespace(significant=lambda: [r2, r1])
    assert [g.keys for g in one_behaviour_per_cluster(result)] == [[("sentence", 3)], [("text", 0)]]


class Table:
    name = "table"

    def __init__(self, vectors: dict[str, np.ndarray]):
        self.vectors = vectors

    def embed(self, texts):
        return np.stack([self.vectors[t] for t in texts])


def test_membership_is_the_nearest_centroid_of_a_row() -> None:
    rng = np.random.default_rng(0)
    texts = [" ".join(f"w{rng.integers(50)}" for _ in range(3)) + ". " + " ".join(f"v{rng.integers(50)}" for _ in range(4)) + "."
             for _ in range(30)]
    units, owner = text_units(texts, 3, 12)
    vectors = {t: rng.standard_normal(4) for t in set(texts) | set(units)}
    cent = {"text": rng.standard_normal((3, 4)), "sentence": np.vstack([rng.standard_normal((4, 4)), np.full((1, 4), np.nan)])}
    asg = Assigner(cent, Table(vectors), 3, 12).assign(texts)
    keys = [("text", 1), ("sentence", 2)]
    mask, first = member_rows(asg, keys, len(texts))
    for i, t in enumerate(texts):  # brute force
        by_text = int(np.argmin([np.linalg.norm(vectors[t] - c) for c in cent["text"]])) == 1
        mine = [u for u, o in zip(units, owner) if o == i]
        hits = [u for u in mine if int(np.argmin([np.linalg.norm(vectors[u] - c) for c in cent["sentence"][:4]])) == 2]
        assert mask[i] == (by_text or bool(hits))
        # the sentence that shows it, also when the text-level member holds the whole text
        assert first[i] == (hits[0] if hits else None)
    assert 0 < mask.sum() < len(texts)
    assert any(first[i] is not None and mask[i] for i in range(len(texts)))
    with pytest.raises(InputError, match="level 'likelihood'"):
        member_rows(asg, [("likelihood", 0)], len(texts))


def test_wilson_interval_closed_forms() -> None:
    z = 1.959963984540054
    lo, hi = wilson(0, 216)
    assert lo == 0.0 and hi == pytest.approx(z * z / (216 + z * z))
    lo, hi = wilson(50, 100)
    half = z * math.sqrt(0.25 / 100 + z * z / 40000) / (1 + z * z / 100)
    assert (lo, hi) == pytest.approx((0.5 - half, 0.5 + half))
    assert wilson(0, 0) == (0.0, 1.0)
