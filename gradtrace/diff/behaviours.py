"""Group flagged clusters that are one behaviour.

One planted change often comes out of the diff as several flagged clusters
(a flattering opener with varied wording splits into several sentence
clusters; a text-level cluster and a sentence-level cluster can describe the
same change). :func:`group_behaviours` merges them.

**Rule.** Two flagged clusters (``q <= alpha``) are linked when they are
skewed the same way and either

* the sets of texts they hold (both halves, both models, as (model, text id))
  overlap with Jaccard index ``>= jaccard`` (default 0.5), or
* the cosine between their centroids (unit-length mean embeddings of their
  exploration rows), each measured after subtracting the mean of its level's
  exploration rows (all embeddings of one kind share a common direction;
  removing it makes cosine discriminate), is ``>= cosine`` (default 0.4; see
  docs/diff.md for how it was chosen).

Behaviours are the connected components of these links (single linkage). A
cluster linked to nothing is a behaviour of one member.

**Test of a behaviour as a whole.** A validation text is in the behaviour
when it has a row in any member cluster; the behaviour's 2 x 2 table
(validation texts from B / from A, in / out) is tested with the diff's test
(Fisher by default; exact CMH within strata with ``test="cmh"``), never a
minimum of the members' p-values. q-values: Benjamini-Hochberg over the
family in which each behaviour replaces its members (behaviours and the
clusters in none), so a behaviour of one member keeps its cluster's p and
q exactly. Members were flagged on the same validation texts, so a merged
behaviour's p-value describes the union of clusters already found
significant; the claims the FDR guarantee covers are the members' flags.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ..errors import InputError
from .pipeline import ClusterMembers, ClusterRecord, DiffResult
from .stats import STRATIFIED_TESTS, ShareTable, benjamini_hochberg, log_odds_ratio, share_test, stratified_test

#: default thresholds of the rule (chosen on development data; docs/diff.md)
JACCARD = 0.5
COSINE = 0.4


@dataclasses.dataclass
class Behaviour:
    """One behaviour: flagged clusters merged by the rule of this module.

    ``members``: the member clusters, best first (by p-value). ``ids_a`` /
    ``ids_b``: indices into the diff's input texts of A and of B with a row in
    any member (both halves); ``texts_*`` the texts themselves; ``rows_*``:
    (text id, row) pairs, the row being the whole text (text level) or the
    sentence that put it in the cluster. ``valid_a``/``valid_b``, shares,
    ``p_value``, ``q_value`` and the log odds ratio (> 0: skewed to B) come
    from the behaviour's own table of validation texts: ``rate_a``/``rate_b``
    are the shares of A's and of B's validation texts in the behaviour,
    ``share_b`` the share of the behaviour's validation texts from B."""

    rank: int
    skew: str
    label: str
    keywords: list[str]
    levels: list[str]
    members: list[ClusterRecord]
    ids_a: list[int]
    ids_b: list[int]
    texts_a: list[str]
    texts_b: list[str]
    rows_a: list[tuple[int, str]]
    rows_b: list[tuple[int, str]]
    valid_a: int
    valid_b: int
    rate_a: float
    rate_b: float
    share_b: float
    overall_share_b: float
    p_value: float
    q_value: float
    log_odds: float
    log_odds_low: float
    log_odds_high: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: members as references (level, cluster, rank, label, q_value) to the diff's clusters."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "members":
                v = [{"level": m.level, "cluster": m.cluster, "rank": m.rank, "label": m.llm_label or m.label, "q_value": m.q_value}
                     for m in v]
            elif f.name in ("rows_a", "rows_b"):
                v = [[i, r] for i, r in v]
            elif isinstance(v, float) and math.isnan(v):
                v = None
            out[f.name] = v
        return out


def group_behaviours(result: DiffResult, *, alpha: float | None = None, jaccard: float = JACCARD,
                     cosine: float = COSINE) -> list[Behaviour]:
    """The flagged clusters of ``result`` (``q <= alpha``, default the diff's
    alpha) merged into behaviours by the module's rule; ranked by q-value,
    then |log odds|, then the rank of the best member. ``jaccard`` or
    ``cosine`` above 1 turns that link off."""
    a = result.config.alpha if alpha is None else alpha
    if not 0.0 < a < 1.0:
        raise InputError(f"alpha must lie strictly between 0 and 1; got {a!r}")
    for name, value in (("jaccard", jaccard), ("cosine", cosine)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value:
            raise InputError(f"{name} must be a number >= 0 (above 1 turns the link off); got {value!r}")
    missing = [(c.level, c.cluster) for c in result.clusters if (c.level, c.cluster) not in result.members]
    if missing or len(result.texts_a) != result.n_a or len(result.texts_b) != result.n_b:
        raise InputError(f"the diff result has no member texts for clusters {missing[:3]}: group_behaviours needs a DiffResult "
                         "made by diff_texts in this process (diff.json does not keep them)")
    flagged = [c for c in result.clusters if c.q_value <= a]
    centred = _centred_centroids(result)
    parent = list(range(len(flagged)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(flagged)):
        for j in range(i + 1, len(flagged)):
            if flagged[i].skew == flagged[j].skew and linked(result, flagged[i], flagged[j], centred, jaccard, cosine):
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[ClusterRecord]] = {}
    for i, c in enumerate(flagged):
        groups.setdefault(find(i), []).append(c)
    behaviours = [_behaviour(result, sorted(g, key=lambda c: (c.p_value, c.rank))) for g in groups.values()]
    # q-values: each behaviour replaces its members in the diff's family
    in_group = {(m.level, m.cluster) for b in behaviours for m in b.members}
    rest = [c.p_value for c in result.clusters if (c.level, c.cluster) not in in_group]
    q = benjamini_hochberg([b.p_value for b in behaviours] + rest) if behaviours else np.zeros(0)
    for b, qv in zip(behaviours, q):
        b.q_value = float(qv)
    behaviours.sort(key=lambda b: (b.q_value, -abs(b.log_odds), b.members[0].rank))
    for i, b in enumerate(behaviours):
        b.rank = i + 1
    return behaviours


def similarity(result: DiffResult, c1: ClusterRecord, c2: ClusterRecord) -> tuple[float, float]:
    """(Jaccard index of the two clusters' text sets, centred cosine of their centroids): what the rule compares."""
    return _jaccard(result.members[(c1.level, c1.cluster)], result.members[(c2.level, c2.cluster)]), \
        _cos(_centred_centroids(result), c1, c2)


def linked(result: DiffResult, c1: ClusterRecord, c2: ClusterRecord, centred: dict[tuple[str, int], np.ndarray],
           jaccard: float, cosine: float) -> bool:
    """Whether the rule links two clusters (the skew is checked by the caller)."""
    m1, m2 = result.members[(c1.level, c1.cluster)], result.members[(c2.level, c2.cluster)]
    return _jaccard(m1, m2) >= jaccard or _cos(centred, c1, c2) >= cosine


def _jaccard(m1: ClusterMembers, m2: ClusterMembers) -> float:
    s1 = {(0, i) for i in m1.ids_a} | {(1, i) for i in m1.ids_b}
    s2 = {(0, i) for i in m2.ids_a} | {(1, i) for i in m2.ids_b}
    union = s1 | s2
    return len(s1 & s2) / len(union) if union else 0.0


def _centred_centroids(result: DiffResult) -> dict[tuple[str, int], np.ndarray]:
    """Each cluster's centroid minus the mean of its level's exploration rows (when the result holds it;
    else the mean centroid of the level's tested clusters), unit length."""
    out: dict[tuple[str, int], np.ndarray] = {}
    by_level: dict[str, list[tuple[str, int]]] = {}
    for key in result.members:
        by_level.setdefault(key[0], []).append(key)
    for level, keys in by_level.items():
        mean = result.row_means.get(level)
        if mean is None:
            mean = np.mean([result.members[k].centroid for k in keys], axis=0)
        for k in keys:
            v = result.members[k].centroid - mean
            out[k] = v / max(float(np.linalg.norm(v)), 1e-12)
    return out


def _cos(centred: dict[tuple[str, int], np.ndarray], c1: ClusterRecord, c2: ClusterRecord) -> float:
    return float(centred[(c1.level, c1.cluster)] @ centred[(c2.level, c2.cluster)])


def _behaviour(result: DiffResult, members: list[ClusterRecord]) -> Behaviour:
    ms = [result.members[(c.level, c.cluster)] for c in members]
    ids_a = sorted({i for m in ms for i in m.ids_a})
    ids_b = sorted({i for m in ms for i in m.ids_b})
    rows_a = sorted({r for m in ms for r in m.rows_a})
    rows_b = sorted({r for m in ms for r in m.rows_b})
    va, vb = set().union(*(m.valid_ids_a for m in ms)), set().union(*(m.valid_ids_b for m in ms))
    all_va, all_vb = result.validation_ids
    table = ShareTable(b_in=len(vb), a_in=len(va), b_out=len(all_vb) - len(vb), a_out=len(all_va) - len(va))
    if result.config.test in STRATIFIED_TESTS and result.validation_strata is not None:
        sa, sb = result.validation_strata
        strata = sorted(set(sa) | set(sb))
        tables = []
        for s in strata:
            in_a = sum(1 for i, st in zip(all_va, sa) if st == s and i in va)
            in_b = sum(1 for i, st in zip(all_vb, sb) if st == s and i in vb)
            tables.append(ShareTable(b_in=in_b, a_in=in_a, b_out=sum(st == s for st in sb) - in_b, a_out=sum(st == s for st in sa) - in_a))
        p = stratified_test(tables)
    else:
        p = share_test(table, result.config.test)
    lo = log_odds_ratio(table)
    keywords: list[str] = []
    for c in members:
        keywords.extend(w for w in c.keywords if w not in keywords)
    first = members[0].llm_label or members[0].label
    label = first if len(members) == 1 else f"{first} (+{len(members) - 1} more clusters)"
    return Behaviour(
        rank=0, skew=members[0].skew, label=label, keywords=keywords[:12], levels=sorted({c.level for c in members}),
        members=members, ids_a=ids_a, ids_b=ids_b, texts_a=[result.texts_a[i] for i in ids_a],
        texts_b=[result.texts_b[i] for i in ids_b], rows_a=list(rows_a), rows_b=list(rows_b),
        valid_a=table.a_in, valid_b=table.b_in, rate_a=table.a_in / max(len(all_va), 1), rate_b=table.b_in / max(len(all_vb), 1),
        share_b=table.share_b, overall_share_b=table.overall_share_b,
        p_value=p, q_value=float("nan"), log_odds=lo.estimate, log_odds_low=lo.low, log_odds_high=lo.high,
    )
