"""The relearning attack: does an unlearned capability come back after a
little fine-tuning?

For each ``k``, the attacker fine-tunes a copy of the model on ``k``
held-out forget examples (drawn with a seed) for a fixed budget of steps,
once per learning rate of a small sweep, and evaluates the forget metric
every ``eval_every`` steps. The reported number is the best forget metric
the attacker reaches at any evaluation after fine-tuning began (steps
``eval_every..steps``), over the whole sweep: highest when
``attacker_maximises`` (e.g. a forget accuracy), lowest otherwise (a loss).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable

import torch
from torch import nn

from ..configbase import ConfigBase, one_of, positive_int, positive_ints
from ..data import as_source
from ..errors import InputError
from .train import OPTIMIZERS, TrainConfig, train


def _learning_rates(value: Any, name: str) -> None:
    if not value or any(not lr > 0 for lr in value):
        raise InputError(f"{name} must be a non-empty tuple of positive learning rates; got {value!r}")


@dataclasses.dataclass(frozen=True)
class RelearnConfig(ConfigBase):
    ks: tuple[int, ...] = (4, 16, 64)
    lrs: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
    steps: int = 50
    batch_size: int = 16
    optimizer: str = "adam"
    eval_every: int = 10
    seed: int = 0
    attacker_maximises: bool = True

    _checks = {
        "ks": positive_ints, "lrs": _learning_rates, "optimizer": one_of(OPTIMIZERS), "steps": positive_int,
        "batch_size": positive_int, "eval_every": positive_int,
    }


@dataclasses.dataclass(frozen=True)
class RelearnResult:
    """``curves[k][lr]``: metric at steps ``0, eval_every, ..., steps``;
    ``best[k]``: the attacker's best metric over the sweep (steps > 0),
    reached with ``best_lr[k]`` at ``best_step[k]``."""

    config: RelearnConfig
    before: float
    steps: list[int]
    curves: dict[int, dict[float, list[float]]]
    best: dict[int, float]
    best_lr: dict[int, float]
    best_step: dict[int, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(), "before": self.before, "steps": self.steps,
            "curves": {str(k): {repr(lr): c for lr, c in v.items()} for k, v in self.curves.items()},
            "best": {str(k): v for k, v in self.best.items()}, "best_lr": {str(k): v for k, v in self.best_lr.items()},
            "best_step": {str(k): v for k, v in self.best_step.items()},
        }


def relearn(
    model: nn.Module, task: Any, forget_pool: Any, metric: Callable[[nn.Module], float], config: RelearnConfig = RelearnConfig(),
) -> RelearnResult:
    """Run the attack on copies of ``model``; ``forget_pool`` holds held-out
    forget examples (at least ``max(ks)``), ``metric(model) -> float``."""
    source = as_source(forget_pool, collate=getattr(task, "collate", None))
    if len(source) < max(config.ks):
        raise InputError(f"forget_pool has {len(source)} examples; the attack needs max(ks)={max(config.ks)}")
    gen = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(source), generator=gen).tolist()
    checkpoints = sorted({0, *range(config.eval_every, config.steps, config.eval_every), config.steps})
    before = float(metric(model))
    curves: dict[int, dict[float, list[float]]] = {}
    best: dict[int, float] = {}
    best_lr: dict[int, float] = {}
    best_step: dict[int, int] = {}
    pick = max if config.attacker_maximises else min
    for k in config.ks:
        data = source.gather(sorted(order[:k]))
        curves[k] = {}
        for lr in config.lrs:
            attacked = copy.deepcopy(model)
            for p in attacked.parameters():
                p.requires_grad_(True)
            curve = [before]

            def record(step: int, m: nn.Module, curve: list[float] = curve) -> None:
                if step in checkpoints[1:]:
                    curve.append(float(metric(m)))

            cfg = TrainConfig(steps=config.steps, lr=lr, batch_size=config.batch_size, optimizer=config.optimizer, seed=config.seed)
            train(attacked, task, data, cfg, callback=record)
            curves[k][lr] = curve
        points = [(c[i], lr, checkpoints[i]) for lr, c in curves[k].items() for i in range(1, len(c))]
        value, best_lr[k], best_step[k] = pick(points, key=lambda p: p[0])
        best[k] = value
    return RelearnResult(config, before, checkpoints, curves, best, best_lr, best_step)
