"""The diff pipeline on two lists of texts: split, embed, cluster, test, label.

Each side's texts are split into an exploration half (clustered, labelled) and
a validation half (only used to test shares and check labels), so the test of
a cluster is not biased by having chosen the cluster on the same texts. Text
and sentence levels are tested together: one Benjamini-Hochberg family, one
ranked list.

The result never depends on the order of the input texts: each side is sorted
by text hash before the seeded split.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..configbase import ConfigBase, in_range, integer, one_of, positive_int, subset_of
from ..errors import InputError
from . import labels as lab
from .cluster import ClusterConfig, stability
from ..lm.embed import Embedder, text_hash
from .stats import TESTS, ShareTable, benjamini_hochberg, log_odds_ratio, share_test
from .units import text_units

LEVELS = ("text", "sentence")


@dataclasses.dataclass(frozen=True)
class DiffConfig(ConfigBase):
    """Settings of a diff. ``alpha`` is the FDR level of :meth:`DiffResult.significant`.
    ``seed`` seeds the split and the clusterers: a cluster config's own
    ``seed`` is used instead when it is not 0 (the default)."""

    seed: int = 0
    validation_fraction: float = 0.5
    levels: tuple[str, ...] = LEVELS
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

    _checks = {
        "seed": integer, "validation_fraction": in_range(0, 1, low_open=True, high_open=True), "levels": subset_of(LEVELS),
        "test": one_of(TESTS), "alpha": in_range(0, 1, low_open=True, high_open=True), "min_words": positive_int,
        "max_units": positive_int, "min_texts": positive_int, "n_examples": positive_int, "n_keywords": positive_int,
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
    #: per level, ``[n_clusters, dim]`` mean embedding of each cluster's exploration rows
    #: (nan rows for empty clusters); not written by ``to_dict``. The audit assigns new texts with it.
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
            "levels": [dataclasses.asdict(s) for s in self.levels], "timings": self.timings,
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
    ordered = sorted(texts, key=lambda t: (text_hash(t), t))
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(ordered))
    n_valid = int(round(len(ordered) * validation_fraction))
    valid = sorted(perm[:n_valid].tolist())
    explore = sorted(perm[n_valid:].tolist())
    return [ordered[i] for i in explore], [ordered[i] for i in valid]


def diff_texts(
    texts_a: list[str], texts_b: list[str], *, config: DiffConfig | None = None, embedder: Embedder | None = None,
) -> DiffResult:
    """Which clusters of texts does B produce more (or less) often than A?

    Returns every tested cluster of the configured levels, ranked; see
    :meth:`DiffResult.significant` for the flagged ones.
    """
    config = config or DiffConfig()
    for name, texts in (("texts_a", texts_a), ("texts_b", texts_b)):
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise InputError(f"{name} must be a list of strings")
        if len(texts) < config.min_texts:
            raise InputError(f"{name} has {len(texts)} texts; the diff needs at least min_texts={config.min_texts} per model")
    if embedder is None:
        from ..lm.embed import MiniLMEmbedder

        embedder = MiniLMEmbedder()
    timings: dict[str, float] = {}
    seed = config.seed
    exp_a, val_a = split_halves(texts_a, config.validation_fraction, seed)
    exp_b, val_b = split_halves(texts_b, config.validation_fraction, seed + 1)
    explore = exp_a + exp_b
    valid = val_a + val_b
    model_e = np.array([0] * len(exp_a) + [1] * len(exp_b))
    model_v = np.array([0] * len(val_a) + [1] * len(val_b))

    records: list[ClusterRecord] = []
    summaries: list[LevelSummary] = []
    pvals: list[float] = []
    points: list[dict[str, Any]] = []
    centroids: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(seed + 7)
    for level in config.levels:
        ccfg = config.text_clusters if level == "text" else config.sentence_clusters
        ccfg = dataclasses.replace(ccfg, seed=ccfg.seed or seed)  # the diff's seed unless the level sets its own
        if level == "text":
            rows_e, owner_e = explore, np.arange(len(explore))
            rows_v, owner_v = valid, np.arange(len(valid))
        else:
            rows_e, oe = text_units(explore, config.min_words, config.max_units)
            rows_v, ov = text_units(valid, config.min_words, config.max_units)
            owner_e, owner_v = np.array(oe, dtype=np.int64), np.array(ov, dtype=np.int64)
            if not rows_e or not rows_v:
                raise InputError(f"the texts have no sentence of at least min_words={config.min_words} words; drop the 'sentence' level")
        t0 = time.perf_counter()
        emb = np.asarray(embedder.embed(list(rows_e) + list(rows_v)), dtype=np.float32)
        x_e, x_v = emb[: len(rows_e)], emb[len(rows_e):]
        timings[f"embed_{level}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        clusterer = ccfg.make()
        lab_e = clusterer.fit(x_e)
        lab_v = clusterer.assign(x_v)
        k = clusterer.n_clusters
        centroids[level] = np.stack([x_e[lab_e == c].mean(axis=0) if (lab_e == c).any() else np.full(x_e.shape[1], np.nan, np.float32)
                                     for c in range(k)]) if k else np.zeros((0, x_e.shape[1]), np.float32)
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
        t0 = time.perf_counter()
        keywords = lab.c_tf_idf([[rows_e[i] for i in np.flatnonzero(lab_e == c)] for c in range(k)], config.n_keywords)
        labels = [lab.keyword_label(kw) for kw in keywords]
        label_vecs = np.asarray(embedder.embed(labels), dtype=np.float32)
        for c in range(k):
            # per text: does the text have a row (itself, or one of its units) in cluster c?
            has_v = np.zeros(len(valid), bool)
            has_v[owner_v[lab_v == c]] = True
            table = ShareTable(b_in=int((has_v & (model_v == 1)).sum()), a_in=int((has_v & (model_v == 0)).sum()),
                               b_out=int((~has_v & (model_v == 1)).sum()), a_out=int((~has_v & (model_v == 0)).sum()))
            p = share_test(table, config.test)
            lo = log_odds_ratio(table)
            label = labels[c]
            accuracy = lab.validate_label(label_vecs[c], x_v, lab_v == c, rng) if keywords[c] else float("nan")
            med = [rows_e[i] for i in lab.medoids(x_e, lab_e, c, config.n_examples)]
            ex_a = _examples(valid, has_v & (model_v == 0), config.n_examples)
            ex_b = _examples(valid, has_v & (model_v == 1), config.n_examples)
            records.append(ClusterRecord(
                level=level, cluster=c, n_explore=int((lab_e == c).sum()), valid_a=table.a_in, valid_b=table.b_in,
                share_b=table.share_b, overall_share_b=table.overall_share_b, p_value=p, q_value=float("nan"),
                log_odds=lo.estimate, log_odds_low=lo.low, log_odds_high=lo.high, keywords=[w for w, _ in keywords[c]],
                label=label, label_accuracy=accuracy, medoids=med, examples_a=ex_a, examples_b=ex_b,
            ))
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
    return DiffResult(records, config, embedder.name, len(texts_a), len(texts_b), summaries, timings, points, centroids)


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
