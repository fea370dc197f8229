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

With ``CompareConfig.select`` (a grid per method) and ``rule``, each
method's settings are chosen by one rule on validation metrics (see
:mod:`gradtrace.unlearn.select`) before the attack; the grid, every grid
point's metrics and the choice are recorded. With ``cache_dir``, each
finished method is kept on disk and a re-run continues where a killed one
stopped.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..configbase import ConfigBase
from ..data import as_source
from ..errors import InputError
from ..progress import progress_bar
from .methods import METHODS as FINETUNE_METHODS
from .methods import UnlearnConfig, Unlearner
from .relearn import RelearnConfig, relearn
from .cache import ResultCache, fingerprint
from .routing import Router, RoutingConfig, ablate, expand
from .select import SelectionGrid, SelectionRule, choose
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
    (an accuracy), else low (a loss). ``select_forget_metric`` and
    ``select_retain_metric``: the same metrics on separate validation data,
    used to choose settings (``CompareConfig.select``); when absent the
    evaluation metrics are used and the result says so. ``extra_metrics``:
    more ``f(model) -> float`` recorded for each method (not attacked).
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
    select_forget_metric: Callable[[nn.Module], float] | None = None
    select_retain_metric: Callable[[nn.Module], float] | None = None
    extra_metrics: dict[str, Callable[[nn.Module], float]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class CompareConfig(ConfigBase):
    """Settings of every method, recorded in the result."""

    methods: tuple[str, ...] = ALL_METHODS
    unlearn: dict[str, UnlearnConfig] = dataclasses.field(default_factory=dict)
    routing: RoutingConfig | None = None
    coherence: TrainConfig = TrainConfig(steps=50, lr=1e-3)
    relearn: RelearnConfig = RelearnConfig()
    seed: int = 0
    select: dict[str, SelectionGrid] = dataclasses.field(default_factory=dict)
    rule: SelectionRule = SelectionRule()

    def _check(self) -> None:
        bad = [m for m in self.methods if m not in ALL_METHODS]
        if bad or not self.methods:
            raise InputError(f"methods must be a non-empty subset of {ALL_METHODS}; got {list(self.methods)!r}")
        if "era" in self.methods and self.routing is None:
            raise InputError("method 'era' needs a routing config (which layers to expand)")
        for m, grid in self.select.items():
            if m not in (*FINETUNE_METHODS, "era"):
                raise InputError(f"select: only {(*FINETUNE_METHODS, 'era')} have settings to select; got {m!r}")
            if m == "era" and grid.lrs:
                raise InputError(f"select['era'] chooses the coherence steps only; its lrs must be empty; got {list(grid.lrs)}")
            if m != "era" and not grid.lrs:
                raise InputError(f"select[{m!r}] needs at least one learning rate; got none")

    def to_dict(self) -> dict[str, Any]:
        """Every field; ``unlearn`` holds the settings each chosen fine-tuning method runs with (defaults filled in)."""
        d = super().to_dict()
        d["unlearn"] = {m: self.unlearn_config(m).to_dict() for m in self.methods if m in FINETUNE_METHODS}
        return d

    def unlearn_config(self, method: str) -> UnlearnConfig:
        return self.unlearn[method] if method in self.unlearn else UnlearnConfig(method=method)


#: ``--spec`` names of the built-in unlearning set-ups (in gradtrace.demos).
BUILTIN_SPECS = ("digits", "tiny-lm")


def load_unlearn_spec(name: str, labelled: float = 1.0, seed: int = 0, option: str = "spec") -> tuple[UnlearnSpec, CompareConfig]:
    """``(UnlearnSpec, CompareConfig)`` of a built-in set-up (:data:`BUILTIN_SPECS`:
    ``labelled`` share of the forget examples labelled, ``seed``) or of
    ``path/to/file.py:fn`` whose ``fn()`` returns that pair; ``option``
    names the argument in errors."""
    from ..spec import import_target

    if name == "digits":
        from ..demos.era_digits import digits_compare_config, digits_forget_spec

        return digits_forget_spec(labelled, seed), digits_compare_config(seed)
    if name == "tiny-lm":
        from ..demos.era_lm import lm_compare_config, lm_forget_spec

        return lm_forget_spec(labelled, seed), lm_compare_config(seed)
    if not isinstance(name, str) or ":" not in name:
        raise InputError(f"{option} must be one of {BUILTIN_SPECS} or path/to/file.py:fn; got {name!r}")
    made = import_target(name, option)()
    if not (isinstance(made, tuple) and len(made) == 2 and isinstance(made[1], CompareConfig)):
        raise InputError(f"{option} {name} must return (UnlearnSpec, CompareConfig); got {type(made).__name__}")
    return made


@dataclasses.dataclass
class MethodResult:
    """One method's metrics, attack and (if selected) the selection record.
    ``model`` is None when the result was read back from the cache."""

    method: str
    forget: float
    retain: float
    relearn: dict[str, Any]
    model: nn.Module | None
    selection: dict[str, Any] | None = None
    extra: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"forget": self.forget, "retain": self.retain, "relearn": self.relearn}
        for k, v in self.relearn["best"].items():
            out[f"relearn_k{k}"] = v
        if self.selection is not None:
            out["selection"] = self.selection
        if self.extra:
            out["extra"] = self.extra
        return out

    @classmethod
    def from_dict(cls, method: str, d: dict[str, Any]) -> "MethodResult":
        return cls(method, d["forget"], d["retain"], d["relearn"], None, d.get("selection"), d.get("extra", {}))


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
    return source.gather(f_idx), source.gather(r_idx), labelled


def compare_methods(
    spec: UnlearnSpec, config: CompareConfig, *, progress: bool = False, cache_dir: str | Path | None = None,
) -> Comparison:
    """Run every configured method and the relearning attack on each.

    ``cache_dir``: keep each finished method (and the base model) there, in
    a sub-directory named by a hash of the data and the shared settings,
    each method under a name hashing its own settings; a re-run reads back
    every method whose settings did not change instead of recomputing it.
    """
    forget, retain, labelled = split_by_weights(spec)
    relearn_cfg = dataclasses.replace(config.relearn, attacker_maximises=spec.attacker_maximises)
    # the folder: what every method depends on; each piece's name: what only that method depends on,
    # so a re-run with more methods, or with one method's settings changed, reuses the other finished ones
    cache = ResultCache(cache_dir, fingerprint(
        spec.name, spec.train_config.to_dict(), spec.forget_weights, spec.attacker_maximises, spec.train_data,
        spec.relearn_pool, config.seed, config.relearn.to_dict(), config.rule.to_dict(),
    ))
    results: dict[str, MethodResult] = {}
    base: nn.Module | None = None
    base_retain: float | None = None

    def get_base() -> nn.Module:
        nonlocal base
        if base is None:
            base = spec.init(config.seed)
            if not cache.get_model("base_model", base):
                train(base, spec.task, spec.train_data, spec.train_config)
                cache.put_model("base_model", base)
            base.eval()
        return base

    def get_base_retain() -> float:
        nonlocal base_retain
        if base_retain is None:
            base_retain = float(_select_metrics(spec)[1](get_base()))
        return base_retain

    with progress_bar("unlearning methods", len(config.methods), progress) as bar:
        for method in config.methods:
            piece = f"{method}-{fingerprint(_method_settings(config, method))}"
            cached = cache.get(piece)
            if cached is not None:
                results[method] = MethodResult.from_dict(method, cached)
                bar.advance(1)
                continue
            selection = None
            if method == "base":
                model = get_base()
            elif method == "filter":
                model = spec.init(config.seed)
                train(model, spec.task, retain, spec.train_config)
            elif method == "era":
                model, selection = run_era(
                    spec, config.routing, config.coherence, retain, config.seed,  # type: ignore[arg-type]
                    grid=config.select.get("era"), rule=config.rule, base_retain=get_base_retain if "era" in config.select else None,
                )
            else:
                unlearn_cfg = config.unlearn_config(method)
                if method in config.select:
                    unlearn_cfg, selection = select_unlearn_config(
                        spec, unlearn_cfg, config.select[method], config.rule, get_base(), get_base_retain(), forget, retain,
                    )
                model = Unlearner(unlearn_cfg).fit(get_base(), spec.task, forget, retain).model
            attack = relearn(model, spec.task, spec.relearn_pool, spec.forget_metric, relearn_cfg)
            results[method] = MethodResult(
                method, float(spec.forget_metric(model)), float(spec.retain_metric(model)), attack.to_dict(), model, selection,
                {name: float(f(model)) for name, f in spec.extra_metrics.items()},
            )
            cache.put(piece, results[method].to_dict())
            bar.advance(1)
    return Comparison(config, spec.train_config, results, float(labelled.double().mean()))


def _method_settings(config: CompareConfig, method: str) -> dict[str, Any]:
    """The settings of ``config`` that only ``method``'s result depends on."""
    grid = config.select.get(method)
    out: dict[str, Any] = {"select": grid.to_dict() if grid else None}
    if method in FINETUNE_METHODS:
        out["unlearn"] = config.unlearn[method].to_dict() if method in config.unlearn else {"default": method}
    if method == "era":
        out["routing"] = config.routing.to_dict() if config.routing else None
        out["coherence"] = config.coherence.to_dict()
    return out


def _select_metrics(spec: UnlearnSpec) -> tuple[Callable[[nn.Module], float], Callable[[nn.Module], float], str]:
    """(forget metric, retain metric, which data) used to choose settings."""
    if spec.select_forget_metric is not None and spec.select_retain_metric is not None:
        return spec.select_forget_metric, spec.select_retain_metric, "validation"
    return spec.forget_metric, spec.retain_metric, "evaluation (no validation metrics given)"


def select_unlearn_config(
    spec: UnlearnSpec, config: UnlearnConfig, grid: SelectionGrid, rule: SelectionRule, base: nn.Module,
    base_retain: float, forget: Any, retain: Any,
) -> tuple[UnlearnConfig, dict[str, Any]]:
    """Run ``config`` once per grid learning rate for ``max(grid.steps)``
    steps, evaluate at each grid step, and choose by ``rule``."""
    f_metric, r_metric, where = _select_metrics(spec)
    points: list[dict[str, Any]] = []
    for lr in grid.lrs:
        def record(step: int, m: nn.Module, lr: float = lr) -> None:
            if step in grid.steps:
                points.append({"lr": lr, "steps": step, "forget": float(f_metric(m)), "retain": float(r_metric(m))})

        Unlearner(dataclasses.replace(config, lr=lr, steps=max(grid.steps))).fit(base, spec.task, forget, retain, callback=record)
    chosen = choose(points, rule, base_retain, spec.attacker_maximises)
    record = {"grid": grid.to_dict(), "rule": rule.to_dict(), "data": where, "base_retain": base_retain,
              "retain_limit": rule.limit(base_retain), "points": points, "selected": chosen, "admissible": chosen["admissible"]}
    return dataclasses.replace(config, lr=chosen["lr"], steps=chosen["steps"]), record


def run_era(
    spec: UnlearnSpec, routing: RoutingConfig, coherence: TrainConfig, retain: Any, seed: int, *,
    grid: SelectionGrid | None = None, rule: SelectionRule | None = None, base_retain: Callable[[], float] | None = None,
) -> tuple[nn.Module, dict[str, Any] | None]:
    """Expand a fresh model, train it with routing, ablate, fine-tune on
    retain. With ``grid``, the coherence fine-tune's length is chosen by
    ``rule`` among ``grid.steps`` (``base_retain()`` gives the base model's
    validation retain metric); returns the model and the selection record."""
    big, expansion = expand(spec.init(seed), routing)
    router = Router(big, expansion)
    train(big, spec.task, spec.train_data, spec.train_config, forget_weights=spec.forget_weights.to(torch.float64),
          router=router, l1_coef=routing.l1_coef)
    router.remove()
    ablated = ablate(big, expansion)
    if grid is None:
        model = copy.deepcopy(ablated)
        train(model, spec.task, retain, coherence)
        return model, None
    assert rule is not None and base_retain is not None
    f_metric, r_metric, where = _select_metrics(spec)
    points: list[dict[str, Any]] = []
    # what the ablation alone costs: a large retain loss here means the new units carried retain computation
    after_ablation = {"forget": float(f_metric(ablated)), "retain": float(r_metric(ablated))}

    def record(step: int, m: nn.Module) -> None:
        if step in grid.steps:
            points.append({"lr": coherence.lr, "steps": step, "forget": float(f_metric(m)), "retain": float(r_metric(m))})

    train(copy.deepcopy(ablated), spec.task, retain, dataclasses.replace(coherence, steps=max(grid.steps)), callback=record)
    b = base_retain()
    chosen = choose(points, rule, b, spec.attacker_maximises)
    model = copy.deepcopy(ablated)
    train(model, spec.task, retain, dataclasses.replace(coherence, steps=chosen["steps"]))
    return model, {"grid": grid.to_dict(), "rule": rule.to_dict(), "data": where, "base_retain": b,
                   "retain_limit": rule.limit(b), "points": points, "selected": chosen, "admissible": chosen["admissible"],
                   "after_ablation": after_ablation}
