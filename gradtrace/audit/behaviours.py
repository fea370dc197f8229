"""Behaviours: flagged clusters of a diff that are one change, and the rule
that says whether a text shows one.

**The grouping hook.** A *behaviour grouper* is any callable
``grouper(diff_result) -> groups``; each group is a :class:`BehaviourGroup`,
a sequence of :class:`~gradtrace.diff.ClusterRecord` (its members), or any
object with a ``members`` sequence of them (and optionally a ``label``).
:func:`as_behaviour_groups` normalises what it returns. The default,
:func:`one_behaviour_per_cluster`, makes each flagged cluster its own
behaviour; a grouper that merges clusters (for example by the overlap of the
texts they flag) plugs in with ``run_audit(..., grouper=that_function)``.

**Membership.** A text shows a behaviour when one of its rows (the text
itself for a text-level member, one of its sentences for a sentence-level
member, cut as the diff cuts them) is nearer, in the diff's embedding space,
to the centroid of a member cluster than to any other centroid of that level
(the diff's ``DiffResult.centroids``: the mean embedding of each cluster's
exploration rows). For KMeans this is the clusterer's own assignment rule.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..diff.pipeline import ClusterRecord, DiffResult
from ..diff.units import text_units
from ..errors import InputError


@dataclasses.dataclass
class BehaviourGroup:
    """One behaviour: one or more flagged clusters (``members``, in rank order).

    ``test``: the behaviour's own test as a whole when the grouper made one
    (:func:`group_flagged`: ``p_value``, ``q_value``, ``valid_a``, ``valid_b``,
    ``log_odds``); its ``q_value`` is then the behaviour's, else the lowest of
    its members'."""

    members: list[ClusterRecord]
    label: str = ""
    test: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.members:
            raise InputError("a behaviour group needs at least one member cluster")
        self.members = sorted(self.members, key=lambda c: c.rank)
        if not self.label:
            self.label = " | ".join(c.llm_label or c.label for c in self.members)

    @property
    def q_value(self) -> float:
        if self.test is not None:
            return float(self.test["q_value"])
        return min(c.q_value for c in self.members)

    @property
    def skew(self) -> str:
        """``"B"`` or ``"A"`` when every member is skewed that way, else ``"mixed"``."""
        sides = {c.skew for c in self.members}
        return sides.pop() if len(sides) == 1 else "mixed"

    @property
    def keys(self) -> list[tuple[str, int]]:
        return [(c.level, c.cluster) for c in self.members]


#: ``grouper(diff_result) -> groups`` (see the module docstring).
BehaviourGrouper = Callable[[DiffResult], Sequence[Any]]


def one_behaviour_per_cluster(result: DiffResult) -> list[BehaviourGroup]:
    """The default grouping: every flagged cluster (``q <= alpha``) is its own behaviour."""
    return [BehaviourGroup([c]) for c in result.significant()]


def group_flagged(result: DiffResult) -> list[BehaviourGroup]:
    """The audit's default grouping: :func:`gradtrace.diff.group_behaviours` with its default rule (flagged
    clusters skewed the same way whose texts overlap or whose centred centroids are close, single
    linkage), each behaviour tested as a whole on the union of its members' validation texts."""
    from ..diff.behaviours import group_behaviours

    out = []
    for b in group_behaviours(result):
        test = {"p_value": b.p_value, "q_value": b.q_value, "valid_a": b.valid_a, "valid_b": b.valid_b, "log_odds": b.log_odds,
                "log_odds_low": b.log_odds_low, "log_odds_high": b.log_odds_high, "rate_a": b.rate_a, "rate_b": b.rate_b}
        out.append(BehaviourGroup(list(b.members), b.label, test))
    return out


def as_behaviour_groups(groups: Sequence[Any]) -> list[BehaviourGroup]:
    """What a grouper returned, as :class:`BehaviourGroup` objects."""
    out = []
    for i, g in enumerate(groups):
        if isinstance(g, BehaviourGroup):
            out.append(g)
            continue
        members = getattr(g, "members", g)
        if isinstance(members, ClusterRecord):
            members = [members]
        if not isinstance(members, Sequence) or not all(isinstance(m, ClusterRecord) for m in members):
            raise InputError(f"behaviour grouper: group {i} must be a sequence of ClusterRecord or have .members; got {type(g).__name__}")
        test = getattr(g, "test", None)
        out.append(BehaviourGroup(list(members), str(getattr(g, "label", "") or ""), test if isinstance(test, dict) else None))
    return out


def describe_grouper(grouper: Any) -> str:
    return f"{getattr(grouper, '__module__', '?')}.{getattr(grouper, '__qualname__', type(grouper).__name__)}"


class Assigner:
    """Assigns texts to the diff's clusters by nearest centroid, per level."""

    def __init__(self, centroids: Mapping[str, Any], embedder: Any, min_words: int, max_units: int):
        self.centroids = {lvl: np.asarray(c, dtype=np.float64) for lvl, c in centroids.items()}
        self.embedder, self.min_words, self.max_units = embedder, min_words, max_units

    def assign(self, texts: Sequence[str]) -> dict[str, tuple[list[str], np.ndarray, np.ndarray]]:
        """Per level: ``(rows, owner text index of each row, cluster of each row)``."""
        out = {}
        for level, cent in self.centroids.items():
            if level == "text":
                rows, owner = list(texts), np.arange(len(texts))
            elif level == "sentence":
                rows, own = text_units(list(texts), self.min_words, self.max_units)
                owner = np.asarray(own, dtype=np.int64)
            else:
                continue
            if not rows or cent.size == 0:
                out[level] = (rows, np.asarray(owner, dtype=np.int64), np.full(len(rows), -1, dtype=np.int64))
                continue
            x = np.asarray(self.embedder.embed(rows), dtype=np.float64)
            ok = np.isfinite(cent).all(axis=1)
            c = np.where(ok[:, None], cent, 0.0)
            d = (x**2).sum(1)[:, None] - 2 * x @ c.T + (c**2).sum(1)[None, :]
            d[:, ~ok] = np.inf
            out[level] = (rows, np.asarray(owner, dtype=np.int64), np.argmin(d, axis=1).astype(np.int64))
        return out


class CombinedAssigner:
    """Several assigners as one (the cluster view's :class:`Assigner` and the likelihood view's): their
    levels side by side."""

    def __init__(self, *assigners: Any):
        self.assigners = [a for a in assigners if a is not None]

    def assign(self, texts: Sequence[str]) -> dict[str, tuple[list[str], np.ndarray, np.ndarray]]:
        out: dict[str, tuple[list[str], np.ndarray, np.ndarray]] = {}
        for a in self.assigners:
            out.update(a.assign(texts))
        return out


def member_rows(assignment: Mapping[str, tuple[list[str], np.ndarray, np.ndarray]], keys: Sequence[tuple[str, int]],
                n_texts: int) -> tuple[np.ndarray, list[str | None]]:
    """Which texts show the behaviour with member ``keys``, and for each the
    sentence that does: the first sentence of the text in a sentence-level
    member (members in the order given), whichever member also holds the
    whole text; None when no sentence-level member holds one of its
    sentences (or the text does not show the behaviour)."""
    mask = np.zeros(n_texts, dtype=bool)
    first: list[str | None] = [None] * n_texts
    for level, cluster in keys:
        if level not in assignment:
            raise InputError(f"behaviour member at level {level!r}: the audit can only measure the levels {sorted(assignment)}")
        rows, owner, labels = assignment[level]
        for r in np.flatnonzero(labels == cluster):
            t = int(owner[r])
            mask[t] = True
            if first[t] is None and level.endswith("sentence"):
                first[t] = rows[r]
    return mask, first


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion ``k / n``."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def share(mask: np.ndarray) -> dict[str, Any]:
    k, n = int(mask.sum()), int(mask.size)
    lo, hi = wilson(k, n)
    return {"count": k, "n": n, "share": k / n if n else 0.0, "ci95": [lo, hi]}


def two_proportion_p(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided Fisher exact p-value that two proportions are equal."""
    from scipy import stats

    if n1 == 0 or n2 == 0:
        return 1.0
    return float(stats.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]]).pvalue)
