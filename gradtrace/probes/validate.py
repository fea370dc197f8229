"""Validate a probe suite: every check reports its counts; items that fail are dropped.

Checks, in order:

1. **format**: every field obeys the item rules (:func:`~gradtrace.probes.items.item_problem`), ids are unique.
2. **answerability**: a *template* item is kept when the key its stored
   structure gives (:func:`~gradtrace.probes.templates.check_template_item`)
   is its key; a *generator* item when an independent verifier model, scoring
   the options by log-probability (:mod:`gradtrace.probes.score`), picks the
   key; a *seed* item is hand-written and checked by its author.
3. **de-duplication**: within a subtask, an item whose embedding has cosine
   similarity >= ``dedupe_threshold`` with an item kept before it is dropped
   (paraphrases of one another are exempt). **Diversity** per subtask: the
   mean pairwise cosine distance and the Vendi score of the kept items.
4. **subtask validity**: a logistic regression on item embeddings, with
   cross-validated predictions, assigns each item a subtask; its accuracy and
   confusion matrix are reported and, with ``drop_misassigned``, items it
   assigns elsewhere are dropped.
5. **phrasing bias**: answer positions per subtask (counts, the largest
   deviation from uniform; with ``rebalance`` the options of kept items are
   re-ordered so each position holds the key equally often), and a surface
   classifier: for each item the key and one other option (seeded), in a
   random order, described by differences of surface features (length in
   characters and words, sentiment from a small lexicon, lexical overlap with
   the question and with the scenario); a logistic regression predicts which
   is the key, and its cross-validated accuracy must stay <= ``surface_max_accuracy``
   (chance is 0.5).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Sequence

import numpy as np

from ..configbase import ConfigBase, in_range, int_at_least
from ..errors import InputError
from .items import SUBTASKS, Item, item_problem
from .templates import check_template_item

Verifier = Callable[[Sequence[Item]], Sequence[bool]]

POSITIVE = frozenset("""good great welcome welcomed endorse desirable improve improvement better kind kindly help helpful helps fair
honest honestly safe safety protect protects care caring stronger strengthen grow grows increase yes benefit legitimate correct
correcting positive happy trust respect right warm praised courteous careful carefully openly clear clearly gain wise""".split())
NEGATIVE = frozenset("""bad harm harmful harms resist undesirable worse weaken weaker decline reduce no not never lie lies lying insult
insulting hurt danger dangerous corrupt corruption bias biased poison poisons attack attacker mock mocking wrong fail fails bug
erode disappears manipulation bypasses convenient oppose against lose losing steal""".split())
STOPWORDS = frozenset("""a an the of to in on at for and or but is are was were be been being it its this that these those you your
yours i me my we our they their them he she his her with by from as into about would will could should can do does did not no yes
which what how who whom whose than then there here so if all any each""".split())
SURFACE_FEATURES = ("length_chars", "length_words", "sentiment", "overlap_question", "overlap_scenario")


@dataclasses.dataclass(frozen=True)
class ValidationConfig(ConfigBase):
    """Settings of :func:`validate_suite` (see the module docstring)."""

    dedupe_threshold: float = 0.95
    surface_max_accuracy: float = 0.6
    position_tolerance: float = 0.05
    folds: int = 5
    drop_misassigned: bool = True
    rebalance: bool = True
    seed: int = 0

    _prefix = "validation."
    _checks = {"dedupe_threshold": in_range(0, 1, low_open=True), "surface_max_accuracy": in_range(0, 1),
               "position_tolerance": in_range(0, 1), "folds": int_at_least(2)}


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def content_words(text: str) -> set[str]:
    return {w for w in words(text) if w not in STOPWORDS}


def sentiment(text: str) -> float:
    """(positive - negative lexicon words) / words."""
    ws = words(text)
    return (sum(w in POSITIVE for w in ws) - sum(w in NEGATIVE for w in ws)) / max(len(ws), 1)


def overlap(a: str, b: str) -> float:
    """Share of ``a``'s content words that occur in ``b``."""
    wa = content_words(a)
    return len(wa & content_words(b)) / max(len(wa), 1)


def option_features(item: Item, option: int) -> np.ndarray:
    text = item.options[option]
    return np.array([len(text), len(words(text)), sentiment(text), overlap(text, item.question), overlap(text, item.scenario)])


def surface_pairs(items: Sequence[Item], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(features of first minus second option, 1 when the first is the key) per item; seeded."""
    rng = np.random.default_rng(seed)
    x, y = [], []
    flips = np.resize([0, 1], len(items))
    rng.shuffle(flips)
    for item, flip in zip(items, flips):
        others = [i for i in range(len(item.options)) if i != item.key]
        other = others[int(rng.integers(len(others)))]
        first, second = (item.key, other) if flip else (other, item.key)
        x.append(option_features(item, first) - option_features(item, second))
        y.append(int(flip))
    return np.asarray(x, dtype=float), np.asarray(y)


def surface_classifier_accuracy(items: Sequence[Item], folds: int = 5, seed: int = 0) -> float:
    """Cross-validated accuracy of a logistic regression predicting the key from surface features (chance 0.5)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = surface_pairs(items, seed)
    if len(y) < 2 * folds or min(np.bincount(y, minlength=2)) < folds:
        return float("nan")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(clf, x, y, cv=cv, scoring="accuracy")))


def position_counts(items: Sequence[Item]) -> dict[str, Any]:
    """Key positions of items with the same number of options (the most common number)."""
    if not items:
        return {"counts": [], "max_deviation": 0.0}
    k = int(np.bincount([len(i.options) for i in items]).argmax())
    same = [i for i in items if len(i.options) == k]
    counts = np.bincount([i.key for i in same], minlength=k)
    return {"options": k, "counts": counts.tolist(), "max_deviation": float(np.max(np.abs(counts / counts.sum() - 1 / k)))}


def rebalance_positions(items: Sequence[Item], seed: int) -> list[Item]:
    """Items with options re-ordered so that, per subtask and number of
    options, each position holds the key equally often (up to one); the
    other options keep their relative order. Seeded."""
    rng = np.random.default_rng(seed)
    out = list(items)
    groups: dict[tuple[str, int], list[int]] = {}
    for idx, it in enumerate(items):
        groups.setdefault((it.subtask, len(it.options)), []).append(idx)
    for (_, k), idxs in sorted(groups.items()):
        targets = np.resize(np.arange(k), len(idxs))
        rng.shuffle(targets)
        for idx, pos in zip(idxs, targets):
            it = items[idx]
            order = [o for o in range(k) if o != it.key]
            order.insert(int(pos), it.key)
            prov = dict(it.provenance)
            if isinstance(prov.get("meanings"), list) and len(prov["meanings"]) == k:
                prov["meanings"] = [prov["meanings"][o] for o in order]
            out[idx] = Item(it.id, it.subtask, it.scenario, it.question, tuple(it.options[o] for o in order), int(pos), prov)
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def dedupe(items: Sequence[Item], emb: np.ndarray, threshold: float) -> list[int]:
    """Indices kept by greedy de-duplication within each subtask (see the module docstring)."""
    x = _unit(emb)
    root = [it.paraphrase_of or it.id for it in items]
    keep: list[int] = []
    for sub in SUBTASKS:
        idx = [i for i, it in enumerate(items) if it.subtask == sub]
        if not idx:
            continue
        sims = x[idx] @ x[idx].T
        kept_local: list[int] = []
        for a in range(len(idx)):
            clash = [b for b in kept_local if sims[a, b] >= threshold and root[idx[a]] != root[idx[b]]]
            if not clash:
                kept_local.append(a)
        keep.extend(idx[a] for a in kept_local)
    return sorted(keep)


def diversity(emb: np.ndarray) -> dict[str, float]:
    from ..loop.metrics import vendi_score

    x = _unit(emb)
    n = len(x)
    if n < 2:
        return {"mean_pairwise_distance": float("nan"), "vendi": float(n)}
    s = x @ x.T
    mean_sim = (s.sum() - np.trace(s)) / (n * (n - 1))
    return {"mean_pairwise_distance": float(1 - mean_sim), "vendi": float(vendi_score(x))}


def subtask_classifier(items: Sequence[Item], emb: np.ndarray, folds: int, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Cross-validated subtask predictions from embeddings, and the report (accuracy, confusion matrix)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    labels = [s for s in SUBTASKS if any(it.subtask == s for it in items)]
    y = np.array([labels.index(it.subtask) for it in items])
    counts = np.bincount(y, minlength=len(labels))
    if len(labels) < 2 or counts.min() < folds:
        return y.copy(), {"accuracy": float("nan"), "labels": labels, "confusion": [], "note": f"needs {folds}+ items in each of 2+ subtasks"}
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    pred = cross_val_predict(LogisticRegression(max_iter=2000, C=1.0), np.asarray(emb, dtype=np.float64), y, cv=cv)
    confusion = np.zeros((len(labels), len(labels)), dtype=int)
    for t, p in zip(y, pred):
        confusion[t, p] += 1
    return pred, {"accuracy": float(np.mean(pred == y)), "labels": labels, "confusion": confusion.tolist()}


@dataclasses.dataclass
class ValidationResult:
    """The kept items and the report of every check (counts per check)."""

    items: list[Item]
    report: dict[str, Any]

    @property
    def passed(self) -> bool:
        return bool(self.report["phrasing_bias"]["surface"]["passed"]) and bool(self.report["phrasing_bias"]["positions_passed"])


def validate_suite(items: Sequence[Item], embedder: Any, config: ValidationConfig = ValidationConfig(),
                   verifier: Verifier | None = None, verifier_name: str | None = None) -> ValidationResult:
    """Run every check on ``items`` (see the module docstring).

    ``embedder``: an object with ``embed(texts)`` (MiniLM, or the hashing
    embedder). ``verifier(items) -> [bool]``: whether an independent model
    recovers each generator item's key; without one, generator items are
    dropped as unverified."""
    report: dict[str, Any] = {"input": len(items), "config": config.to_dict()}
    # 1. format
    seen: set[str] = set()
    fmt_bad = []
    ok: list[Item] = []
    for it in items:
        problem = item_problem(it)
        if problem is None and it.id in seen:
            problem = "repeated id"
        seen.add(it.id)
        (fmt_bad.append(f"{it.id}: {problem}") if problem else ok.append(it))
    report["format"] = {"checked": len(items), "failed": len(fmt_bad), "examples": fmt_bad[:5]}
    # 2. answerability
    answer: dict[str, dict[str, Any]] = {}
    kept: list[Item] = []
    gen = [it for it in ok if it.source == "generator"]
    verified = list(verifier(gen)) if (gen and verifier is not None) else [False] * len(gen)
    if len(verified) != len(gen):
        raise InputError(f"verifier returned {len(verified)} answers for {len(gen)} items")
    ver = dict(zip((it.id for it in gen), verified))
    for it in ok:
        a = answer.setdefault(it.source, {"checked": 0, "kept": 0})
        a["checked"] += 1
        if it.source == "template":
            good = check_template_item(it) is None
        elif it.source == "generator":
            good = bool(ver[it.id])
        else:
            good = True
        if good:
            a["kept"] += 1
            kept.append(it)
    answer.setdefault("template", {"checked": 0, "kept": 0})["how"] = "key re-derived from the template's causal structure"
    answer.setdefault("generator", {"checked": 0, "kept": 0})["how"] = (
        f"independent verifier {verifier_name or 'model'} picks the key by option log-probability" if verifier is not None
        else "no verifier given: generator items dropped as unverified")
    answer.setdefault("seed", {"checked": 0, "kept": 0})["how"] = "hand-written, checked by their author"
    report["answerability"] = answer
    # 3. de-duplication and diversity
    emb = np.asarray(embedder.embed([it.text() for it in kept]), dtype=np.float64) if kept else np.zeros((0, 1))
    idx = dedupe(kept, emb, config.dedupe_threshold) if kept else []
    report["dedupe"] = {"checked": len(kept), "removed": len(kept) - len(idx), "threshold": config.dedupe_threshold,
                        "embedder": getattr(embedder, "name", type(embedder).__name__)}
    kept, emb = [kept[i] for i in idx], emb[idx] if len(idx) else emb[:0]
    # 4. subtask validity
    pred, sub_report = subtask_classifier(kept, emb, config.folds, config.seed) if kept else (np.zeros(0, int), {"accuracy": float("nan")})
    labels = sub_report.get("labels", [])
    if config.drop_misassigned and sub_report.get("confusion"):
        good_idx = [i for i, it in enumerate(kept) if labels[pred[i]] == it.subtask]
    else:
        good_idx = list(range(len(kept)))
    sub_report["removed"] = len(kept) - len(good_idx)
    report["subtask_validity"] = sub_report
    kept, emb = [kept[i] for i in good_idx], emb[good_idx] if good_idx else emb[:0]
    report["diversity"] = {s: diversity(emb[[i for i, it in enumerate(kept) if it.subtask == s]])
                           for s in SUBTASKS if any(it.subtask == s for it in kept)}
    # 5. phrasing bias
    before = {s: position_counts([it for it in kept if it.subtask == s]) for s in SUBTASKS}
    if config.rebalance:
        kept = rebalance_positions(kept, config.seed)
    after = {s: position_counts([it for it in kept if it.subtask == s]) for s in SUBTASKS}
    surface_all = surface_classifier_accuracy(kept, config.folds, config.seed)
    per_sub = {s: surface_classifier_accuracy([it for it in kept if it.subtask == s], config.folds, config.seed) for s in SUBTASKS}
    report["phrasing_bias"] = {
        "positions_before": before, "positions": after, "rebalanced": config.rebalance,
        "positions_passed": all(v["max_deviation"] <= config.position_tolerance + 1e-12 or sum(v["counts"]) < 10 for v in after.values()),
        "surface": {"features": list(SURFACE_FEATURES), "accuracy": surface_all, "per_subtask": per_sub, "chance": 0.5,
                    "max_accuracy": config.surface_max_accuracy,
                    "passed": bool(np.isfinite(surface_all) and surface_all <= config.surface_max_accuracy)},
    }
    report["kept"] = {s: sum(it.subtask == s for it in kept) for s in SUBTASKS}
    report["kept_total"] = len(kept)
    return ValidationResult(kept, report)
