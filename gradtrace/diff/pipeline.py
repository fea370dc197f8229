"""The diff pipeline on two lists of texts: split, embed, cluster, test, label.

Each side's texts are split into an exploration half (clustered, labelled) and
a validation half (only used to test shares and check labels), so the test of
a cluster is not biased by having chosen the cluster on the same texts. Text
and sentence levels are tested together: one Benjamini-Hochberg family, one
ranked list.

The result never depends on the order of the input texts: each side is sorted
by text hash before the seeded split.

Besides the two levels, an optional ``fine`` level looks for behaviours that
few texts show: small regions of sentences that one model writes and the
other does not, found from the exploration half's labels (each sentence's
``fine_size`` nearest neighbours; :mod:`gradtrace.diff.regions`); only the
``fine_tests`` most skewed regions are tested on the validation half, so the
held-out test stays valid and the family stays small. With
``test="cmh"`` and a stratum (prompt id or prompt form) per text, each
cluster is tested within strata (exact Cochran-Mantel-Haenszel).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..configbase import ConfigBase, in_range, int_at_least, integer, one_of, positive_int, subset_of
from ..errors import InputError
from . import labels as lab
from .cluster import ClusterConfig, stability
from ..lm.embed import Embedder, text_hash
from .stats import STRATIFIED_TESTS, TESTS, ShareTable, benjamini_hochberg, log_odds_ratio, share_test, stratified_test
from .regions import enriched_regions, nearest
from .units import text_units

LEVELS = ("text", "sentence", "fine")
DEFAULT_LEVELS = ("text", "sentence")


@dataclasses.dataclass(frozen=True)
class DiffConfig(ConfigBase):
    """Settings of a diff. ``alpha`` is the FDR level of :meth:`DiffResult.significant`.
    ``seed`` seeds the split and the clusterers: a cluster config's own
    ``seed`` is used instead when it is not 0 (the default).

    ``levels``: any of ``text``, ``sentence`` and ``fine`` (default the first
    two). ``fine``: regions of sentence units enriched for one model among
    each sentence's ``fine_size`` nearest neighbours on the exploration half
    (:mod:`gradtrace.diff.regions`); the ``fine_tests`` regions with the
    smallest exploration Fisher p-value are tested on the validation half.
    ``test``: ``fisher``, ``binomial``, or ``cmh`` (exact stratified test;
    :func:`diff_texts` then needs ``strata_a``/``strata_b``)."""

    seed: int = 0
    validation_fraction: float = 0.5
    levels: tuple[str, ...] = DEFAULT_LEVELS
    text_clusters: ClusterConfig = dataclasses.field(default_factory=ClusterConfig)
    sentence_clusters: ClusterConfig = dataclasses.field(default_factory=lambda: ClusterConfig(k_min=6, k_max=30))
    test: str = "fisher"
    alpha: float = 0.05
    stability_seeds: tuple[int, ...] = (1, 2)
    min_words: int = 3
    max_units: int = 12
    min_texts: int = 10
    n_examples: int = 4
    n_keywords: int = 8
    fine_size: int = 8
    fine_tests: int = 5

    _checks = {
        "seed": integer, "validation_fraction": in_range(0, 1, low_open=True, high_open=True), "levels": subset_of(LEVELS),
        "test": one_of(TESTS + STRATIFIED_TESTS), "alpha": in_range(0, 1, low_open=True, high_open=True), "min_words": positive_int,
        "max_units": positive_int, "min_texts": positive_int, "n_examples": positive_int, "n_keywords": positive_int,
        "fine_size": int_at_least(2), "fine_tests": positive_int,
    }


@dataclasses.dataclass
class ClusterRecord:
    """One tested cluster. ``share_b``: share of its validation texts from B;
    ``log_odds`` > 0 means skewed to B. ``label_accuracy``: label validation
    accuracy on held-out rows (0.5 = chance)."""

    level: str
    cluster: int
    n_explore: int
    valid_a: int
    valid_b: int
    share_b: float
    overall_share_b: float
    p_value: float
    q_value: float
    log_odds: float
    log_odds_low: float
    log_odds_high: float
    keywords: list[str]
    label: str
    label_accuracy: float
    medoids: list[str]
    examples_a: list[str]
    examples_b: list[str]
    rank: int = 0
    llm_label: str | None = None
    judgement: str | None = None
    judgement_reason: str | None = None

    @property
    def skew(self) -> str:
        return "B" if self.log_odds > 0 else "A"

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass(frozen=True)
class ClusterMembers:
    """Which input texts have a row in one cluster. Ids are indices into the
    ``texts_a``/``texts_b`` lists as given to :func:`diff_texts`; ``rows_*``
    are (text id, row) pairs, the row being the text itself (text level) or
    one of its sentences; ``centroid`` is the mean of the cluster's
    exploration rows' unit-length embeddings, scaled to unit length."""

    ids_a: tuple[int, ...]
    ids_b: tuple[int, ...]
    valid_ids_a: tuple[int, ...]
    valid_ids_b: tuple[int, ...]
    rows_a: tuple[tuple[int, str], ...]
    rows_b: tuple[tuple[int, str], ...]
    centroid: np.ndarray = dataclasses.field(repr=False, compare=False)


@dataclasses.dataclass
class LevelSummary:
    level: str
    n_clusters: int
    n_explore: int
    n_validation: int
    unassigned_explore: int
    unassigned_validation: int
    stability_ari: float
    silhouette: dict[int, float]


@dataclasses.dataclass
class DiffResult:
    """Clusters of both levels, ranked (flagged first, then by |log odds|)."""

    clusters: list[ClusterRecord]
    config: DiffConfig
    embedder: str
    n_a: int
    n_b: int
    levels: list[LevelSummary]
    timings: dict[str, float]
    points: list[dict[str, Any]]  # 2-D map of the texts: x, y, model, split, cluster, text
    #: (level, cluster) -> its member texts (in memory only; not part of :meth:`to_dict`)
    members: dict[tuple[str, int], ClusterMembers] = dataclasses.field(default_factory=dict, repr=False)
    #: ids of the validation texts of A and of B (indices into the input lists)
    validation_ids: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())
    #: per validation text of A and of B, its stratum (when strata were given)
    validation_strata: tuple[tuple[str, ...], tuple[str, ...]] | None = None
    #: the input texts (in memory only)
    texts_a: list[str] = dataclasses.field(default_factory=list, repr=False)
    texts_b: list[str] = dataclasses.field(default_factory=list, repr=False)
    #: level -> mean embedding of the level's exploration rows (in memory only; centres the centroids)
    row_means: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)
    #: per level, ``[n_clusters, dim]`` mean embedding of each cluster's (or ``fine`` region's) exploration
    #: rows (nan rows for empty ones); not written by ``to_dict``. The audit assigns new texts with it.
    centroids: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)

    def significant(self, alpha: float | None = None) -> list[ClusterRecord]:
        """Clusters with ``q_value <= alpha`` (default: the config's alpha), in rank order."""
        a = self.config.alpha if alpha is None else alpha
        if not 0.0 < a < 1.0:
            raise InputError(f"alpha must lie strictly between 0 and 1; got {a!r}")
        return [c for c in self.clusters if c.q_value <= a]

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(), "embedder": self.embedder, "n_a": self.n_a, "n_b": self.n_b,
            "levels": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in dataclasses.asdict(s).items()}
                       for s in self.levels], "timings": self.timings,
            "clusters": [c.to_dict() for c in self.clusters], "points": self.points,
        }

    def save(self, path: str | Path) -> Path:
        """Write ``diff.json``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n", encoding="utf-8")
        return path


def split_halves(texts: Sequence[str], validation_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(exploration, validation) texts: sorted by hash, then a seeded permutation."""
    explore, valid = split_indices(texts, validation_fraction, seed)
    return [texts[i] for i in explore], [texts[i] for i in valid]


def split_indices(texts: Sequence[str], validation_fraction: float, seed: int,
                  keys: Sequence[str] | None = None) -> tuple[list[int], list[int]]:
    """:func:`split_halves` as indices into ``texts``: (exploration ids, validation ids), each in hash order.

    Equal texts are ordered by ``keys`` (e.g. their prompt ids) when given,
    then by position; the texts of each half are those of :func:`split_halves`."""
    order = sorted(range(len(texts)), key=lambda i: (text_hash(texts[i]), texts[i], keys[i] if keys is not None else "", i))
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(order))
    n_valid = int(round(len(order) * validation_fraction))
    valid = sorted(perm[:n_valid].tolist())
    explore = sorted(perm[n_valid:].tolist())
    return [order[i] for i in explore], [order[i] for i in valid]


def diff_texts(
    texts_a: list[str], texts_b: list[str], *, config: DiffConfig | None = None, embedder: Embedder | None = None,
    strata_a: Sequence[str] | None = None, strata_b: Sequence[str] | None = None,
) -> DiffResult:
    """Which clusters of texts does B produce more (or less) often than A?

    Returns every tested cluster of the configured levels, ranked; see
    :meth:`DiffResult.significant` for the flagged ones. ``strata_a`` and
    ``strata_b``: one stratum per text (its prompt id, or a prompt form);
    required by ``test="cmh"``, which tests each cluster within strata.
    """
    config = config or DiffConfig()
    for name, texts in (("texts_a", texts_a), ("texts_b", texts_b)):
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise InputError(f"{name} must be a list of strings")
        if len(texts) < config.min_texts:
            raise InputError(f"{name} has {len(texts)} texts; the diff needs at least min_texts={config.min_texts} per model")
    stratified = config.test in STRATIFIED_TESTS
    if (strata_a is None) != (strata_b is None):
        raise InputError("give both strata_a and strata_b, or neither")
    if strata_a is not None:
        for name, strata, texts in (("strata_a", strata_a, texts_a), ("strata_b", strata_b, texts_b)):
            if isinstance(strata, str) or len(strata) != len(texts) or not all(isinstance(s, str) for s in strata):
                raise InputError(f"{name} must be a list of one string per text ({len(texts)}); got {type(strata).__name__} "
                                 f"of length {len(strata) if hasattr(strata, '__len__') else '?'}")
        strata_a, strata_b = list(strata_a), list(strata_b)
    elif stratified:
        raise InputError(f"test={config.test!r} tests within strata: pass strata_a and strata_b (e.g. the prompt id of each text)")
    if embedder is None:
        from ..lm.embed import MiniLMEmbedder

        embedder = MiniLMEmbedder()
    timings: dict[str, float] = {}
    seed = config.seed
    ids_ea, ids_va = split_indices(texts_a, config.validation_fraction, seed, strata_a)
    ids_eb, ids_vb = split_indices(texts_b, config.validation_fraction, seed + 1, strata_b)
    explore = [texts_a[i] for i in ids_ea] + [texts_b[i] for i in ids_eb]
    valid = [texts_a[i] for i in ids_va] + [texts_b[i] for i in ids_vb]
    model_e = np.array([0] * len(ids_ea) + [1] * len(ids_eb))
    model_v = np.array([0] * len(ids_va) + [1] * len(ids_vb))
    id_e = np.array(ids_ea + ids_eb, dtype=np.int64)  # position in explore -> id in its side's input list
    id_v = np.array(ids_va + ids_vb, dtype=np.int64)
    strata_v: np.ndarray | None = None
    if strata_a is not None and strata_b is not None:
        strata_v = np.array([strata_a[i] for i in ids_va] + [strata_b[i] for i in ids_vb], dtype=object)

    records: list[ClusterRecord] = []
    members: dict[tuple[str, int], ClusterMembers] = {}
    row_means: dict[str, np.ndarray] = {}
    summaries: list[LevelSummary] = []
    pvals: list[float] = []
    points: list[dict[str, Any]] = []
    centroids: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(seed + 7)
    units: dict[str, Any] = {}
    for level in config.levels:
        ccfg = config.text_clusters if level == "text" else config.sentence_clusters
        ccfg = dataclasses.replace(ccfg, seed=ccfg.seed or seed)  # the diff's seed unless the level sets its own
        if level == "text":
            rows_e, owner_e = explore, np.arange(len(explore))
            rows_v, owner_v = valid, np.arange(len(valid))
        else:
            if not units:
                units["e"] = text_units(explore, config.min_words, config.max_units)
                units["v"] = text_units(valid, config.min_words, config.max_units)
            rows_e, oe = units["e"]
            rows_v, ov = units["v"]
            owner_e, owner_v = np.array(oe, dtype=np.int64), np.array(ov, dtype=np.int64)
            if not rows_e or not rows_v:
                raise InputError(f"the texts have no sentence of at least min_words={config.min_words} words; drop the 'sentence' level")
        t0 = time.perf_counter()
        if level != "text" and "x" in units:
            x_e, x_v = units["x"]
        else:
            emb = np.asarray(embedder.embed(list(rows_e) + list(rows_v)), dtype=np.float32)
            x_e, x_v = emb[: len(rows_e)], emb[len(rows_e):]
            if level != "text":
                units["x"] = (x_e, x_v)
        timings[f"embed_{level}"] = time.perf_counter() - t0
        unit_e = x_e / np.maximum(np.linalg.norm(x_e, axis=1, keepdims=True), 1e-12)
        row_means[level] = unit_e.mean(axis=0).astype(np.float32)
        t0 = time.perf_counter()
        if level == "fine":
            owner_model = model_e  # owner_e indexes exploration texts
            masks_e = enriched_regions(x_e, owner_e, owner_model, config.fine_size, config.fine_tests)
            near = nearest(x_v, x_e)
            masks_v = [m[near] for m in masks_e]
            k = len(masks_e)
            timings[f"cluster_{level}"] = time.perf_counter() - t0
            timings[f"stability_{level}"] = 0.0
            in_any = np.any(masks_e, axis=0) if masks_e else np.zeros(len(rows_e), bool)
            summaries.append(LevelSummary(level, k, len(rows_e), len(rows_v), int((~in_any).sum()),
                                          int((~np.any(masks_v, axis=0)).sum()) if masks_v else len(rows_v), float("nan"), {}))
            lab_e = np.full(len(rows_e), -1, dtype=np.int64)  # for the map only: no map at this level
            docs = [[rows_e[i] for i in np.flatnonzero(m)] for m in masks_e] + [[rows_e[i] for i in np.flatnonzero(~in_any)]]
        else:
            clusterer = ccfg.make()
            lab_e = clusterer.fit(x_e)
            lab_v = clusterer.assign(x_v)
            k = clusterer.n_clusters
            timings[f"cluster_{level}"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            if config.stability_seeds and ccfg.method == "kmeans":
                fixed = dataclasses.replace(ccfg, k_min=k, k_max=k)
                ari = stability(x_e, fixed, [ccfg.seed, *config.stability_seeds])
            else:
                ari = 1.0
            timings[f"stability_{level}"] = time.perf_counter() - t0
            summaries.append(LevelSummary(level, k, len(rows_e), len(rows_v), int((lab_e < 0).sum()), int((lab_v < 0).sum()),
                                          ari, dict(getattr(clusterer, "scores", {}))))
            masks_e = [lab_e == c for c in range(k)]
            masks_v = [lab_v == c for c in range(k)]
            docs = [[rows_e[i] for i in np.flatnonzero(m)] for m in masks_e]
        centroids[level] = (np.stack([x_e[m].mean(axis=0) if m.any() else np.full(x_e.shape[1], np.nan, np.float32) for m in masks_e])
                            if masks_e else np.zeros((0, x_e.shape[1]), np.float32))
        t0 = time.perf_counter()
        keywords = lab.c_tf_idf(docs, config.n_keywords)[:k]
        labels = [lab.keyword_label(kw) for kw in keywords]
        label_vecs = np.asarray(embedder.embed(labels), dtype=np.float32)
        for c in range(k):
            in_e, in_v = masks_e[c], masks_v[c]
            # per text: does the text have a row (itself, or one of its units) in cluster c?
            has_v = np.zeros(len(valid), bool)
            has_v[owner_v[in_v]] = True
            table = _table(has_v, model_v)
            if stratified and strata_v is not None:
                p = stratified_test([_table(has_v[strata_v == s], model_v[strata_v == s]) for s in sorted(set(strata_v.tolist()))])
            else:
                p = share_test(table, config.test)
            lo = log_odds_ratio(table)
            label = labels[c]
            accuracy = lab.validate_label(label_vecs[c], x_v, in_v, rng) if keywords[c] else float("nan")
            med = [rows_e[i] for i in lab.medoids(x_e, np.where(in_e, 0, -1), 0, config.n_examples)]
            ex_a = _examples(valid, has_v & (model_v == 0), config.n_examples)
            ex_b = _examples(valid, has_v & (model_v == 1), config.n_examples)
            records.append(ClusterRecord(
                level=level, cluster=int(c), n_explore=int(in_e.sum()), valid_a=table.a_in, valid_b=table.b_in,
                share_b=table.share_b, overall_share_b=table.overall_share_b, p_value=p, q_value=float("nan"),
                log_odds=lo.estimate, log_odds_low=lo.low, log_odds_high=lo.high, keywords=[w for w, _ in keywords[c]],
                label=label, label_accuracy=accuracy, medoids=med, examples_a=ex_a, examples_b=ex_b,
            ))
            members[(level, int(c))] = _members(in_e, in_v, owner_e, owner_v, rows_e, rows_v, model_e, model_v, id_e, id_v, x_e)
            pvals.append(p)
        timings[f"test_label_{level}"] = time.perf_counter() - t0
        if level == "text":
            xy = _pca2(np.concatenate([x_e, x_v]))
            for i in range(len(explore)):
                points.append({"x": float(xy[i, 0]), "y": float(xy[i, 1]), "model": "AB"[model_e[i]], "split": "explore", "cluster": int(lab_e[i]),
                               "text": explore[i]})
            for j in range(len(valid)):
                i = len(explore) + j
                points.append({"x": float(xy[i, 0]), "y": float(xy[i, 1]), "model": "AB"[model_v[j]], "split": "validation", "cluster": int(lab_v[j]),
                               "text": valid[j]})

    qvals = benjamini_hochberg(pvals)
    for rec, q in zip(records, qvals):
        rec.q_value = float(q)
    records.sort(key=lambda r: (r.q_value > config.alpha, -abs(r.log_odds), r.p_value, LEVELS.index(r.level), r.cluster))
    for i, rec in enumerate(records):
        rec.rank = i + 1
    strata_out = None
    if strata_a is not None and strata_b is not None:
        strata_out = (tuple(strata_a[i] for i in ids_va), tuple(strata_b[i] for i in ids_vb))
    return DiffResult(records, config, embedder.name, len(texts_a), len(texts_b), summaries, timings, points, members,
                      (tuple(ids_va), tuple(ids_vb)), strata_out, list(texts_a), list(texts_b), row_means, centroids)


def _table(has: np.ndarray, model: np.ndarray) -> ShareTable:
    return ShareTable(b_in=int((has & (model == 1)).sum()), a_in=int((has & (model == 0)).sum()),
                      b_out=int((~has & (model == 1)).sum()), a_out=int((~has & (model == 0)).sum()))


def _members(in_e: np.ndarray, in_v: np.ndarray, owner_e: np.ndarray, owner_v: np.ndarray, rows_e: Sequence[str],
             rows_v: Sequence[str], model_e: np.ndarray, model_v: np.ndarray, id_e: np.ndarray, id_v: np.ndarray,
             x_e: np.ndarray) -> ClusterMembers:
    rows: dict[int, list[tuple[int, str]]] = {0: [], 1: []}
    ids: dict[int, set[int]] = {0: set(), 1: set()}
    valid_ids: dict[int, set[int]] = {0: set(), 1: set()}
    for mask, owner, texts, model, idmap, is_valid in ((in_e, owner_e, rows_e, model_e, id_e, False),
                                                        (in_v, owner_v, rows_v, model_v, id_v, True)):
        for r in np.flatnonzero(mask):
            t = int(owner[r])
            side, tid = int(model[t]), int(idmap[t])
            rows[side].append((tid, texts[r]))
            ids[side].add(tid)
            if is_valid:
                valid_ids[side].add(tid)
    in_c = x_e[in_e]
    in_c = in_c / np.maximum(np.linalg.norm(in_c, axis=1, keepdims=True), 1e-12)  # the mean of unit rows, like row_means
    centre = in_c.mean(axis=0) if len(in_c) else np.zeros(x_e.shape[1], np.float32)
    centre = centre / max(float(np.linalg.norm(centre)), 1e-12)
    return ClusterMembers(tuple(sorted(ids[0])), tuple(sorted(ids[1])), tuple(sorted(valid_ids[0])), tuple(sorted(valid_ids[1])),
                          tuple(sorted(rows[0])), tuple(sorted(rows[1])), centre.astype(np.float32))


def _examples(texts: list[str], mask: np.ndarray, n: int) -> list[str]:
    return [texts[i] for i in np.flatnonzero(mask)[:n]]


def _pca2(x: np.ndarray) -> np.ndarray:
    """First two principal components (sign fixed so the largest |loading| is positive)."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    if x.shape[0] < 2:
        return np.zeros((x.shape[0], 2))
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    comps = vt[:2]
    signs = np.sign(comps[np.arange(comps.shape[0]), np.abs(comps).argmax(axis=1)])
    out = x @ (comps * signs[:, None]).T
    if out.shape[1] < 2:
        out = np.pad(out, ((0, 0), (0, 2 - out.shape[1])))
    return out
