"""The likelihood view of a diff: texts (and sentences) that model B finds
far likelier than model A does, clustered and tested against B's other
texts held out from the selection.

**Scores.** For every text B sampled (given its prompt, tokenized as the
fine-tune was: :class:`~gradtrace.lm.tasks.CausalLMTask`), each completion
token gets ``d = log p_B(token | prompt, earlier tokens) - log p_A(...)``.
A text's ``d`` sums its completion tokens (the end-of-turn tokens included,
so the summed ``d`` is exactly ``log p_B(text | prompt) - log p_A(text |
prompt)``); a sentence's ``d`` sums the tokens whose characters lie mostly
in it (the sentence given the prompt and the text before it). ``stat``
``mean`` divides by the number of tokens (nats per token; the default),
``sum`` keeps the sum.

**Rule.** Per level (``text``, ``sentence``):

1. B's texts are split into an exploration and a validation half with the
   diff's split (:func:`~gradtrace.diff.pipeline.split_indices`, seed
   ``seed + 1``, B's seed in the diff). Optional extra exploration rows: B's
   own fine-tuning completions (``train``), scored the same way.
2. On the exploration rows only: a row is *outlying* when its robust z-score
   ``(d - median) / (1.4826 MAD)`` within its source (B's samples, or the
   training completions) is at least ``z``. Outlying rows that are among
   each other's ``neighbours`` nearest exploration rows (cosine of their
   embeddings; rows of the same text excluded) are linked; connected
   components holding rows of at least ``min_texts`` texts are candidate
   clusters; the ``n_tests`` with the most texts (then the largest summed z)
   are tested.
3. Each validation row joins the cluster of its nearest exploration row
   (cosine), if that row is in one; its own ``d`` plays no part.
4. Test: one value per validation text. A text with a row in the cluster
   gives the ``d`` of its first such row; every other validation text gives
   the ``d`` of one of its rows, the one at the position (sentence index) of
   the in-cluster rows, taken in turn (so both groups hold rows at the same
   positions). One-sided Mann-Whitney U test that the cluster's values are
   larger, after subtracting ``min_shift`` from the cluster's values. Null
   hypothesis: the fine-tune changed nothing specific to the cluster's kind
   of text (beyond ``min_shift``): ``d`` may be shifted for every text, but
   on the held-out half it does not depend on which cluster a row falls in. The
   p-values of every tested cluster of both levels are corrected together
   (Benjamini-Hochberg); a cluster is flagged when ``q <= alpha``.

Membership (used by the audit for A's, B's and retrained B's texts): a text
shows a cluster when one of its rows of that level has its nearest
exploration row in the cluster.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..configbase import ConfigBase, in_range, int_at_least, integer, non_negative, one_of, positive, positive_int, subset_of
from ..errors import InputError
from ..lm.embed import Embedder
from . import labels as lab
from .pipeline import split_indices
from .regions import neighbours, nearest
from .stats import benjamini_hochberg
from .units import unit_spans

LEVELS = ("text", "sentence")
#: the level names of this view's clusters (distinct from the cluster view's)
VIEW_LEVEL = {"text": "likelihood-text", "sentence": "likelihood-sentence"}
STATS = ("mean", "sum")
EXPLORE = ("auto", "samples", "samples+train", "train")


@dataclasses.dataclass(frozen=True)
class LikelihoodConfig(ConfigBase):
    """Settings of the likelihood view (see the module docstring).

    ``seed``/``validation_fraction``: the split (the diff's, B's seed
    ``seed + 1``). ``stat``: ``mean`` (nats per token) or ``sum``. ``z``: the
    robust z-score from which an exploration row is outlying. ``neighbours``:
    how many nearest exploration rows link outliers. ``min_texts``: texts a
    cluster needs on the exploration half. ``n_tests``: clusters tested per
    level. ``explore``: where clusters are found: ``samples`` (the
    exploration half of B's texts), ``samples+train`` (and B's fine-tuning
    completions, when given), ``train`` (the fine-tuning completions alone;
    then every text of B is held out for the test), ``auto`` (``train``
    when the fine-tuning completions are given, else ``samples``). The
    defaults (``mean``, ``z`` 2.5, ``auto``, ``min_shift`` 0.5 nats per
    token) were chosen on development seeds
    (``benchmarks/diff_likelihood_power.py``). ``min_shift``: the
    least amount by which a cluster's ``d`` must exceed B's other texts'
    (in the unit of ``stat``) to count: the test compares ``d - min_shift``
    of the cluster's texts with the others' ``d``."""

    seed: int = 0
    validation_fraction: float = 0.5
    levels: tuple[str, ...] = LEVELS
    stat: str = "mean"
    z: float = 2.5
    neighbours: int = 8
    min_texts: int = 2
    n_tests: int = 5
    min_shift: float = 0.5
    alpha: float = 0.05
    min_words: int = 3
    max_units: int = 12
    explore: str = "auto"
    n_keywords: int = 8
    n_examples: int = 4

    _prefix = "likelihood."
    _checks = {
        "seed": integer, "validation_fraction": in_range(0, 1, low_open=True, high_open=True), "levels": subset_of(LEVELS),
        "stat": one_of(STATS), "explore": one_of(EXPLORE), "z": positive, "neighbours": int_at_least(1), "min_texts": int_at_least(1), "n_tests": positive_int,
        "alpha": in_range(0, 1, low_open=True, high_open=True), "min_words": positive_int, "max_units": positive_int,
        "n_keywords": positive_int, "n_examples": positive_int, "min_shift": non_negative,
    }


@dataclasses.dataclass(frozen=True)
class TextScore:
    """``d`` of one text: over all its completion tokens (``n_tokens``, ``d_sum``) and per sentence
    unit (``units``: (sentence, n_tokens, d_sum), as :func:`~gradtrace.diff.units.unit_spans` cuts them)."""

    n_tokens: int
    d_sum: float
    units: tuple[tuple[str, int, float], ...]

    def value(self, stat: str) -> float:
        return _stat(self.d_sum, self.n_tokens, stat)

    def to_dict(self) -> dict[str, Any]:
        return {"n_tokens": self.n_tokens, "d_sum": self.d_sum, "units": [list(u) for u in self.units]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TextScore":
        return cls(int(d["n_tokens"]), float(d["d_sum"]), tuple((str(s), int(n), float(v)) for s, n, v in d["units"]))


def _stat(d_sum: float, n: int, stat: str) -> float:
    return d_sum / max(n, 1) if stat == "mean" else d_sum


def unit_token_sums(text: str, spans: Sequence[tuple[int, int]], d: np.ndarray, min_words: int = 3,
                    max_units: int = 12) -> tuple[tuple[str, int, float], ...]:
    """Per sentence unit of ``text``: (sentence, tokens, summed ``d``) of the tokens whose character span
    overlaps it most (ties: the earlier unit); tokens outside the text (span ``(-1, -1)``) count for none."""
    units = unit_spans(text, min_words, max_units)
    n_tok = np.zeros(len(units), dtype=np.int64)
    sums = np.zeros(len(units), dtype=np.float64)
    if units:
        starts = np.array([u[1] for u in units])
        ends = np.array([u[2] for u in units])
        for (s, e), v in zip(spans, d):
            if s < 0:
                continue
            overlap = np.minimum(e, ends) - np.maximum(s, starts)
            j = int(np.argmax(overlap))
            if overlap[j] > 0:
                n_tok[j] += 1
                sums[j] += float(v)
    return tuple((u[0], int(n), float(v)) for u, n, v in zip(units, n_tok, sums))


def score_texts(model_a: Any, model_b: Any, task: Any, items: Sequence[Mapping[str, str]], *, min_words: int = 3, max_units: int = 12,
                batch_size: int = 8, progress: bool = False, cache_dir: str | Path | None = None,
                model_keys: tuple[Any, Any] | None = None) -> list[TextScore]:
    """``d`` of each ``{"prompt", "completion"}`` item, whole and per sentence (:class:`TextScore`).

    ``task``: a :class:`~gradtrace.lm.tasks.CausalLMTask` with a fast
    tokenizer shared by both models. ``cache_dir`` with ``model_keys`` (a
    JSON-able key per model): per-batch log-probabilities cached under it,
    keyed by the model, the task's settings and the items (resumable)."""
    from ..lm.logprob import completion_logprobs
    from ..unlearn.cache import fingerprint

    all_items = [{"prompt": str(it["prompt"]), "completion": str(it["completion"])} for it in items]
    scored = [i for i, it in enumerate(all_items) if it["completion"].strip()]  # an empty text scores 0 (no tokens)
    items = [all_items[i] for i in scored]
    lps = []
    for name, model, key in (("A", model_a, (model_keys or (None, None))[0]), ("B", model_b, (model_keys or (None, None))[1])):
        path = None
        if cache_dir is not None and key is not None:
            fp = fingerprint({"model": key, "max_length": task.max_length, "as_chat": task.as_chat, "tokenizer": task.tokenizer_id,
                              "batch_size": batch_size}, items)
            path = Path(cache_dir) / f"logprobs-{fp}.jsonl"
        lps.append(completion_logprobs(model, task, items, batch_size=batch_size, progress=progress,
                                       description=f"log-probabilities under {name}", cache=path))
    out = [TextScore(0, 0.0, ())] * len(all_items)
    for i, it in enumerate(items):
        la, lb = lps[0][i], lps[1][i]
        if la.shape != lb.shape:
            raise InputError(f"text {i}: models A and B scored different numbers of tokens ({la.size} and {lb.size}); "
                             "they must share one tokenizer")
        d = lb - la
        spans = task.completion_spans(it, i)
        out[scored[i]] = TextScore(int(d.size), float(d.sum()), unit_token_sums(it["completion"], spans, d, min_words, max_units))
    return out


@dataclasses.dataclass
class LikelihoodCluster:
    """One tested cluster of the likelihood view. ``valid_in``: validation texts of B in it;
    ``valid_out``: the others that gave a value; ``d_in``/``d_out``: the medians of their values;
    ``shift``: the Hodges-Lehmann estimate of in minus out; ``p_value`` one-sided Mann-Whitney."""

    level: str
    cluster: int
    n_explore: int
    n_explore_texts: int
    valid_in: int
    valid_out: int
    d_in: float
    d_out: float
    shift: float
    p_value: float
    q_value: float
    keywords: list[str]
    label: str
    medoids: list[str]
    examples_b: list[str]
    rank: int = 0
    skew: str = "B"

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass
class LikelihoodResult:
    """The likelihood view's clusters, ranked (flagged first, then by q-value and shift), and what
    assigns new texts to them: per level the exploration rows and the cluster of each (-1: none)."""

    clusters: list[LikelihoodCluster]
    config: LikelihoodConfig
    embedder: str
    n_b: int
    n_train: int
    levels: dict[str, dict[str, Any]]
    explore_rows: dict[str, list[str]]
    explore_labels: dict[str, list[int]]
    #: (level, cluster) -> {"ids_b": [...], "rows_b": [[id, row], ...]}: B's texts with a row in it (both halves)
    members: dict[tuple[str, int], dict[str, Any]]
    timings: dict[str, float]

    def significant(self, alpha: float | None = None) -> list[LikelihoodCluster]:
        a = self.config.alpha if alpha is None else alpha
        if not 0.0 < a < 1.0:
            raise InputError(f"alpha must lie strictly between 0 and 1; got {a!r}")
        return [c for c in self.clusters if c.q_value <= a]

    def to_dict(self) -> dict[str, Any]:
        return {"view": "likelihood", "config": self.config.to_dict(), "embedder": self.embedder, "n_b": self.n_b, "n_train": self.n_train,
                "levels": self.levels, "clusters": [c.to_dict() for c in self.clusters], "explore_rows": self.explore_rows,
                "explore_labels": self.explore_labels, "timings": self.timings,
                "members": [{"level": k[0], "cluster": k[1], **v} for k, v in sorted(self.members.items())]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LikelihoodResult":
        clusters = [LikelihoodCluster(**{k: (float("nan") if v is None and k in ("d_in", "d_out", "shift") else v) for k, v in c.items()})
                    for c in d["clusters"]]
        members = {(m["level"], int(m["cluster"])): {k: v for k, v in m.items() if k not in ("level", "cluster")} for m in d["members"]}
        return cls(clusters, LikelihoodConfig.from_dict(d["config"]), d["embedder"], int(d["n_b"]), int(d["n_train"]), dict(d["levels"]),
                   {k: list(v) for k, v in d["explore_rows"].items()}, {k: [int(x) for x in v] for k, v in d["explore_labels"].items()},
                   members, dict(d["timings"]))

    def save(self, path: str | Path) -> Path:
        from ..fileio import atomic_write_bytes

        path = Path(path)
        atomic_write_bytes(path, (json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n").encode("utf-8"))
        return path


class LikelihoodAssigner:
    """Assigns texts' rows to the likelihood view's clusters (the membership rule): a row takes the
    cluster of its nearest exploration row of its level (-1 when that row is in none). :meth:`assign`
    has the shape of :meth:`gradtrace.audit.behaviours.Assigner.assign`, keyed by the view's level names."""

    def __init__(self, result: LikelihoodResult, embedder: Embedder):
        self.result, self.embedder = result, embedder
        self._x: dict[str, np.ndarray] = {}

    def _explore(self, level: str) -> np.ndarray:
        if level not in self._x:
            rows = self.result.explore_rows[level]
            self._x[level] = np.asarray(self.embedder.embed(rows), dtype=np.float64) if rows else np.zeros((0, 1))
        return self._x[level]

    def assign(self, texts: Sequence[str]) -> dict[str, tuple[list[str], np.ndarray, np.ndarray]]:
        cfg = self.result.config
        out = {}
        for level in cfg.levels:
            rows, owner = _rows(list(texts), level, cfg.min_words, cfg.max_units)
            labels = np.full(len(rows), -1, dtype=np.int64)
            xe = self._explore(level)
            if rows and xe.shape[0]:
                near = nearest(np.asarray(self.embedder.embed(rows), dtype=np.float64), xe)
                labels = np.asarray(self.result.explore_labels[level], dtype=np.int64)[near]
            out[VIEW_LEVEL[level]] = (rows, np.asarray(owner, dtype=np.int64), labels)
        return out


def _rows(texts: list[str], level: str, min_words: int, max_units: int) -> tuple[list[str], list[int]]:
    if level == "text":
        return list(texts), list(range(len(texts)))
    rows, owner = [], []
    for i, t in enumerate(texts):
        for s, _, _ in unit_spans(t, min_words, max_units):
            rows.append(s)
            owner.append(i)
    return rows, owner


def _robust_z(d: np.ndarray) -> np.ndarray:
    if d.size == 0:
        return d.copy()
    med = float(np.median(d))
    mad = 1.4826 * float(np.median(np.abs(d - med)))
    if mad <= 1e-12:
        mad = float(np.std(d)) or 1.0
    return (d - med) / mad


def likelihood_view(texts_b: Sequence[str], scores_b: Sequence[TextScore], *, config: LikelihoodConfig | None = None,
                    embedder: Embedder | None = None, train: Sequence[tuple[str, TextScore]] = (),
                    keys_b: Sequence[str] | None = None) -> LikelihoodResult:
    """Find and test the clusters of B's texts (and sentences) with outlying ``d`` (module docstring).

    ``scores_b``: :func:`score_texts` of ``texts_b`` given their prompts.
    ``train``: (completion, score) of B's fine-tuning examples, extra
    exploration rows when ``config.explore`` names them. ``keys_b``: per text a
    tie-break of the split (its prompt id), as the diff's ``strata_b``."""
    config = config or LikelihoodConfig()
    texts_b = list(texts_b)
    if len(scores_b) != len(texts_b):
        raise InputError(f"scores_b has {len(scores_b)} scores for {len(texts_b)} texts")
    if len(texts_b) < 4:
        raise InputError(f"the likelihood view needs at least 4 texts of B; got {len(texts_b)}")
    if embedder is None:
        from ..lm.embed import MiniLMEmbedder

        embedder = MiniLMEmbedder()
    explore = config.explore if config.explore != "auto" else ("train" if train else "samples")
    train = list(train) if "train" in explore else []
    if explore == "train":
        if not train:
            raise InputError("likelihood view with explore='train' needs the fine-tuning completions (train)")
        ids_e, ids_v = [], sorted(range(len(texts_b)), key=lambda i: (texts_b[i], i))
    else:
        ids_e, ids_v = split_indices(texts_b, config.validation_fraction, config.seed + 1, keys_b)
    rng = np.random.default_rng(config.seed + 11)
    timings: dict[str, float] = {}
    clusters: list[LikelihoodCluster] = []
    members: dict[tuple[str, int], dict[str, Any]] = {}
    summaries: dict[str, dict[str, Any]] = {}
    explore_rows: dict[str, list[str]] = {}
    explore_labels: dict[str, list[int]] = {}
    pvals: list[float] = []
    for level in config.levels:
        t0 = time.perf_counter()
        # rows: (text, owner, value, position); exploration owners: B's exploration texts, then the training completions
        def rows_of(sources: Sequence[tuple[str, TextScore]]) -> tuple[list[str], list[int], list[float], list[int]]:
            rows, owner, value, pos = [], [], [], []
            for t, (text, sc) in enumerate(sources):
                if level == "text":
                    rows.append(text), owner.append(t), value.append(sc.value(config.stat)), pos.append(0)
                else:
                    for j, (s, n, v) in enumerate(sc.units):
                        rows.append(s), owner.append(t), value.append(_stat(v, n, config.stat)), pos.append(j)
            return rows, owner, value, pos

        exp_src = [(texts_b[i], scores_b[i]) for i in ids_e] + list(train)
        r_e, o_e, v_e, _ = rows_of(exp_src)
        r_v, o_v, v_v, p_v = rows_of([(texts_b[i], scores_b[i]) for i in ids_v])
        o_e, o_v = np.asarray(o_e, dtype=np.int64), np.asarray(o_v, dtype=np.int64)
        v_e, v_v, p_v = np.asarray(v_e, float), np.asarray(v_v, float), np.asarray(p_v, dtype=np.int64)
        source_e = (o_e >= len(ids_e)).astype(np.int64)  # 0: B's samples, 1: training completions
        if not r_e or not r_v:  # e.g. no sentence of min_words words: nothing to find at this level
            explore_rows[level], explore_labels[level] = r_e, [-1] * len(r_e)
            summaries[VIEW_LEVEL[level]] = {"explore_rows": len(r_e), "validation_rows": len(r_v), "outlying": 0, "candidates": 0,
                                            "tested": 0, "median_d_explore": None, "train_rows": int((source_e == 1).sum())}
            timings[level] = time.perf_counter() - t0
            continue
        x_all = np.asarray(embedder.embed(r_e + r_v), dtype=np.float64)
        x_e, x_v = x_all[: len(r_e)], x_all[len(r_e):]
        z = np.zeros(len(r_e))
        for s in (0, 1):
            m = source_e == s
            z[m] = _robust_z(v_e[m])
        out = z >= config.z
        k = int(max(1, min(config.neighbours, len(r_e) - 1)))
        nb = neighbours(x_e, o_e, k)
        parent = np.arange(len(r_e))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = int(parent[i])
            return i

        for i in np.flatnonzero(out):
            for j in nb[i]:
                if j != i and out[j]:
                    ri, rj = find(int(i)), find(int(j))
                    if ri != rj:
                        parent[max(ri, rj)] = min(ri, rj)
        comps: dict[int, list[int]] = {}
        for i in np.flatnonzero(out):
            comps.setdefault(find(int(i)), []).append(int(i))
        cands = [rows for rows in comps.values() if len(set(o_e[rows].tolist())) >= config.min_texts]
        cands.sort(key=lambda rows: (-len(set(o_e[rows].tolist())), -float(z[rows].sum()), min(rows)))
        cands = cands[: config.n_tests]
        lab_e = np.full(len(r_e), -1, dtype=np.int64)
        for c, rows in enumerate(cands):
            lab_e[rows] = c
        lab_v = lab_e[nearest(x_v, x_e)] if cands else np.full(len(r_v), -1, dtype=np.int64)
        keywords = lab.c_tf_idf([[r_e[i] for i in rows] for rows in cands] + [[r_e[i] for i in np.flatnonzero(lab_e < 0)]],
                                config.n_keywords)[: len(cands)] if cands else []
        vlevel = VIEW_LEVEL[level]
        n_valid = len(ids_v)
        for c, rows in enumerate(cands):
            in_rows = np.flatnonzero(lab_v == c)
            first: dict[int, int] = {}
            for r in in_rows:  # rows are in text order, then position order
                first.setdefault(int(o_v[r]), int(r))
            x_in = np.array([v_v[r] for r in first.values()])
            positions = sorted(int(p_v[r]) for r in first.values())
            x_out = []
            turn = 0
            for t in range(n_valid):
                if t in first:
                    continue
                mine = np.flatnonzero(o_v == t)
                if mine.size == 0:
                    continue
                want = positions[turn % len(positions)] if positions else 0
                turn += 1
                x_out.append(v_v[mine[min(want, mine.size - 1)]])
            x_out = np.asarray(x_out)
            p = _mann_whitney_greater(x_in - config.min_shift, x_out)
            shift = float(np.median(np.subtract.outer(x_in, x_out))) if x_in.size and x_out.size else float("nan")
            ex_texts = sorted({int(o_e[i]) for i in rows})
            med = [r_e[i] for i in lab.medoids(x_e, lab_e, c, config.n_examples)]
            clusters.append(LikelihoodCluster(
                level=vlevel, cluster=c, n_explore=len(rows), n_explore_texts=len(ex_texts), valid_in=int(x_in.size),
                valid_out=int(x_out.size), d_in=float(np.median(x_in)) if x_in.size else float("nan"),
                d_out=float(np.median(x_out)) if x_out.size else float("nan"), shift=shift, p_value=p, q_value=float("nan"),
                keywords=[w for w, _ in keywords[c]], label=lab.keyword_label(keywords[c]), medoids=med,
                examples_b=[r_v[r] for r in list(first.values())[: config.n_examples]]))
            pvals.append(p)
            ids_b: set[int] = set()
            rows_b: list[tuple[int, str]] = []
            for r in rows:
                if o_e[r] < len(ids_e):
                    tid = int(ids_e[o_e[r]])
                    ids_b.add(tid)
                    rows_b.append((tid, r_e[r]))
            for r in in_rows:
                tid = int(ids_v[o_v[r]])
                ids_b.add(tid)
                rows_b.append((tid, r_v[r]))
            members[(vlevel, c)] = {"ids_b": sorted(ids_b), "valid_ids_b": sorted(int(ids_v[t]) for t in first),
                                    "rows_b": [[i, r] for i, r in sorted(rows_b)]}
        explore_rows[level] = r_e
        explore_labels[level] = lab_e.tolist()
        summaries[vlevel] = {"explore_rows": len(r_e), "validation_rows": len(r_v), "outlying": int(out.sum()),
                             "candidates": len(comps), "tested": len(cands),
                             "median_d_explore": float(np.median(v_e[source_e == 0])) if (source_e == 0).any() else None,
                             "train_rows": int((source_e == 1).sum())}
        timings[level] = time.perf_counter() - t0
    q = benjamini_hochberg(pvals) if pvals else np.zeros(0)
    for c, qv in zip(clusters, q):
        c.q_value = float(qv)
    clusters.sort(key=lambda c: (c.q_value > config.alpha, c.q_value, -(c.shift if math.isfinite(c.shift) else -1e9), c.level, c.cluster))
    for i, c in enumerate(clusters):
        c.rank = i + 1
    return LikelihoodResult(clusters, config, embedder.name, len(texts_b), len(train), summaries, explore_rows, explore_labels, members,
                            timings)


def _mann_whitney_greater(x: np.ndarray, y: np.ndarray) -> float:
    """One-sided Mann-Whitney U p-value that ``x`` tends to exceed ``y`` (1.0 when a group is empty)."""
    from scipy import stats

    if x.size == 0 or y.size == 0:
        return 1.0
    return float(stats.mannwhitneyu(x, y, alternative="greater").pvalue)


def run_likelihood(model_a: Any, model_b: Any, tokenizer: Any, prompts_b: Sequence[str], texts_b: Sequence[str], *,
                   config: LikelihoodConfig | None = None, embedder: Embedder | None = None,
                   train: Sequence[Mapping[str, str]] = (), max_length: int = 256, as_chat: bool = True, batch_size: int = 8,
                   progress: bool = False, cache_dir: str | Path | None = None, model_keys: tuple[Any, Any] | None = None,
                   keys_b: Sequence[str] | None = None, tokenizer_b: Any = None) -> LikelihoodResult:
    """Score B's texts (and the ``train`` completions, ``{"prompt", "completion"}``) under both models and
    run :func:`likelihood_view`. ``tokenizer``: A's (``tokenizer_b``, when given, must tokenize alike)."""
    from ..lm.tasks import CausalLMTask, tokenizer_fingerprint

    config = config or LikelihoodConfig()
    if len(prompts_b) != len(texts_b):
        raise InputError(f"prompts_b has {len(prompts_b)} prompts for {len(texts_b)} texts")
    if tokenizer_b is not None and tokenizer_fingerprint(tokenizer) != tokenizer_fingerprint(tokenizer_b):
        raise InputError("the likelihood view needs models A and B with one tokenizer; theirs differ (B must be a fine-tune of A)")
    if not all(prompts_b):
        raise InputError("the likelihood view scores each text given its prompt: every text of B needs its prompt")
    task = CausalLMTask(tokenizer, max_length=max_length, as_chat=as_chat)
    kw = dict(min_words=config.min_words, max_units=config.max_units, batch_size=batch_size, progress=progress, cache_dir=cache_dir,
              model_keys=model_keys)
    scores = score_texts(model_a, model_b, task, [{"prompt": p, "completion": t} for p, t in zip(prompts_b, texts_b)], **kw)
    train_pairs: list[tuple[str, TextScore]] = []
    if config.explore != "samples" and train:
        rows = [{"prompt": str(r["prompt"]), "completion": str(r["completion"])} for r in train]
        train_pairs = list(zip([r["completion"] for r in rows], score_texts(model_a, model_b, task, rows, **kw)))
    return likelihood_view(texts_b, scores, config=config, embedder=embedder, train=train_pairs, keys_b=keys_b)
