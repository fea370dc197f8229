"""Drift monitors: each measures one round against round 0, as one row of numbers.

A monitor's :meth:`Monitor.measure` takes the round's :class:`Observation`
(its generations, held-out NLL, probe hidden states, embeddings), round 0's
observation (the reference) and the rows of earlier rounds, and returns a
flat ``{metric: value}`` row. Monitors are pure functions of observations,
so the loop, the Trainer callback and a plain training loop share them, and
a resumed loop recomputes nothing.

Metric keys in a loop's results table are ``"<monitor>.<metric>"``, e.g.
``nll.tail_share`` or ``attribute.nova_positive.rate``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..configbase import int_at_least, positive_int
from ..errors import InputError
from . import metrics as M

Row = dict[str, float]
EXTRA = "extra:"


@dataclasses.dataclass
class Observation:
    """What one round's model did: generations on the prompt set, mean NLL of
    each held-out real text, hidden states of the probe prompts, embeddings
    of the generations. Fields a run does not need are ``None``."""

    round: int
    generations: list[str]
    heldout_nll: np.ndarray | None = None
    probe_hidden: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    #: arrays a monitor computed from the model itself (:meth:`Monitor.observe`), keyed ``"<monitor>.<name>"``
    extras: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {k: getattr(self, k) for k in ("heldout_nll", "probe_hidden", "embeddings") if getattr(self, k) is not None}
        arrays.update({f"{EXTRA}{k}": np.asarray(v) for k, v in self.extras.items()})
        np.savez(folder / "observation.npz", **arrays)
        (folder / "observation.json").write_text(json.dumps({"round": self.round, "generations": self.generations}), encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path) -> "Observation":
        folder = Path(folder)
        meta = json.loads((folder / "observation.json").read_text(encoding="utf-8"))
        with np.load(folder / "observation.npz") as z:
            arrays = {k: z[k] for k in z.files}
        extras = {k[len(EXTRA):]: arrays.pop(k) for k in list(arrays) if k.startswith(EXTRA)}
        return cls(round=int(meta["round"]), generations=list(meta["generations"]), extras=extras, **arrays)


def _require(obs: Observation, field: str, monitor: str) -> Any:
    value = getattr(obs, field)
    if value is None:
        raise InputError(f"monitor {monitor!r} needs the observation field {field!r}, which was not computed")
    return value


class Monitor:
    """Base class: ``name`` (its key in the results table), ``needs`` (the
    observation fields it reads) and :meth:`measure`."""

    name = "monitor"
    needs: frozenset[str] = frozenset()

    def measure(self, obs: Observation, ref: Observation, history: Sequence[Row], out_dir: Path | None = None) -> Row:
        raise NotImplementedError  # pragma: no cover

    def settings(self) -> dict[str, Any]:
        """The monitor's settings, for the run's manifest."""
        return {}

    def observe(self, lm: Any) -> dict[str, np.ndarray]:
        """Arrays this monitor computes from the round's model (a
        :class:`~gradtrace.loop.lm.LanguageModel`), stored in
        ``Observation.extras`` under ``"<name>.<key>"``; most monitors need none."""
        return {}


class HeldoutNLL(Monitor):
    """NLL of real held-out texts: ``mean``, ``p90``, ``mean_change`` from
    round 0 and ``tail_share``, the share of texts whose NLL rose by more than
    ``margin`` nats/token since round 0 (tail loss)."""

    name = "nll"
    needs = frozenset({"heldout_nll"})

    def __init__(self, margin: float = 0.1):
        if not isinstance(margin, (int, float)) or isinstance(margin, bool) or margin < 0:
            raise InputError(f"monitors.nll.margin must be a non-negative number; got {margin!r}")
        self.margin = float(margin)

    def settings(self) -> dict[str, Any]:
        return {"margin": self.margin}

    def measure(self, obs: Observation, ref: Observation, history: Sequence[Row], out_dir: Path | None = None) -> Row:
        now, base = _require(obs, "heldout_nll", self.name), _require(ref, "heldout_nll", self.name)
        if now.shape != base.shape:
            raise InputError(f"monitor 'nll': held-out sets differ in size ({now.shape[0]} vs round 0's {base.shape[0]})")
        return {
            "mean": float(now.mean()),
            "p90": float(np.quantile(now, 0.9)),
            "mean_change": float(now.mean() - base.mean()),
            "tail_share": float(np.mean(now - base > self.margin)),
        }


class Diversity(Monitor):
    """Diversity of the generations: distinct-1/2/3, self-BLEU over
    ``n_pairs`` seeded pairs, compression ratio, Vendi score and effective
    rank of the embeddings. Lower distinct/Vendi/rank and higher
    self-BLEU/compression mean less diverse."""

    name = "diversity"
    needs = frozenset({"embeddings"})

    def __init__(self, n_pairs: int = 200, seed: int = 0):
        positive_int(n_pairs, "monitors.diversity.n_pairs")
        self.n_pairs, self.seed = n_pairs, seed

    def settings(self) -> dict[str, Any]:
        return {"n_pairs": self.n_pairs, "seed": self.seed}

    def measure(self, obs: Observation, ref: Observation, history: Sequence[Row], out_dir: Path | None = None) -> Row:
        texts, emb = obs.generations, _require(obs, "embeddings", self.name)
        return {
            "distinct_1": M.distinct_n(texts, 1),
            "distinct_2": M.distinct_n(texts, 2),
            "distinct_3": M.distinct_n(texts, 3),
            "self_bleu": M.self_bleu(texts, self.n_pairs, self.seed),
            "compression_ratio": M.compression_ratio(texts),
            "vendi": M.vendi_score(emb),
            "effective_rank": M.effective_rank(emb),
        }


class ClusterShift(Monitor):
    """Cluster shares against round 0.

    ``js``: Jensen-Shannon divergence (bits) between the shares of round 0's
    and this round's generations over ``k`` k-means clusters fitted once on
    round 0's embeddings (each generation goes to its nearest centroid).
    ``skewed_clusters``: how many clusters the behavioural diff
    (:func:`gradtrace.diff.diff_texts`, round 0 as A, this round as B) finds
    significantly skewed at FDR ``alpha``; its result is saved as
    ``diff.json`` and its report as ``diff_report.html`` in the round's folder.
    """

    name = "clusters"
    needs = frozenset({"embeddings"})

    def __init__(self, k: int = 8, seed: int = 0, alpha: float = 0.05, diff: bool = True, embedder: Any = None):
        int_at_least(2)(k, "monitors.clusters.k")
        if not isinstance(alpha, float) or not 0 < alpha < 1:
            raise InputError(f"monitors.clusters.alpha must be a number in (0, 1); got {alpha!r}")
        self.k, self.seed, self.alpha, self.diff, self.embedder = k, seed, alpha, diff, embedder
        self._centroids: np.ndarray | None = None
        self._ref_round: int | None = None

    def settings(self) -> dict[str, Any]:
        return {"k": self.k, "seed": self.seed, "alpha": self.alpha, "diff": self.diff}

    def _fit(self, ref: Observation) -> np.ndarray:
        if self._centroids is None or self._ref_round != ref.round:
            from sklearn.cluster import KMeans

            x = np.asarray(_require(ref, "embeddings", self.name), dtype=np.float64)
            k = min(self.k, len(np.unique(x, axis=0)))
            self._centroids = KMeans(n_clusters=k, n_init=4, random_state=self.seed).fit(x).cluster_centers_
            self._ref_round = ref.round
        return self._centroids

    def shares(self, embeddings: np.ndarray, ref: Observation) -> np.ndarray:
        c = self._fit(ref)
        x = np.asarray(embeddings, dtype=np.float64)
        d = ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)
        return np.bincount(d.argmin(1), minlength=c.shape[0]) / max(len(x), 1)

    def measure(self, obs: Observation, ref: Observation, history: Sequence[Row], out_dir: Path | None = None) -> Row:
        p = self.shares(_require(ref, "embeddings", self.name), ref)
        q = self.shares(_require(obs, "embeddings", self.name), ref)
        row = {"js": M.js_divergence(p, q)}
        if self.diff:
            from ..diff import DiffConfig, diff_texts

            if self.embedder is None:
                raise InputError("monitor 'clusters': the behavioural diff needs an embedder")
            result = diff_texts(list(ref.generations), list(obs.generations), config=DiffConfig(seed=self.seed, levels=("text",), alpha=self.alpha, stability_seeds=()), embedder=self.embedder)
            row["skewed_clusters"] = float(len(result.significant(self.alpha)))
            if out_dir is not None:
                from ..diff.report import write_report

                result.save(Path(out_dir) / "diff.json")
                write_report(result, Path(out_dir) / "diff_report.html", title=f"Behavioural diff: round {obs.round} against round 0",
                             names=("round 0", f"round {obs.round}"))
        return row


Classifier = Callable[[Sequence[str]], Any]


@dataclasses.dataclass(frozen=True)
class RegexClassifier:
    """True for texts matching ``pattern`` (Python regex, searched)."""

    pattern: str
    ignore_case: bool = False

    def __post_init__(self) -> None:
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise InputError(f"regex classifier: invalid pattern {self.pattern!r} ({exc})") from None

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        rx = re.compile(self.pattern, re.I if self.ignore_case else 0)
        return np.array([bool(rx.search(t)) for t in texts], dtype=bool)


class EmbeddingProbe:
    """A logistic-regression probe on text embeddings: :meth:`fit` on
    labelled texts, then call on texts for 0/1 predictions."""

    def __init__(self, embedder: Any, c: float = 1.0, seed: int = 0):
        self.embedder, self.c, self.seed = embedder, c, seed
        self._model: Any = None

    def fit(self, texts: Sequence[str], labels: Sequence[int]) -> "EmbeddingProbe":
        from sklearn.linear_model import LogisticRegression

        y = np.asarray(labels)
        if y.shape != (len(texts),) or set(np.unique(y).tolist()) - {0, 1}:
            raise InputError("embedding probe: labels must be 0/1, one per text")
        self._model = LogisticRegression(C=self.c, random_state=self.seed, max_iter=1000).fit(self.embedder.embed(texts), y)
        return self

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if self._model is None:
            raise InputError("embedding probe: call fit(texts, labels) before using it")
        return self._model.predict(self.embedder.embed(list(texts))).astype(bool)


class LLMClassifier:
    """Asks a language model a yes/no question about each text: true when
    ``answer_yes`` is likelier than ``answer_no`` after ``template.format(text=...)``.

    ``lm`` is a :class:`~gradtrace.loop.lm.LanguageModel` (any causal LM,
    e.g. SmolLM2 as the judge).
    """

    def __init__(self, lm: Any, template: str = "{text}\nQuestion: is this text positive? Answer:", answer_yes: str = " Yes", answer_no: str = " No"):
        if "{text}" not in template:
            raise InputError(f"LLM classifier: template must contain {{text}}; got {template!r}")
        self.lm, self.template, self.yes, self.no = lm, template, answer_yes, answer_no

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        prompts = [self.template.format(text=t) for t in texts]
        yes = self.lm.nll([p + self.yes for p in prompts])
        no = self.lm.nll([p + self.no for p in prompts])
        return yes < no


class AttributeRates(Monitor):
    """Rate of each classifier's attribute in the generations, with a
    Cochran-Armitage trend test over rounds 0..t: ``<name>.rate``,
    ``<name>.count``, ``<name>.trend_z`` (> 0: rising) and ``<name>.trend_p``."""

    name = "attribute"
    needs = frozenset()

    def __init__(self, classifiers: Mapping[str, Classifier]):
        if not classifiers:
            raise InputError("monitors.attribute.classifiers: give at least one classifier")
        for key, clf in classifiers.items():
            if not callable(clf):
                raise InputError(f"monitors.attribute.classifiers.{key} must be callable texts -> booleans")
            if "." in key:
                raise InputError(f"monitors.attribute.classifiers: a name may not contain '.'; got {key!r}")
        self.classifiers = dict(classifiers)

    def settings(self) -> dict[str, Any]:
        return {"classifiers": {k: repr(v) for k, v in self.classifiers.items()}}

    def measure(self, obs: Observation, ref: Observation, history: Sequence[Row], out_dir: Path | None = None) -> Row:
        n = len(obs.generations)
        row: Row = {"n": float(n)}
        for key, clf in self.classifiers.items():
            hits = np.asarray(clf(obs.generations), dtype=bool)
            if hits.shape != (n,):
                raise InputError(f"classifier {key!r} must return one boolean per text ({n}); got shape {hits.shape}")
            count = int(hits.sum())
            counts = [int(h[f"{key}.count"]) for h in history] + [count]
            totals = [int(h["n"]) for h in history] + [n]
            z, p = M.cochran_armitage(counts, totals)
            row.update({f"{key}.rate": count / n if n else 0.0, f"{key}.count": float(count), f"{key}.trend_z": z, f"{key}.trend_p": p})
        return row


class RepresentationDrift(Monitor):
    """Linear CKA between round 0's and this round's hidden states on the
    fixed probe prompts (``cka``; 1 = same geometry)."""

    name = "cka"
    needs = frozenset({"probe_hidden"})

    def measure(self, obs: Observation, ref: Observation, history: Sequence[Row], out_dir: Path | None = None) -> Row:
        return {"cka": M.linear_cka(_require(ref, "probe_hidden", self.name), _require(obs, "probe_hidden", self.name))}


class ProbeSuiteMonitor(Monitor):
    """Runs a stable-reflectivity probe suite (:mod:`gradtrace.probes`) on each round's model.

    ``suite``: ``"seeds"`` (the shipped seed set) or a suite file;
    ``limit_per_subtask``: score at most this many items of each subtask (the
    first ones). Each round's per-item correctness, chosen option and margin
    are kept in the observation (``probes.correct``, ``probes.predicted``,
    ``probes.margin``; ``gradtrace serve`` shows them); the row holds, per subtask, ``<subtask>.accuracy``,
    ``<subtask>.change`` (against round 0) and ``<subtask>.p`` (exact McNemar
    against round 0, corrected over subtasks with ``correction``), and
    ``min_change`` and ``significant_drops`` (subtasks whose accuracy fell
    with corrected p <= ``alpha``). Stop on it with e.g.
    ``[[stop]] metric = "probes.significant_drops", above = 0``.
    """

    name = "probes"
    needs = frozenset()

    def __init__(self, suite: str = "seeds", limit_per_subtask: int | None = None, alpha: float = 0.05, correction: str = "holm",
                 items: Any = None):
        from ..probes.items import SUBTASKS, first_per_subtask, resolve_suite
        from ..probes.score import CORRECTIONS

        if limit_per_subtask is not None:
            positive_int(limit_per_subtask, "monitors.probes.limit_per_subtask")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
            raise InputError(f"monitors.probes.alpha must be a number in (0, 1); got {alpha!r}")
        if correction not in CORRECTIONS:
            raise InputError(f"monitors.probes.correction must be one of {CORRECTIONS}; got {correction!r}")
        if not isinstance(suite, str):
            raise InputError(f"monitors.probes.suite must be 'seeds' or a suite file path; got {suite!r}")
        self.items = first_per_subtask(list(items) if items is not None else resolve_suite(suite), limit_per_subtask)
        self.subtasks = [s for s in SUBTASKS if any(it.subtask == s for it in self.items)]
        self.suite, self.limit, self.alpha, self.correction = suite, limit_per_subtask, float(alpha), correction

    def settings(self) -> dict[str, Any]:
        return {"suite": self.suite, "limit_per_subtask": self.limit, "alpha": self.alpha, "correction": self.correction,
                "items": len(self.items)}

    def observe(self, lm: Any) -> dict[str, np.ndarray]:
        from ..probes.score import score_items

        scores = score_items(lm.model, lm.tokenizer, self.items)
        return {f"{self.name}.correct": np.array([s.correct for s in scores], dtype=bool),
                f"{self.name}.predicted": np.array([s.predicted for s in scores], dtype=np.int64),
                f"{self.name}.margin": np.array([s.margin for s in scores], dtype=np.float64)}

    def _correct(self, obs: Observation) -> np.ndarray:
        key = f"{self.name}.correct"
        if key not in obs.extras:
            raise InputError(f"monitor 'probes': round {obs.round}'s observation has no {key!r} (was the monitor's observe() run?)")
        value = np.asarray(obs.extras[key], dtype=bool)
        if value.shape != (len(self.items),):
            raise InputError(f"monitor 'probes': round {obs.round} scored {value.shape[0]} items; the suite has {len(self.items)}")
        return value

    def measure(self, obs: Observation, ref: Observation, history: Sequence[Row], out_dir: Path | None = None) -> Row:
        from ..probes.score import compare_correct

        now, base = self._correct(obs), self._correct(ref)
        a = {it.id: (it.subtask, bool(c)) for it, c in zip(self.items, base)}
        b = {it.id: (it.subtask, bool(c)) for it, c in zip(self.items, now)}
        cmp = compare_correct(a, b, self.correction, self.alpha)
        row: Row = {}
        for sub, v in cmp.items():
            row.update({f"{sub}.accuracy": v["accuracy_b"], f"{sub}.change": v["difference"], f"{sub}.p": v["p_corrected"]})
        row["min_change"] = min(v["difference"] for v in cmp.values())
        row["significant_drops"] = float(sum(v["significant"] and v["difference"] < 0 for v in cmp.values()))
        return row


MONITORS: dict[str, type[Monitor]] = {
    "nll": HeldoutNLL, "diversity": Diversity, "clusters": ClusterShift, "attribute": AttributeRates, "cka": RepresentationDrift,
    "probes": ProbeSuiteMonitor,
}


def measure_all(monitors: Sequence[Monitor], obs: Observation, ref: Observation, history: Sequence[Row], out_dir: Path | None = None) -> Row:
    """One flat row ``{"<monitor>.<metric>": value}`` for the round.

    ``history`` holds the earlier rounds' flat rows."""
    row: Row = {}
    for m in monitors:
        prefix = f"{m.name}."
        own = [{k[len(prefix):]: v for k, v in h.items() if k.startswith(prefix)} for h in history]
        for key, value in m.measure(obs, ref, own, out_dir).items():
            row[prefix + key] = float(value)
    return row


def build_monitors(
    settings: Mapping[str, Mapping[str, Any]], embedder: Any = None, classifiers: Mapping[str, Classifier] | None = None,
) -> list[Monitor]:
    """Monitors from config tables ``{name: settings}``; errors name the field.

    In a config, the attribute monitor's classifiers are regex tables
    ``{kind = "regex", pattern = "..."}``; ``classifiers`` adds others
    (embedding probes, LLM classifiers, any callable) from Python."""
    names = {k: dict(v) for k, v in settings.items()}
    if classifiers and "attribute" not in names:
        names["attribute"] = {}
    out: list[Monitor] = []
    for name, kw in names.items():
        if name not in MONITORS:
            raise InputError(f"monitors.{name}: unknown monitor {name!r}; known monitors: {sorted(MONITORS)}")
        try:
            if name == "attribute":
                clfs: dict[str, Any] = {}
                table = kw.pop("classifiers", {})
                if not isinstance(table, Mapping):
                    raise InputError(f"monitors.attribute.classifiers must be a table; got {table!r}")
                for key, spec in table.items():
                    if not isinstance(spec, Mapping) or spec.get("kind", "regex") != "regex" or not isinstance(spec.get("pattern"), str):
                        raise InputError(f"monitors.attribute.classifiers.{key} must be {{kind = \"regex\", pattern = \"...\"}} "
                                         "in a config (pass other classifiers from Python)")
                    clfs[key] = RegexClassifier(spec["pattern"], bool(spec.get("ignore_case", False)))
                clfs.update(classifiers or {})
                out.append(AttributeRates(clfs, **kw))
            elif name == "clusters":
                out.append(ClusterShift(**kw, embedder=embedder))
            else:
                out.append(MONITORS[name](**kw))
        except TypeError as exc:
            raise InputError(f"monitors.{name}: bad settings {sorted(kw)}: {exc}") from None
    return out
