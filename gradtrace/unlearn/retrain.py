"""Counterfactual checks of an attribution: remove what it points at, retrain,
and see whether the behaviour goes.

The user supplies a *training function* ``train_fn(train_indices, seed) ->
nn.Module`` that trains a fresh model on the given positions of their
training set, deterministically for a given seed, and a *measure*
``measure(model) -> float`` (the behaviour, for example the attack success
rate of a backdoor). :class:`RemovalExperiment` then compares removing the
top-k scored examples with removing k random ones over several seeds, and
optionally removes iteratively (remove, retrain, re-attribute).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from ..configbase import ConfigBase, integers, non_negative_int, positive_int
from ..errors import InputError
from ..progress import progress_bar
from .cache import ResultCache, fingerprint


@runtime_checkable
class TrainFn(Protocol):
    """Trains a fresh model on ``train_indices`` (positions in the user's
    training set). The same indices and seed must give the same parameters."""

    def __call__(self, train_indices: np.ndarray, seed: int) -> nn.Module: ...


Measure = Callable[[nn.Module], float]
#: ``attribute(model, train_indices) -> scores``: one score per position of
#: ``train_indices`` (higher = more responsible for the behaviour).
Attribute = Callable[[nn.Module, np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class RemovalConfig(ConfigBase):
    """Settings of a removal experiment.

    ``k``: examples removed; ``seeds``: training seeds (one retrain per seed
    and arm); ``random_seed``: seed of the random-removal baseline draws;
    ``iterative_rounds``: rounds of remove/retrain/re-attribute (each removes
    ``k // rounds`` examples; 0 skips the iterative arm).
    """

    k: int = 10
    seeds: tuple[int, ...] = (0, 1, 2)
    random_seed: int = 0
    iterative_rounds: int = 0

    _checks = {"k": positive_int, "seeds": integers, "iterative_rounds": non_negative_int}

    def _check(self) -> None:
        if self.iterative_rounds > self.k:
            raise InputError(f"iterative_rounds must be at most k={self.k}; got {self.iterative_rounds!r}")


@dataclasses.dataclass(frozen=True)
class RemovalResult:
    """Behaviour per seed: on the full data, after removing the top k, after
    removing k random examples, and after iterative removal (empty if not run)."""

    config: RemovalConfig
    base: list[float]
    after_topk: list[float]
    after_random: list[float]
    after_iterative: list[float]
    removed_topk: list[int]
    extras: dict[str, dict[str, list[float]]] = dataclasses.field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        out = {"base": _mean(self.base), "after_topk": _mean(self.after_topk), "after_random": _mean(self.after_random)}
        if self.after_iterative:
            out["after_iterative"] = _mean(self.after_iterative)
        for arm, values in self.extras.items():
            for name, v in values.items():
                out[f"{name}_{arm}"] = _mean(v)
        return out

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["config"] = self.config.to_dict()
        d["summary"] = self.summary()
        return d


def top_k_positions(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest scores (ties to the lower position)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise InputError(f"scores must be 1-D (one per training example); got shape {scores.shape}")
    if not 1 <= k <= scores.size:
        raise InputError(f"k must be in [1, {scores.size}]; got {k!r}")
    return np.sort(np.argsort(-scores, kind="stable")[:k])


class RemovalExperiment:
    """Remove top-scored vs random examples, retrain, measure.

    ``n_train``: size of the full training set; ``scores``: one score per
    training example (higher = more responsible; e.g. TracIn scores of the
    behaviour summed over queries). ``attribute`` is needed only for the
    iterative arm. ``extra_measures`` (name -> measure) are recorded on the
    same retrained models (e.g. clean accuracy beside a backdoor's success).

    ``cache_dir``: each finished retrain's measures (one seed and arm) are
    kept there, under a hash of the config, the scores, ``n_train``, the
    extra measures' names and ``cache_tag`` (name the training function and
    measure there: they cannot be hashed); re-running a killed experiment
    with the same arguments retrains only what was not finished.
    """

    def __init__(
        self, train_fn: TrainFn, measure: Measure, n_train: int, config: RemovalConfig | None = None,
        *, attribute: Attribute | None = None, extra_measures: Mapping[str, Measure] | None = None,
        progress: bool = False, cache_dir: str | Path | None = None, cache_tag: Any = None,
    ):
        if not callable(train_fn):
            raise InputError(f"train_fn must be callable as train_fn(train_indices, seed) -> model; got {type(train_fn).__name__}")
        if not callable(measure):
            raise InputError(f"measure must be callable as measure(model) -> float; got {type(measure).__name__}")
        positive_int(n_train, "n_train")
        config = config or RemovalConfig()
        if config.k >= n_train:
            raise InputError(f"k must be smaller than n_train={n_train}; got {config.k}")
        if config.iterative_rounds and attribute is None:
            raise InputError("iterative_rounds > 0 needs attribute(model, train_indices) -> scores")
        self.train_fn, self.measure, self.n_train = train_fn, measure, n_train
        self.config, self.attribute, self.progress = config, attribute, progress
        self.extra_measures = dict(extra_measures or {})
        self.cache_dir, self.cache_tag = cache_dir, cache_tag

    def run(self, scores: np.ndarray) -> RemovalResult:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (self.n_train,):
            raise InputError(f"scores must have one value per training example, shape ({self.n_train},); got {scores.shape}")
        cfg = self.config
        everything = np.arange(self.n_train)
        top = top_k_positions(scores, cfg.k)
        rng = np.random.default_rng(cfg.random_seed)
        base, after_top, after_rand, after_iter = [], [], [], []
        self._extras: dict[str, dict[str, list[float]]] = {
            arm: {name: [] for name in self.extra_measures} for arm in ("base", "after_topk", "after_random", "after_iterative")
        }
        self._cache = ResultCache(self.cache_dir, fingerprint(
            "removal", cfg.to_dict(), scores, self.n_train, sorted(self.extra_measures), self.cache_tag,
        ))
        steps = len(cfg.seeds) * (3 + cfg.iterative_rounds)
        with progress_bar("removal", steps, self.progress) as bar:
            for seed in cfg.seeds:
                base.append(self._piece(seed, "base", lambda: self._measure_model(self.train_fn(everything, seed)), bar, 1))
                keep_top = np.setdiff1d(everything, top)
                after_top.append(self._piece(seed, "after_topk", lambda: self._measure_model(self.train_fn(keep_top, seed)), bar, 1))
                rand = np.sort(rng.choice(self.n_train, size=cfg.k, replace=False))  # drawn even when cached: same sequence
                keep_rand = np.setdiff1d(everything, rand)
                after_rand.append(self._piece(seed, "after_random", lambda: self._measure_model(self.train_fn(keep_rand, seed)), bar, 1))
                if cfg.iterative_rounds:
                    after_iter.append(self._piece(seed, "after_iterative", lambda: self._iterative(scores, seed, bar), bar, 0,
                                                  skipped=cfg.iterative_rounds))
        extras = {arm: v for arm, v in self._extras.items() if arm != "after_iterative" or after_iter}
        return RemovalResult(cfg, base, after_top, after_rand, after_iter, top.tolist(), extras if self.extra_measures else {})

    def _piece(self, seed: int, arm: str, compute: Callable[[], dict[str, Any]], bar: Any, steps: int, skipped: int = 1) -> float:
        """One retrain's measures, from the cache or computed (then cached)."""
        name = f"seed{seed}_{arm}"
        got = self._cache.get(name)
        if got is None:
            got = compute()
            self._cache.put(name, got)
            bar.advance(steps)
        else:
            bar.advance(skipped)
        for extra, v in got["extras"].items():
            self._extras[arm][extra].append(float(v))
        return float(got["measure"])

    def _measure_model(self, model: nn.Module) -> dict[str, Any]:
        return {"measure": float(self.measure(model)), "extras": {name: float(fn(model)) for name, fn in self.extra_measures.items()}}

    def _iterative(self, scores: np.ndarray, seed: int, bar: Any) -> dict[str, Any]:
        """Remove ``k // rounds`` per round (the remainder in the first),
        retrain, re-attribute on the kept examples; return the final measure."""
        cfg = self.config
        assert self.attribute is not None
        kept = np.arange(self.n_train)
        per = [cfg.k // cfg.iterative_rounds] * cfg.iterative_rounds
        per[0] += cfg.k - sum(per)
        current = scores
        model: nn.Module | None = None
        for r, k_r in enumerate(per):
            drop = kept[top_k_positions(current, k_r)]
            kept = np.setdiff1d(kept, drop)
            model = self.train_fn(kept, seed)
            bar.advance(1)
            if r + 1 < len(per):
                current = np.asarray(self.attribute(model, kept), dtype=np.float64)
                if current.shape != kept.shape:
                    raise InputError(f"attribute must return one score per kept example ({kept.size}); got shape {current.shape}")
        assert model is not None
        return self._measure_model(model)


def parameters_equal(a: nn.Module, b: nn.Module) -> bool:
    """True when two models have exactly the same parameter values."""
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")
