"""Compare unlearning methods on one model, with the relearning attack built in.

An :class:`UnlearnSpec` says how to make and train the user's model and
which training examples are (labelled) forget data. :func:`compare_methods`
then produces, for every method asked for:

* ``base``: the model trained on everything (what the others start from);
* ``filter``: data filtering, retrained from scratch without the labelled
  forget examples;
* ``ga``, ``graddiff``, ``npo``, ``rmu``: fine-tuning baselines applied to
  ``base`` (labelled forget examples vs all the rest as retain);
* ``era``: Expand, Route, Ablate -- trained from scratch with gradient
  routing of the labelled forget examples, ablated, then fine-tuned for
  coherence on retain data;

its forget and retain metrics and the relearning attack's curves. Every
setting is recorded in the result.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..data import as_source
from ..errors import InputError
from ..progress import progress_bar
from .methods import METHODS as FINETUNE_METHODS
from .methods import UnlearnConfig, Unlearner, _gather
from .relearn import RelearnConfig, relearn
from .routing import Router, RoutingConfig, ablate, expand
from .train import TrainConfig, train

ALL_METHODS = ("base", "filter", *FINETUNE_METHODS, "era")


@dataclasses.dataclass
class UnlearnSpec:
    """The user's model and data for :func:`compare_methods`.

    ``init(seed)``: a fresh, untrained model. ``train_data``: the full
    training set. ``forget_weights``: per example (``[n]``) or per token
    (``[n, tokens]``) forget labels in [0, 1]; 0 means retain or unlabelled.
    ``relearn_pool``: held-out forget examples for the attack.
    ``forget_metric``/``retain_metric``: ``f(model) -> float``; with
    ``attacker_maximises`` the forget metric is one the attacker wants high
    (an accuracy), else low (a loss).
    """

    init: Callable[[int], nn.Module]
    task: Any
    train_data: Any
    forget_weights: Tensor
    relearn_pool: Any
    forget_metric: Callable[[nn.Module], float]
    retain_metric: Callable[[nn.Module], float]
    train_config: TrainConfig
    attacker_maximises: bool = True
    name: str = "model"


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """Settings of every method, recorded in the result."""

    methods: tuple[str, ...] = ALL_METHODS
    unlearn: dict[str, UnlearnConfig] = dataclasses.field(default_factory=dict)
    routing: RoutingConfig | None = None
    coherence: TrainConfig = TrainConfig(steps=50, lr=1e-3)
    relearn: RelearnConfig = RelearnConfig()
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.methods, (list, str)):
            object.__setattr__(self, "methods", (self.methods,) if isinstance(self.methods, str) else tuple(self.methods))
        bad = [m for m in self.methods if m not in ALL_METHODS]
        if bad or not self.methods:
            raise InputError(f"methods must be a non-empty subset of {ALL_METHODS}; got {list(self.methods)!r}")
        if "era" in self.methods and self.routing is None:
            raise InputError("method 'era' needs a routing config (which layers to expand)")

    def to_dict(self) -> dict[str, Any]:
        return {
            "methods": list(self.methods),
            "unlearn": {m: self.unlearn_config(m).to_dict() for m in self.methods if m in FINETUNE_METHODS},
            "routing": self.routing.to_dict() if self.routing else None,
            "coherence": self.coherence.to_dict(), "relearn": self.relearn.to_dict(), "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CompareConfig":
        return cls(
            methods=tuple(d["methods"]), unlearn={m: UnlearnConfig.from_dict(c) for m, c in d.get("unlearn", {}).items()},
            routing=RoutingConfig.from_dict(d["routing"]) if d.get("routing") else None,
            coherence=TrainConfig.from_dict(d["coherence"]), relearn=RelearnConfig.from_dict(d["relearn"]), seed=d.get("seed", 0),
        )

    def unlearn_config(self, method: str) -> UnlearnConfig:
        return self.unlearn[method] if method in self.unlearn else UnlearnConfig(method=method)


@dataclasses.dataclass
class MethodResult:
    method: str
    forget: float
    retain: float
    relearn: dict[str, Any]
    model: nn.Module

    def to_dict(self) -> dict[str, Any]:
        out = {"forget": self.forget, "retain": self.retain, "relearn": self.relearn}
        for k, v in self.relearn["best"].items():
            out[f"relearn_k{k}"] = v
        return out


@dataclasses.dataclass
class Comparison:
    config: CompareConfig
    train_config: TrainConfig
    results: dict[str, MethodResult]
    labelled_fraction: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(), "train_config": self.train_config.to_dict(),
            "labelled_fraction": self.labelled_fraction,
            "methods": {m: r.to_dict() for m, r in self.results.items()},
        }


def split_by_weights(spec: UnlearnSpec) -> tuple[Any, Any, Tensor]:
    """(labelled forget examples, the rest, boolean mask of labelled examples)."""
    source = as_source(spec.train_data, collate=getattr(spec.task, "collate", None))
    w = spec.forget_weights
    if w.shape[0] != len(source):
        raise InputError(f"forget_weights must have one row per training example ({len(source)}); got shape {tuple(w.shape)}")
    labelled = w.reshape(len(source), -1).amax(dim=1) > 0
    f_idx = torch.nonzero(labelled).flatten().tolist()
    r_idx = torch.nonzero(~labelled).flatten().tolist()
    if not f_idx:
        raise InputError("forget_weights: no training example is labelled forget (all weights are 0)")
    if not r_idx:
        raise InputError("forget_weights: every training example is labelled forget; nothing is left to retain")
    return _gather(source, f_idx), _gather(source, r_idx), labelled


def compare_methods(spec: UnlearnSpec, config: CompareConfig, *, progress: bool = False) -> Comparison:
    """Run every configured method and the relearning attack on each."""
    forget, retain, labelled = split_by_weights(spec)
    relearn_cfg = dataclasses.replace(config.relearn, attacker_maximises=spec.attacker_maximises)
    results: dict[str, MethodResult] = {}
    base: nn.Module | None = None
    with progress_bar("unlearning methods", len(config.methods), progress) as bar:
        for method in config.methods:
            if method in ("base", *FINETUNE_METHODS) and base is None:
                base = spec.init(config.seed)
                train(base, spec.task, spec.train_data, spec.train_config)
            if method == "base":
                model = base
            elif method == "filter":
                model = spec.init(config.seed)
                train(model, spec.task, retain, spec.train_config)
            elif method == "era":
                model = run_era(spec, config.routing, config.coherence, retain, config.seed)  # type: ignore[arg-type]
            else:
                assert base is not None
                model = Unlearner(config.unlearn_config(method)).fit(base, spec.task, forget, retain).model
            attack = relearn(model, spec.task, spec.relearn_pool, spec.forget_metric, relearn_cfg)
            results[method] = MethodResult(
                method, float(spec.forget_metric(model)), float(spec.retain_metric(model)), attack.to_dict(), model,
            )
            bar.advance(1)
    return Comparison(config, spec.train_config, results, float(labelled.double().mean()))


def run_era(spec: UnlearnSpec, routing: RoutingConfig, coherence: TrainConfig, retain: Any, seed: int) -> nn.Module:
    """Expand a fresh model, train it with routing, ablate, fine-tune on retain."""
    big, expansion = expand(spec.init(seed), routing)
    router = Router(big, expansion)
    train(big, spec.task, spec.train_data, spec.train_config, forget_weights=spec.forget_weights.to(torch.float64),
          router=router, l1_coef=routing.l1_coef)
    router.remove()
    model = ablate(big, expansion)
    train(model, spec.task, retain, coherence)
    return model
