"""A small deterministic training loop shared by retraining, ERA, the
coherence fine-tune and the relearning attack.

Batches are drawn from a local ``torch.Generator`` seeded by the config, so
the same model, data and config give the same parameters bit for bit (on
one machine and torch build). With a :class:`~gradtrace.unlearn.routing.Router`
and per-example (or per-token) forget weights, the loop routes gradients.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..checkpoints import CheckpointRef
from ..configbase import ConfigBase, one_of, positive, positive_int
from ..data import as_source
from ..errors import InputError
from ..progress import progress_bar
from .routing import Router

OPTIMIZERS = ("sgd", "adam", "adamw")


@dataclasses.dataclass(frozen=True)
class TrainConfig(ConfigBase):
    """``steps`` optimizer steps on batches of ``batch_size`` (epochs of a
    seeded permutation, cycled). ``n_checkpoints`` > 0 saves that many
    checkpoints (weights and optimizer state) at evenly spaced steps."""

    steps: int = 1000
    lr: float = 1e-3
    batch_size: int = 32
    optimizer: str = "adam"
    weight_decay: float = 0.0
    seed: int = 0
    n_checkpoints: int = 0

    _checks = {"steps": positive_int, "batch_size": positive_int, "lr": positive, "optimizer": one_of(OPTIMIZERS)}

    def _check(self) -> None:
        if not isinstance(self.n_checkpoints, int) or not 0 <= self.n_checkpoints <= self.steps:
            raise InputError(f"n_checkpoints must be an integer in [0, steps={self.steps}]; got {self.n_checkpoints!r}")


@dataclasses.dataclass
class TrainRecord:
    """Checkpoints written (with the optimizer state files beside them) and
    the training loss of each step."""

    checkpoints: list[CheckpointRef]
    optimizer_states: list[str]
    losses: list[float]


def make_optimizer(params: Any, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def train(
    model: nn.Module, task: Any, data: Any, config: TrainConfig, *,
    forget_weights: Tensor | None = None, router: Router | None = None, l1_coef: float = 0.0,
    checkpoint_dir: str | Path | None = None, callback: Callable[[int, nn.Module], None] | None = None,
    progress: bool = False,
) -> TrainRecord:
    """Train ``model`` in place on ``data`` with ``task.per_example_loss``.

    ``forget_weights`` (``[n]`` or ``[n, tokens]``, values in [0, 1]) are
    passed to ``router`` batch by batch; ``l1_coef`` weights the router's
    L1 penalty on the new units. ``callback(step, model)`` runs after every
    step (evaluation during training); it must not change the model.
    """
    source = as_source(data, collate=getattr(task, "collate", None))
    n = len(source)
    if n == 0:
        raise InputError("data: the training set is empty")
    if (forget_weights is None) != (router is None):
        raise InputError("forget_weights and router go together: give both or neither")
    if forget_weights is not None:
        if forget_weights.shape[0] != n:
            raise InputError(f"forget_weights must have one row per example ({n}); got shape {tuple(forget_weights.shape)}")
        if forget_weights.numel() and (forget_weights.min() < 0 or forget_weights.max() > 1):
            raise InputError("forget_weights must lie in [0, 1]")
    if config.n_checkpoints and checkpoint_dir is None:
        raise InputError("n_checkpoints > 0 needs a checkpoint_dir")
    gen = torch.Generator().manual_seed(config.seed)
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], config)
    save_at = {round(config.steps * (i + 1) / config.n_checkpoints) for i in range(config.n_checkpoints)}
    record = TrainRecord([], [], [])
    model.train()
    order: list[int] = []
    with progress_bar("train", config.steps, progress) as bar:
        for step in range(1, config.steps + 1):
            if len(order) < min(config.batch_size, n):
                order += torch.randperm(n, generator=gen).tolist()
            idx, order = sorted(order[: config.batch_size]), order[config.batch_size :]
            batch = source.gather(idx)
            if router is not None:
                assert forget_weights is not None
                with router.route(forget_weights[idx]):
                    loss = task.per_example_loss(model, batch).mean()
                    if l1_coef:
                        loss = loss + l1_coef * router.l1()
            else:
                loss = task.per_example_loss(model, batch).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            record.losses.append(float(loss.detach()))
            if step in save_at:
                _save(model, opt, Path(checkpoint_dir), step, config.lr, record)  # type: ignore[arg-type]
            if callback is not None:
                model.eval()
                callback(step, model)
                model.train()
            bar.advance(1)
    model.eval()
    return record


def _save(model: nn.Module, opt: torch.optim.Optimizer, directory: Path, step: int, lr: float, record: TrainRecord) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step_{step:07d}.pt"
    opt_path = directory / f"step_{step:07d}.optim.pt"
    torch.save(model.state_dict(), path)
    torch.save(opt.state_dict(), opt_path)
    record.checkpoints.append(CheckpointRef(str(path), lr, step=step))
    record.optimizer_states.append(str(opt_path))
